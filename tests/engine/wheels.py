"""Small real wheels named llama-cpp-python 0.3.36, for install, replace and rollback tests.

Each one is a valid wheel (METADATA, WHEEL, RECORD with hashes) whose `llama_cpp` package says which
build it is, so a fresh process can tell what is installed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest

VERSION = "0.3.36"


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(directory: Path, engine: str, version: str = VERSION, extra: dict[str, str] | None = None) -> Path:
    """A wheel whose `import llama_cpp; llama_cpp.ENGINE` is `engine`."""
    files = {"llama_cpp/__init__.py": f"ENGINE = {engine!r}\n", "llama_cpp/lib/README": f"{engine} build\n"}
    return make_dist_wheel(directory, "llama-cpp-python", version, {**files, **(extra or {})})


def make_dist_wheel(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A valid wheel of distribution `name` holding `files` (path -> text)."""
    directory.mkdir(parents=True, exist_ok=True)
    norm = name.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kcuda-tests\nRoot-Is-Purelib: false\nTag: py3-none-any\n",
    }
    path = directory / f"{norm}-{version}-py3-none-any.whl"
    record = [f"{name},{_hash(text.encode())},{len(text.encode())}" for name, text in files.items()]
    record.append(f"{info}/RECORD,,")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def uv_command() -> list[str]:
    """The uv the tests drive: $UV, one on PATH, or the pip-installed one the README installs."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv:
        return [uv]
    try:
        import uv as uv_module

        return [uv_module.find_uv_bin()]
    except ImportError:
        pytest.skip("no uv here")


def make_sdist(path: Path, top: str = f"llama_cpp_python-{VERSION}") -> Path:
    """A small gzip tar at `path` shaped like an sdist: its entries under `top/` (PKG-INFO, pyproject.toml)."""
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in {"PKG-INFO": f"Name: llama_cpp_python\nVersion: {VERSION}\n", "pyproject.toml": ""}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
