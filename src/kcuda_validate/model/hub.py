"""Get one GGUF file from the Hugging Face Hub, or from its local cache, with failures a user can act on.

`load` needs a real model file; most users have none lying around, so we fetch a small default one.
huggingface_hub provides the cache layout, the HTTP client (proxies, headers, token), the lock and the Xet
transfer; this module adds what a validation tool needs on top of it:

* cache first: a file already complete in the cache for the requested revision is returned with no
  network access at all, so a second run works offline and starts at once;
* fail fast: huggingface_hub's own fallback retries an unreachable Hub with 60 s timeouts and backoff
  (minutes in total), so we ask for the file's metadata ourselves first, once, with a short timeout and a
  hard deadline (DNS hangs are not covered by socket timeouts);
* disk check: the size from that metadata call is compared with the free space where the cache lives
  before a single byte is downloaded;
* resume across runs: huggingface_hub 2.x cannot (see `_download`), so plain-HTTP downloads are done here
  (see `_download_resumable`): into a stable partial file in the cache, continued with a Range request by the
  next run after Ctrl-C, a dropped network or a full disk, checked against the file's sha256 before it becomes
  a blob; Xet-served files (hf_xet installed) still go through hf_hub_download and restart from zero;
* one-line errors: every Hub failure becomes one of the project's `KcudaError`s naming the repo, file
  and revision, with a fix.

Environment: HF_HOME / HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_ETAG_TIMEOUT and
HF_HUB_DOWNLOAD_TIMEOUT are read by huggingface_hub when it is first imported (`huggingface_hub.constants`);
we always go through those constants so that this module and every other huggingface_hub call in the
process agree. HF_TOKEN (or a stored `hf auth login`) is read by huggingface_hub per request; its value is
never logged or printed here. Nor are credentials inside HF_ENDPOINT (`http://user:token@host`): the Hub is
named by its host and port only (`_hub_host`, `_endpoint`), and text from servers and exceptions passes through
`safetext.safe` (`_clip`) — as everything the tool prints or logs does once more at its sinks.

huggingface_hub is imported inside functions only: `kcuda-validate --help` must stay fast.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar
from urllib.parse import urlsplit

from kcuda_validate.errors import (
    DiskFullError,
    HubAuthError,
    HubUnreachableError,
    KcudaError,
    ModelNotFoundError,
    UsageError,
)
from kcuda_validate.safetext import safe

# The default model: Apache-2.0, not gated, ships a chat template, < 600 MB: fits any GPU and any CI cache.
DEFAULT_REPO_ID = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
DEFAULT_FILENAME = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
DEFAULT_REVISION = "main"

METADATA_TIMEOUT_S = 3.0
"""Per-phase (connect, read) timeout of the one metadata request that decides whether the Hub is reachable.

A HEAD to huggingface.co answers in well under a second on any usable link. With the hard deadline's grace
(`_DEADLINE_GRACE_S`), a Hub that accepts the connection and never answers is reported within 4 s of the
request, so the whole command (start-up included, about half a second) fails within the 5 s we promise; 4 s
of timeout (5 s of deadline) took 5.4 s end to end. Users on very slow links can raise it with
HF_HUB_ETAG_TIMEOUT (huggingface_hub's own knob for this very request), which then wins.
"""

# Beyond the socket timeout, the hard deadline also covers what socket timeouts do not: name resolution, and the
# GET {endpoint}/api/agent-harnesses (3 s timeout) huggingface_hub makes while building the first request's headers
# when its daily registry cache (HF_HOME/.agent_harnesses.json) is missing or stale.
_DEADLINE_GRACE_S = 1.0
_STALE_PARTIAL_S = 600.0  # a temp file untouched this long belongs to a download that died (killed process)
_RETRIES = 5  # in-process reconnections in a row without new bytes, as huggingface_hub's http_get
_RETRY_WAIT_S = 1.0
_PARTIAL_TAG = "kcuda"  # blobs/<etag>.kcuda-<8 hex of the filename>.incomplete: see _partial_path
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_LISTED = 5

_OR_OFFLINE = "or set HF_HUB_OFFLINE=1 to use the cache, or pass --model-path / --synthetic"
_UNREACHABLE_FIX = "check your network/proxy, " + _OR_OFFLINE
_SLOW_LINK_HINT = " (on a slow link, raise HF_HUB_ETAG_TIMEOUT, in seconds)"

Source = Literal["cache", "download"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file on local disk and where it came from, for the report and for `load`."""

    path: Path  # the cache's snapshot path (keeps the repo's file name; a symlink to the blob)
    repo_id: str
    filename: str
    revision: str  # as requested (branch, tag or commit); "main" when none was given
    commit_hash: str | None  # the commit it resolved to
    size_bytes: int
    source: Source
    download_s: float | None  # wall time of the transfer; None when served from the cache


# --------------------------------------------------------------------------------------------------------------
# Cache (no network)


def cache_dir() -> Path:
    """The Hub cache directory (one resolution for the whole tool: model.source.hub_cache_dir)."""
    from kcuda_validate.model.source import hub_cache_dir

    return hub_cache_dir()


def find_cached(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """The complete cached copy of `filename` at `revision`, or None; never touches the network.

    A branch or tag resolves through the cache's refs/ (the commit it pointed to when last downloaded).
    """
    hit = _lookup_cache(repo_id, filename, revision or DEFAULT_REVISION)
    return hit[0] if isinstance(hit, tuple) else None


def _lookup_cache(repo_id: str, filename: str, revision: str) -> tuple[Path, str] | bool | None:
    """(snapshot path, commit) when complete in the cache; True when the cache recorded "no such file"; else None.

    The same walk as huggingface_hub's try_to_load_from_cache (refs/<rev> -> commit -> snapshots/<commit>/<file>),
    done here because importing huggingface_hub.file_download costs ~0.6 s (httpx) and a cache hit should not.
    Completeness: huggingface_hub and _download_resumable both download into a temp or partial file, rename it to
    blobs/<etag> only after the checks passed, and link the snapshot to it last; so a snapshot entry that resolves
    to an existing file is complete, and a dangling or missing one means "not cached".
    """
    _check_names(repo_id, filename, revision)
    storage = cache_dir() / _repo_folder(repo_id)
    commit = revision
    ref = storage / "refs" / revision
    try:
        if ref.is_file():
            commit = ref.read_text().strip()
        path = storage / "snapshots" / commit / filename
        if path.is_file():  # follows the symlink: False when the blob is missing
            return path, commit
        if (storage / ".no_exist" / commit / filename).is_file():
            return True
    except OSError:
        return None
    return None


def _repo_folder(repo_id: str) -> str:
    """models--owner--name, as huggingface_hub's repo_folder_name (without importing file_download)."""
    return "--".join(["models", *repo_id.split("/")])


_REPO_ID = re.compile(r"(?:\w[\w.-]*/)?\w[\w.-]{0,95}")  # huggingface_hub's REPO_ID_REGEX, a little looser


def _check_names(repo_id: str, filename: str, revision: str) -> None:
    """Reject malformed input locally: the Hub would only answer a confusing 404, or a path could leave the cache."""
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UsageError(
            f"--repo-id {repo_id!r} is not a Hub repo id",
            fix="Use the form owner/name, e.g. --repo-id Qwen/Qwen2.5-0.5B-Instruct-GGUF.",
        )
    if not filename or filename.startswith("/") or ".." in filename.split("/") or "\\" in filename:
        raise UsageError(
            f"--filename {filename!r} is not a file path inside a repo",
            fix="Name the file as listed in the repo, e.g. --filename model-q4_k_m.gguf.",
        )
    if not revision or revision.startswith("/") or ".." in revision.split("/"):
        raise UsageError(
            f"--revision {revision!r} is not a branch, tag or commit",
            fix="Pass a branch, tag or commit of the repo, or drop --revision (default: main).",
        )


# --------------------------------------------------------------------------------------------------------------
# Fetch


def fetch_model(
    repo_id: str,
    filename: str,
    revision: str | None = None,
    *,
    progress: bool = True,
    token: str | None = None,
) -> ModelFile:
    """Return `filename` from `repo_id` at `revision`, from the cache if complete there, else downloaded into it.

    `token` overrides HF_TOKEN / the stored login (None: use those). A progress bar goes to stderr when
    `progress` is set and stderr is a terminal; stdout is never written (it may carry --json).
    Raises ModelNotFoundError, HubAuthError, HubUnreachableError, DiskFullError or UsageError, all one line.
    """
    from huggingface_hub import constants

    rev = revision or DEFAULT_REVISION
    label = f"{repo_id}/{filename} @ {rev}"

    cached = _lookup_cache(repo_id, filename, rev)
    if isinstance(cached, tuple):
        path, commit = cached
        return ModelFile(
            path=path,
            repo_id=repo_id,
            filename=filename,
            revision=rev,
            commit_hash=commit,
            size_bytes=path.stat().st_size,
            source="cache",
            download_s=None,
        )

    if constants.HF_HUB_OFFLINE:
        if cached is True:
            raise ModelNotFoundError(
                f"file '{filename}' does not exist in repo '{repo_id}' at revision '{rev}' "
                "(as recorded in the cache; offline mode is on)",
                fix="Name a file that exists in the repo, or unset HF_HUB_OFFLINE to ask the Hub again.",
            )
        raise ModelNotFoundError(
            f"{label}: not in the Hub cache {cache_dir()} and offline mode is on (HF_HUB_OFFLINE=1)",
            fix="Unset HF_HUB_OFFLINE to download it, or pass --model-path / --synthetic.",
        )

    timeout = _metadata_timeout()
    remote = _fetch_metadata(repo_id, filename, rev, token, timeout)

    show = progress and _stderr_is_terminal() and constants.HF_HUB_DISABLE_PROGRESS_BARS is not True
    bar_class, stop_bar = _rich_bar_class(label) if show else (_SilentBar, _nothing)
    kept = _Kept()
    start = time.perf_counter()
    try:
        if remote.xet:
            local, downloaded = _download_xet(remote, repo_id, filename, rev, token, timeout, bar_class, label)
        else:
            local, downloaded = _download_resumable(remote, repo_id, filename, rev, token, bar_class, label, kept)
    except KcudaError:
        raise
    except Exception as err:
        mapped = _map_error(
            err,
            repo_id=repo_id,
            filename=filename,
            rev=rev,
            timeout=timeout,
            downloading=True,
            size=remote.size,
            kept=None if remote.xet else kept.bytes,
        )
        if mapped is None:
            raise
        raise mapped from err
    finally:
        # Also on KeyboardInterrupt; what the transfer wrote so far stays in its partial file for the next run.
        stop_bar()
    elapsed = time.perf_counter() - start

    path = Path(local)
    commit = path.parent.name if path.parent.parent.name == "snapshots" else remote.commit
    return ModelFile(
        path=path,
        repo_id=repo_id,
        filename=filename,
        revision=rev,
        commit_hash=commit,
        size_bytes=path.stat().st_size,
        source="download" if downloaded else "cache",
        download_s=elapsed if downloaded else None,
    )


def _download_xet(
    remote: _Remote,
    repo_id: str,
    filename: str,
    rev: str,
    token: str | None,
    timeout: float,
    bar_class: type,
    label: str,
) -> tuple[str, bool]:
    """A Xet-served file, through hf_hub_download (hf_xet does the transfer); (snapshot path, transferred)."""
    storage = cache_dir() / _repo_folder(repo_id)
    blob = storage / "blobs" / remote.etag
    pointer = storage / "snapshots" / remote.commit / filename
    already_local = blob.is_file() or pointer.is_file()
    if not already_local:
        _remove_stale_partials(blob)
        if remote.size:
            _check_free_space(remote.size, label)
    return _download(repo_id, filename, rev, token, timeout, bar_class), not already_local


def _download(repo_id: str, filename: str, rev: str, token: str | None, timeout: float, bar_class: type) -> str:
    """hf_hub_download into the standard cache, which also writes refs/<rev> for the next, offline, run.

    Used for Xet-served files only (see _download_resumable for the rest). What huggingface_hub 2.4.0 does
    (file_download.py): it makes a second, short HEAD of its own (ours just succeeded), then
    `_download_to_tmp_and_move` downloads into blobs/<etag>.<uuid4 hex[:8]>.incomplete, a name unique to this
    call, and renames it to the blob once complete and size-checked; its `finally` deletes that temp file on any
    failure, KeyboardInterrupt included. `http_get` resumes a dropped connection in-process only (Range from
    the bytes written, up to 5 times in a row without progress); there is no resume_download or equivalent any
    more, so nothing partial survives the process. We never pass force_download, which would bypass the cache.
    """
    from huggingface_hub import hf_hub_download

    return hf_hub_download(
        repo_id,
        filename,
        revision=rev,
        token=token,
        etag_timeout=timeout,
        tqdm_class=bar_class,  # any tqdm-like class works (see _SilentBar)
    )


# --------------------------------------------------------------------------------------------------------------
# Resumable plain-HTTP download


def _partial_path(storage: Path, etag: str, filename: str) -> Path:
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
      file (older etags, see _remove_stale_partials) from those of other files.
    """
    tag = hashlib.sha256(filename.encode()).hexdigest()[:8]
    return storage / "blobs" / f"{etag}.{_PARTIAL_TAG}-{tag}.incomplete"


def _download_resumable(
    remote: _Remote,
    repo_id: str,
    filename: str,
    rev: str,
    token: str | None,
    bar_class: type,
    label: str,
    kept: _Kept,
) -> tuple[str, bool]:
    """The file into the cache over plain HTTP, continuing what an earlier run left; (snapshot path, transferred).

    The cache ends exactly as hf_hub_download leaves it (blobs/<etag>, snapshots/<commit>/<file> -> the blob,
    refs/<rev>), written by its own helpers. The transfer runs under huggingface_hub's lock for this blob
    (.locks/<repo folder>/<etag>.lock, the one hf_hub_download takes): a concurrent run, ours or any other
    huggingface_hub user's, waits for it and then finds the blob. The blob appears only once the whole file is
    there, size- and sha256-checked and synced to disk; the snapshot link only once the blob is there.
    On failure `kept.bytes` tells how much the partial file keeps for the next run.
    """
    from huggingface_hub import file_download
    from huggingface_hub.utils import WeakFileLock

    cache = cache_dir()
    storage = cache / _repo_folder(repo_id)
    blob = storage / "blobs" / remote.etag
    pointer = storage / "snapshots" / remote.commit / filename
    if pointer.is_file():  # e.g. a tag seen for the first time, pointing at a commit we have
        _record_ref(storage, rev, remote.commit)
        return str(pointer), False

    partial = _partial_path(storage, remote.etag, filename)
    lock = cache / ".locks" / _repo_folder(repo_id) / f"{remote.etag}.lock"
    for folder in (blob.parent, pointer.parent, lock.parent):
        folder.mkdir(parents=True, exist_ok=True)
    tag_cache = getattr(file_download, "_create_cachedir_tag", None)  # CACHEDIR.TAG, as hf_hub_download does
    if tag_cache is not None:
        tag_cache(cache)
    _remove_stale_partials(blob, partial)

    transferred = False
    with WeakFileLock(lock):
        if blob.is_file():  # finished by another process while we waited, or the same content under another name
            partial.unlink(missing_ok=True)
        else:
            _fill_partial(remote, partial, token, bar_class, label, kept)
            file_download._chmod_and_move(partial, blob)  # the library's permissions, then an atomic rename
            transferred = True
        if not pointer.is_file():
            file_download._create_symlink(str(blob), str(pointer), new_blob=transferred)
    _record_ref(storage, rev, remote.commit)
    return str(pointer), transferred


def _record_ref(storage: Path, rev: str, commit: str) -> None:
    """refs/<rev> -> commit, for the next, offline, run; best effort (a read-only cache still serves the file)."""
    from huggingface_hub import file_download

    with contextlib.suppress(OSError):
        file_download._cache_commit_hash_for_specific_revision(str(storage), rev, commit)


class _Corrupt(Exception):
    """The server sent something that cannot be the file; the partial file must go."""


def _fill_partial(remote: _Remote, partial: Path, token: str | None, bar_class: type, label: str, kept: _Kept) -> None:
    """Complete `partial` from the bytes it already holds, and check it; on failure keep what can be resumed.

    The check: the size (the loop stops at it, and more is an error), then, when the etag is a sha256 (LFS files,
    so every GGUF), the sha256 of the file as it is on disk after fsync, which is what becomes the blob (one
    read of a file the page cache still holds: ~0.4 s for 500 MB). A mismatch after resuming may come from the
    earlier run's bytes (a crash or power cut can leave garbage at the end of a file), so the partial is
    discarded and the file fetched once more from byte 0 in the same call; a mismatch of bytes all fetched in
    this call is an error, and nothing is kept.
    """
    host = urlsplit(remote.url).netloc or remote.url
    bar: Any = None
    try:
        for attempt in (1, 2):
            with _open_partial(partial) as f:
                have = f.seek(0, os.SEEK_END)
                if remote.size is not None and have > remote.size:
                    have = f.truncate(0)  # longer than the file: not something to continue
                if attempt == 1 and remote.size is not None:
                    _check_free_space(remote.size - have, label, have)
                if bar is None:
                    bar = bar_class(total=remote.size, initial=have, desc=label, unit="B", unit_scale=True)
                sink = _Sink(f, have, bar)
                _stream_rest(remote, sink, token)
                _sync(f)
                if not _SHA256.fullmatch(remote.etag) or _sha256_of(f) == remote.etag:
                    return
            partial.unlink()
            bar.update(-sink.have)
            resumed = have > 0 and not sink.restarted
            if not resumed or attempt == 2:
                raise HubUnreachableError(
                    f"the download of {label} from {host} does not match its sha256 ({remote.etag[:12]}…); "
                    "the bad copy was deleted, nothing partial was kept",
                    fix="Run again; if it keeps failing, a proxy or security software may be altering downloads "
                    "(or pass --model-path / --synthetic).",
                )
    except _Corrupt as err:
        partial.unlink(missing_ok=True)
        raise HubUnreachableError(
            f"{host} sent {err} while downloading {label}; nothing partial was kept",
            fix="Run again; if it keeps failing, check HF_ENDPOINT and any proxy between you and the Hub.",
        ) from None
    except BaseException:
        kept.bytes = _file_size(partial)
        if not kept.bytes:
            partial.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()


def _stream_rest(remote: _Remote, sink: _Sink, token: str | None) -> None:
    """GET the bytes the sink lacks (`Range: bytes=<have>-`) until it holds the whole file.

    Same client and policy as huggingface_hub's http_get (file_download.py): its shared httpx client
    (`http_stream_backoff` -> `get_session()`: proxies, CA bundle, user agent), its headers (`build_hf_headers`:
    HF_TOKEN / the stored login, dropped for a CDN as hf_hub_download does), its timeout (HF_HUB_DOWNLOAD_TIMEOUT),
    408/429 retried with backoff, other errors raised (`hf_raise_for_status`), and a dropped connection or a
    timeout resumed after 1 s from the bytes written, up to 5 times in a row without new bytes. A 200 to a Range
    request (the server ignored it) restarts the file from byte 0 with that body, as http_get does; a 416 or a
    206 for another range gets the whole file asked for again.
    """
    import httpx2
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

    headers = build_hf_headers(token=token)
    if not remote.send_token:
        headers.pop("authorization", None)
    headers["Accept-Encoding"] = "identity"  # byte offsets must be the file's, not those of a compressed body
    size = remote.size
    retries = _RETRIES
    while size is None or sink.have < size:
        request = dict(headers)
        if sink.have:
            request["Range"] = f"bytes={sink.have}-"
        before = sink.have
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
                start = _first_byte(response)
                if start != sink.have:
                    if start == 0:  # Range ignored: the whole file follows
                        sink.restart()
                    elif sink.have:
                        sink.restart()
                        continue
                    else:
                        raise _Corrupt(f"HTTP {response.status_code} with no usable Content-Range")
                if size is None:
                    size = file_download._get_file_length_from_http_response(response)
                for chunk in response.iter_bytes():
                    if size is not None and sink.have + len(chunk) > size:
                        raise _Corrupt(f"more than the {size} bytes the Hub announced")
                    sink.write(chunk)
                    retries = _RETRIES
            if size is None:
                return  # nothing announced the size: the end of the body is the end of the file
            if sink.have < size and (response.status_code != 206 or sink.have == before):
                # A complete response, yet short: not a dropped connection (that raises), another file.
                raise _Corrupt(f"{sink.have} of the {size} bytes the Hub announced, then ended the transfer")
            # (a short 206 that made progress: a server that caps ranges; ask for the rest)
        except (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError):
            if retries <= 0:
                raise
            retries -= 1
            time.sleep(_RETRY_WAIT_S)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(?:\d+|\*)")


def _first_byte(response: Any) -> int | None:
    """The offset in the file of the response body's first byte: 0 for a 200, from Content-Range for a 206."""
    if response.status_code == 200:
        return 0
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        return int(match.group(1)) if match else None
    return None


class _Sink:
    """The partial file being filled from `have` on, and the progress bar that follows it."""

    def __init__(self, f: BinaryIO, have: int, bar: Any) -> None:
        self.f = f
        self.have = have
        self.bar = bar
        self.restarted = False  # whether the bytes of an earlier run were thrown away
        f.seek(have)

    def write(self, chunk: bytes) -> None:
        self.f.write(chunk)
        self.have += len(chunk)
        self.bar.update(len(chunk))

    def restart(self) -> None:
        """Back to an empty file (the server ignored our Range, or what we had cannot be continued)."""
        self.f.seek(0)
        self.f.truncate()
        self.bar.update(-self.have)
        self.have = 0
        self.restarted = True


def _sha256_of(f: BinaryIO) -> str:
    f.seek(0)
    return hashlib.file_digest(f, "sha256").hexdigest()  # type: ignore[arg-type]  # BinaryIO has readinto


def _open_partial(path: Path) -> BinaryIO:
    """The partial file for reading and writing, as it is (created empty when missing)."""
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+b")


def _sync(f: BinaryIO) -> None:
    """Flush and fsync: the blob this becomes must survive a power cut with the bytes that were checked."""
    f.flush()
    try:
        os.fsync(f.fileno())
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):  # filesystems without fsync: go on
            raise


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _metadata_timeout() -> float:
    from huggingface_hub import constants

    if constants.HF_HUB_ETAG_TIMEOUT != constants.DEFAULT_ETAG_TIMEOUT:  # the user set HF_HUB_ETAG_TIMEOUT
        return float(constants.HF_HUB_ETAG_TIMEOUT)
    return METADATA_TIMEOUT_S


@dataclass(frozen=True)
class _Remote:
    """What the Hub says about the file at the requested revision."""

    commit: str
    etag: str  # the blob's name in the cache (sha256 for LFS/Xet files)
    size: int | None
    url: str = ""  # where to GET the bytes: the CDN location the Hub redirected to, or the /resolve URL itself
    send_token: bool = True  # False for a CDN: the token is for the Hub only (as huggingface_hub decides)
    xet: bool = False  # a Xet file and hf_xet is usable: huggingface_hub does the transfer


@dataclass
class _Kept:
    """How many bytes a failed plain-HTTP transfer left in its partial file, for the error message."""

    bytes: int = 0


def _fetch_metadata(repo_id: str, filename: str, rev: str, token: str | None, timeout: float) -> _Remote:
    """One HEAD on /resolve: commit, etag and size, or the reason we cannot have the file, within the deadline.

    No retries (`retry_on_errors=False`): an unreachable Hub is reported at once instead of after backoff.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)  # the library's own rules, in case they are stricter than _check_names
    except ValueError as err:
        raise UsageError(
            f"--repo-id {repo_id!r} is not a Hub repo id ({_one_line(err)})",
            fix="Use the form owner/name, e.g. --repo-id Qwen/Qwen2.5-0.5B-Instruct-GGUF.",
        ) from None
    url = hf_hub_url(repo_id, filename, revision=rev)
    try:
        meta = _with_deadline(
            lambda: get_hf_file_metadata(url, token=token, timeout=timeout, retry_on_errors=False),
            timeout + _DEADLINE_GRACE_S,
        )
    except _NoAnswer:
        raise HubUnreachableError(
            f"cannot reach {_hub_host()} (no answer within {timeout + _DEADLINE_GRACE_S:g} s) "
            f"to fetch {repo_id}/{filename} @ {rev}",
            fix=_UNREACHABLE_FIX + _SLOW_LINK_HINT,
        ) from None
    except Exception as err:
        mapped = _map_error(err, repo_id=repo_id, filename=filename, rev=rev, timeout=timeout, token=token)
        if mapped is None:
            raise
        raise mapped from err
    if not meta.commit_hash or not meta.etag:
        missing = "X-Repo-Commit" if not meta.commit_hash else "ETag"
        raise HubUnreachableError(
            f"{_hub_host()} answered for {repo_id}/{filename} @ {rev} but not like the Hugging Face Hub "
            f"(no {missing} header)",
            fix="Check HF_ENDPOINT and any proxy or captive portal between you and the Hub, " + _OR_OFFLINE,
        )
    return _Remote(commit=meta.commit_hash, etag=meta.etag, size=meta.size, **_download_source(url, meta))


def _download_source(url: str, meta: Any) -> dict[str, Any]:
    """Where the bytes come from and whether the token goes there: hf_hub_download's rules, from the same HEAD.

    `_get_metadata_or_catch_error` (file_download.py) downloads a non-Xet file from `meta.location` (the CDN
    URL of the Hub's 302, saving a redirect) and drops the token unless that is the Hub's own host. A Xet file
    without hf_xet is fetched from the /resolve URL, following the redirect (httpx drops the token cross-host).
    """
    from huggingface_hub import file_download

    if meta.xet_file_data is not None:
        # hf_xet transfers in parallel but cannot resume across runs; a model download that survives Ctrl-C
        # matters more here, so Xet-backed files come over resumable HTTP unless KCUDA_HUB_XET=1 asks for hf_xet.
        use_xet = os.environ.get("KCUDA_HUB_XET", "") not in ("", "0") and bool(file_download.is_xet_available())
        return {"url": url, "send_token": True, "xet": use_xet}
    location = meta.location or url
    if location == url:
        return {"url": url, "send_token": True, "xet": False}
    try:
        from huggingface_hub.utils._http import _is_same_or_hub_host

        same = _is_same_or_hub_host(url, location)
    except ImportError:  # older huggingface_hub: same origin only
        same = urlsplit(url)[:2] == urlsplit(location)[:2]
    return {"url": location, "send_token": same, "xet": False}


class _NoAnswer(Exception):
    """The call did not return within its deadline."""


def _with_deadline(fn: Callable[[], _T], deadline_s: float) -> _T:
    """Run `fn` in a daemon thread and give up after `deadline_s`.

    httpx timeouts bound connect and read, but not name resolution (getaddrinfo blocks for the resolver's
    own timeouts, 5 s or more per server). An abandoned thread ends on its own; being a daemon it never
    delays exit.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed over to the caller's thread
            box["error"] = err

    worker = threading.Thread(target=run, name="kcuda-hub-request", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if worker.is_alive():
        raise _NoAnswer
    if "error" in box:
        raise box["error"]
    return box["value"]


# --------------------------------------------------------------------------------------------------------------
# Error mapping


def _map_error(
    err: BaseException,
    *,
    repo_id: str,
    filename: str,
    rev: str,
    timeout: float,
    token: str | None = None,
    downloading: bool = False,
    size: int | None = None,
    kept: int | None = None,
) -> KcudaError | None:
    """The project's error for a huggingface_hub / httpx / OS failure, or None when we do not understand it.

    `kept`: bytes a failed resumable download left for the next run (None: a transfer that keeps nothing).
    """
    import httpx2
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = f"{repo_id}/{filename} @ {rev}"
    host = _hub_host()

    if _is_disk_full(err):
        return _disk_full_error(label, cache_dir(), None, size, kept)

    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        # hf_hub_download's own HEAD failed (the Hub went away between our HEAD and its): report the cause.
        return _map_error(
            err.__cause__,
            repo_id=repo_id,
            filename=filename,
            rev=rev,
            timeout=timeout,
            downloading=downloading,
            kept=kept,
        )

    if isinstance(err, OfflineModeIsEnabled):
        return ModelNotFoundError(
            f"{label}: not in the Hub cache {cache_dir()} and offline mode is on (HF_HUB_OFFLINE=1)",
            fix="Unset HF_HUB_OFFLINE to download it, or pass --model-path / --synthetic.",
        )

    if isinstance(err, GatedRepoError):
        page = f"{_endpoint()}/{repo_id}"
        if err.response.status_code == 401:
            return HubAuthError(
                f"repo '{repo_id}' is gated and you are not logged in (HTTP 401 for {filename} @ {rev})",
                fix=f"log in: `hf auth login` or set HF_TOKEN (and request access on {page} if you have not)",
            )
        return HubAuthError(
            f"repo '{repo_id}' is gated and your account has no access to it yet (HTTP 403 for {filename} @ {rev})",
            fix=f"request access on {page}, wait for approval, then run again",
        )

    if isinstance(err, DisabledRepoError):
        return ModelNotFoundError(
            f"repo '{repo_id}' is disabled on the Hub", fix="Use another repo, or pass --model-path / --synthetic."
        )

    if isinstance(err, RepositoryNotFoundError):
        if _have_token(token):
            fix = "Check the spelling of --repo-id; if the repo is private, make sure your token can read it."
        else:
            fix = "Check the spelling of --repo-id; if the repo is private, log in: `hf auth login` or set HF_TOKEN."
        return ModelNotFoundError(f"repo '{repo_id}' not found on the Hub (or it is private)", fix=fix)

    if isinstance(err, RevisionNotFoundError):
        return ModelNotFoundError(
            f"revision '{rev}' not found in repo '{repo_id}'",
            fix="Pass a branch, tag or commit that exists in the repo (default: main), or drop --revision.",
        )

    if isinstance(err, RemoteEntryNotFoundError):
        listing = _gguf_listing(repo_id, rev, token, timeout)
        return ModelNotFoundError(
            f"file '{filename}' not found in repo '{repo_id}' at revision '{rev}'{listing}",
            fix="Pass --filename with one of the repo's .gguf files (see the repo's Files tab on the Hub).",
        )

    if isinstance(err, HfHubHTTPError):
        response = err.response
        status = response.status_code if response is not None else None
        message = _clip(response.headers.get("X-Error-Message") or "") if response is not None else ""
        answered_by = _netloc(str(response.url)) if response is not None else host
        if downloading and answered_by != host:
            # The file's storage (CDN, Xet bridge) failed us after the Hub itself said yes: transient, not a verdict.
            return HubUnreachableError(
                f"{answered_by} answered HTTP {status} while downloading {label}; {_kept_note(kept)}",
                fix=f"Run again in a minute{' to resume' if kept else ''}; " + _UNREACHABLE_FIX,
            )
        if status == 401:
            # Not gated and not "repo not found": the Hub rejected the credentials themselves.
            return HubAuthError(
                f"the Hub rejected your token for repo '{repo_id}' (HTTP 401{': ' + message if message else ''})",
                fix="Refresh the token: `hf auth login`, or set a valid HF_TOKEN (or unset it for public repos).",
            )
        if status == 403:
            return HubAuthError(
                f"access to repo '{repo_id}' is forbidden (HTTP 403{': ' + message if message else ''})",
                fix="Use a token with read access to the repo (`hf auth login` or HF_TOKEN), "
                f"or request access on {_endpoint()}/{repo_id}.",
            )
        if status == 404:
            return ModelNotFoundError(
                f"{label}: not found on {host} (HTTP 404: no such repo, file or revision)",
                fix="Check --repo-id, --filename and --revision; if HF_ENDPOINT is set, check that it is a Hub.",
            )
        if status is not None and (status >= 500 or status in (408, 429)):
            what = "is rate-limiting you" if status == 429 else "is having trouble"
            return HubUnreachableError(
                f"{host} answered HTTP {status} for {label} (the Hub {what})",
                fix="Retry in a few minutes, " + _OR_OFFLINE,
            )
        return HubUnreachableError(
            f"{host} answered HTTP {status} for {label}{': ' + message if message else ''}", fix=_UNREACHABLE_FIX
        )

    if isinstance(err, httpx2.TransportError):
        reason = _transport_reason(err, timeout)
        if downloading:
            return HubUnreachableError(
                f"connection lost while downloading {label} ({reason}); {_kept_note(kept)}",
                fix=f"Run again ({'it resumes' if kept else 'the download restarts'}); " + _UNREACHABLE_FIX,
            )
        fix = _UNREACHABLE_FIX
        if isinstance(err, httpx2.TimeoutException):
            fix += _SLOW_LINK_HINT
        return HubUnreachableError(f"cannot reach {host} ({reason}) to fetch {label}", fix=fix)

    if isinstance(err, OSError) and "Consistency check failed" in str(err):
        return HubUnreachableError(
            f"the download of {label} was cut short (size mismatch); nothing partial was kept",
            fix="Run again; " + _UNREACHABLE_FIX,
        )

    if type(err).__module__.startswith("hf_xet") or type(err).__name__ == "XetDownloadError":
        return HubUnreachableError(
            f"the Xet transfer of {label} failed ({_one_line(err)}); nothing partial was kept",
            fix="Run again; if it keeps failing set HF_HUB_DISABLE_XET=1 to download over plain HTTPS.",
        )
    return None


def _transport_reason(err: BaseException, timeout: float) -> str:
    """A few words on why a connection failed, from httpx's exception and the OS error beneath it."""
    import socket
    import ssl

    import httpx2

    if isinstance(err, httpx2.ProxyError):
        return f"proxy error: {_one_line(err)}"
    if isinstance(err, httpx2.ConnectTimeout):
        return f"connection timed out after {timeout:g} s"
    if isinstance(err, httpx2.TimeoutException):
        return f"no answer within {timeout:g} s"
    if isinstance(err, httpx2.RemoteProtocolError):
        return "the server closed the connection"
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "DNS lookup failed"
        if isinstance(e, ssl.SSLCertVerificationError):
            return "TLS certificate not trusted (proxy? set SSL_CERT_FILE to your CA bundle)"
        if isinstance(e, ssl.SSLError):
            return f"TLS error: {_one_line(e)}"
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "network unreachable" if e.errno == errno.ENETUNREACH else "no route to host"
    return _one_line(err) or type(err).__name__


def _gguf_listing(repo_id: str, rev: str, token: str | None, timeout: float) -> str:
    """'; .gguf files there: a, b, c (+2 more)' if the repo listing comes back quickly, else '' (a hint only)."""
    from huggingface_hub import HfApi

    try:
        info = _with_deadline(
            lambda: HfApi().model_info(repo_id, revision=rev, timeout=timeout, token=token),
            timeout + _DEADLINE_GRACE_S,
        )
    except Exception:  # noqa: BLE001 - the listing only decorates an error we are already raising
        return ""
    names = sorted(s.rfilename for s in (info.siblings or []) if s.rfilename.lower().endswith(".gguf"))
    if not names:
        return "; the repo has no .gguf files"
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return "; .gguf files there: " + ", ".join(names[:_MAX_LISTED]) + more


def _have_token(token: str | None) -> bool:
    """Whether a request would carry a token (the value itself is never looked at beyond that)."""
    if token:
        return True
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:  # noqa: BLE001 - only used to word a hint
        return False


def _hub_host() -> str:
    """The Hub as messages name it: host[:port] of HF_ENDPOINT, never its userinfo (user:token@)."""
    from huggingface_hub import constants

    return _netloc(constants.ENDPOINT) or safe(constants.ENDPOINT)


def _endpoint() -> str:
    """HF_ENDPOINT for a URL shown to a person (a page to visit): scheme and host, without credentials."""
    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    if not parts.scheme or not parts.netloc:
        return safe(constants.ENDPOINT)
    return safe(f"{parts.scheme}://{_netloc(constants.ENDPOINT)}{parts.path}".rstrip("/"))


def _netloc(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]


def _one_line(err: BaseException) -> str:
    return _clip(str(err))


def _clip(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters: server-provided text must not break the one-line error format
    (nor carry a credential: exception texts quote URLs)."""
    text = " ".join(safe(text).split())
    return text[:limit] + ("…" if len(text) > limit else "")


# --------------------------------------------------------------------------------------------------------------
# Disk


def _check_free_space(need: int, label: str, have: int = 0) -> None:
    """Refuse to start a download that cannot fit: failing after 400 MB is slower and can fill the disk for others.

    `need`: the bytes still to download; `have`: those a partial file already holds (they need no new space).
    """
    where = cache_dir()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # cannot tell; the download itself will report ENOSPC
    if free < need:
        raise _disk_full_error(label, where, (need, free), have=have)


def _disk_full_error(
    label: str,
    where: Path,
    need_free: tuple[int, int] | None,
    size: int | None = None,
    kept: int | None = None,
    *,
    have: int = 0,
) -> DiskFullError:
    if need_free is None:
        what = f" (the file is {_mib(size)})" if size else ""
        more = f" ({_amount(size - kept)} more needed)" if size and kept else ""
        return DiskFullError(
            f"{label}: ran out of disk space in {where} while downloading{what}; {_kept_note(kept)}",
            fix=f"Free some space there{more}, or set HF_HOME to a bigger disk.",
        )
    need, free = need_free
    already = f" more ({_amount(have)} already downloaded)" if have else ""
    return DiskFullError(
        f"{label}: needs {_mib(need)}{already} in {where}, only {_mib(free)} free",
        fix=f"free {_mib(need - free)} or set HF_HOME to a bigger disk",
    )


def _is_disk_full(err: BaseException) -> bool:
    cur: BaseException | None = err
    for _ in range(8):
        if cur is None:
            return False
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(cur):  # hf_xet reports OS errors as text
            return True
        cur = cur.__cause__ or cur.__context__
    return False


_LIBRARY_TEMP = re.compile(r"\.[0-9a-f]{8}\.incomplete")  # what follows <etag> in huggingface_hub's temp names


def _remove_stale_partials(blob: Path, ours: Path | None = None) -> None:
    """Delete dead partial files of this blob, and of our file under an older etag, untouched for 10 minutes.

    huggingface_hub 2.x names its temp files <etag>.<8 hex>.incomplete, deletes them itself unless the process
    was killed (SIGKILL), and never resumes from them: an old one is dead weight that would only eat the disk
    check. `ours` is this file's resumable partial (see _partial_path): kept, whatever its age; our partials of
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
            if now - partial.stat().st_mtime > _STALE_PARTIAL_S:
                partial.unlink()
        except OSError:
            pass


def _kept_note(kept: int | None) -> str:
    if not kept:
        return "nothing partial was kept"
    return f"the {_amount(kept)} downloaded so far are kept and the next run resumes from there"


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def _amount(n: int) -> str:
    """A byte count for a message: MiB, or KiB / bytes when that would read 0.0 MiB."""
    if n >= 1024**2:
        return _mib(n)
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


# --------------------------------------------------------------------------------------------------------------
# Progress


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _nothing() -> None:
    return None


class _SilentBar:
    """The tqdm-like object huggingface_hub drives, doing nothing: keeps its own tqdm bars off our streams.

    huggingface_hub instantiates a non-tqdm `tqdm_class` with plain keyword arguments (`desc`, `total`,
    `initial`, `unit`, ...) and calls `update`, `update_transfer`, `set_postfix_str`, `close` and the context
    manager protocol on it (http_get and the Xet progress reporter). Because `update_transfer` exists on the class,
    Xet downloads drive a single bar with bytes written to disk instead of two.
    """

    def __init__(self, *args: Any, total: float | None = None, initial: float = 0, **kwargs: Any) -> None:
        self.n = initial
        self._total = total

    @property
    def total(self) -> float | None:
        return self._total

    @total.setter
    def total(self, value: float | None) -> None:
        self._total = value

    def update(self, n: float = 1) -> None:
        self.n += n

    def update_transfer(self, n: float = 1) -> None:
        """Network bytes (Xet dedup/compression): we show bytes written instead."""

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        """Speed text from huggingface_hub: rich computes its own."""

    def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        """See set_postfix_str."""

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to redraw."""

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> _SilentBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # Any other tqdm method a future huggingface_hub calls: a no-op rather than a crash mid-download.
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def _rich_bar_class(label: str) -> tuple[type[_SilentBar], Callable[[], None]]:
    """A tqdm-like class feeding one rich Progress on stderr (size, speed, ETA), and the function that stops it."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.table import Column

    # One line whatever the width: the numbers keep their room, the bar shrinks and the label is cut short (…).
    console = Console(stderr=True)
    label_width = max(12, console.width - 14 - 10 - 7 - 6 - 4)  # the numbers, a 6-cell bar, the gaps
    display = Progress(
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=label_width)),
        BarColumn(bar_width=None, table_column=Column(min_width=6, ratio=1)),
        DownloadColumn(table_column=Column(no_wrap=True, min_width=14)),
        TransferSpeedColumn(table_column=Column(no_wrap=True, min_width=10)),
        TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
        console=console,
    )
    lock = threading.Lock()
    started = False

    def start() -> None:
        nonlocal started
        with lock:
            if not started:
                display.start()
                started = True

    def stop() -> None:
        with lock:
            if started:
                display.stop()

    class _RichBar(_SilentBar):
        def __init__(self, *args: Any, total: float | None = None, initial: float = 0, **kwargs: Any) -> None:
            super().__init__(total=total, initial=initial)
            start()
            self._task = display.add_task(escape(label), total=total, completed=int(initial))

        @property
        def total(self) -> float | None:
            return self._total

        @total.setter
        def total(self, value: float | None) -> None:
            self._total = value
            if hasattr(self, "_task"):
                display.update(self._task, total=value)

        def update(self, n: float = 1) -> None:
            # n < 0 happens when a resumed request got a full 200 instead of a 206 and the bytes restart.
            self.n += n
            display.advance(self._task, n)

        def close(self) -> None:
            display.refresh()

    return _RichBar, stop


__all__ = [
    "DEFAULT_FILENAME",
    "DEFAULT_REPO_ID",
    "DEFAULT_REVISION",
    "METADATA_TIMEOUT_S",
    "ModelFile",
    "cache_dir",
    "fetch_model",
    "find_cached",
]
