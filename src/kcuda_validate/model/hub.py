"""Get one GGUF file from the Hugging Face Hub, or from its local cache, with failures a user can act on.

`load` needs a real model file; most users have none lying around, so we fetch a small default one.
huggingface_hub does the heavy lifting (cache layout, locking, atomic moves, Xet/HTTP transfer); this
module adds what a validation tool needs on top of it:

* cache first: a file already complete in the cache for the requested revision is returned with no
  network access at all, so a second run works offline and starts at once;
* fail fast: huggingface_hub's own fallback retries an unreachable Hub with 60 s timeouts and backoff
  (minutes in total), so we ask for the file's metadata ourselves first, once, with a short timeout and a
  hard deadline (DNS hangs are not covered by socket timeouts);
* disk check: the size from that metadata call is compared with the free space where the cache lives
  before a single byte is downloaded;
* one-line errors: every Hub failure becomes one of the project's `KcudaError`s naming the repo, file
  and revision, with a fix.

Environment: HF_HOME / HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_ETAG_TIMEOUT and
HF_HUB_DOWNLOAD_TIMEOUT are read by huggingface_hub when it is first imported (`huggingface_hub.constants`);
we always go through those constants so that this module and every other huggingface_hub call in the
process agree. HF_TOKEN (or a stored `hf auth login`) is read by huggingface_hub per request; its value is
never logged or printed here.

huggingface_hub is imported inside functions only: `kcuda-validate --help` must stay fast.
"""

from __future__ import annotations

import errno
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from kcuda_validate.errors import (
    DiskFullError,
    HubAuthError,
    HubUnreachableError,
    KcudaError,
    ModelNotFoundError,
    UsageError,
)

# The default model: Apache-2.0, not gated, ships a chat template, < 600 MB: fits any GPU and any CI cache.
DEFAULT_REPO_ID = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
DEFAULT_FILENAME = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
DEFAULT_REVISION = "main"

METADATA_TIMEOUT_S = 4.0
"""Per-phase (connect, read) timeout of the one metadata request that decides whether the Hub is reachable.

A HEAD to huggingface.co answers in well under a second on any usable link; 4 s keeps "unreachable" under
the 5 s we promise. Users on very slow links can raise it with HF_HUB_ETAG_TIMEOUT (huggingface_hub's own knob
for this very request), which then wins.
"""

# Beyond the socket timeout, the hard deadline also covers what socket timeouts do not: name resolution, and the
# GET {endpoint}/api/agent-harnesses (3 s timeout) huggingface_hub makes while building the first request's headers
# when its daily registry cache (HF_HOME/.agent_harnesses.json) is missing or stale.
_DEADLINE_GRACE_S = 1.0
_STALE_PARTIAL_S = 600.0  # a temp file untouched this long belongs to a download that died (killed process)
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
    """The Hub cache directory huggingface_hub uses in this process (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


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
    Completeness: huggingface_hub downloads into a temp file, renames it to blobs/<etag> only after the size check
    passed, and links the snapshot to it last; so a snapshot entry that resolves to an existing file is complete,
    and a dangling or missing one means "not cached".
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

    storage = cache_dir() / _repo_folder(repo_id)
    blob = storage / "blobs" / remote.etag
    pointer = storage / "snapshots" / remote.commit / filename
    already_local = blob.is_file() or pointer.is_file()
    if not already_local:
        _remove_stale_partials(blob)
        if remote.size:
            _check_free_space(remote.size, label)

    show = progress and _stderr_is_terminal() and constants.HF_HUB_DISABLE_PROGRESS_BARS is not True
    bar_class, stop_bar = _rich_bar_class(label) if show else (_SilentBar, _nothing)
    start = time.perf_counter()
    try:
        local = _download(repo_id, filename, rev, token, timeout, bar_class)
    except Exception as err:
        mapped = _map_error(
            err, repo_id=repo_id, filename=filename, rev=rev, timeout=timeout, downloading=True, size=remote.size
        )
        if mapped is None:
            raise
        raise mapped from err
    finally:
        # Also on KeyboardInterrupt: huggingface_hub has already deleted its temp file (see _download).
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
        source="cache" if already_local else "download",
        download_s=None if already_local else elapsed,
    )


def _download(repo_id: str, filename: str, rev: str, token: str | None, timeout: float, bar_class: type) -> str:
    """hf_hub_download into the standard cache, which also writes refs/<rev> for the next, offline, run.

    It makes a second, short HEAD of its own (ours just succeeded), then downloads into
    blobs/<etag>.<random>.incomplete and renames that to the blob only once complete and size-checked; on any
    failure, KeyboardInterrupt included, it deletes the temp file (`finally` in `_download_to_tmp_and_move`).
    A dropped connection is resumed in-process with a Range request from the last whole chunk written (up to 5
    times in a row without progress); 2.x no longer resumes across runs, so nothing partial is worth keeping.
    We never pass force_download, which would bypass the cache.
    """
    from huggingface_hub import hf_hub_download

    return hf_hub_download(
        repo_id,
        filename,
        revision=rev,
        token=token,
        etag_timeout=timeout,
        tqdm_class=bar_class,  # type: ignore[arg-type]  # any tqdm-like class works (see _SilentBar)
    )


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
    return _Remote(commit=meta.commit_hash, etag=meta.etag, size=meta.size)


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
) -> KcudaError | None:
    """The project's error for a huggingface_hub / httpx / OS failure, or None when we do not understand it."""
    import httpx2
    from huggingface_hub import constants
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
        return _disk_full_error(label, cache_dir(), None, size)

    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        # hf_hub_download's own HEAD failed (the Hub went away between our HEAD and its): report the cause.
        return _map_error(
            err.__cause__, repo_id=repo_id, filename=filename, rev=rev, timeout=timeout, downloading=downloading
        )

    if isinstance(err, OfflineModeIsEnabled):
        return ModelNotFoundError(
            f"{label}: not in the Hub cache {cache_dir()} and offline mode is on (HF_HUB_OFFLINE=1)",
            fix="Unset HF_HUB_OFFLINE to download it, or pass --model-path / --synthetic.",
        )

    if isinstance(err, GatedRepoError):
        page = f"{constants.ENDPOINT}/{repo_id}"
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
        answered_by = urlsplit(str(response.url)).netloc if response is not None else host
        if downloading and answered_by != host:
            # The file's storage (CDN, Xet bridge) failed us after the Hub itself said yes: transient, not a verdict.
            return HubUnreachableError(
                f"{answered_by} answered HTTP {status} while downloading {label}; nothing partial was kept",
                fix="Run again in a minute; " + _UNREACHABLE_FIX,
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
                f"or request access on {constants.ENDPOINT}/{repo_id}.",
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
                f"connection lost while downloading {label} ({reason}); nothing partial was kept",
                fix="Run again (the download restarts); " + _UNREACHABLE_FIX,
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
    from huggingface_hub import constants

    return urlsplit(constants.ENDPOINT).netloc or constants.ENDPOINT


def _one_line(err: BaseException) -> str:
    return _clip(str(err))


def _clip(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters: server-provided text must not break the one-line error format."""
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


# --------------------------------------------------------------------------------------------------------------
# Disk


def _check_free_space(size: int, label: str) -> None:
    """Refuse to start a download that cannot fit: failing after 400 MB is slower and can fill the disk for others."""
    where = cache_dir()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # cannot tell; the download itself will report ENOSPC
    if free < size:
        raise _disk_full_error(label, where, (size, free))


def _disk_full_error(
    label: str, where: Path, need_free: tuple[int, int] | None, size: int | None = None
) -> DiskFullError:
    if need_free is None:
        what = f" (the file is {_mib(size)})" if size else ""
        return DiskFullError(
            f"{label}: ran out of disk space in {where} while downloading{what}; nothing partial was kept",
            fix="Free some space there, or set HF_HOME to a bigger disk.",
        )
    need, free = need_free
    return DiskFullError(
        f"{label}: needs {_mib(need)} in {where}, only {_mib(free)} free",
        fix=f"free {_mib(need - free)} or set HF_HOME to a bigger disk",
    )


def _is_disk_full(err: BaseException) -> bool:
    cur: BaseException | None = err
    for _ in range(8):
        if cur is None:
            return False
        if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(cur):  # hf_xet reports OS errors as text
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _remove_stale_partials(blob: Path) -> None:
    """Delete temp files of this blob left by a killed process (SIGKILL skips huggingface_hub's cleanup).

    huggingface_hub 2.x names them <etag>.<random>.incomplete and never resumes from them; a live download
    writes to its own every few seconds, so an old one is dead weight that would only eat the disk check.
    """
    try:
        candidates = list(blob.parent.glob(f"{blob.name}.*.incomplete"))
    except OSError:
        return
    now = time.time()
    for partial in candidates:
        try:
            if now - partial.stat().st_mtime > _STALE_PARTIAL_S:
                partial.unlink()
        except OSError:
            pass


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


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

    display = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
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
            self._task = display.add_task(escape(label), total=total, completed=initial)

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
