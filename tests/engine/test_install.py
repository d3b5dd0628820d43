"""Installing an engine into a real environment with the real uv: the swap, uv keeping it afterwards, and the
rollback wheel, all with small real wheels named llama-cpp-python 0.3.36 (tests/engine/wheels.py).

The uv test is the one that decides the design: after `setup`, a plain `uv run` must not put the locked
CPU build back. It builds a real uv project locked against a local index ("old", the CPU build), swaps
"new" in the way setup does, and asks a fresh `uv run` process which build it imports."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from wheels import make_dist_wheel, make_wheel, uv_command

from kcuda_validate.engine import install as inst


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A uv project that depends on llama-cpp-python 0.3.36 from a local index holding only the "old" build."""
    index = tmp_path / "index"
    make_wheel(index, "old")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [project]
            name = "proj"
            version = "0"
            requires-python = ">=3.11"
            dependencies = ["llama-cpp-python==0.3.36"]

            [tool.uv]
            package = false
            find-links = ["{index}"]
            """
        )
    )
    env = _env(tmp_path)
    for args in (["lock"], ["sync", "--locked"]):
        done = subprocess.run(
            [*uv_command(), *args, "--python", sys.executable], cwd=proj, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    return proj


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT"))}
    env.update(UV_OFFLINE="1", UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_NO_PROGRESS="1")
    env.pop("UV_RUN_RECURSION_DEPTH", None)
    return env


def _engine_via_uv_run(proj: Path, tmp_path: Path) -> str:
    done = subprocess.run(
        [*uv_command(), "run", "python", "-c", "import llama_cpp; print(llama_cpp.ENGINE)"],
        cwd=proj,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _site(proj: Path) -> Path:
    (site,) = (proj / ".venv" / "lib").glob("python3*/site-packages")
    return site


def _python(proj: Path) -> str:
    return str(proj / ".venv" / "bin" / "python")


def test_uv_run_keeps_the_engine_setup_swapped_in(project: Path, tmp_path: Path) -> None:
    assert _engine_via_uv_run(project, tmp_path) == "old"
    new = make_wheel(tmp_path / "built", "new")
    inst.swap_in(uv_command(), _python(project), new, _site(project), io.StringIO(), tmp_path / "log")
    info = next(_site(project).glob("llama_cpp_python-*.dist-info"))
    assert not (info / "direct_url.json").exists()
    assert "direct_url.json" not in (info / "RECORD").read_text()
    assert _engine_via_uv_run(project, tmp_path) == "new"
    done = subprocess.run(
        [*uv_command(), "sync", "--locked"], cwd=project, env=_env(tmp_path), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert _engine_via_uv_run(project, tmp_path) == "new"


def test_without_forgetting_the_source_uv_run_puts_the_locked_build_back(project: Path, tmp_path: Path) -> None:
    """Why setup removes direct_url.json: this is what happens if it does not."""
    new = make_wheel(tmp_path / "built", "new")
    log = io.StringIO()
    done = inst.run_uv(
        uv_command(), ["pip", "install", "--python", _python(project), "--no-deps", "--reinstall", str(new)], log
    )
    assert done.returncode == 0, done.stderr
    assert _engine_via_uv_run(project, tmp_path) == "old"


def test_the_repacked_install_is_a_wheel_that_puts_the_previous_build_back(project: Path, tmp_path: Path) -> None:
    site = _site(project)
    backup = inst.repack_installed(site, tmp_path / "backup")
    assert backup is not None and backup.suffix == ".whl"
    new = make_wheel(tmp_path / "built", "new")
    inst.swap_in(uv_command(), _python(project), new, site, io.StringIO(), tmp_path / "log")
    assert _engine_via_uv_run(project, tmp_path) == "new"
    inst.swap_in(uv_command(), _python(project), backup, site, io.StringIO(), tmp_path / "log")
    assert _engine_via_uv_run(project, tmp_path) == "old"
    check = subprocess.run(
        [*uv_command(), "pip", "check", "--python", _python(project)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


# --- the whole install flow: a cached engine, a real environment, a real fresh-process check -------------


def _fresh_engine(python: str, pythonpath: Path | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    code = "import llama_cpp; print(llama_cpp.ENGINE)"
    return subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


CUDART_12 = "nvidia/cuda_runtime/lib/libcudart.so.12"


def _cuda12_runtime_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """NVIDIA's CUDA 12 runtime wheels as small real wheels in a local index, which setup's uv calls use
    offline (the real ones are hundreds of megabytes; their layout is what matters here)."""
    index = tmp_path / "cuda12-index"
    make_dist_wheel(index, "nvidia-cuda-runtime-cu12", "12.4.127", {CUDART_12: "fake libcudart\n"})
    make_dist_wheel(index, "nvidia-cublas-cu12", "12.4.5.8", {"nvidia/cublas/lib/libcublas.so.12": "fake\n"})
    monkeypatch.setenv("UV_FIND_LINKS", str(index))
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))


def _cached_plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    from test_plan import RTX4090_DRIVER_560, facts_for

    from kcuda_validate.engine.plan import SetupOptions, cache_key, make_plan

    _cuda12_runtime_index(monkeypatch, tmp_path)
    key = cache_key("0.3.36", (12, 4), (89,))
    make_wheel(tmp_path / "cache" / "engine" / "wheels" / key, "new")
    facts = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, cached=(key,), compiler=None, uv=tuple(uv_command()))
    plan = make_plan(facts, SetupOptions())
    assert (plan.action, plan.key) == ("install_cached", key)
    assert plan.runtime_packages == ("nvidia-cuda-runtime-cu12>=12.4,<12.5", "nvidia-cublas-cu12>=12.4,<12.5")
    return plan


def _run(plan, project: Path, verify):  # type: ignore[no-untyped-def]
    from kcuda_validate.engine.plan import SetupOptions
    from kcuda_validate.engine.setup import run_setup

    return run_setup(plan, SetupOptions(), python=_python(project), site=_site(project), verify=verify)


def test_a_cached_engine_is_checked_then_installed_and_uv_keeps_it(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _cached_plan(monkeypatch, tmp_path)
    seen: list[str] = []

    def verify(staged: Path | None) -> inst.Verification:
        engine = _fresh_engine(_python(project), staged)
        # A CUDA-12 build loads libcudart.so.12 through $ORIGIN/../../nvidia: the scratch check needs it too.
        cudart = (staged or _site(project)) / CUDART_12
        seen.append(f"{'staged' if staged else 'installed'}:{engine}:{'cudart' if cudart.is_file() else 'no cudart'}")
        return inst.Verification(engine == "new", f"imports the {engine} build")

    result = _run(plan, project, verify)
    assert (result.outcome, result.exit_code, result.rolled_back) == ("installed", 0, False)
    assert seen == ["staged:new:cudart", "installed:new:cudart"]
    assert _engine_via_uv_run(project, tmp_path) == "new"
    assert (_site(project) / CUDART_12).is_file(), "uv run removed the CUDA 12 runtime"
    # What README and specs say of a plain `uv sync`: exact by default, it keeps the engine but removes the
    # runtime packages setup added (detect then names `setup`, which puts them back from the cache).
    done = subprocess.run(
        [*uv_command(), "sync", "--locked"], cwd=project, env=_env(tmp_path), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert _engine_via_uv_run(project, tmp_path) == "new"
    assert not (_site(project) / CUDART_12).exists()
    assert not list((tmp_path / "cache" / "engine" / "tmp").iterdir()), "scratch left behind"


def test_an_installed_build_that_fails_its_check_is_rolled_back(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _cached_plan(monkeypatch, tmp_path)

    def verify(staged: Path | None) -> inst.Verification:
        engine = _fresh_engine(_python(project), staged)
        return inst.Verification(staged is not None, f"imports the {engine} build")

    result = _run(plan, project, verify)
    assert (result.outcome, result.rolled_back) == ("failed", True)
    assert (
        result.error == "the installed build failed its check: imports the new build; the previous engine was put back"
    )
    assert _fresh_engine(_python(project), None) == "old"
    assert _engine_via_uv_run(project, tmp_path) == "old"


def test_a_build_that_fails_in_the_scratch_directory_never_touches_the_environment(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _cached_plan(monkeypatch, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in (_site(project) / "llama_cpp").iterdir()}

    def verify(staged: Path | None) -> inst.Verification:
        assert staged is not None, "an unverified build was installed"
        return inst.Verification(False, "libllama does not load: undefined symbol: cuMemCreate")

    result = _run(plan, project, verify)
    assert result.outcome == "failed"
    assert result.error == (
        "the new build does not work here: libllama does not load: undefined symbol: cuMemCreate; "
        "the previous engine is unchanged"
    )
    assert {p.name: p.stat().st_mtime_ns for p in (_site(project) / "llama_cpp").iterdir()} == before


def test_the_build_refuses_a_bad_sdist_as_the_plan_did(tmp_path: Path) -> None:
    """fetch_sdist is where a real run takes --sdist: the same usage error as the CLI's check, not exit 4 later."""
    from kcuda_validate.errors import ExitCode, UsageError

    locked = inst.LockedLlama("0.3.36", None, None)
    given = tmp_path / "model.gguf"
    given.write_bytes(b"GGUF")
    with pytest.raises(UsageError) as caught:
        inst.fetch_sdist(tmp_path / "cache", locked, given)
    assert caught.value.exit_code == ExitCode.USAGE
    assert (
        caught.value.message
        == f"--sdist {given}: not a llama-cpp-python sdist (its name is not llama_cpp_python-0.3.36.tar.gz)"
    )
    assert not (tmp_path / "cache").exists()  # nothing downloaded instead


def test_a_good_sdist_is_judged_by_its_first_header_only_and_given_back_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded: an archive cut short after its first entries still passes (reading it all would fail)."""
    import tarfile

    path = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("PKG-INFO", b"Version: 0.3.36\n"), ("vendor/blob", os.urandom(2 << 20))):
            info = tarfile.TarInfo(f"llama_cpp_python-0.3.36/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "r+b") as fh:
        fh.truncate(1 << 20)
    with pytest.raises((EOFError, tarfile.ReadError)), tarfile.open(path, "r:gz") as whole:
        whole.getmembers()
    monkeypatch.chdir(tmp_path)
    locked = inst.LockedLlama("0.3.36", None, None)
    got = inst.fetch_sdist(tmp_path / "cache", locked, Path(path.name))
    assert got == path and got.is_absolute()


def test_the_engine_records_whether_it_was_built_from_the_locked_sdist(tmp_path: Path) -> None:
    """A --sdist is taken as given (a trimmed one for an offline box cannot match uv.lock): recorded, not enforced."""
    import hashlib

    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    sdist.write_bytes(b"not really a tarball, but bytes to hash")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()

    same = inst.sdist_origin(sdist, inst.LockedLlama("0.3.36", None, digest))
    other = inst.sdist_origin(sdist, inst.LockedLlama("0.3.36", None, "0" * 64))
    unknown = inst.sdist_origin(sdist, inst.LockedLlama("0.3.36", None, None))

    assert same == {"file": sdist.name, "sha256": digest, "locked": True}
    assert (other["locked"], unknown["locked"]) == (False, None)
    assert inst.origin_line(same) == f"built from {sdist.name} (sha256 {digest[:12]}…, the sdist uv.lock names)"
    assert inst.origin_line(other) == (
        f"built from {sdist.name} (sha256 {digest[:12]}…, not the sdist uv.lock names (a trimmed or rebuilt one))"
    )
    assert inst.origin_line(unknown).endswith(", uv.lock names no sha256)")


def test_the_locked_sdist_hash_is_the_one_in_uv_lock() -> None:
    """What `locked` is compared with: uv.lock's own sdist entry for llama-cpp-python."""
    import tomllib

    lock = tomllib.loads((Path(__file__).parents[2] / "uv.lock").read_text())
    (pkg,) = [p for p in lock["package"] if p["name"] == "llama-cpp-python"]
    locked = inst.locked_llama()
    assert (locked.version, f"sha256:{locked.sha256}") == (pkg["version"], pkg["sdist"]["hash"])
