"""CUDA toolkits: a system one (PATH, CUDA_HOME, /usr/local/cuda*) or NVIDIA's wheels from the package index.

A toolkit newer than the driver builds a library that fails at run time ("CUDA driver version is
insufficient"), and nvcc refuses host compilers newer than it knows, so both are judged before a build.
The wheels (`nvidia-cuda-nvcc`, `-crt`, `-nvvm`, `-cccl`, `-runtime`, `-cublas`; `-cu12` names for CUDA 12)
install without root into the tool's cache; `assemble_root` merges them, or a system nvcc with the
environment's cuBLAS, into the one directory layout nvcc and CMake expect.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# CUDA minors published on the package index as nvidia-cuda-nvcc (13) and nvidia-cuda-nvcc-cu12 (12).
PYPI_MINORS: dict[int, tuple[int, ...]] = {12: (0, 1, 2, 3, 4, 5, 6, 8, 9), 13: (0, 1, 2, 3, 4, 5)}

# Newest host-compiler major nvcc accepts, per CUDA version (NVIDIA's CUDA installation guide for Linux).
# A wrong entry is caught anyway: nvcc's own "unsupported GNU version" is classified by build.classify_failure.
GCC_MAX: dict[tuple[int, int], int] = {
    (12, 0): 12,
    (12, 1): 12,
    (12, 2): 12,
    (12, 3): 12,
    (12, 4): 13,
    (12, 5): 13,
    (12, 6): 13,
    (12, 8): 14,
    (12, 9): 14,
    (13, 0): 15,
}
CLANG_MAX: dict[tuple[int, int], int] = {
    (12, 0): 14,
    (12, 1): 15,
    (12, 2): 15,
    (12, 3): 16,
    (12, 4): 17,
    (12, 5): 17,
    (12, 6): 18,
    (12, 8): 19,
    (12, 9): 19,
    (13, 0): 20,
}


def cuda_tuple(text: str | None) -> tuple[int, int] | None:
    """ "12.6" -> (12, 6); None for anything else."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)*\s*", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_text(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def min_cuda_for_arch(cc: tuple[int, int]) -> tuple[int, int]:
    """The oldest CUDA that can compile native code for compute capability `cc`."""
    if cc >= (12, 1) or cc == (10, 3):
        return (12, 9)
    if cc >= (10, 0):
        return (12, 8) if cc != (11, 0) else (13, 0)
    if cc >= (8, 9):
        return (11, 8)
    return (11, 0)


def max_cuda_for_arch(cc: tuple[int, int]) -> tuple[int, int] | None:
    """The newest CUDA that still targets `cc` (CUDA 13 dropped Maxwell, Pascal and Volta); None = any."""
    return (12, 9) if cc < (7, 5) else None


def host_compiler_max(cuda: tuple[int, int], kind: str) -> int | None:
    """Newest host-compiler major for `cuda`; later minors of a major inherit the last known entry."""
    table = GCC_MAX if kind == "gcc" else CLANG_MAX
    known = [k for k in table if k[0] == cuda[0] and k <= cuda]
    return table[max(known)] if known else None


# --- host compiler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostCompiler:
    path: str
    kind: str  # gcc | clang
    version: str
    major: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "version": self.version}


def parse_compiler_version(text: str) -> tuple[str, str] | None:
    """(kind, version) from `c++ --version`'s first line."""
    first = (text.strip().splitlines() or [""])[0]
    m = re.search(r"clang version (\d+\.\d+(?:\.\d+)?)", first)
    if m:
        return "clang", m.group(1)
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)\s*$", first)  # GCC ends its first line with the version
    if m and ("Free Software Foundation" in text or re.search(r"\b(g\+\+|gcc|c\+\+)", first)):
        return "gcc", m.group(1)
    return None


def find_host_compiler(environ: Mapping[str, str]) -> HostCompiler | None:
    """The C++ compiler CMake and nvcc will use: $CUDAHOSTCXX, $CXX, else c++/g++/clang++ on PATH."""
    for candidate in (environ.get("CUDAHOSTCXX"), environ.get("CXX"), "c++", "g++", "clang++"):
        if not candidate:
            continue
        path = shutil.which(candidate, path=environ.get("PATH"))
        if path is None:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        parsed = parse_compiler_version(out)
        if parsed:
            return HostCompiler(path, parsed[0], parsed[1], int(parsed[1].split(".")[0]))
    return None


# --- system toolkits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemToolkit:
    prefix: Path
    version: str  # "13.0"
    found_by: str  # "PATH" | "CUDA_HOME" | "/usr/local/cuda-12.6" ...
    has_cublas: bool
    has_cudart: bool

    @property
    def nvcc(self) -> Path:
        return self.prefix / "bin" / "nvcc"

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": str(self.prefix),
            "version": self.version,
            "found_by": self.found_by,
            "has_cublas": self.has_cublas,
            "has_cudart": self.has_cudart,
        }


def parse_nvcc_version(text: str) -> str | None:
    """ "Cuda compilation tools, release 13.0, V13.0.88" -> "13.0"."""
    m = re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else None


def _include_dirs(prefix: Path) -> list[Path]:
    return [prefix / "include", *sorted(prefix.glob("targets/*/include"))]


def _lib_dirs(prefix: Path) -> list[Path]:
    return [prefix / "lib64", prefix / "lib", *sorted(prefix.glob("targets/*/lib"))]


def _has(dirs: list[Path], pattern: str) -> bool:
    return any(any(d.glob(pattern)) for d in dirs if d.is_dir())


def find_system_toolkits(environ: Mapping[str, str]) -> tuple[SystemToolkit, ...]:
    """Every distinct nvcc on this machine that answers `--version`, in the order a user would expect."""
    candidates: list[tuple[Path, str]] = []
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT"):
        if environ.get(var):
            candidates.append((Path(environ[var]), var))
    on_path = shutil.which("nvcc", path=environ.get("PATH"))
    if on_path:
        candidates.append((Path(on_path).resolve().parent.parent, "PATH"))
    for pattern in ("/usr/local/cuda", "/usr/local/cuda-*", "/opt/cuda"):
        for p in sorted(Path("/").glob(pattern.lstrip("/")), reverse=True):
            candidates.append((p, str(p)))
    seen: set[Path] = set()
    out: list[SystemToolkit] = []
    for prefix, how in candidates:
        nvcc = prefix / "bin" / "nvcc"
        try:
            real = prefix.resolve()
        except OSError:
            continue
        if real in seen or not os.access(nvcc, os.X_OK):
            continue
        seen.add(real)
        try:
            text = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = parse_nvcc_version(text)
        if version is None:
            continue
        out.append(
            SystemToolkit(
                prefix=prefix,
                version=version,
                found_by=how,
                has_cublas=_has(_include_dirs(prefix), "cublas_v2.h") and _has(_lib_dirs(prefix), "libcublas.so*"),
                has_cudart=_has(_include_dirs(prefix), "cuda_runtime.h") and _has(_lib_dirs(prefix), "libcudart.so*"),
            )
        )
    # A wrapper script on PATH (`exec /usr/local/cuda-13.0/bin/nvcc`) sits in a prefix without headers: keep
    # only the complete toolkit of that version.
    complete = {t.version for t in out if t.has_cudart}
    return tuple(t for t in out if t.has_cudart or t.version not in complete)


# --- the environment's own CUDA libraries (PyTorch's nvidia-* wheels) -----------------------------


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["platlib"])


def env_cuda_layer(major: int, site: Path | None = None) -> Path | None:
    """The environment's `nvidia/cu13` (CUDA 13 wheels share one root) when it holds cuBLAS and cudart."""
    root = (site or site_packages()) / "nvidia" / f"cu{major}"
    if (root / "include" / "cublas_v2.h").exists() and any((root / "lib").glob("libcublas.so*")):
        return root
    return None


def env_cuda_runtime_version(site: Path | None = None) -> str | None:
    """The version of the environment's nvidia-cuda-runtime (what PyTorch was built against), e.g. "13.2"."""
    for d in (site or site_packages()).glob("nvidia_cuda_runtime*-*.dist-info"):
        version = d.name[: -len(".dist-info")].rpartition("-")[2]
        t = cuda_tuple(".".join(version.split(".")[:2]))
        if t:
            return cuda_text(t)
    return None


def runtime_rpath(major: int) -> tuple[str, ...]:
    """Where the built library finds libcudart/libcublas inside whatever environment it is installed in.

    `$ORIGIN` is llama_cpp/lib, so `$ORIGIN/../../` is site-packages: CUDA 13 wheels keep their libraries in
    nvidia/cu13/lib, CUDA 12 wheels in one folder per package."""
    if major >= 13:
        return (f"$ORIGIN/../../nvidia/cu{major}/lib",)
    return ("$ORIGIN/../../nvidia/cuda_runtime/lib", "$ORIGIN/../../nvidia/cublas/lib")


# --- the packaged toolkit ------------------------------------------------------------------------


def pypi_requirements(cuda: tuple[int, int], with_cublas: bool) -> tuple[str, ...]:
    """Requirements for a complete toolkit of CUDA `cuda` (same minor for every part)."""
    major, minor = cuda
    pin = f">={major}.{minor},<{major}.{minor + 1}"
    names = ["nvidia-cuda-nvcc", "nvidia-cuda-cccl", "nvidia-cuda-runtime"]
    if major >= 13:
        names[1:1] = ["nvidia-cuda-crt", "nvidia-nvvm"]
    if with_cublas:
        names.append("nvidia-cublas")
    suffix = "-cu12" if major == 12 else ""
    return tuple(f"{n}{suffix}{pin}" for n in names)


def runtime_requirements(cuda: tuple[int, int]) -> tuple[str, ...]:
    """What the environment itself needs at run time for a CUDA-12 engine (torch's wheels are CUDA 13)."""
    major, minor = cuda
    pin = f">={major}.{minor},<{major}.{minor + 1}"
    return tuple(f"{n}-cu12{pin}" for n in ("nvidia-cuda-runtime", "nvidia-cublas")) if major == 12 else ()


def uv_command(environ: Mapping[str, str]) -> list[str] | None:
    """How to call uv: the one running us (`uv run` sets $UV), one on PATH, or `python -m uv`."""
    if environ.get("UV") and os.access(environ["UV"], os.X_OK):
        return [environ["UV"]]
    found = shutil.which("uv", path=environ.get("PATH"))
    if found:
        return [found]
    import importlib.util

    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    return None


def packaged_layers(target: Path) -> list[Path]:
    """The prefixes NVIDIA's wheels installed under `target`: nvidia/cu13, or nvidia/<part> for CUDA 12."""
    base = target / "nvidia"
    return sorted(d for d in base.iterdir() if d.is_dir()) if base.is_dir() else []


# --- one merged root -----------------------------------------------------------------------------


def _link_entries(src: Path, dst: Path) -> None:
    if not src.is_dir():
        return
    for entry in sorted(src.iterdir()):
        link = dst / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry)


def assemble_root(root: Path, layers: Sequence[Path], cxx: str | None) -> Path:
    """One toolkit directory from several prefixes (earlier layers win), in the layout nvcc and CMake expect.

    nvcc finds its headers from its own (unresolved) path, `bin/../include`; CMake's FindCUDAToolkit wants
    unversioned `libcublas.so`, and `lib64/stubs/libcuda.so` to link the driver API without a driver, which
    a wheel does not ship: a tiny stub is compiled for that (the real libcuda.so.1 is used at run time)."""
    if root.exists():
        shutil.rmtree(root)
    for sub in ("bin", "include", "lib64/stubs", "targets/x86_64-linux"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for layer in layers:
        _link_entries(layer / "bin", root / "bin")
        for inc in _include_dirs(layer):
            _link_entries(inc, root / "include")
        for lib in _lib_dirs(layer):
            _link_entries(lib, root / "lib64")
        if (layer / "nvvm").is_dir() and not (root / "nvvm").exists():
            (root / "nvvm").symlink_to(layer / "nvvm")
    lib64 = root / "lib64"
    for entry in list(lib64.iterdir()):
        m = re.fullmatch(r"(lib[\w+-]+\.so)\.\d+(?:\.\d+)*", entry.name)
        if m and not (lib64 / m.group(1)).exists():
            (lib64 / m.group(1)).symlink_to(entry.name)
    (root / "lib").symlink_to("lib64")
    (root / "targets/x86_64-linux/include").symlink_to("../../include")
    (root / "targets/x86_64-linux/lib").symlink_to("../../lib64")
    if cxx:
        header = root / "include" / "cuda.h"
        names = driver_symbols(header.read_text(errors="replace")) if header.is_file() else ()
        source = root / "lib64" / "stubs" / "libcuda_stub.c"
        source.write_text("".join(f"void {n}(void) {{}}\n" for n in names))
        subprocess.run(
            [cxx, "-shared", "-o", str(source.with_name("libcuda.so")), "-Wl,-soname,libcuda.so.1"]
            + ["-x", "c", str(source)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return root


_DRIVER_CALL = re.compile(r"\b(cu[A-Z]\w*)\s*\(")
_DRIVER_ALIAS = re.compile(r"^\s*#\s*define\s+cu[A-Z]\w*\s+(cu[A-Z]\w*)\s*$", re.MULTILINE)


def driver_symbols(cuda_h: str) -> tuple[str, ...]:
    """Every driver-API entry point `cuda.h` names, versioned aliases (`cuMemAlloc_v2`) included.

    The link stub must define them: an empty stub is dropped by `--as-needed` (the default on Debian and
    Ubuntu), and the engine then has no NEEDED libcuda.so.1 and fails to load on a GPU with
    "undefined symbol: cuMemCreate"."""
    return tuple(sorted(set(_DRIVER_CALL.findall(cuda_h)) | set(_DRIVER_ALIAS.findall(cuda_h))))


# --- compute capabilities and CMake architectures -------------------------------------------------


def cc_text(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def arch_of(cc: tuple[int, int]) -> int:
    """(8, 9) -> 89, the spelling of CMAKE_CUDA_ARCHITECTURES."""
    return cc[0] * 10 + cc[1]


def covers(archs: tuple[int, ...], cc: tuple[int, int]) -> bool:
    """Native code for `archs` runs on `cc`: same major, equal or lower minor."""
    return any(a // 10 == cc[0] and a % 10 <= cc[1] for a in archs)
