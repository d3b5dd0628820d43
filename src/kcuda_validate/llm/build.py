"""What the installed llama-cpp-python was built to do.

The old tool's worst failure was passing on a CPU-only build. Here the build's
backends, GPU offload support and compiled CUDA architectures are read from
the library itself (`llama_print_system_info` and ggml's backend registry).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcuda_validate.versions import dist_version


def invocation(environ: Mapping[str, str] | None = None) -> str:
    """How the user runs this tool, for fix texts: under `uv run` from a checkout, or installed."""
    env = os.environ if environ is None else environ
    return "./run kcuda-validate" if env.get("UV_RUN_RECURSION_DEPTH") else "kcuda-validate"  # README: ./run


def setup_fix(invocation: str, what: str = "builds llama-cpp-python with CUDA for this machine's GPUs") -> str:
    """The one command that repairs a missing or CPU-only engine: `setup` needs only the NVIDIA driver."""
    return (
        f"Run `{invocation} setup`: it {what} (a CUDA toolkit comes from the package index if none fits) and "
        f"installs it only once it loads; or `{invocation} validate-all --setup` to set up and validate in one go."
    )


@dataclass(frozen=True)
class BackendDevice:
    name: str
    description: str
    type: str  # cpu | gpu | igpu | accel
    memory_free: int | None = None
    memory_total: int | None = None


@dataclass(frozen=True)
class LlamaBuildInfo:
    installed: bool
    version: str | None = None
    supports_gpu_offload: bool = False
    system_info: str = ""
    backends: tuple[str, ...] = ()
    cuda_archs: tuple[int, ...] = ()  # e.g. (890,) for sm_89
    devices: tuple[BackendDevice, ...] = field(default_factory=tuple)
    error: str | None = None

    @property
    def has_cuda(self) -> bool:
        return "CUDA" in self.backends

    def to_json(self) -> dict[str, Any]:
        return {
            "installed": self.installed,
            "version": self.version,
            "supports_gpu_offload": self.supports_gpu_offload,
            "backends": list(self.backends),
            "cuda_archs": [arch_to_cc(a) for a in self.cuda_archs],
            "devices": [d.__dict__ for d in self.devices],
            "system_info": self.system_info,
            "error": self.error,
        }


def arch_to_cc(arch: int) -> str:
    """890 -> "8.9", 1200 -> "12.0"."""
    return f"{arch // 100}.{(arch % 100) // 10}"


def parse_system_info(text: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Backends and CUDA archs from llama_print_system_info()'s "NAME : K = V | ..." text."""
    backends: list[str] = []
    archs: list[int] = []
    for match in re.finditer(r"(?:^|\|\s*)([A-Za-z][A-Za-z0-9_-]*)\s*:\s", text):
        name = match.group(1)
        if name not in backends:
            backends.append(name)
    arch_match = re.search(r"ARCHS\s*=\s*([0-9,;\s]+)", text)
    if arch_match:
        archs = [int(a) for a in re.findall(r"\d+", arch_match.group(1))]
    return tuple(backends), tuple(sorted(set(archs)))


def arch_compatibility(archs: tuple[int, ...], cc: tuple[int, int]) -> tuple[str, str]:
    """("ok"|"ptx"|"none", explanation) for a GPU of compute capability `cc`."""
    if not archs:
        return "none", "the build lists no CUDA architectures"
    target = cc[0] * 100 + cc[1] * 10
    listed = ", ".join(arch_to_cc(a) for a in archs)
    # SASS runs on the same major version with an equal or higher minor.
    if any(a // 100 == cc[0] and a <= target for a in archs):
        return "ok", f"built for {listed}; GPU is {cc[0]}.{cc[1]}"
    if any(a < target for a in archs):
        return (
            "ptx",
            f"built for {listed}; GPU {cc[0]}.{cc[1]} needs PTX JIT (slow first load, only if PTX was embedded)",
        )
    return "none", f"built for {listed}; nothing runs on a {cc[0]}.{cc[1]} GPU"


def llama_lib_dir() -> Path:
    """Where the installed llama-cpp-python keeps libllama, found without importing it (~0.8 s)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ImportError("llama-cpp-python is not installed")
    return Path(spec.origin).parent / "lib"


def _load(lib_dir: Path, stem: str) -> ctypes.CDLL:
    for name in (f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
        if (lib_dir / name).exists():
            return ctypes.CDLL(str(lib_dir / name))
    raise OSError(f"lib{stem} not found in {lib_dir}")


def _ggml_devices(lib: ctypes.CDLL) -> tuple[BackendDevice, ...]:
    """Enumerate ggml backend devices (llama-cpp-python does not bind these)."""
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    types = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            BackendDevice(
                name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                type=types.get(lib.ggml_backend_dev_type(dev), "unknown"),
                memory_free=free.value or None,
                memory_total=total.value or None,
            )
        )
    return tuple(out)


def raw_llama_build() -> tuple[str, bool, str, tuple[BackendDevice, ...]]:
    """The seam: (version, supports_gpu_offload, system_info, devices) from the real library.

    Talks to libllama/libggml through ctypes, so `detect` does not pay for
    importing the llama_cpp package (numpy, jinja2...).
    """
    lib_dir = llama_lib_dir()
    version = dist_version("llama-cpp-python") or "unknown"
    llama = _load(lib_dir, "llama")
    llama.llama_print_system_info.restype = ctypes.c_char_p
    llama.llama_supports_gpu_offload.restype = ctypes.c_bool
    llama.llama_backend_init()
    text = (llama.llama_print_system_info() or b"").decode(errors="replace")
    offload = bool(llama.llama_supports_gpu_offload())
    try:
        devices = _ggml_devices(_load(lib_dir, "ggml"))
    except (OSError, AttributeError):
        devices = ()
    return version, offload, text, devices


def _info(version: str, offload: bool, text: str, devices: tuple[BackendDevice, ...]) -> LlamaBuildInfo:
    backends, archs = parse_system_info(text)
    for dev in devices:
        family = re.sub(r"\d+$", "", dev.name)
        if dev.type in ("gpu", "igpu") and family and family not in backends:
            backends = (*backends, family)
    return LlamaBuildInfo(True, version, offload, text.strip(), backends, archs, devices)


def _probe_here() -> LlamaBuildInfo:
    try:
        version, offload, text, devices = raw_llama_build()
    except ImportError as exc:
        return LlamaBuildInfo(installed=False, error=str(exc))
    except OSError as exc:  # the shared library failed to load (e.g. missing libcudart)
        return LlamaBuildInfo(installed=True, error=f"libllama failed to load: {exc}")
    return _info(version, offload, text, devices)


class LlamaBuildProbe:
    """The build probe in a short-lived child process, started early and collected when needed.

    Loading libllama starts every compiled backend: with CUDA that initialises the driver, and asking a
    device for its memory creates a CUDA context (~0.3 GiB of VRAM) that would stay in this process while
    validate-all loads the model; a broken CUDA runtime can also crash the loader. A replaced
    `raw_llama_build` seam (tests) is called in-process instead.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._wanted: int | None = None  # the lifeline's write end: closed = the result is not wanted

    def start(self) -> LlamaBuildProbe:
        """Start the child. Separate from construction, so its owner holds the probe (and can close it) before
        any child exists: a deadline landing between the two would otherwise lose one that still runs."""
        if self._proc is None and raw_llama_build is _REAL_RAW_LLAMA_BUILD:
            from kcuda_validate.lifeline import spawn_tied

            self._proc, self._wanted = spawn_tied(
                [sys.executable, "-m", "kcuda_validate.llm.build"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        return self

    def _unwant(self) -> None:
        if self._wanted is not None:
            os.close(self._wanted)
            self._wanted = None

    def close(self) -> None:
        """Stop the child if its result is no longer wanted (the run ended first)."""
        self._unwant()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()

    def result(self, timeout_s: float = 60.0) -> LlamaBuildInfo:
        if raw_llama_build is not _REAL_RAW_LLAMA_BUILD:
            return _probe_here()
        try:
            self.start()
            assert self._proc is not None
            out, err = self._proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            return LlamaBuildInfo(installed=True, error=f"loading libllama did not finish in {timeout_s:g} s")
        except BaseException:  # interrupted (Ctrl-C, the caller's deadline): the child goes with the result
            self.close()
            raise
        self._unwant()
        rc = self._proc.returncode
        if rc != 0 or not out.strip():
            how = signal.Signals(-rc).name if rc < 0 else f"exit status {rc}"
            last = (err.strip().splitlines() or [""])[-1]
            return LlamaBuildInfo(installed=True, error=f"libllama crashed while loading ({how}) {last}".strip())
        d = json.loads(out)
        if "import_error" in d:
            return LlamaBuildInfo(installed=False, error=d["import_error"])
        if "os_error" in d:
            return LlamaBuildInfo(installed=True, error=f"libllama failed to load: {d['os_error']}")
        devices = tuple(BackendDevice(**x) for x in d["devices"])
        return _info(d["version"], d["offload"], d["text"], devices)


def probe_llama_build(isolated: bool = True) -> LlamaBuildInfo:
    """What the installed llama-cpp-python can do (see LlamaBuildProbe for why it runs in a child)."""
    return LlamaBuildProbe().result() if isolated else _probe_here()


_REAL_RAW_LLAMA_BUILD = raw_llama_build


def _main() -> None:
    """`python -m kcuda_validate.llm.build`: the isolated probe, one JSON document on stdout; it ends itself when
    its parent stops wanting the answer (kcuda_validate.lifeline), a hung libllama included."""
    from kcuda_validate.lifeline import die_with_parent

    die_with_parent()
    fault = os.environ.get("KCUDA_TEST_FAULT")
    if fault == "segv:llama":  # tests only: a crash while loading libllama
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "hang:llama":  # tests only: a probe that never answers (a wedged driver), for health's deadline
        while True:
            time.sleep(3600)
    try:
        version, offload, text, devices = raw_llama_build()
    except ImportError as exc:
        print(json.dumps({"import_error": str(exc)}))
        return
    except OSError as exc:
        print(json.dumps({"os_error": str(exc)}))
        return
    print(json.dumps({"version": version, "offload": offload, "text": text, "devices": [d.__dict__ for d in devices]}))


if __name__ == "__main__":
    _main()
