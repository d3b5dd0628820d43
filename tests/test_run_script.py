"""`./run`, the README's entry point on a fresh machine: real processes with PATHs that lack what a fresh box lacks
(uv, pip, curl, a C++ compiler). Each failure is one Error line and one Fix line, exit 70, before uv spends minutes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "run"


def _uv_binary() -> str:
    """The uv running this suite (`uv run` sets UV), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.skip("no uv binary to put on the test PATH (run the suite with `./run pytest` or `uv run pytest`)")
    return found


def _bare_bin(tmp_path: Path, **tools: str) -> Path:
    """A PATH directory holding only the named tools (name -> real program)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in tools.items():
        (bin_dir / name).symlink_to(target)
    return bin_dir


def _run(args: list[str], path: Path, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(args[0]), *args[1:]],
        env={"PATH": str(path), "HOME": str(home)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _project_copy(tmp_path: Path) -> Path:
    """The script with the project files it needs, and no environment built yet (a fresh clone)."""
    project = tmp_path / "clone"
    project.mkdir()
    for name in ("run", "pyproject.toml", "uv.lock"):
        shutil.copy2(REPO / name, project / name)
    return project


def test_runs_the_command_with_uv_in_this_project(tmp_path: Path) -> None:
    bin_dir = _bare_bin(tmp_path, uv=_uv_binary())
    done = _run([str(RUN), "python", "-c", "import sys; print(sys.prefix)"], bin_dir, tmp_path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == REPO / ".venv"


def test_without_uv_pip_curl_or_wget_it_says_how_to_get_uv(tmp_path: Path) -> None:
    project = _project_copy(tmp_path)
    done = _run([str(project / "run"), "pytest"], _bare_bin(tmp_path), tmp_path / "home", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (70, "")
    assert done.stderr.splitlines() == [
        "Error: uv is not installed, and there is neither a pip that may install it nor curl or wget to fetch it",
        "Fix: Install uv (https://docs.astral.sh/uv/getting-started/installation/), or curl (sudo apt install curl),"
        " then run this again.",
    ]


def test_a_fresh_clone_without_a_compiler_is_told_before_uv_builds(tmp_path: Path) -> None:
    project = _project_copy(tmp_path)
    done = _run([str(project / "run"), "pytest"], _bare_bin(tmp_path, uv=_uv_binary()), tmp_path, cwd=project)
    assert (done.returncode, done.stdout) == (70, "")
    assert done.stderr.splitlines() == [
        "Error: no C++ compiler: the first run builds llama-cpp-python from source",
        "Fix: Install one (Debian/Ubuntu: sudo apt install build-essential; Fedora: sudo dnf install gcc-c++),"
        " then run this again.",
    ]
    assert not (project / ".venv").exists(), "uv ran anyway"


def test_no_command_is_a_one_line_error(tmp_path: Path) -> None:
    done = _run([str(RUN)], _bare_bin(tmp_path, uv=_uv_binary()), tmp_path, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        70,
        "Error: no command to run\nFix: Name one: ./run kcuda-validate validate-all --setup, or ./run pytest.\n",
    )


def test_it_is_posix_sh_and_executable() -> None:
    assert subprocess.run(["sh", "-n", str(RUN)], check=False).returncode == 0
    assert os.stat(RUN).st_mode & 0o111


def test_it_installs_the_uv_that_ci_pins() -> None:
    (pinned,) = re.findall(r'"uv==([0-9.]+)"', (REPO / ".ci" / "run").read_text())
    assert re.search(rf"^UV_VERSION={re.escape(pinned)}\b", RUN.read_text(), re.M)
