"""`kcuda-validate setup` and `validate-all --setup` through the real CLI on hardware scenarios: the plan as
JSON that the report schema accepts, and the documented exit codes when there is nothing to build for."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from fakes.hardware import Installed
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "specs" / "report.schema.json").read_text())


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KCUDA_CACHE_DIR", str(cache))
    return cache


@pytest.mark.parametrize("scenario", ["llama_cpu_only_with_gpu"], indirect=True)
def test_dry_run_json_is_a_schema_valid_plan_and_changes_nothing(scenario: Installed, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["setup", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["command"] == "setup"
    plan = doc["sections"]["setup"]["plan"]
    gpu = scenario.scenario.gpus[0]
    want = f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    assert plan["archs"] == [want]
    assert doc["sections"]["setup"]["outcome"] == "dry_run"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_setup_without_a_gpu_or_arch_is_exit_3_naming_arch(scenario: Installed) -> None:
    result = CliRunner().invoke(cli, ["setup"])
    assert result.exit_code == ExitCode.NO_GPU, result.output
    assert "--arch" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_validate_all_setup_without_a_gpu_skips_setup_and_exits_3(scenario: Installed) -> None:
    result = CliRunner().invoke(cli, ["validate-all", "--setup", "--json", "--synthetic", "1GiB"])
    assert result.exit_code == ExitCode.NO_GPU, result.output
    doc = json.loads(result.stdout)
    setup = [c for c in doc["checks"] if c["stage"] == "setup"]
    assert setup and all(c["status"] == "skip" for c in setup)


@pytest.mark.parametrize("value", ["abc", "9.x", "0"])
def test_a_bad_arch_is_a_one_line_usage_error(value: str) -> None:
    result = CliRunner().invoke(cli, ["setup", "--dry-run", "--arch", value])
    assert result.exit_code == ExitCode.USAGE
    assert value in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("scenario", ["llama_cpu_only_with_gpu"], indirect=True)
def test_validate_all_setup_passes_toolkit_through_to_the_plan(scenario: Installed) -> None:
    """The scenario's driver supports CUDA 12.4: a system toolkit, if any, is CUDA 13.0 here or absent, so forcing
    `system` is refused by the plan (exit 4) before anything is built, and the run stops at setup."""
    args = ["validate-all", "--setup", "--toolkit", "system", "--json", "--synthetic", "1GiB"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == ExitCode.GPU_UNUSABLE, result.output
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["stopped_at"] == "setup"
    assert doc["sections"]["setup"]["outcome"] == "refused"
    (failed,) = [c for c in doc["checks"] if c["status"] == "fail"]
    assert failed["stage"] == "setup" and failed["summary"].startswith("--toolkit system: ")
    assert [c["stage"] for c in doc["checks"]] == ["setup"]  # no worker, no model


def test_validate_all_toolkit_without_setup_is_a_one_line_usage_error() -> None:
    result = CliRunner().invoke(cli, ["validate-all", "--toolkit", "pypi", "--synthetic", "1GiB"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.output == (
        "Error: --toolkit: only means something with --setup\n"
        "Fix: Add --setup, or run `kcuda-validate setup --toolkit pypi` first.\n"
    )


# --- setup --wheel: a wheel `setup --wheel-dir` wrote on another machine ---------------------------------------

STAMP = "llama_cpp/lib/kcuda_engine.json"


def _stamped(directory: Path, key: str) -> Path:
    """A small real wheel carrying setup's stamp for `key`, as `setup --wheel-dir` writes it."""
    from wheels import make_wheel

    return make_wheel(directory, "carried", extra={STAMP: json.dumps({"key": key, "archs": []})})


@pytest.mark.parametrize("scenario", ["llama_cpu_only_with_gpu"], indirect=True)
def test_a_carried_wheel_that_fits_is_planned_as_an_install_and_a_dry_run_copies_nothing(
    scenario: Installed, tmp_path: Path
) -> None:
    """The scenario's RTX 4090 (sm_89) on a driver for CUDA 12.4: a wheel built for exactly that fits."""
    wheel = _stamped(tmp_path / "carried", "llama-cpp-python-0.3.36-cuda12.4-sm89")
    result = CliRunner().invoke(cli, ["setup", "--wheel", str(wheel), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["sections"]["setup"]["plan"]
    assert (plan["action"], plan["key"]) == ("install_cached", "llama-cpp-python-0.3.36-cuda12.4-sm89")
    assert not (tmp_path / "cache").exists()  # a dry run changes nothing (KCUDA_CACHE_DIR, from _cache)


@pytest.mark.parametrize("scenario", ["llama_cpu_only_with_gpu"], indirect=True)
def test_a_carried_wheel_for_other_gpus_is_refused_naming_both_and_is_never_a_build(
    scenario: Installed, tmp_path: Path
) -> None:
    wheel = _stamped(tmp_path / "carried", "llama-cpp-python-0.3.36-cuda13.0-sm90")
    result = CliRunner().invoke(cli, ["setup", "--wheel", str(wheel), "--dry-run", "--json"])
    assert result.exit_code == ExitCode.GPU_UNUSABLE, result.output
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    (check,) = doc["checks"]
    assert check["status"] == "fail"
    assert check["summary"].startswith("--wheel: built for sm_90 with CUDA 13.0; this machine needs sm_89 and CUDA 12.")
    assert doc["sections"]["setup"]["plan"]["action"] == "refused"


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_a_carried_wheel_without_a_gpu_says_there_is_nothing_to_install_it_for(
    scenario: Installed, tmp_path: Path
) -> None:
    """Not the build's words ("nothing to build for", "pass --arch"): --wheel installs, it never builds."""
    wheel = _stamped(tmp_path / "carried", "llama-cpp-python-0.3.36-cuda13.0-sm90")
    result = CliRunner().invoke(cli, ["setup", "--wheel", str(wheel), "--dry-run"])
    assert result.exit_code == ExitCode.NO_GPU, result.output
    lines = result.stdout.splitlines()
    assert "Action: refused (no NVIDIA GPU to install it for)" in lines
    fail = next(line for line in lines if line.startswith("FAIL CUDA engine"))
    assert fail.startswith("FAIL CUDA engine (llama-cpp-python): --wheel: built for sm_90 with CUDA 13.0; no NVIDIA")
    assert fail.endswith(") to install it for")
    assert lines[lines.index(fail) + 1] == (
        "     fix: Install the NVIDIA driver (`kcuda-validate detect` says how); in an image build without a GPU, "
        "`uv pip install --no-deps` the wheel (setup checks it on a GPU)."
    )
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("plain.whl", None, "not a wheel setup built (no llama_cpp/lib/kcuda_engine.json)"),
        ("junk.whl", b"not a zip", "not a readable wheel (File is not a zip file)"),
        ("engine.tar.gz", b"", "not a wheel file (*.whl)"),
        ("old.whl", "llama-cpp-python-0.3.20-cuda12.4-sm89", "built from llama-cpp-python 0.3.20, this environment"),
        ("nokey.whl", "", "its llama_cpp/lib/kcuda_engine.json names no build"),
    ],
    ids=["no-stamp", "not-a-zip", "not-whl", "other-version", "no-key"],
)
def test_a_wheel_setup_cannot_use_is_a_one_line_usage_error(
    tmp_path: Path, name: str, content: bytes | str | None, message: str
) -> None:
    from wheels import make_wheel

    if content is None:
        path = make_wheel(tmp_path / "w", "plain")
    elif isinstance(content, bytes):
        path = tmp_path / name
        path.write_bytes(content)
    else:
        path = _stamped(tmp_path / "w", content)
    target = tmp_path / name
    if path != target:
        path.rename(target)
    result = CliRunner().invoke(cli, ["setup", "--wheel", str(target), "--dry-run"])
    assert result.exit_code == ExitCode.USAGE, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"Error: --wheel {target}: ") and message in first, first
    assert "Traceback" not in result.output


def test_wheel_with_force_is_a_usage_error(tmp_path: Path) -> None:
    wheel = _stamped(tmp_path, "llama-cpp-python-0.3.36-cuda12.4-sm89")
    result = CliRunner().invoke(cli, ["setup", "--wheel", str(wheel), "--force"])
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith("Error: --wheel: installs a built wheel; --force and --sdist (they build) do not")


def test_import_wheel_puts_it_under_the_key_its_stamp_names(tmp_path: Path) -> None:
    from kcuda_validate.engine.install import cached_keys, cached_wheel
    from kcuda_validate.engine.setup import import_wheel

    wheel = _stamped(tmp_path / "carried", "llama-cpp-python-0.3.36-cuda13.0-sm80-sm90")
    cache = tmp_path / "cache"
    assert import_wheel(wheel, cache, "0.3.36") == "llama-cpp-python-0.3.36-cuda13.0-sm80-sm90"
    assert cached_keys(cache) == ("llama-cpp-python-0.3.36-cuda13.0-sm80-sm90",)
    kept = cached_wheel(cache, "llama-cpp-python-0.3.36-cuda13.0-sm80-sm90")
    assert kept is not None and kept.read_bytes() == wheel.read_bytes()
    assert [p.name for p in kept.parent.iterdir()] == [wheel.name]  # no temporary file left


# --- setup --sdist, --cuda: bad input is a one-line usage error, the same in a dry run and a real one ----------

SDIST_FIX = (
    "Fix: Pass the llama-cpp-python 0.3.36 sdist (llama_cpp_python-0.3.36.tar.gz from PyPI), or leave out --sdist "
    "to download it.\n"
)


def _bad_sdist(tmp_path: Path, kind: str) -> Path:
    import gzip

    from wheels import make_sdist

    right = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    if kind == "empty":
        return tmp_path  # not used: the value passed is ""
    if kind == "missing":
        return right
    if kind == "directory":
        right.mkdir()
        return right
    if kind == "device":
        return Path("/dev/null")
    if kind == "gguf":
        (tmp_path / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
        return tmp_path / "model.gguf"
    if kind == "other-version":
        return make_sdist(tmp_path / "llama_cpp_python-0.3.20.tar.gz", top="llama_cpp_python-0.3.20")
    if kind == "not-gzip":
        right.write_bytes(b"not a gzip file at all")
    elif kind == "gzip-not-tar":
        right.write_bytes(gzip.compress(b"x" * 1024))
    elif kind == "empty-tar":
        right.write_bytes(gzip.compress(b"\0" * 2048))
    elif kind == "other-project":
        make_sdist(right, top="other_project-1.0")
    return right


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("empty", "an empty path names no file"),
        ("missing", "no such file"),
        ("directory", "a directory"),
        ("device", "not a regular file"),
        ("gguf", "not a llama-cpp-python sdist (its name is not llama_cpp_python-0.3.36.tar.gz)"),
        ("other-version", "llama-cpp-python 0.3.20, this environment locks 0.3.36"),
        ("not-gzip", "not a readable gzip tar (not a gzip file)"),
        ("gzip-not-tar", "not a readable gzip tar (invalid header)"),
        ("empty-tar", "not a llama-cpp-python sdist (the archive holds nothing)"),
        (
            "other-project",
            "not a llama-cpp-python sdist (the archive holds other_project-1.0/PKG-INFO, not llama_cpp_python-0.3.36/)",
        ),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real"])
@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_an_sdist_setup_cannot_build_is_a_usage_error_before_anything_runs(
    scenario: Installed, tmp_path: Path, kind: str, why: str, dry_run: bool
) -> None:
    """The real run has no --arch: were the file let through, the plan would refuse (no GPU), never build."""
    sdist = _bad_sdist(tmp_path, kind)
    value = "" if kind == "empty" else str(sdist)
    args = ["setup", "--dry-run", "--arch", "8.9"] if dry_run else ["setup"]
    result = CliRunner().invoke(cli, [*args, "--sdist", value])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stdout == ""
    assert result.stderr == f"Error: --sdist {value or repr(value)}: {why}\n" + SDIST_FIX
    assert not (tmp_path / "cache").exists()


def test_a_given_sdist_travels_to_the_plan_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build runs in a scratch directory: a relative --sdist must not reach it as given."""
    from wheels import make_sdist

    from kcuda_validate.cli._setup_step import setup_options_from

    make_sdist(tmp_path / "llama_cpp_python-0.3.36.tar.gz")
    monkeypatch.chdir(tmp_path)
    opts = setup_options_from({"sdist": Path("llama_cpp_python-0.3.36.tar.gz")})
    assert opts.sdist == tmp_path / "llama_cpp_python-0.3.36.tar.gz"


@pytest.mark.parametrize(
    ("value", "lines"),
    [
        (
            "13.2.1",
            "Error: --cuda 13.2.1: not MAJOR.MINOR (a driver's CUDA version has no patch level)\n"
            "Fix: Pass --cuda 13.2.\n",
        ),
        (
            "12",
            "Error: --cuda 12: not a CUDA version as MAJOR.MINOR\n"
            "Fix: Pass the newest CUDA the target driver supports, e.g. --cuda 12.8 (`nvidia-smi` on that machine "
            "shows it).\n",
        ),
        (
            "cu128",
            "Error: --cuda cu128: not a CUDA version as MAJOR.MINOR\n"
            "Fix: Pass the newest CUDA the target driver supports, e.g. --cuda 12.8 (`nvidia-smi` on that machine "
            "shows it).\n",
        ),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real"])
@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_a_cuda_that_is_not_major_minor_is_a_usage_error(
    scenario: Installed, value: str, lines: str, dry_run: bool
) -> None:
    args = ["setup", "--dry-run", "--arch", "8.9"] if dry_run else ["setup"]
    result = CliRunner().invoke(cli, [*args, "--cuda", value])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stdout == ""
    assert result.stderr == lines


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_a_cuda_too_old_for_the_archs_names_cuda_not_the_driver_and_exits_4(scenario: Installed) -> None:
    result = CliRunner().invoke(cli, ["setup", "--dry-run", "--arch", "8.9", "--cuda", "11.8"])
    assert result.exit_code == ExitCode.GPU_UNUSABLE, result.output
    lines = result.stdout.splitlines()
    assert "Usable CUDA: none (needs ≥ 12.0, at most 11.8 allowed)" in lines
    fail = lines.index(
        "FAIL CUDA engine (llama-cpp-python): --cuda 11.8: no toolkit fits; the oldest CUDA setup supports for sm_89 "
        "is 12.0"
    )
    assert lines[fail + 1] == (
        "     fix: Pass --cuda 12.0 or newer, the newest CUDA the target driver supports (`nvidia-smi` on that machine "
        "shows it); a driver older than CUDA 12.0 needs an update first."
    )
    assert "driver" not in lines[fail]
    # No GPU here: the verdict does not claim one ("GPU present but the stack cannot use it").
    assert lines[-1] == "FAILED: no CUDA engine could be made (exit 4)"


# --- setup --wheel-dir: checked before any work; the copy is atomic and a failed one is the error, not exit 70 ----

WHEEL_DIR_FIX = (
    "Fix: Pass a directory you can write to (or a new one inside such a directory), or leave --wheel-dir out.\n"
)


def _bad_wheel_dir(tmp_path: Path, kind: str) -> tuple[Path, str, str]:
    """A --wheel-dir that cannot be used, the end of its Error: line, and its Fix: line."""
    if kind == "file":
        (tmp_path / "wheels").write_text("not a directory\n")
        return tmp_path / "wheels", "is a regular file, not a directory", WHEEL_DIR_FIX
    if kind == "file-above":
        (tmp_path / "wheels").write_text("not a directory\n")
        why = f"{tmp_path / 'wheels'} is a regular file, not a directory"
        return tmp_path / "wheels" / "cuda" / "x86_64", why, WHEEL_DIR_FIX
    if kind == "dangling":
        (tmp_path / "wheels").symlink_to(tmp_path / "gone")
        why = f"{tmp_path / 'wheels'} is a symlink to {tmp_path / 'gone'}, which does not exist"
        return tmp_path / "wheels" / "new", why, WHEEL_DIR_FIX
    if kind == "device":
        return Path("/dev/null"), "is a character device, not a directory", WHEEL_DIR_FIX
    if kind == "long-name":
        why = f"the directory name {'d' * 40}… is 300 bytes, more than this filesystem allows"
        return tmp_path / ("d" * 300), why, "Fix: Pass a shorter directory name.\n"
    assert kind == "proc"  # the reviewer's: a filesystem where nothing can be made
    return Path("/proc/x"), "cannot write in /proc (No such file or directory)", WHEEL_DIR_FIX


@pytest.mark.parametrize("kind", ["file", "file-above", "dangling", "device", "long-name", "proc"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real"])
@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_a_wheel_dir_that_cannot_be_written_is_a_usage_error_before_anything_runs(
    scenario: Installed, tmp_path: Path, kind: str, dry_run: bool
) -> None:
    """Found before the plan, a dry run's included: a real run used to find it only after a build of 15 minutes
    (exit 70, `FileNotFoundError`, no --report). The real run has no --arch: were it let through, it would stop
    at the plan (no GPU, exit 3), never build."""
    wheel_dir, why, fix = _bad_wheel_dir(tmp_path, kind)
    report = tmp_path / "report.json"
    args = ["setup", "--dry-run", "--arch", "80", "--cuda", "12.4"] if dry_run else ["setup"]
    result = CliRunner().invoke(cli, [*args, "--wheel-dir", str(wheel_dir), "--report", str(report)])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stdout == ""
    assert result.stderr == f"Error: --wheel-dir {wheel_dir}: {why}\n" + fix
    assert not report.exists()  # a usage error writes no report
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("scenario", ["no_driver"], indirect=True)
def test_a_dry_run_with_a_new_wheel_dir_makes_nothing(scenario: Installed, tmp_path: Path) -> None:
    """A missing directory is fine (made when the wheel is copied): the probe ran in the nearest existing one."""
    wheel_dir = tmp_path / "out" / "wheels"
    result = CliRunner().invoke(
        cli, ["setup", "--dry-run", "--arch", "80", "--cuda", "12.4", "--wheel-dir", str(wheel_dir)]
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".kcuda-validate-probe.*"))
    assert not (tmp_path / "cache").exists()


def test_the_wheel_is_copied_whole_under_its_name_and_no_temporary_file_stays(tmp_path: Path) -> None:
    from wheels import make_wheel

    from kcuda_validate.cli.setup import copy_into

    wheel = make_wheel(tmp_path / "cache", "built")
    target = tmp_path / "out" / "wheels"
    assert copy_into(wheel, target) == target / wheel.name
    assert [p.name for p in target.iterdir()] == [wheel.name]
    assert (target / wheel.name).read_bytes() == wheel.read_bytes()
    # Again over an older copy: replaced whole, in one rename.
    (target / wheel.name).write_bytes(b"an older, shorter wheel")
    copy_into(wheel, target)
    assert [p.name for p in target.iterdir()] == [wheel.name]
    assert (target / wheel.name).read_bytes() == wheel.read_bytes()


def test_a_copy_that_fails_leaves_neither_a_temporary_file_nor_the_directories_it_made(tmp_path: Path) -> None:
    from kcuda_validate.cli.setup import copy_into

    target = tmp_path / "out" / "wheels"
    with pytest.raises(FileNotFoundError):
        copy_into(tmp_path / "gone.whl", target)  # the cached wheel vanished under us
    assert not (tmp_path / "out").exists()
    (target / "w.whl" / "in-the-way").mkdir(parents=True)  # a directory where the wheel goes: the rename fails
    (tmp_path / "w.whl").write_bytes(b"PK")
    with pytest.raises(IsADirectoryError):
        copy_into(tmp_path / "w.whl", target)
    assert [p.name for p in target.iterdir()] == ["w.whl"]
    assert [p.name for p in (target / "w.whl").iterdir()] == ["in-the-way"]


@pytest.fixture
def h100_cuda13(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Installed:
    """A machine whose cached engine is installed with no runtime packages (CUDA 13 loads the environment's own)."""
    from dataclasses import replace

    from fakes.hardware import H100_80GB, SCENARIOS, LibcudaSpec, install

    base = SCENARIOS["llama_cpu_only_with_gpu"]
    machine = replace(
        base,
        name="h100_cuda13_cpu_engine",
        description="H100, driver 580 (CUDA 13.0), llama-cpp-python a CPU build: a cached CUDA 13 wheel fits",
        gpus=(H100_80GB,),
        driver_version="580.65.06",
        cuda_driver_version=13000,
        libcuda=LibcudaSpec(driver_version=13000),
    )
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    return install(machine, monkeypatch, tmp_path)


def test_a_real_setup_copies_the_wheel_whole_into_a_new_wheel_dir(h100_cuda13: Installed, tmp_path: Path) -> None:
    """The whole command on a cached wheel (a small real one): setup checks it in a fresh process from a scratch
    directory, where it does not load (it is no llama.cpp build), so it stops there with exit 4 and the
    environment untouched; the wheel is still copied, whole, under its name, with no temporary file beside it."""
    from wheels import make_wheel

    from kcuda_validate.engine.plan import cache_key

    key = cache_key("0.3.36", (13, 0), (90,))
    wheel = make_wheel(tmp_path / "cache" / "engine" / "wheels" / key, "carried")  # KCUDA_CACHE_DIR (_cache)
    wheel_dir, report = tmp_path / "out" / "wheels", tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["setup", "--wheel-dir", str(wheel_dir), "--report", str(report)])
    assert result.exit_code == ExitCode.GPU_UNUSABLE, result.output
    doc = json.loads(report.read_text())
    assert (doc["sections"]["setup"]["plan"]["action"], doc["sections"]["setup"]["outcome"]) == (
        "install_cached",
        "failed",
    )
    assert "Error:" not in result.stderr  # the run's failure is its check's; the copy went well
    assert [p.name for p in wheel_dir.iterdir()] == [wheel.name]
    assert (wheel_dir / wheel.name).read_bytes() == wheel.read_bytes()


def test_a_copy_that_fails_at_the_end_is_one_error_with_the_run_s_code_and_the_report_is_written(
    h100_cuda13: Installed, tmp_path: Path
) -> None:
    """The directory passed the check, then the copy fails (a directory stands where the wheel goes): one
    `Error:` line naming --wheel-dir and why, the run's own exit code (4), the --report file written, and
    nothing half-copied left."""
    from wheels import make_wheel

    from kcuda_validate.engine.plan import cache_key

    key = cache_key("0.3.36", (13, 0), (90,))
    wheel = make_wheel(tmp_path / "cache" / "engine" / "wheels" / key, "carried")  # KCUDA_CACHE_DIR (_cache)
    wheel_dir, report = tmp_path / "wheels", tmp_path / "report.json"
    (wheel_dir / wheel.name / "in-the-way").mkdir(parents=True)
    result = CliRunner().invoke(cli, ["setup", "--wheel-dir", str(wheel_dir), "--report", str(report)])
    assert result.exit_code == ExitCode.GPU_UNUSABLE, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith(("Error:", "Fix:"))]
    assert errors[-2:] == [
        f"Error: --wheel-dir {wheel_dir}: the wheel could not be copied there (Is a directory); the result above "
        "stands",
        WHEEL_DIR_FIX.rstrip("\n"),
    ]
    assert json.loads(report.read_text())["sections"]["setup"]["outcome"] == "failed"
    assert [p.name for p in wheel_dir.iterdir()] == [wheel.name]
    assert [p.name for p in (wheel_dir / wheel.name).iterdir()] == ["in-the-way"]
