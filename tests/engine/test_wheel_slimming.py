"""The duplicate libraries setup leaves out of the wheels it builds, proven on this machine's real engine.

scikit-build-core writes every library six times into a llama-cpp-python wheel (lib*.so, .so.N and .so.N.M.P, in
llama_cpp/lib/ and again in a top-level lib/): for a CUDA build that is six copies of libggml-cuda. The test
reassembles the installed (CPU) engine's wheel from its RECORD, slims it the way setup does, installs it into an
empty target with real uv and runs a real generation from it in a fresh process.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest
from wheels import uv_command

from kcuda_validate.engine.install import LIB_DIR, STAMP, add_stamp, duplicate_libraries, elf_needed

pytestmark = pytest.mark.slow


def _installed_engine_wheel(directory: Path) -> Path:
    """The installed llama-cpp-python as the wheel it came from: every file its RECORD lists, same names."""
    dist = distribution("llama-cpp-python")
    installer_only = ("INSTALLER", "REQUESTED", "direct_url.json", "uv_build.json", "uv_cache.json")
    files = [f for f in dist.files or () if f.hash is not None and f.name not in installer_only]
    record = next(f for f in dist.files or () if f.name == "RECORD")
    wheel = directory / f"llama_cpp_python-{dist.version}-py3-none-linux_x86_64.whl"
    rows = io.StringIO()
    csv.writer(rows, lineterminator="\n").writerows(
        [
            *([str(f), f"{f.hash.mode}={f.hash.value}" if f.hash else "", str(f.size)] for f in files),
            [str(record), "", ""],
        ]
    )
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for f in files:
            z.writestr(str(f), Path(str(dist.locate_file(f))).read_bytes())
        z.writestr(str(record), rows.getvalue())
    return wheel


def _record(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        return {r[0]: r[1] for r in csv.reader(io.StringIO(z.read(name).decode())) if r}


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], int, int]:
    wheel = _installed_engine_wheel(tmp_path_factory.mktemp("wheel"))
    before = _record(wheel)
    size = wheel.stat().st_size
    left_out = add_stamp(wheel, {"key": "test-slim", "archs": []})
    return wheel, before, size, left_out


def test_elf_needed_reads_the_real_engines_sonames() -> None:
    lib = Path(str(distribution("llama-cpp-python").locate_file(LIB_DIR + "libllama.so")))
    needed = elf_needed(lib.read_bytes())
    assert needed is not None and {"libggml.so.0", "libggml-base.so.0", "libc.so.6"} <= set(needed)
    assert elf_needed(b"not an ELF file at all" * 4) is None
    assert elf_needed(lib.read_bytes()[:200]) is None  # cut short: no section table to read


def test_the_slim_wheel_keeps_what_is_opened_and_needed_and_drops_only_second_copies(
    slimmed: tuple[Path, dict[str, str], int, int],
) -> None:
    wheel, before, size, left_out = slimmed
    after = set(zipfile.ZipFile(wheel).namelist())
    kept_libs = {n for n in after if n.startswith(LIB_DIR) and ".so" in n}
    # Python opens libllama, libggml and libmtmd; libmtmd needs libllama.so.0, libggml.so needs libggml-cpu.so.0
    # and libggml-base.so.0 (and libggml-cuda.so.0 in a CUDA build)
    names = ["libllama.so", "libllama.so.0", "libggml.so", "libggml.so.0", "libggml-base.so.0", "libggml-cpu.so.0"]
    names += ["libmtmd.so"] + (["libggml-cuda.so.0"] if LIB_DIR + "libggml-cuda.so.0" in before else [])
    assert kept_libs == {LIB_DIR + n for n in names}
    with zipfile.ZipFile(wheel) as z:
        contents = {n: z.read(n) for n in after if not n.endswith("RECORD")}
    dropped = set(before) - after
    if LIB_DIR + "libllama.so.0.5.0" in before:  # as scikit-build-core wrote it (an engine setup installed is slim)
        assert dropped and all(n.startswith(("lib/", LIB_DIR)) for n in dropped)
        assert "lib/libllama-common.so.0" in after  # nothing here opens it: left as built, all three names
        assert left_out > 0 and wheel.stat().st_size < size
    else:
        assert (dropped, left_out) == (set(), 0)
    # every file that stays is listed with its true hash, and the stamp is there
    record = _record(wheel)
    assert set(record) == after
    for name, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert record[name] == "sha256=" + digest, name
    assert json.loads(contents[STAMP])["key"] == "test-slim"
    # each dropped file was a second copy of bytes that stay under a name that is opened or needed
    kept_hashes = {record[n] for n in kept_libs}
    assert all(before[n] in kept_hashes for n in dropped)


def test_the_slim_wheel_installs_and_generates_in_a_fresh_process(
    slimmed: tuple[Path, dict[str, str], int, int], tiny_model: Path, tmp_path: Path
) -> None:
    wheel = slimmed[0]
    target = tmp_path / "target"
    subprocess.run(
        [*uv_command(), "pip", "install", "--offline", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    code = (
        "import llama_cpp, json, sys; "
        "llm = llama_cpp.Llama(sys.argv[1], n_ctx=128, verbose=False); "
        "out = llm.create_completion('a', max_tokens=4, temperature=0); "
        "print(json.dumps([llama_cpp.__file__, out['usage']['completion_tokens']]))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, tokens = json.loads(proc.stdout.strip().splitlines()[-1])
    assert where.startswith(str(target)) and tokens > 0


def test_a_library_nothing_reaches_is_never_dropped() -> None:
    record = {LIB_DIR + "libplugin.so": "sha256=a", LIB_DIR + "libplugin.so.0": "sha256=a", "llama_cpp/x.py": "h"}
    assert duplicate_libraries(record, lambda name: b"") == set()
