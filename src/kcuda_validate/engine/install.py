"""The engine cache and the install that never leaves the environment without a working engine.

A built wheel is kept under the cache, one folder per key (llama-cpp-python version, CUDA version,
architectures), so a re-run, a second environment or a fresh clone installs it in seconds. Installing
goes: verify the wheel in a scratch directory (a fresh process loads it), keep the current build as a
wheel, swap with uv while Ctrl-C and SIGTERM wait, verify again, and roll back if that fails.

uv keeps the swapped-in build: an installed distribution of the locked version without a PEP 610
`direct_url.json` satisfies `uv run` and `uv sync` (they compare name and version for registry
packages), so the record of the local file uv writes is removed. `uv sync --reinstall`, a new version
in uv.lock or a new .venv bring back the CPU build; `setup` then reinstalls the cached wheel.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcuda_validate.cache_dir import kcuda_cache_dir
from kcuda_validate.errors import DiskFullError, KcudaError, UsageError

DIST = "llama-cpp-python"
STAMP = "llama_cpp/lib/kcuda_engine.json"  # added to every wheel setup builds: what it was built for


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$KCUDA_CACHE_DIR/engine, else the XDG cache: engines are rebuildable, so they are cache, not state."""
    return kcuda_cache_dir("engine", environ)


def cached_keys(cache: Path) -> tuple[str, ...]:
    wheels = cache / "wheels"
    if not wheels.is_dir():
        return ()
    return tuple(sorted(d.name for d in wheels.iterdir() if d.is_dir() and any(d.glob("*.whl"))))


def cached_wheel(cache: Path, key: str) -> Path | None:
    found = sorted((cache / "wheels" / key).glob("*.whl"))
    return found[0] if found else None


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """One setup at a time per cache: a second one waits instead of building the same thing twice."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- the locked version and its source ----------------------------------------------------------------


@dataclass(frozen=True)
class LockedLlama:
    version: str
    sdist_url: str | None
    sha256: str | None


def _find_lock() -> Path | None:
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        candidate = parent / "uv.lock"
        if candidate.is_file() and (parent / "pyproject.toml").is_file():
            text = (parent / "pyproject.toml").read_text(encoding="utf-8", errors="replace")
            if 'name = "kcuda-validate"' in text:
                return candidate
    return None


def locked_llama() -> LockedLlama:
    """The llama-cpp-python version (and sdist) of this tool's uv.lock, else the installed version."""
    import tomllib

    lock = _find_lock()
    if lock is not None:
        data = tomllib.loads(lock.read_text(encoding="utf-8"))
        for pkg in data.get("package", []):
            if pkg.get("name") == DIST:
                sdist = pkg.get("sdist") or {}
                digest = str(sdist.get("hash", ""))
                return LockedLlama(pkg["version"], sdist.get("url"), digest.split(":", 1)[1] if ":" in digest else None)
    from kcuda_validate.versions import dist_version

    return LockedLlama(dist_version(DIST) or "0.3.36", None, None)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sdist(given: Path | str, version: str) -> Path:
    """`--sdist FILE` as setup builds it, judged before anything is planned or changed (a dry run too): a regular
    file named `llama_cpp_python-<version>.tar.gz` for the locked version that opens as a gzip tar whose first
    entry lies under `llama_cpp_python-<version>/`. Only the first tar header is read (a few KiB, never an
    extraction), so the check costs milliseconds whatever the size. Returns the file as an absolute path (the
    build runs in a scratch directory, where a relative one would name nothing). A bad one is a UsageError."""
    want = f"llama_cpp_python-{version}"
    fix = f"Pass the llama-cpp-python {version} sdist ({want}.tar.gz from PyPI), or leave out --sdist to download it."
    if not str(given).strip():  # pathlib would read it as `.`
        raise UsageError(f"--sdist {str(given)!r}: an empty path names no file", fix=fix)
    given = Path(given)
    shown = f"--sdist {given}"
    try:
        mode = given.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such file", fix=fix) from None
    except OSError as exc:
        raise UsageError(f"{shown}: cannot be read ({exc.strerror or exc})", fix=fix) from None
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise UsageError(f"{shown}: {what}", fix=fix)
    named = re.fullmatch(r"llama[_-]cpp[_-]python-(.+)\.tar\.gz", given.name, re.IGNORECASE)
    if named is not None and named.group(1) != version:
        raise UsageError(f"{shown}: llama-cpp-python {named.group(1)}, this environment locks {version}", fix=fix)
    if given.name != f"{want}.tar.gz":
        raise UsageError(f"{shown}: not a llama-cpp-python sdist (its name is not {want}.tar.gz)", fix=fix)
    try:
        with open(given, "rb") as fh:
            try:
                with tarfile.open(fileobj=fh, mode="r:gz") as tar:
                    first = tar.next()
            except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
                raise UsageError(f"{shown}: not a readable gzip tar ({exc or type(exc).__name__})", fix=fix) from None
    except OSError as exc:
        raise UsageError(f"{shown}: cannot be read ({exc.strerror or exc})", fix=fix) from None
    top = first.name.removeprefix("./").split("/", 1)[0] if first is not None else None
    if top != want:
        holds = "nothing" if first is None else f"{first.name}, not {want}/"
        raise UsageError(f"{shown}: not a llama-cpp-python sdist (the archive holds {holds})", fix=fix)
    return given.absolute()


def fetch_sdist(cache: Path, locked: LockedLlama, given: Path | None, timeout_s: float = 60.0) -> Path:
    """The sdist to build: --sdist (checked as the plan was: `check_sdist`), else the cached one, else a download
    checked against the lock's sha256."""
    if given is not None:
        return check_sdist(given, locked.version)
    target = cache / "sdists" / f"llama_cpp_python-{locked.version}.tar.gz"
    if target.is_file() and (locked.sha256 is None or _sha256(target) == locked.sha256):
        return target
    url, digest = locked.sdist_url, locked.sha256
    import urllib.request

    if url is None:
        meta_url = f"https://pypi.org/pypi/{DIST}/{locked.version}/json"
        try:
            with urllib.request.urlopen(meta_url, timeout=timeout_s) as resp:
                meta = json.load(resp)
        except OSError as exc:
            raise KcudaError(
                f"llama-cpp-python {locked.version}: the package index cannot be reached ({exc})",
                fix="Connect to the network, or pass the sdist with --sdist FILE.",
            ) from exc
        for f in meta.get("urls", []):
            if f.get("packagetype") == "sdist":
                url, digest = f["url"], f["digests"]["sha256"]
        if url is None:
            raise KcudaError(f"llama-cpp-python {locked.version}: no sdist on the index", fix="Pass --sdist FILE.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        if digest is not None and _sha256(tmp) != digest:
            raise KcudaError(
                f"llama-cpp-python {locked.version} sdist: sha256 does not match the lock",
                fix="Run setup again; if it repeats, the download is being tampered with or corrupted.",
            )
        os.replace(tmp, target)
    except OSError as exc:
        if getattr(exc, "errno", None) == 28:
            raise DiskFullError(f"{target.parent}: disk full while downloading the sdist", fix=DISK_FIX) from exc
        raise KcudaError(
            f"llama-cpp-python {locked.version} sdist: download failed ({exc})",
            fix="Check the network, or pass the sdist with --sdist FILE.",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


DISK_FIX = "Free some space, or point KCUDA_CACHE_DIR at a disk with more room."


def sdist_origin(sdist: Path, locked: LockedLlama) -> dict[str, Any]:
    """What the engine was built from, for its stamp and the build log: a --sdist is taken as given (a trimmed one
    carried to an offline box cannot match uv.lock), so whether it is the locked file is recorded, not enforced.

    `locked`: True when its sha256 is the one uv.lock names, False when not, None when the lock names none."""
    digest = _sha256(sdist)
    return {
        "file": sdist.name,
        "sha256": digest,
        "locked": None if locked.sha256 is None else digest == locked.sha256,
    }


def origin_line(origin: Mapping[str, Any]) -> str:
    said = {True: "the sdist uv.lock names", False: "not the sdist uv.lock names (a trimmed or rebuilt one)"}
    which = said.get(origin["locked"], "uv.lock names no sha256")
    return f"built from {origin['file']} (sha256 {str(origin['sha256'])[:12]}…, {which})"


# --- wheels ---------------------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# The libraries Python opens by file name (llama_cpp's load_shared_library, and llm/build.py's probe); the rest of
# the package's lib/ is reached from them through DT_NEEDED sonames.
LIB_DIR = "llama_cpp/lib/"
LOADED_BY_NAME = ("libllama.so", "libggml.so", "libmtmd.so", "libllava.so")


def elf_needed(data: bytes) -> tuple[str, ...] | None:
    """The DT_NEEDED sonames of a 64-bit little-endian ELF file; None if `data` is not one or has no dynamic section."""
    if data[:6] != b"\x7fELF\x02\x01" or len(data) < 64:
        return None
    shoff, shentsize, shnum = struct.unpack_from("<Q", data, 0x28)[0], *struct.unpack_from("<HH", data, 0x3A)
    try:
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        dynamic = next((sh for sh in sections if sh[1] == 6), None)  # SHT_DYNAMIC
        if dynamic is None:
            return None
        strtab = sections[dynamic[6]][4]  # sh_link -> the string table, its sh_offset
        needed = []
        for off in range(dynamic[4], dynamic[4] + dynamic[5], 16):
            tag, val = struct.unpack_from("<qQ", data, off)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                start = strtab + val
                needed.append(data[start : data.index(b"\0", start)].decode())
        return tuple(needed)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None


def duplicate_libraries(record: Mapping[str, str], read: Callable[[str], bytes]) -> set[str]:
    """The wheel's files that are only second copies of a library nothing opens under that name.

    A wheel cannot hold symlinks, so scikit-build-core writes each library three times (lib*.so, .so.N, .so.N.M.P)
    and twice over (llama_cpp/lib/ and a top-level lib/): six copies of a 100+ MB libggml-cuda. Kept: the names
    Python opens and every soname they need, transitively; dropped: the other names of those same bytes (same
    RECORD hash). A library nothing reaches is left exactly as built, so no file's last copy is ever dropped.
    `record` maps each file name to its RECORD hash."""
    libs = {n for n in record if n.startswith(LIB_DIR) and "/" not in n[len(LIB_DIR) :] and ".so" in n}
    keep: set[str] = set()
    todo = [LIB_DIR + name for name in LOADED_BY_NAME if LIB_DIR + name in libs]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += [LIB_DIR + so for so in elf_needed(read(name)) or () if LIB_DIR + so in libs]
    kept_hashes = {record[n] for n in keep if record[n]}
    return {n for n, h in record.items() if h in kept_hashes and n not in keep}


def add_stamp(wheel: Path, stamp: Mapping[str, Any]) -> int:
    """Write what the wheel was built for into it (and its RECORD), so an installed engine says so itself; leave
    out the duplicate libraries (see duplicate_libraries). Returns the bytes left out."""
    data = (json.dumps(dict(stamp), indent=2, sort_keys=True) + "\n").encode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        rows = [r for r in csv.reader(io.StringIO(zin.read(record_name).decode())) if r]
        drop = duplicate_libraries({r[0]: r[1] if len(r) > 1 else "" for r in rows}, zin.read)
        for item in zin.infolist():
            if item.filename in (record_name, STAMP) or item.filename in drop:
                continue
            zout.writestr(item, zin.read(item.filename))
        zout.writestr(STAMP, data)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows(r for r in rows if r[0] not in (STAMP, record_name) and r[0] not in drop)
        writer.writerows([[STAMP, _record_hash(data), str(len(data))], [record_name, "", ""]])
        zout.writestr(record_name, out.getvalue())
        left_out = sum(zin.getinfo(n).file_size for n in drop)
    os.replace(tmp, wheel)
    return left_out


def read_stamp(site: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((site / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _dist_info(site: Path) -> Path | None:
    found = sorted(site.glob("llama_cpp_python-*.dist-info"))
    return found[0] if found else None


def repack_installed(site: Path, dest_dir: Path) -> Path | None:
    """The installed llama-cpp-python as a wheel again (from its RECORD): the build to roll back to."""
    info = _dist_info(site)
    if info is None:
        return None
    wheel_meta = (info / "WHEEL").read_text()
    tag = next((ln.split(":", 1)[1].strip() for ln in wheel_meta.splitlines() if ln.startswith("Tag:")), None)
    if tag is None:
        return None
    rows = list(csv.reader(io.StringIO((info / "RECORD").read_text())))
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json", "uv_build.json"}
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{info.name[: -len('.dist-info')]}-{tag}.whl"
    tmp = out.with_suffix(".tmp")
    record: list[str] = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for row in rows:
            if not row:
                continue
            rel = row[0]
            if rel.startswith("..") or os.path.isabs(rel) or (Path(rel).name in skip and rel.startswith(info.name)):
                continue
            path = site / rel
            if not path.is_file():
                continue
            data = path.read_bytes()
            z.writestr(rel, data)
            record.append(f"{rel},{_record_hash(data)},{len(data)}")
        record.append(f"{info.name}/RECORD,,")
        z.writestr(f"{info.name}/RECORD", "\n".join(record) + "\n")
    os.replace(tmp, out)
    return out


def forget_source(site: Path) -> None:
    """Remove uv's record that the engine came from a local file, so `uv run`/`uv sync` keep it (see top)."""
    info = _dist_info(site)
    if info is None:
        return
    removed = []
    for name in ("direct_url.json", "uv_cache.json"):
        p = info / name
        if p.exists():
            p.unlink()
            removed.append(f"{info.name}/{name}")
    record = info / "RECORD"
    if removed and record.exists():
        lines = [ln for ln in record.read_text().splitlines() if ln.split(",", 1)[0] not in removed]
        record.write_text("\n".join(lines) + "\n")


# --- verification ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    ok: bool
    summary: str
    version: str | None = None
    has_cuda: bool = False
    offload: bool = False
    archs: tuple[int, ...] = ()  # as 90, 89...
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary,
            "version": self.version,
            "has_cuda": self.has_cuda,
            "offload": self.offload,
            "archs": list(self.archs),
            "error": self.error,
        }


def probe(python: str, pythonpath: Path | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """The `detect` build probe in a fresh process of `python`, optionally with `pythonpath` first on sys.path."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(
            [python, "-m", "kcuda_validate.llm.build"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"os_error": f"loading libllama did not finish in {timeout_s:g} s"}
    if proc.returncode != 0 or not proc.stdout.strip():
        how = signal.Signals(-proc.returncode).name if proc.returncode < 0 else f"exit status {proc.returncode}"
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"os_error": f"libllama crashed while loading ({how}) {last}".strip()}
    answer = json.loads(proc.stdout)
    return answer if isinstance(answer, dict) else {"os_error": f"libllama probe answered {proc.stdout.strip()[:80]!r}"}


def judge(raw: Mapping[str, Any], archs: Sequence[int], gpu_ccs: Sequence[tuple[int, int]]) -> Verification:
    """Does this probe show the engine we built: CUDA, offload when there is a GPU, every wanted arch?"""
    from kcuda_validate.engine.toolkit import covers
    from kcuda_validate.llm.build import parse_system_info

    if "import_error" in raw:
        return Verification(False, f"llama_cpp does not import: {raw['import_error']}", error=raw["import_error"])
    if "os_error" in raw:
        return Verification(False, f"libllama does not load: {raw['os_error']}", error=raw["os_error"])
    backends, found = parse_system_info(raw.get("text", ""))
    built = tuple(a // 10 for a in found)
    ok_cuda = "CUDA" in backends
    offload = bool(raw.get("offload"))
    base: dict[str, Any] = {
        "version": raw.get("version"),
        "has_cuda": ok_cuda,
        "offload": offload,
        "archs": built,
    }
    if not ok_cuda:
        return Verification(False, "the library has no CUDA backend", **base)
    missing = [a for a in archs if a not in built]
    if missing:
        return Verification(False, "compiled archs " + ", ".join(map(str, built)) + f" lack {missing}", **base)
    uncovered = [cc for cc in gpu_ccs if not covers(built, cc)]
    if uncovered:
        return Verification(False, f"no code for compute capability {uncovered[0][0]}.{uncovered[0][1]}", **base)
    names = ", ".join(f"sm_{a}" for a in built)
    if gpu_ccs and not offload:
        return Verification(False, f"CUDA backend for {names}, but llama.cpp reports no GPU offload", **base)
    where = "GPU offload supported" if gpu_ccs else "no GPU here, so offload is not proven"
    return Verification(True, f"CUDA backend for {names}; {where}", **base)


# --- install, swap, roll back -----------------------------------------------------------------------------


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the swap is complete (they are delivered right after)."""
    mask = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def run_uv(
    uv: Sequence[str], args: Sequence[str], log: Any, timeout_s: float = 900.0
) -> subprocess.CompletedProcess[str]:
    """uv in its own session (a terminal's Ctrl-C reaches us, not it), output to the build log."""
    cmd = [*uv, *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, start_new_session=True)
    log.write(proc.stdout + proc.stderr)
    log.flush()
    return proc


def uv_failure(proc: subprocess.CompletedProcess[str], what: str, log_file: Path) -> KcudaError:
    text = proc.stdout + proc.stderr
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), f"exit {proc.returncode}")
    if "No space left on device" in text:
        return DiskFullError(f"{what}: disk full ({last})", fix=DISK_FIX + f" Build log: {log_file}")
    return KcudaError(f"{what}: {last}", fix=f"See the log {log_file}; check the network to the package index.")


def stage(uv: Sequence[str], python: str, wheel: Path, scratch: Path, site: Path, log: Any, log_file: Path) -> Path:
    """Unpack the wheel into a scratch directory beside nothing else, where a fresh process can load it.

    Its RPATH finds the CUDA runtime at `$ORIGIN/../../nvidia`, so the scratch directory links to the
    environment's nvidia/ folder."""
    target = scratch / "stage"
    proc = run_uv(uv, ["pip", "install", "--python", python, "--no-deps", "--target", str(target), str(wheel)], log)
    if proc.returncode != 0:
        raise uv_failure(proc, "unpacking the new build", log_file)
    if (site / "nvidia").is_dir() and not (target / "nvidia").exists():
        (target / "nvidia").symlink_to(site / "nvidia")
    return target


def swap_in(uv: Sequence[str], python: str, wheel: Path, site: Path, log: Any, log_file: Path) -> None:
    """Replace the environment's llama-cpp-python with `wheel` (only its own files; nothing else moves)."""
    proc = run_uv(uv, ["pip", "install", "--python", python, "--no-deps", "--reinstall", str(wheel)], log)
    if proc.returncode != 0:
        raise uv_failure(proc, "installing the new build", log_file)
    forget_source(site)


def install_runtime(uv: Sequence[str], python: str, requirements: Sequence[str], log: Any, log_file: Path) -> None:
    if not requirements:
        return
    proc = run_uv(uv, ["pip", "install", "--python", python, *requirements], log)
    if proc.returncode != 0:
        raise uv_failure(proc, "installing the CUDA runtime libraries", log_file)
