"""The build step with real processes: ninja's progress from a recorded real CUDA build (its step lines, each
cut to the command's start and its `-o` target), failures classified
from what real compilers and CMake print, and real `uv build` runs of a tiny in-tree PEP 517 backend that
prints ninja-style steps, fails on request, or hangs until it is interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from wheels import uv_command

from kcuda_validate.engine.build import classify_failure, parse_progress, run_build
from kcuda_validate.errors import DiskFullError, ExitCode, KcudaError
from procs import alive, wait_for

DATA = Path(__file__).resolve().parents[1] / "data" / "build_logs"


def test_progress_follows_a_real_sm90_build_from_first_step_to_last() -> None:
    lines = (DATA / "sm90-cuda13.0-ninja.txt").read_text().splitlines()
    steps = [parse_progress(line) for line in lines]
    assert all(s is not None for s in steps)
    done = [s.done for s in steps if s]
    assert done == list(range(1, 340))
    assert {s.total for s in steps if s} == {339}
    targets = [s.target for s in steps if s]
    assert "fattn.cu.o" in targets
    assert all(targets)


def test_other_output_is_not_progress() -> None:
    assert parse_progress("-- Found CUDAToolkit: /x/include (found version 13.0.88)") is None
    assert parse_progress("[12/10] impossible") is None
    assert parse_progress("[0/0] nothing") is None


def _gxx() -> str:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ here")
    return gxx


def test_a_full_disk_reported_by_the_real_assembler_is_a_disk_failure(tmp_path: Path) -> None:
    (tmp_path / "x.cpp").write_text("int main() { return 0; }\n")
    out = subprocess.run([_gxx(), "-c", "x.cpp", "-o", "/dev/full"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0
    failure = classify_failure(out.stdout + out.stderr)
    assert failure.exit_code == ExitCode.DISK_FULL
    assert failure.cause == "the disk filled up during the build"


def test_a_compiler_killed_like_the_oom_killer_does_is_an_out_of_memory_failure(tmp_path: Path) -> None:
    src = tmp_path / "heavy.cpp"
    src.write_text(
        "#include <regex>\n#include <string>\n"
        + "".join(
            f'bool f{i}(const std::string& s) {{ return std::regex_match(s, std::regex("a{i}+")); }}\n'
            for i in range(40)
        )
    )
    proc = subprocess.Popen(
        [_gxx(), "-O2", "-c", str(src), "-o", str(tmp_path / "heavy.o")], stderr=subprocess.PIPE, text=True
    )
    cc1 = None
    deadline = time.monotonic() + 30
    while cc1 is None and time.monotonic() < deadline and proc.poll() is None:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                if "(cc1plus)" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid:
                    cc1 = int(pid)
        time.sleep(0.02)
    if cc1 is None:
        proc.wait()
        pytest.skip("the compile finished before cc1plus could be seen")
    os.kill(cc1, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert "Killed signal terminated program cc1plus" in err
    failure = classify_failure(err)
    assert failure.cause.startswith("the compiler ran out of memory")
    assert "--jobs 1" in failure.fix


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_with_a_compiler_that_does_not_exist_is_a_missing_compiler(tmp_path: Path) -> None:
    (tmp_path / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.18)\nproject(x CXX)\n")
    out = subprocess.run(
        ["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "b"), "-DCMAKE_CXX_COMPILER=/nonexistent/g++"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert classify_failure(out.stdout + out.stderr).cause == "no C++ compiler"


def test_an_unknown_failure_quotes_its_first_error_line() -> None:
    log = "[3/9] Building CXX object a.o\nsrc/a.cpp:1:1: error: 'foo' was not declared in this scope\nmore\n"
    failure = classify_failure(log)
    assert "error: 'foo' was not declared in this scope" in failure.cause
    assert "build log" in failure.fix.lower()


BACKEND = '''
"""A PEP 517 backend that behaves like llama-cpp-python's build as far as setup can see."""
import os, sys, time, zipfile, hashlib, base64

def _emit(line):
    print(line, flush=True)

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    mode = os.environ.get("FAKE_BUILD", "ok")
    with open(os.environ["FAKE_BUILD_PID"], "w") as f:
        f.write(str(os.getpid()))
    for i in range(1, 6):
        _emit(f"[{i}/5] Building CUDA object ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/part{i}.cu.o")
        if mode == "fail" and i == 3:
            _emit("nvcc fatal   : Unsupported gpu architecture 'compute_1'")
            raise SystemExit(1)
        if mode == "hang" and i == 2:
            time.sleep(600)
    name = "llama_cpp_python-0.0.1-py3-none-any.whl"
    body = b"# built\\n"
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        z.writestr("llama_cpp/__init__.py", body)
        info = "llama_cpp_python-0.0.1.dist-info/"
        z.writestr(info + "METADATA", "Metadata-Version: 2.1\\nName: llama-cpp-python\\nVersion: 0.0.1\\n")
        z.writestr(info + "WHEEL", "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n")
        z.writestr(info + "RECORD", f"llama_cpp/__init__.py,sha256={digest},{len(body)}\\n")
    return name
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "llama_cpp_python-0.0.1"
    (src / "backend").mkdir(parents=True)
    (src / "backend" / "fakebuild.py").write_text(BACKEND)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = []
            build-backend = "fakebuild"
            backend-path = ["backend"]

            [project]
            name = "llama-cpp-python"
            version = "0.0.1"
            """
        )
    )
    return src


def _env(tmp_path: Path, mode: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAKE_BUILD=mode, FAKE_BUILD_PID=str(tmp_path / "backend.pid"), UV_OFFLINE="1")
    return env


def test_a_real_uv_build_reports_each_step_and_returns_the_wheel(tmp_path: Path, project: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    seen: list[tuple[int, int, str]] = []
    result = run_build(
        uv_command(),
        project,
        out,
        _env(tmp_path, "ok"),
        tmp_path / "build.log",
        lambda p: seen.append((p.done, p.total, p.target)),
    )
    assert [s[:2] for s in seen] == [(i, 5) for i in range(1, 6)]
    assert seen[-1][2] == "part5.cu.o"
    assert result.wheel == out / "llama_cpp_python-0.0.1-py3-none-any.whl"
    assert result.steps == 5
    assert "[5/5] Building CUDA object" in (tmp_path / "build.log").read_text()


def test_a_failing_build_is_one_error_naming_the_cause_and_the_log(tmp_path: Path, project: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KcudaError) as err:
        run_build(uv_command(), project, out, _env(tmp_path, "fail"), tmp_path / "build.log")
    assert not isinstance(err.value, DiskFullError)
    assert err.value.exit_code == ExitCode.GPU_UNUSABLE
    assert (
        err.value.message
        == "building llama-cpp-python: the build failed: nvcc fatal   : Unsupported gpu architecture 'compute_1'"
    )
    assert err.value.fix is not None and str(tmp_path / "build.log") in err.value.fix
    assert list(out.glob("*.whl")) == []


def _hanging_build(tmp_path: Path, project: Path, out: Path) -> tuple[subprocess.Popen[str], int]:
    """A process running `run_build` on the backend that hangs at step 2: it and the backend's pid, once there."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            from kcuda_validate.engine.build import run_build
            try:
                run_build({uv_command()!r}, Path({str(project)!r}), Path({str(out)!r}), dict(__import__("os").environ),
                          Path({str(tmp_path / "build.log")!r}), lambda p: print(p.done, flush=True))
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(130)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(driver)], env=_env(tmp_path, "hang"), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "1"
    assert proc.stdout.readline().strip() == "2"
    return proc, int((tmp_path / "backend.pid").read_text())


def test_sigint_during_a_real_build_kills_the_whole_build(tmp_path: Path, project: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc, backend_pid = _hanging_build(tmp_path, project, out)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert rest.strip() == "interrupted"
    assert wait_for(lambda: not alive(backend_pid), 10), "the build backend outlived the interrupt"
    assert list(out.glob("*.whl")) == []


def test_a_killed_setup_takes_its_build_with_it(tmp_path: Path, project: Path) -> None:
    """SIGKILL leaves no handler to run: the reaper sees its pipe close and stops the build's whole group."""
    out = tmp_path / "out"
    out.mkdir()
    proc, backend_pid = _hanging_build(tmp_path, project, out)
    proc.kill()
    proc.wait(timeout=10)
    assert wait_for(lambda: not alive(backend_pid), 8), "the build backend outlived its SIGKILLed parent"
    assert list(out.glob("*.whl")) == []
