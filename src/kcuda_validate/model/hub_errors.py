"""Every Hub failure as one of the project's one-line errors, from a table: the exception type, then what to say.

The Hub client raises typed errors (huggingface_hub.errors), httpx2 raises transport errors, the OS raises
ENOSPC: each row of `_HUB_ERRORS` names a type and the function that words it, first match wins (subclasses
come before their bases), as hf CLI's `CLI_ERROR_MAPPINGS`. Messages name the repo, file and revision and end
with a fix. Credentials never appear: the Hub is named by host and port only, and server or exception text goes
through `safetext.safe` (`clip`).

huggingface_hub and httpx2 are imported inside functions only: `kcuda-validate --help` must stay fast.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kcuda_validate.cache_dir import hub_cache_dir
from kcuda_validate.errors import (
    DiskFullError,
    HubAuthError,
    HubUnreachableError,
    KcudaError,
    ModelNotFoundError,
    UsageError,
)
from kcuda_validate.safetext import safe

OR_OFFLINE = "or set HF_HUB_OFFLINE=1 to use the cache, or pass --model-path / --synthetic"
UNREACHABLE_FIX = "check your network/proxy, " + OR_OFFLINE
OFFLINE_FIX = "Unset HF_HUB_OFFLINE to download, or pass --model-path / --synthetic."
SLOW_LINK_HINT = " (on a slow link, raise HF_HUB_ETAG_TIMEOUT, in seconds)"


@dataclass(frozen=True)
class Attempt:
    """What was being fetched when a call failed: everything a message may name."""

    repo_id: str
    filename: str
    rev: str
    timeout: float
    token: str | None = None
    downloading: bool = False  # the transfer itself (not the metadata request) failed
    size: int | None = None
    kept: int | None = None  # bytes a failed resumable download left for the next run; None: it keeps nothing
    listing: Callable[[], str] | None = None  # "; .gguf files there: ..." for a missing file (a network call)
    part: tuple[int, int] | None = None  # (number, count) when the file is a part of a split model (gguf-split)

    @property
    def label(self) -> str:
        return f"{self.repo_id}/{self.filename} @ {self.rev}"


def map_error(err: BaseException, attempt: Attempt) -> KcudaError | None:
    """The project's error for a huggingface_hub / httpx2 / OS failure, or None when we do not understand it."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if is_disk_full(err):
        return disk_full_error(attempt.label, hub_cache_dir(), None, attempt.size, attempt.kept)
    if isinstance(err, OSError) and err.errno in UNWRITABLE and err.filename is not None:
        # mkdir, the partial file, the lock or the rename refused by the OS (after the up-front check passed)
        reason = f"{safe(os.fsdecode(err.filename))}: {err.strerror or errno.errorcode.get(err.errno or 0, err)}"
        return unwritable_error(attempt.label, hub_cache_dir(), reason, attempt.kept)
    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        # hf_hub_download's own HEAD failed (the Hub went away between our HEAD and its): report the cause.
        return map_error(err.__cause__, replace(attempt, token=None, size=None))
    for exc_type, word in _table():
        if isinstance(err, exc_type):
            return word(err, attempt)
    if isinstance(err, OSError) and "Consistency check failed" in str(err):
        return HubUnreachableError(
            f"the download of {attempt.label} was cut short (size mismatch); nothing partial was kept",
            fix="Run again; " + UNREACHABLE_FIX,
        )
    if type(err).__module__.startswith("hf_xet") or type(err).__name__ == "XetDownloadError":
        return HubUnreachableError(
            f"the Xet transfer of {attempt.label} failed ({one_line(err)}); nothing partial was kept",
            fix="Run again; if it keeps failing set HF_HUB_DISABLE_XET=1 to download over plain HTTPS.",
        )
    return None


# --------------------------------------------------------------------------------------------------------------
# The table

Wording = Callable[[Any, Attempt], KcudaError]


def _offline(err: Any, a: Attempt) -> KcudaError:
    return offline_error(a.label)


def _gated(err: Any, a: Attempt) -> KcudaError:
    page = f"{endpoint()}/{a.repo_id}"
    if err.response.status_code == 401:
        return HubAuthError(
            f"repo '{a.repo_id}' is gated and you are not logged in (HTTP 401 for {a.filename} @ {a.rev})",
            fix=f"log in: `hf auth login` or set HF_TOKEN (and request access on {page} if you have not)",
        )
    return HubAuthError(
        f"repo '{a.repo_id}' is gated and your account has no access to it yet (HTTP 403 for {a.filename} @ {a.rev})",
        fix=f"request access on {page}, wait for approval, then run again",
    )


def _disabled(err: Any, a: Attempt) -> KcudaError:
    return ModelNotFoundError(
        f"repo '{a.repo_id}' is disabled on the Hub", fix="Use another repo, or pass --model-path / --synthetic."
    )


def _repo_not_found(err: Any, a: Attempt) -> KcudaError:
    if have_token(a.token):
        fix = "Check the spelling of --repo-id; if the repo is private, make sure your token can read it."
    else:
        fix = "Check the spelling of --repo-id; if the repo is private, log in: `hf auth login` or set HF_TOKEN."
    return ModelNotFoundError(f"repo '{a.repo_id}' not found on the Hub (or it is private)", fix=fix)


def _revision_not_found(err: Any, a: Attempt) -> KcudaError:
    return ModelNotFoundError(
        f"revision '{a.rev}' not found in repo '{a.repo_id}'",
        fix="Pass a branch, tag or commit that exists in the repo (default: main), or drop --revision.",
    )


def _entry_not_found(err: Any, a: Attempt) -> KcudaError:
    listing = a.listing() if a.listing is not None else ""
    if a.part is not None:
        no, count = a.part
        return ModelNotFoundError(
            f"file '{a.filename}' (part {no} of {count} of a split model) not found in repo '{a.repo_id}' "
            f"at revision '{a.rev}'{listing}",
            fix="llama.cpp needs every part of a split model: pass a --revision that has them all, or another "
            "--filename (see the repo's Files tab on the Hub).",
        )
    return ModelNotFoundError(
        f"file '{a.filename}' not found in repo '{a.repo_id}' at revision '{a.rev}'{listing}",
        fix="Pass --filename with one of the repo's .gguf files (see the repo's Files tab on the Hub).",
    )


def _http_status(err: Any, a: Attempt) -> KcudaError:
    """Any other HTTP answer: who answered (the Hub or the storage behind it), and its status, decide."""
    response = err.response
    host = hub_host()
    status = response.status_code if response is not None else None
    message = clip(response.headers.get("X-Error-Message") or "") if response is not None else ""
    said = f": {message}" if message else ""
    answered_by = netloc(str(response.url)) if response is not None else host
    if a.downloading and answered_by != host:
        # The file's storage (CDN, Xet bridge) failed us after the Hub itself said yes: transient, not a verdict.
        return HubUnreachableError(
            f"{answered_by} answered HTTP {status} while downloading {a.label}; {kept_note(a.kept)}",
            fix=f"Run again in a minute{' to resume' if a.kept else ''}; " + UNREACHABLE_FIX,
        )
    if status == 401:  # not gated and not "repo not found": the Hub rejected the credentials themselves
        return HubAuthError(
            f"the Hub rejected your token for repo '{a.repo_id}' (HTTP 401{said})",
            fix="Refresh the token: `hf auth login`, or set a valid HF_TOKEN (or unset it for public repos).",
        )
    if status == 403:
        return HubAuthError(
            f"access to repo '{a.repo_id}' is forbidden (HTTP 403{said})",
            fix="Use a token with read access to the repo (`hf auth login` or HF_TOKEN), "
            f"or request access on {endpoint()}/{a.repo_id}.",
        )
    if status == 404:
        return ModelNotFoundError(
            f"{a.label}: not found on {host} (HTTP 404: no such repo, file or revision)",
            fix="Check --repo-id, --filename and --revision; if HF_ENDPOINT is set, check that it is a Hub.",
        )
    if status is not None and (status >= 500 or status in (408, 429)):
        what = "is rate-limiting you" if status == 429 else "is having trouble"
        return HubUnreachableError(
            f"{host} answered HTTP {status} for {a.label} (the Hub {what})", fix="Retry in a few minutes, " + OR_OFFLINE
        )
    return HubUnreachableError(f"{host} answered HTTP {status} for {a.label}{said}", fix=UNREACHABLE_FIX)


def _transport(err: Any, a: Attempt) -> KcudaError:
    import httpx2

    reason = transport_reason(err, a.timeout)
    if a.downloading:
        return HubUnreachableError(
            f"connection lost while downloading {a.label} ({reason}); {kept_note(a.kept)}",
            fix=f"Run again ({'it resumes' if a.kept else 'the download restarts'}); " + UNREACHABLE_FIX,
        )
    fix = UNREACHABLE_FIX + (SLOW_LINK_HINT if isinstance(err, httpx2.TimeoutException) else "")
    return HubUnreachableError(f"cannot reach {hub_host()} ({reason}) to fetch {a.label}", fix=fix)


def _redirect_loop(err: Any, a: Attempt) -> KcudaError:
    """Redirect after redirect (httpx2's TooManyRedirects is no TransportError): a misbehaving server, proxy or
    captive portal, never a bug here."""
    try:
        host = netloc(str(err.request.url))  # httpx2's own redirect-follow knows the request
    except RuntimeError:  # huggingface_hub's HEAD loop raises it without one: that request went to the Hub
        host = hub_host()
    what = f"the download of {a.label}" if a.downloading else f"the request for {a.label}"
    kept = f"; {kept_note(a.kept)}" if a.downloading else ""
    return HubUnreachableError(
        f"{host} redirected {what} in a loop ({one_line(err)}){kept}",
        fix="Check HF_ENDPOINT and any proxy or captive portal between you and the Hub (one of them answers with "
        "a redirect loop), " + OR_OFFLINE,
    )


def _table() -> tuple[tuple[type[BaseException], Wording], ...]:
    """The exception types in the order they are tried (imported here: the Hub client loads in ~0.4 s)."""
    import httpx2
    from huggingface_hub import errors

    return (
        (errors.OfflineModeIsEnabled, _offline),
        (errors.GatedRepoError, _gated),  # a RepositoryNotFoundError: before it
        (errors.DisabledRepoError, _disabled),
        (errors.RepositoryNotFoundError, _repo_not_found),
        (errors.RevisionNotFoundError, _revision_not_found),
        (errors.RemoteEntryNotFoundError, _entry_not_found),
        (errors.HfHubHTTPError, _http_status),  # the base of all the above: last of them
        (httpx2.TransportError, _transport),
        (httpx2.TooManyRedirects, _redirect_loop),
    )


def offline_error(label: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{label}: not in the Hub cache {hub_cache_dir()} and offline mode is on (HF_HUB_OFFLINE=1)",
        fix=OFFLINE_FIX,  # detect's forecast of this failure says the same, so the fix list shows it once
    )


# --------------------------------------------------------------------------------------------------------------
# Words


def transport_reason(err: BaseException, timeout: float) -> str:
    """A few words on why a connection failed, from httpx2's exception and the OS error beneath it."""
    import socket
    import ssl

    import httpx2

    if isinstance(err, httpx2.ProxyError):
        return f"proxy error: {one_line(err)}"
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
            return f"TLS error: {one_line(e)}"
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "network unreachable" if e.errno == errno.ENETUNREACH else "no route to host"
    return one_line(err) or type(err).__name__


def have_token(token: str | None) -> bool:
    """Whether a request would carry a token (the value itself is never looked at beyond that)."""
    if token:
        return True
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:  # noqa: BLE001 - only used to word a hint
        return False


def hub_host() -> str:
    """The Hub as messages name it: host[:port] of HF_ENDPOINT, never its userinfo (user:token@)."""
    from huggingface_hub import constants

    return netloc(constants.ENDPOINT) or safe(constants.ENDPOINT)


def endpoint() -> str:
    """HF_ENDPOINT for a URL shown to a person (a page to visit): scheme and host, without credentials."""
    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    if not parts.scheme or not parts.netloc:
        return safe(constants.ENDPOINT)
    return safe(f"{parts.scheme}://{netloc(constants.ENDPOINT)}{parts.path}".rstrip("/"))


# What huggingface_hub.constants reads with int() when it is first imported: a bad value makes that import raise,
# and one of 0 or less makes every request time out at once.
_INT_SETTINGS = ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")


def environment_error(environ: Mapping[str, str] | None = None) -> UsageError | None:
    """A setting huggingface_hub cannot import with, as a one-line error, before anything imports it."""
    env = os.environ if environ is None else environ
    for name in _INT_SETTINGS:
        value = env.get(name)
        if value is None:
            continue
        try:
            seconds = int(value)
        except ValueError:
            return UsageError(
                f"{name}={safe(value)!r} is not a whole number of seconds",
                fix=f"Set {name} to a whole number of seconds (e.g. {name}=10), or unset it.",
            )
        if seconds <= 0:  # httpx gives up at once: it would read as an unreachable Hub (exit 11)
            return UsageError(
                f"{name}={safe(value)!r} is not above 0 seconds (the request would give up before any answer)",
                fix=f"Set {name} to a whole number of seconds above 0 (e.g. {name}=10), or unset it.",
            )
    stall = env.get("KCUDA_HUB_STALL_S", "").strip()
    if stall and not (stall.isascii() and stall.isdigit()):
        return UsageError(
            f"KCUDA_HUB_STALL_S={safe(stall)!r} is not a whole number of seconds",
            fix="Set KCUDA_HUB_STALL_S to a whole number of seconds (0: never stop a slow download), or unset it.",
        )
    endpoint = env.get("HF_ENDPOINT")
    if endpoint:  # without a scheme it read as "the Hub is unreachable, check your network" (exit 11)
        try:
            parts = urlsplit(endpoint)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # an unclosed IPv6 bracket, a bad port
            ok = False
        if not ok:
            return UsageError(
                f"HF_ENDPOINT={safe(endpoint)!r} is not a Hub address (it needs http:// or https:// and a host)",
                fix="Set HF_ENDPOINT to the Hub's URL with its scheme, e.g. HF_ENDPOINT=https://huggingface.co, "
                "or unset it.",
            )
    return None


def netloc(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]


def one_line(err: BaseException) -> str:
    return clip(str(err))


def clip(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters: server-provided text must not break the one-line error format
    (nor carry a credential: exception texts quote URLs)."""
    text = " ".join(safe(text).split())
    return text[:limit] + ("…" if len(text) > limit else "")


# --------------------------------------------------------------------------------------------------------------
# Disk


def disk_full_error(
    label: str,
    where: Path,
    need_free: tuple[int, int] | None,
    size: int | None = None,
    kept: int | None = None,
    *,
    have: int = 0,
    needs: str = "needs",
) -> DiskFullError:
    """Out of space during the transfer (`need_free` None), or refused before it: (bytes needed, bytes free).

    `needs`: the refusal's subject and verb (a split model's: "its 4 parts need")."""
    if need_free is None:
        what = f" (the file is {mib(size)})" if size else ""
        more = f" ({amount(size - kept)} more needed)" if size and kept else ""
        return DiskFullError(
            f"{label}: ran out of disk space in {where} while downloading{what}; {kept_note(kept)}",
            fix=f"Free some space there{more}, or point {cache_variable()} at a bigger disk.",
        )
    need, free = need_free
    already = f" more ({amount(have)} already downloaded)" if have else ""
    return DiskFullError(
        f"{label}: {needs} {mib(need)}{already} in {where}, only {mib(free)} free",
        fix=f"free {mib(need - free)} or point {cache_variable()} at a bigger disk",
    )


# What the OS says when the cache cannot be written: read-only, no permission, a file where a folder must be.
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)


def cache_variable() -> str:
    """The setting that moves the Hub cache: HF_HUB_CACHE when it is set (HF_HOME then does not), else HF_HOME."""
    return "HF_HUB_CACHE" if os.environ.get("HF_HUB_CACHE") else "HF_HOME"


def unwritable_error(
    label: str, where: Path, reason: str, kept: int | None = None, *, variable: str | None = None
) -> DiskFullError:
    """No room for the model, because `where` cannot be written: exit 13, as for the synthetic model's cache.

    `variable`: the setting to change (default: the one that moves the Hub cache, `cache_variable`)."""
    var = variable or cache_variable()
    what = "the Hub cache" if variable is None else var
    note = f"; {kept_note(kept)}" if kept else ""
    return DiskFullError(
        f"{label}: cannot write {what} {safe(str(where))}: {reason}{note}",
        fix=f"Point {var} at a writable directory.",
    )


def is_disk_full(err: BaseException) -> bool:
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


def kept_note(kept: int | None) -> str:
    if not kept:
        return "nothing partial was kept"
    return f"the {amount(kept)} downloaded so far are kept and the next run resumes from there"


def mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def amount(n: int) -> str:
    """A byte count for a message: MiB, or KiB / bytes when that would read 0.0 MiB."""
    if n >= 1024**2:
        return mib(n)
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"
