"""The cached synthetic model file: written atomically, shared by concurrent runs through a lock.

What the file holds (its shape, header and tensor data) is synthetic_spec's; this module only puts that
byte stream on disk so that nothing partial is ever left under the final name, and a second run reuses it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from kcuda_validate.cache_dir import kcuda_cache_dir
from kcuda_validate.errors import DiskFullError, KcudaError
from kcuda_validate.model.synthetic_spec import GIB, SyntheticSpec, file_chunks, header_bytes, plan
from kcuda_validate.paths import make_parents, remove_empty


def default_cache_dir() -> Path:
    """$KCUDA_CACHE_DIR/synthetic, else the XDG cache: generated models are big and disposable."""
    return kcuda_cache_dir("synthetic")


def ensure_synthetic(
    size_bytes: int,
    qtype: str = "Q8_0",
    seed: int = 0,
    cache_dir: Path | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """The cached synthetic model for (size, qtype, seed), generating it once if needed.

    Safe against interruption (nothing partial is ever left under the final name) and against a
    concurrent run asking for the same file (it waits on a lock, then reuses the result).
    `progress(done, total)` is called as bytes are written.
    """
    spec = plan(size_bytes, qtype, seed)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / spec.file_name
    if is_complete(path, spec):
        return path
    try:
        created = make_parents(directory)
    except OSError as exc:
        raise _io_error(exc, directory, spec.file_size) from None
    try:
        with _exclusive(directory / f".{spec.file_name}.lock", directory, spec.file_size):
            # A concurrent generator of the same file has finished by now.
            if is_complete(path, spec):
                return path
            # We hold the lock, so any temp file for this name was left by a killed process.
            for stale in directory.glob(f".{spec.file_name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
            write_synthetic(spec, path, progress=progress)
            return path
    except BaseException:  # a full disk, an interrupt: the cache folders this run made go too, if still empty
        remove_empty(created)
        raise


@contextlib.contextmanager
def _exclusive(lock_path: Path, directory: Path, needed: int) -> Iterator[None]:
    """Hold an flock on `lock_path`, and remove the file when done, whatever happened (a refused size included).

    Removing a lock file others may be waiting on is safe only with a check after locking: a waiter whose
    file was unlinked while it waited holds a lock on an orphan, so it sees the path no longer leads to its
    file and starts again on the current one. Without removal every (size, type, seed) ever asked for,
    refused or not, left a 0-byte .lock file in the cache.
    """
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _io_error(exc, directory, needed) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path)
                held = os.fstat(fd)
                ours = (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)
            except FileNotFoundError:
                ours = False
        except BaseException:
            os.close(fd)
            raise
        if ours:
            break
        os.close(fd)  # the previous holder removed it: lock the file that is there now
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)  # before the close, so no one can lock this file after we are done with it
        os.close(fd)  # releases the flock


def is_complete(path: Path, spec: SyntheticSpec) -> bool:
    """Cheap cache check: right size and a byte-identical header (which records the spec and generator)."""
    header = header_bytes(spec)
    try:
        if path.stat().st_size != len(header) + spec.tensor_bytes:
            return False
        with open(path, "rb") as fh:
            return fh.read(len(header)) == header
    except OSError:
        return False


def write_synthetic(spec: SyntheticSpec, path: Path, *, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write `spec` to `path` atomically: a unique temp file beside it, fsync, then rename over.

    Any failure or interrupt removes the temp file; ENOSPC becomes DiskFullError naming the directory
    and the bytes needed. Callers wanting caching and locking use ensure_synthetic.
    """
    path = Path(path)
    directory = path.parent
    needed = spec.file_size
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise _io_error(exc, directory, needed) from None
    if free < needed:
        raise _disk_full(directory, needed, free)
    tmp = directory / f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"  # unique even across threads
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise _io_error(exc, directory, needed) from None
    try:
        try:
            done = 0
            for chunk in file_chunks(spec):
                _write_chunk(fd, chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, needed)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _io_error(exc, directory, needed) from exc
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


# -- errors ---------------------------------------------------------------------------------------------


def _disk_full(directory: Path, needed: int, free: int | None = None) -> DiskFullError:
    have = f", {free} bytes free" if free is not None else ""
    return DiskFullError(
        f"no space left in {directory}: the synthetic model needs {needed} bytes ({needed / GIB:.2f} GiB){have}",
        fix="Free some space, pick a smaller --synthetic size, or point KCUDA_CACHE_DIR at a bigger disk.",
    )


def _io_error(exc: OSError, directory: Path, needed: int) -> KcudaError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _disk_full(directory, needed)
    return DiskFullError(  # no room for the model either way, and the same remedy: put the cache elsewhere
        f"cannot write the synthetic model in {directory}: {exc.strerror or exc}",
        fix="Point KCUDA_CACHE_DIR at a writable directory.",
    )


def _write_chunk(fd: int, data: bytes | memoryview) -> None:
    """One write, retried until complete (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
