"""A download that survives the run: our own partial file, Range GETs into it, our own rename into the Hub cache.

huggingface_hub 2.x cannot resume across runs (its temp file is unique per call and deleted on any failure;
huggingface_hub#4196), and a 500 MB model over a flaky link needs that. So plain-HTTP transfers are done here,
with the library's public pieces only: its HTTP client and policy (`http_stream_backoff`, `build_hf_headers`,
`hf_raise_for_status`) and its lock (`WeakFileLock`, on the path hf_hub_download locks). Everything written to
disk is ours: the partial file, the checks (size, then sha256), the rename to blobs/<etag>, the relative
snapshot link, refs/<rev> and CACHEDIR.TAG. The result is the layout hf_hub_download leaves, so `hf cache scan`,
`try_to_load_from_cache` and the next offline run read it as theirs.

Progress is reported through a callback (`on_progress`); the CLI draws it. Nothing here writes to a terminal.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kcuda_validate.errors import HubUnreachableError
from kcuda_validate.model.hub_errors import amount, disk_full_error, kept_note, netloc, unwritable_error
from kcuda_validate.paths import make_parents, remove_empty, special_kind

RETRIES = 5  # in-process reconnections in a row that get no further into the file, as huggingface_hub's http_get
RETRY_WAIT_S = 1.0
STALL_FLOOR = 1024  # bytes/s: below this for a whole stall window a download is stalled (a 250 MB model: 3 days)
STALL_S = 60  # the window, unless KCUDA_HUB_STALL_S says otherwise (0: never stopped for being slow)
STALE_PARTIAL_S = 600.0  # a temp file untouched this long belongs to a download that died (killed process)
_PARTIAL_TAG = "kcuda"  # blobs/<etag>.kcuda-<8 hex of the filename>.incomplete: see partial_path
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(?:\d+|\*)")
_LIBRARY_TEMP = re.compile(r"\.[0-9a-f]{8}\.incomplete")  # what follows <etag> in huggingface_hub's temp names
# The cache-directory tag (https://bford.info/cachedir/): backup tools skip the Hub cache, as huggingface_hub's
# own releases that write one intend.
CACHEDIR_TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag.\n"


@dataclass(frozen=True)
class DownloadProgress:
    """Bytes of `label` on disk so far, of `total` (None: the server did not say)."""

    label: str
    done: int
    total: int | None


OnProgress = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class Remote:
    """What the Hub says about the file at the requested revision."""

    commit: str
    etag: str  # the blob's name in the cache (sha256 for LFS/Xet files)
    size: int | None
    url: str = ""  # where to GET the bytes: the CDN location the Hub redirected to, or the /resolve URL itself
    send_token: bool = True  # False for another host than the Hub's: the token is for the Hub only
    xet: bool = False  # a Xet file and hf_xet is usable: huggingface_hub does the transfer


@dataclass
class Kept:
    """How many bytes a failed transfer left in its partial file, for the error message."""

    bytes: int = 0


class Corrupt(Exception):
    """The server sent something that cannot be the file; the partial file must go."""


class Stalled(Exception):
    """Bytes kept coming, each read within HF_HUB_DOWNLOAD_TIMEOUT, but under STALL_FLOOR for a whole window."""

    def __init__(self, got: int, window: int) -> None:
        super().__init__(f"{got} bytes in {window} s")
        self.got = got
        self.window = window


def stall_window(environ: Mapping[str, str] | None = None) -> int:
    """KCUDA_HUB_STALL_S (checked up front by `hub_errors.environment_error`), else STALL_S."""
    value = (os.environ if environ is None else environ).get("KCUDA_HUB_STALL_S", "").strip()
    return int(value) if value else STALL_S


class RangeIgnored(Exception):
    """The server kept dropping the connection and answered every Range request with the file from byte 0: each
    reconnection starts over, so neither this run nor the next can get further; the partial file must go."""

    def __init__(self, furthest: int, size: int | None, tries: int) -> None:
        super().__init__(f"no further than byte {furthest} in {tries} tries")
        self.furthest = furthest  # the furthest any try got into the file
        self.size = size
        self.tries = tries  # GETs in a row that got no further


def repo_folder(repo_id: str) -> str:
    """models--owner--name: the repo's folder in the Hub cache (the documented cache layout)."""
    return "--".join(["models", *repo_id.split("/")])


def partial_path(storage: Path, etag: str, filename: str) -> Path:
    """Where a plain-HTTP download of `filename` (content `etag`) accumulates, the same path in every run.

    blobs/<etag>.kcuda-<8 hex of sha256(filename)>.incomplete:

    * in blobs/, next to the blob it will become: the final rename stays in one directory (atomic), and
      `hf cache rm` of the repo takes it along;
    * `.incomplete`: huggingface_hub's cache scan (`scan_cache_dir`, `hf cache scan`) lists it as an incomplete
      download, `hf cache prune` deletes it, and nothing else in the library looks at blobs/ except through
      snapshots/. The library's own temp files are <etag>.<8 hex>.incomplete, unique per call ("kcuda-" is not
      hex): neither side ever touches the other's;
    * the etag (the content's hash) in the name: a partial is only ever continued with bytes of the same
      content, whatever commit or CDN URL they come from; the filename hash tells our outdated partials of this
      file (older etags, see remove_stale_partials) from those of other files.
    """
    tag = hashlib.sha256(filename.encode()).hexdigest()[:8]
    return storage / "blobs" / f"{etag}.{_PARTIAL_TAG}-{tag}.incomplete"


def partial_bytes(cache: Path, repo_id: str, filenames: list[str]) -> int:
    """The bytes the partial files of `filenames` (see partial_path, whatever their etag) hold in the cache now:
    what a next run would resume; 0 when none is there (nothing fetched yet, or nothing kept)."""
    storage = cache / repo_folder(repo_id)
    return sum(
        file_size(p) for name in filenames for p in (storage / "blobs").glob(partial_path(storage, "*", name).name)
    )


def download_resumable(
    remote: Remote,
    cache: Path,
    repo_id: str,
    filename: str,
    rev: str,
    token: str | None,
    label: str,
    kept: Kept,
    on_progress: OnProgress | None = None,
) -> tuple[Path, bool]:
    """The file into the cache over plain HTTP, continuing what an earlier run left; (snapshot path, transferred).

    The transfer runs under huggingface_hub's lock for this blob (.locks/<repo folder>/<etag>.lock, the one
    hf_hub_download takes): a concurrent run, ours or any other huggingface_hub user's, waits for it and then
    finds the blob. The blob appears only once the whole file is there, size- and sha256-checked and synced to
    disk; the snapshot link only once the blob is there. On failure `kept.bytes` tells how much the partial file
    keeps for the next run.
    """
    from huggingface_hub.utils import WeakFileLock

    storage = cache / repo_folder(repo_id)
    blob = storage / "blobs" / remote.etag
    pointer = storage / "snapshots" / remote.commit / filename
    if pointer.is_file():  # e.g. a tag seen for the first time, pointing at a commit we have
        record_ref(storage, rev, remote.commit)
        return pointer, False

    partial = partial_path(storage, remote.etag, filename)
    lock = cache / ".locks" / repo_folder(repo_id) / f"{remote.etag}.lock"
    check_writable(cache, label)
    if remote.size is not None and not blob.is_file():  # before anything is made: a refusal leaves no trace
        have = file_size(partial)
        have = have if have <= remote.size else 0
        check_free_space(cache, remote.size - have, label, have)

    created: list[Path] = []  # the folders this run made: taken back when it leaves nothing in them
    transferred = tagged = False
    try:
        for folder in (blob.parent, pointer.parent, lock.parent):
            created += make_parents(folder)
        tagged = tag_cache(cache)
        remove_stale_partials(blob, partial)
        with WeakFileLock(lock):
            try:
                if blob.is_file():  # finished by another process while we waited, or the same content elsewhere
                    partial.unlink(missing_ok=True)
                else:
                    fill_partial(remote, partial, token, label, kept, cache, on_progress)
                    move_into_place(partial, blob)
                    transferred = True
                if not pointer.is_file():
                    link_snapshot(blob, pointer)
            except BaseException:
                if lock.parent in created and not partial.exists():
                    # Our own lock file, unlinked while held: a waiter on it sees it gone and locks afresh.
                    with contextlib.suppress(OSError):
                        lock.unlink()
                raise
    except BaseException:
        if partial.exists():  # kept for the next run: a repo folder needs its snapshots/ (`hf cache scan`)
            created = [d for d in created if d != storage / "snapshots"]
        elif cache in created and tagged:
            with contextlib.suppress(OSError):
                (cache / "CACHEDIR.TAG").unlink()
        remove_empty(sorted(created, key=lambda d: len(d.parts), reverse=True))
        raise
    record_ref(storage, rev, remote.commit)
    return pointer, transferred


def move_into_place(partial: Path, blob: Path) -> None:
    """The checked partial becomes the blob in one atomic rename (same directory). Its mode is already the one
    the umask gives a new file (open_partial creates it 0666 & ~umask), as huggingface_hub's blobs have."""
    os.replace(partial, blob)


def link_snapshot(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<file> -> ../../blobs/<etag>, relative (the cache can move); a copy where the
    filesystem has no symlinks (some network and FAT mounts), as huggingface_hub falls back to."""
    with contextlib.suppress(FileNotFoundError):
        pointer.unlink()
    target = os.path.relpath(blob, pointer.parent)
    try:
        os.symlink(target, pointer)
    except FileExistsError:
        if pointer.resolve() != blob.resolve():
            raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        copy = pointer.with_name(pointer.name + f".{os.getpid()}.tmp")
        shutil.copyfile(blob, copy)
        os.replace(copy, pointer)


def record_ref(storage: Path, rev: str, commit: str) -> None:
    """refs/<rev> -> commit, for the next, offline, run; best effort (a read-only cache still serves the file).

    Written only when it changes (a shared read-only cache is then never written), atomically (a concurrent
    reader never sees half a hash)."""
    if rev == commit:
        return
    ref = storage / "refs" / rev
    with contextlib.suppress(OSError):
        if ref.is_file() and ref.read_text() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)


def tag_cache(cache: Path) -> bool:
    """CACHEDIR.TAG at the cache's root, once; best effort. Whether this call wrote it."""
    tag = cache / "CACHEDIR.TAG"
    with contextlib.suppress(OSError):
        if not tag.exists():
            tag.write_text(CACHEDIR_TAG)
            return True
    return False


def fill_partial(
    remote: Remote,
    partial: Path,
    token: str | None,
    label: str,
    kept: Kept,
    cache: Path,
    on_progress: OnProgress | None = None,
) -> None:
    """Complete `partial` from the bytes it already holds, and check it; on failure keep what can be resumed.

    The check: the size (the loop stops at it, and more is an error), then, when the etag is a sha256 (LFS files,
    so every GGUF), the sha256 of the file as it is on disk after fsync, which is what becomes the blob (one
    read of a file the page cache still holds: ~0.4 s for 500 MB). A mismatch after resuming may come from the
    earlier run's bytes (a crash or power cut can leave garbage at the end of a file), so the partial is
    discarded and the file fetched once more from byte 0 in the same call; a mismatch of bytes all fetched in
    this call is an error, and nothing is kept.
    """
    host = netloc(remote.url) or remote.url
    try:
        for attempt in (1, 2):
            with open_partial(partial) as f:
                have = f.seek(0, os.SEEK_END)
                if remote.size is not None and have > remote.size:
                    have = f.truncate(0)  # longer than the file: not something to continue
                if attempt == 1 and remote.size is not None:
                    check_free_space(cache, remote.size - have, label, have)
                sink = Sink(f, have, label, remote.size, on_progress, stall_window())
                stream_rest(remote, sink, token)
                sync(f)
                if not _SHA256.fullmatch(remote.etag) or sha256_of(f) == remote.etag:
                    return
            partial.unlink()
            resumed = have > 0 and not sink.restarted
            if not resumed or attempt == 2:
                raise HubUnreachableError(
                    f"the download of {label} from {host} does not match its sha256 ({remote.etag[:12]}…); "
                    "the bad copy was deleted, nothing partial was kept",
                    fix="Run again; if it keeps failing, a proxy or security software may be altering downloads "
                    "(or pass --model-path / --synthetic).",
                )
    except Corrupt as err:
        partial.unlink(missing_ok=True)
        raise HubUnreachableError(
            f"{host} sent {err} while downloading {label}; nothing partial was kept",
            fix="Run again; if it keeps failing, check HF_ENDPOINT and any proxy between you and the Hub.",
        ) from None
    except RangeIgnored as err:
        partial.unlink(missing_ok=True)  # bytes from 0 of a server that restarts from 0: nothing to resume from
        of = f" of {amount(err.size)}" if err.size is not None else ""
        raise HubUnreachableError(
            f"{host} kept dropping the connection while downloading {label} and does not honour Range requests, "
            f"so every reconnection started again from byte 0 ({err.tries} tries in a row got no further than "
            f"{amount(err.furthest)}{of}); nothing partial was kept",
            fix="Run again later; if it keeps failing, a proxy between you and the Hub may be cutting long "
            "transfers and stripping Range: check HF_ENDPOINT and any proxy, or pass --model-path / --synthetic.",
        ) from None
    except Stalled as err:
        kept.bytes = file_size(partial)
        if not kept.bytes:
            partial.unlink(missing_ok=True)
        raise HubUnreachableError(
            f"the download of {label} from {host} stalled: {amount(err.got)} in the last {err.window} s "
            f"(under {amount(STALL_FLOOR)}/s); {kept_note(kept.bytes)}",
            fix=f"Run again{' to resume' if kept.bytes else ''}; if it stays this slow, check any proxy between you "
            "and the Hub, or set KCUDA_HUB_STALL_S=0 to wait however long it takes.",
        ) from None
    except BaseException:
        kept.bytes = file_size(partial)
        if not kept.bytes:
            partial.unlink(missing_ok=True)
        raise


def stream_rest(remote: Remote, sink: Sink, token: str | None) -> None:
    """GET the bytes the sink lacks (`Range: bytes=<have>-`) until it holds the whole file.

    Same client and policy as huggingface_hub's own downloads: its shared httpx2 client (`http_stream_backoff`:
    proxies, CA bundle, user agent), its headers (`build_hf_headers`: HF_TOKEN / the stored login, dropped for
    another host), its timeout (HF_HUB_DOWNLOAD_TIMEOUT), 408/429 retried with backoff, other errors raised
    (`hf_raise_for_status`), and a dropped connection or a timeout resumed after 1 s from the bytes written, up
    to 5 times in a row without new bytes. A 200 to a Range request (the server ignored it) restarts the file
    from byte 0 with that body; a 416 or a 206 for another range gets the whole file asked for again.

    New bytes means bytes beyond the furthest this call ever had (`furthest`): bytes written again after a
    restart are not progress, or a server that ignores Range and drops every connection at the same point would
    be asked again forever. When the reconnections run out, the transport error is raised as it is, or, if the
    server ignored a Range request in this call, `RangeIgnored` (a next run would only start over too).
    """
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

    headers = build_hf_headers(token=token)
    if not remote.send_token:
        headers.pop("authorization", None)
    headers["Accept-Encoding"] = "identity"  # byte offsets must be the file's, not those of a compressed body
    size = remote.size
    retries = RETRIES
    furthest = sink.have  # the furthest byte of the file this call has had on disk: only beyond it is progress
    tries = 0  # GETs since the last progress
    range_ignored = False  # the server answered a Range request of this call with the file from byte 0
    while size is None or sink.have < size:
        request = dict(headers)
        if sink.have:
            request["Range"] = f"bytes={sink.have}-"
        before = sink.have
        tries += 1
        try:
            with http_stream_backoff(
                "GET",
                remote.url,
                headers=request,
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                retry_on_exceptions=(),
                retry_on_status_codes=(408, 429),
            ) as response:
                if response.status_code == 416 and sink.have:  # the partial cannot be continued
                    sink.restart()
                    continue
                hf_raise_for_status(response)
                start = first_byte(response)
                if start != sink.have:
                    if start == 0:  # Range ignored: the whole file follows
                        sink.restart()
                        range_ignored = True
                    elif sink.have:
                        sink.restart()
                        continue
                    else:
                        raise Corrupt(f"HTTP {response.status_code} with no usable Content-Range")
                if size is None:
                    size = file_length(response)
                for chunk in response.iter_bytes():
                    if size is not None and sink.have + len(chunk) > size:
                        raise Corrupt(f"more than the {size} bytes the Hub announced")
                    sink.write(chunk)
                    if sink.have > furthest:
                        furthest = sink.have
                        retries, tries = RETRIES, 0
            if size is None:
                return  # nothing announced the size: the end of the body is the end of the file
            if sink.have < size and (response.status_code != 206 or sink.have == before):
                # A complete response, yet short: not a dropped connection (that raises), another file.
                raise Corrupt(f"{sink.have} of the {size} bytes the Hub announced, then ended the transfer")
            # (a short 206 that made progress: a server that caps ranges; ask for the rest)
        except (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError) as err:
            if retries <= 0:
                if range_ignored:
                    raise RangeIgnored(furthest, size, tries) from err
                raise
            retries -= 1
            time.sleep(RETRY_WAIT_S)


def first_byte(response: Any) -> int | None:
    """The offset in the file of the response body's first byte: 0 for a 200, from Content-Range for a 206."""
    if response.status_code == 200:
        return 0
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        return int(match.group(1)) if match else None
    return None


def file_length(response: Any) -> int | None:
    """The whole file's length: the total of Content-Range (a 206), else Content-Length; None for a compressed
    body (its length is not the file's) or a server that says neither."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    total = response.headers.get("Content-Range", "").rpartition("/")[2].strip()
    if total.isdigit():
        return int(total)
    length = response.headers.get("Content-Length", "").strip()
    return int(length) if length.isdigit() else None


class Sink:
    """The partial file being filled from `have` on, reported to `on_progress` as it grows.

    It also bounds the transfer in total, which per-read timeouts cannot: a server (or a proxy) that trickles a
    few bytes every few seconds never times out. Every `window` seconds (reconnections included) the bytes
    received in it must average STALL_FLOOR a second, else `Stalled`; the partial is kept to resume."""

    def __init__(
        self,
        f: BinaryIO,
        have: int,
        label: str,
        total: int | None,
        on_progress: OnProgress | None,
        window: int = STALL_S,
    ) -> None:
        self.f = f
        self.have = have
        self.label = label
        self.total = total
        self.on_progress = on_progress
        self.restarted = False  # whether the bytes of an earlier run were thrown away
        self.window = window
        self._received = 0  # bytes received by this sink, bytes written again after a restart included
        self._mark = (time.monotonic(), 0)  # the current window's start: (time, bytes received then)
        f.seek(have)
        self._report()

    def write(self, chunk: bytes) -> None:
        self.f.write(chunk)
        self.have += len(chunk)
        self._received += len(chunk)
        self._report()
        if self.window:
            now = time.monotonic()
            since, then = self._mark
            if now - since >= self.window:
                got = self._received - then
                if got < STALL_FLOOR * self.window:
                    raise Stalled(got, self.window)
                self._mark = (now, self._received)

    def restart(self) -> None:
        """Back to an empty file (the server ignored our Range, or what we had cannot be continued)."""
        self.f.seek(0)
        self.f.truncate()
        self.have = 0
        self.restarted = True
        self._report()

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(DownloadProgress(self.label, self.have, self.total))


def sha256_of(f: BinaryIO) -> str:
    f.seek(0)
    return hashlib.file_digest(f, "sha256").hexdigest()  # type: ignore[arg-type]  # BinaryIO has readinto


def open_partial(path: Path) -> BinaryIO:
    """The partial file for reading and writing, as it is (created empty when missing)."""
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+b")


def sync(f: BinaryIO) -> None:
    """Flush and fsync: the blob this becomes must survive a power cut with the bytes that were checked."""
    f.flush()
    try:
        os.fsync(f.fileno())
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):  # filesystems without fsync: go on
            raise


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def check_free_space(where: Path, need: int, label: str, have: int = 0, *, needs: str = "needs") -> None:
    """Refuse to start a download that cannot fit: failing after 400 MB is slower and can fill the disk for others.

    `need`: the bytes still to download; `have`: those a partial file already holds (they need no new space);
    `needs`: the message's subject and verb (see disk_full_error).
    """
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # cannot tell; the download itself will report ENOSPC
    if free < need:
        raise disk_full_error(label, where, (need, free), have=have, needs=needs)


def blocked_by(where: Path) -> str | None:
    """Why `where` can never be a directory, in words: a part of the path is a file (ENOTDIR); else None."""
    probe = where
    while not probe.exists() and probe != probe.parent:  # exists() is False through a file, too
        probe = probe.parent
    try:
        mode = probe.stat().st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return None
    kind = "a file" if stat.S_ISREG(mode) else special_kind(mode)
    return f"{probe} is {kind}, not a directory"


def writable_problem(where: Path) -> str | None:
    """Why nothing can be written in (or made at) `where`, in words; None when it looks writable.

    Asked of the nearest part of the path that exists, before a folder is made: a file where a folder must be,
    a read-only filesystem, a folder without write permission (root passes that one, as the OS lets it)."""
    blocked = blocked_by(where)
    if blocked is not None:
        return blocked
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return f"{probe} is on a read-only file system" if read_only else f"{probe} is not writable (permission denied)"


def check_writable(cache: Path, label: str) -> None:
    """Refuse a download into a cache that cannot be written, before anything is made there (exit 13)."""
    problem = writable_problem(cache)
    if problem is not None:
        raise unwritable_error(label, cache, problem)


def remove_stale_partials(blob: Path, ours: Path | None = None) -> None:
    """Delete dead partial files of this blob, and of our file under an older etag, untouched for 10 minutes.

    huggingface_hub 2.x names its temp files <etag>.<8 hex>.incomplete, deletes them itself unless the process
    was killed (SIGKILL), and never resumes from them: an old one is dead weight that would only eat the disk
    check. `ours` is this file's resumable partial (see partial_path): kept, whatever its age; our partials of
    the same repo file under another etag (the file changed on the Hub since) can never be resumed. A live
    download writes to its file every few seconds, so the age test spares other processes' work in progress.
    """
    try:
        mine = len(blob.name)
        candidates = [p for p in blob.parent.glob(f"{blob.name}.*") if _LIBRARY_TEMP.fullmatch(p.name[mine:])]
        if ours is not None:
            suffix = ours.name[mine:]
            candidates += [p for p in blob.parent.glob(f"*{suffix}") if p.name != ours.name]
    except OSError:
        return
    now = time.time()
    for partial in candidates:
        try:
            if now - partial.stat().st_mtime > STALE_PARTIAL_S:
                partial.unlink()
        except OSError:
            pass
