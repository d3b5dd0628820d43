"""Linux vs WSL2, and the WSL2 pitfalls that break CUDA.

Everything is read from files under `root` (normally "/"), so scenario tests
can build a fake filesystem instead of patching functions.
"""

from __future__ import annotations

import os
import platform as _platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WSL_LIB_DIR = "usr/lib/wsl/lib"
WSL_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")
# Where a Linux NVIDIA driver package puts its user-space libraries.
LINUX_DRIVER_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib/aarch64-linux-gnu")
WINDOWS_MOUNT_FSTYPES = {"9p", "drvfs", "v9fs"}
# The filesystem root the probe reads; hardware-scenario tests point it at a fake tree.
ROOT = Path("/")


@dataclass(frozen=True)
class PlatformInfo:
    system: str
    kernel: str | None
    is_wsl: bool
    is_wsl2: bool
    has_dxg: bool
    wsl_libs: dict[str, bool] = field(default_factory=dict)
    wsl_libs_in_loader_path: bool | None = None
    linux_driver_in_wsl: tuple[str, ...] = ()
    machine: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "kernel": self.kernel,
            "machine": self.machine,
            "wsl": self.is_wsl,
            "wsl2": self.is_wsl2,
            "dev_dxg": self.has_dxg,
            "wsl_libs": self.wsl_libs,
            "wsl_libs_in_loader_path": self.wsl_libs_in_loader_path,
            "linux_driver_files_in_wsl": list(self.linux_driver_in_wsl),
        }


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _loader_dirs(root: Path) -> list[str]:
    """Directories the dynamic loader searches: LD_LIBRARY_PATH plus /etc/ld.so.conf(.d)."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    conf_files = [root / "etc/ld.so.conf"]
    conf_d = root / "etc/ld.so.conf.d"
    if conf_d.is_dir():
        conf_files += sorted(conf_d.glob("*.conf"))
    for conf in conf_files:
        text = _read(conf) or ""
        dirs += [line.strip() for line in text.splitlines() if line.strip().startswith("/")]
    return dirs


def probe_platform(root: Path | None = None) -> PlatformInfo:
    root = ROOT if root is None else root
    kernel = _read(root / "proc/sys/kernel/osrelease")
    lowered = (kernel or "").lower()
    is_wsl = "microsoft" in lowered or "wsl" in lowered
    has_dxg = (root / "dev/dxg").exists()
    is_wsl2 = is_wsl and ("wsl2" in lowered or has_dxg)
    wsl_libs: dict[str, bool] = {}
    in_loader: bool | None = None
    linux_driver: list[str] = []
    if is_wsl:
        wsl_libs = {lib: (root / WSL_LIB_DIR / lib).exists() for lib in WSL_LIBS}
        in_loader = "/" + WSL_LIB_DIR in [d.rstrip("/") for d in _loader_dirs(root)]
        for directory in LINUX_DRIVER_LIB_DIRS:
            for lib in WSL_LIBS:
                candidate = root / directory / lib
                if candidate.exists() and "/wsl/" not in os.path.realpath(candidate):
                    linux_driver.append("/" + directory + "/" + lib)
        if (root / "proc/driver/nvidia/version").exists():
            linux_driver.append("/proc/driver/nvidia/version")
    return PlatformInfo(
        system=_platform.system(),
        kernel=kernel,
        is_wsl=is_wsl,
        is_wsl2=is_wsl2,
        has_dxg=has_dxg,
        wsl_libs=wsl_libs,
        wsl_libs_in_loader_path=in_loader,
        linux_driver_in_wsl=tuple(linux_driver),
        machine=_platform.machine(),
    )


def mount_fstype(path: Path, root: Path | None = None) -> tuple[str, str] | None:
    """(mount point, fstype) of the longest mount containing `path`, from /proc/mounts."""
    root = ROOT if root is None else root
    text = _read(root / "proc/mounts")
    if not text:
        return None
    target = os.path.realpath(path)
    best: tuple[str, str] | None = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and (
            best is None or len(mount_point) > len(best[0])
        ):
            best = (mount_point, parts[2])
    return best


def on_windows_mount(path: Path, root: Path | None = None) -> bool:
    """True when `path` sits on a Windows drive mounted into WSL (/mnt/c ...), where I/O is slow."""
    found = mount_fstype(path, root)
    if found is not None:
        return found[1] in WINDOWS_MOUNT_FSTYPES
    resolved = os.path.realpath(path)
    return len(resolved) >= 6 and resolved.startswith("/mnt/") and resolved[6:7] in ("/", "")
