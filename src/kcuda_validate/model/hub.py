"""Get one GGUF file from the Hugging Face Hub, or from its local cache, with failures a user can act on.

`load` needs a real model file; most users have none lying around, so we fetch a small default one.
huggingface_hub provides the cache layout and lookup (`try_to_load_from_cache`), the metadata request
(`get_hf_file_metadata`), the HTTP client (proxies, headers, token), the lock and the Xet transfer
(`hf_hub_download`), all through its public API; this module adds what a validation tool needs on top of it:

* cache first: a file already complete in the cache for the requested revision is returned with no
  network access at all, so a second run works offline and starts at once;
* fail fast: huggingface_hub's own fallback retries an unreachable Hub with 60 s timeouts and backoff
  (minutes in total), so we ask for the file's metadata ourselves first, once, with a short timeout and a
  hard deadline (DNS hangs are not covered by socket timeouts);
* disk check: the size from that metadata call is compared with the free space where the cache lives
  before a single byte is downloaded;
* resume across runs: huggingface_hub 2.x cannot (huggingface_hub#4196), so plain-HTTP downloads are ours
  (`hub_transfer`): a stable partial file in the cache, continued with a Range request by the next run after
  Ctrl-C, a dropped network or a full disk, checked against the file's sha256 before it becomes a blob;
  Xet-served files go through hf_hub_download only when KCUDA_HUB_XET=1 asks for hf_xet (then no resume);
* one-line errors: every Hub failure becomes one of the project's `KcudaError`s naming the repo, file
  and revision, with a fix (`hub_errors`, a table);
* progress through a callback (`on_progress`) that the CLI's output object draws: nothing here prints.

Environment: HF_HOME / HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_ETAG_TIMEOUT and
HF_HUB_DOWNLOAD_TIMEOUT are read by huggingface_hub when it is first imported (`huggingface_hub.constants`);
we always go through those constants so that this module and every other huggingface_hub call in the
process agree. HF_TOKEN (or a stored `hf auth login`) is read by huggingface_hub per request; its value is
never logged or printed here. Nor are credentials inside HF_ENDPOINT (`http://user:token@host`): the Hub is
named by its host and port only (`hub_errors.hub_host`), and text from servers and exceptions passes through
`safetext.safe` — as everything the tool prints or logs does once more at its sinks.

huggingface_hub is imported inside functions only: `kcuda-validate --help` must stay fast.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from kcuda_validate.cache_dir import hub_cache_dir
from kcuda_validate.errors import HubUnreachableError, KcudaError, ModelNotFoundError, UsageError
from kcuda_validate.model.gguf_file import SPLIT_NAME, SPLIT_PATTERN
from kcuda_validate.model.hub_errors import (
    OR_OFFLINE,
    SLOW_LINK_HINT,
    UNREACHABLE_FIX,
    Attempt,
    environment_error,
    hub_host,
    map_error,
    netloc,
    offline_error,
    one_line,
    unwritable_error,
)
from kcuda_validate.model.hub_transfer import (
    DownloadProgress,
    Kept,
    OnProgress,
    Remote,
    blocked_by,
    check_free_space,
    check_writable,
    download_resumable,
    file_size,
    partial_path,
    record_ref,
    remove_stale_partials,
    repo_folder,
)

# The default model: Apache-2.0, not gated, ships a chat template, < 600 MB: fits any GPU and any CI cache.
DEFAULT_REPO_ID = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
DEFAULT_FILENAME = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
DEFAULT_REVISION = "main"

METADATA_TIMEOUT_S = 3.0
"""Per-phase (connect, read) timeout of the one metadata request that decides whether the Hub is reachable.

A HEAD to huggingface.co answers in well under a second on any usable link. With the hard deadline's grace
(`DEADLINE_GRACE_S`), a Hub that accepts the connection and never answers is reported within 4 s of the
request, so the whole command (start-up included, about half a second) fails within the 5 s we promise; 4 s
of timeout (5 s of deadline) took 5.4 s end to end. Users on very slow links can raise it with
HF_HUB_ETAG_TIMEOUT (huggingface_hub's own knob for this very request), which then wins.
"""

DEADLINE_GRACE_S = 1.0
"""Beyond the socket timeout, the hard deadline also covers what socket timeouts do not: name resolution, and the
GET {endpoint}/api/agent-harnesses (3 s timeout) huggingface_hub makes while building the first request's headers
when its daily registry cache (HF_HOME/.agent_harnesses.json) is missing or stale."""

_MAX_LISTED = 5
# Hosts whose answers may carry the token, besides the requested URL's own: the Hub's (as huggingface_hub decides).
_HUB_HOSTS = ("https://huggingface.co", "https://hub-ci.huggingface.co", "https://hf.co")

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
    source: Source  # "download" when any byte (of any part) was fetched
    download_s: float | None  # wall time of the transfer; None when served from the cache
    parts: int = 1  # a split model (gguf-split): how many; `path` is the first, size_bytes all of them together


def cache_dir() -> Path:
    """The Hub cache directory (one resolution for the whole tool: cache_dir.hub_cache_dir)."""
    return hub_cache_dir()


# --------------------------------------------------------------------------------------------------------------
# Cache (no network)


def lookup_cache(repo_id: str, filename: str, revision: str) -> tuple[Path, str] | bool | None:
    """(snapshot path, commit) when complete in the cache; True when the cache recorded "no such file"; else None.

    huggingface_hub's try_to_load_from_cache: refs/<rev> -> commit -> snapshots/<commit>/<file>, a file only if
    the link ends at one. Complete: huggingface_hub and hub_transfer both download into a temp or partial file,
    rename it to blobs/<etag> only after the checks passed, and link the snapshot to it last.
    """
    from huggingface_hub import try_to_load_from_cache

    check_names(repo_id, filename, revision)
    cache = cache_dir()
    try:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
    except (OSError, ValueError):
        return None
    if hit is None:
        return None
    if not isinstance(hit, str):  # the library's "known not to exist" marker
        return True
    path = Path(hit)
    commit = path.relative_to(cache / repo_folder(repo_id) / "snapshots").parts[0]
    return path, commit


_REPO_ID = re.compile(r"(?:\w[\w.-]*/)?\w[\w.-]{0,95}")  # huggingface_hub's REPO_ID_REGEX, a little looser


def check_names(repo_id: str, filename: str, revision: str) -> None:
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


# llama.cpp's llama_split_path names the parts "%s-%05d-of-%05d.gguf"; llama_split_prefix reads the prefix back.
def split_parts(filename: str) -> list[str] | None:
    """Every part of the split model (gguf-split) that `filename` names, first to last; None for one whole file.

    llama.cpp loads a split model from its first part and opens the others beside it by their names, so the first
    is the only one to ask for: another part, or a number no part has, is a usage error (exit 2), with no network.
    """
    match = SPLIT_PATTERN.fullmatch(filename)
    if match is None or int(match.group(3)) <= 1:
        return None
    prefix, no, count = match.group(1), int(match.group(2)), int(match.group(3))
    names = [SPLIT_NAME.format(prefix=prefix, no=i, count=count) for i in range(1, count + 1)]
    if no == 1:
        return names
    if 1 < no <= count:
        what = f"is part {no} of {count} of a split model, not its first"
    else:
        what = f"names no part of a split model (gguf-split numbers its {count} parts 00001 to {count:05d})"
    raise UsageError(
        f"--filename {filename!r} {what}",
        fix=f"Pass --filename {names[0]}: llama.cpp loads a split model from its first part.",
    )


# --------------------------------------------------------------------------------------------------------------
# Fetch


def fetch_model(
    repo_id: str,
    filename: str,
    revision: str | None = None,
    *,
    on_progress: OnProgress | None = None,
    token: str | None = None,
) -> ModelFile:
    """Return `filename` from `repo_id` at `revision`, from the cache if complete there, else downloaded into it.

    `token` overrides HF_TOKEN / the stored login (None: use those). `on_progress` hears of the bytes on disk
    during a download (not when HF_HUB_DISABLE_PROGRESS_BARS is set). The first part of a split model brings all
    its parts (see fetch_split). Raises ModelNotFoundError, HubAuthError, HubUnreachableError, DiskFullError or
    UsageError, all one line.
    """
    bad = environment_error()
    if bad is not None:
        raise bad
    from huggingface_hub import constants

    rev = revision or DEFAULT_REVISION
    label = f"{repo_id}/{filename} @ {rev}"
    check_names(repo_id, filename, rev)
    parts = split_parts(filename)
    if constants.HF_HUB_DISABLE_PROGRESS_BARS is True:
        on_progress = None
    if parts is not None:
        return fetch_split(repo_id, parts, rev, token, on_progress)

    cached = lookup_cache(repo_id, filename, rev)
    if isinstance(cached, tuple):
        path, commit = cached
        return ModelFile(path, repo_id, filename, rev, commit, path.stat().st_size, "cache", None)

    if constants.HF_HUB_OFFLINE:
        if cached is True:
            raise ModelNotFoundError(
                f"file '{filename}' does not exist in repo '{repo_id}' at revision '{rev}' "
                "(as recorded in the cache; offline mode is on)",
                fix="Name a file that exists in the repo, or unset HF_HUB_OFFLINE to ask the Hub again.",
            )
        raise offline_error(label)

    check_cache_folders(label)
    timeout = metadata_timeout()
    remote = fetch_metadata(repo_id, filename, rev, token, timeout)

    start = time.perf_counter()
    local, downloaded = transfer(remote, repo_id, filename, rev, token, timeout, on_progress)
    elapsed = time.perf_counter() - start

    commit = local.parent.name if local.parent.parent.name == "snapshots" else remote.commit
    source: Source = "download" if downloaded else "cache"
    return ModelFile(
        local, repo_id, filename, rev, commit, local.stat().st_size, source, elapsed if downloaded else None
    )


def transfer(
    remote: Remote,
    repo_id: str,
    filename: str,
    rev: str,
    token: str | None,
    timeout: float,
    on_progress: OnProgress | None,
    part: tuple[int, int] | None = None,
) -> tuple[Path, bool]:
    """One file into the cache (resumable HTTP, or hf_xet when asked for); (snapshot path, transferred).

    Any failure is one of the project's one-line errors naming the file (`part`: (number, count) of a split model:
    then hf_xet is asked for it at `remote.commit`, the commit every part resolved to, not at `rev`).
    """
    label = f"{repo_id}/{filename} @ {rev}"
    kept = Kept()
    try:
        if remote.xet:
            at = remote.commit if part is not None else None
            return _download_xet(remote, repo_id, filename, rev, token, timeout, label, on_progress, at)
        return download_resumable(remote, cache_dir(), repo_id, filename, rev, token, label, kept, on_progress)
    except KcudaError:
        raise
    except Exception as err:
        attempt = Attempt(
            repo_id,
            filename,
            rev,
            timeout,
            downloading=True,
            size=remote.size,
            kept=None if remote.xet else kept.bytes,
            listing=lambda: gguf_listing(repo_id, rev, None, timeout),
            part=part,
        )
        mapped = map_error(err, attempt)
        if mapped is None:
            raise
        raise mapped from err


def fetch_split(
    repo_id: str, parts: list[str], rev: str, token: str | None, on_progress: OnProgress | None
) -> ModelFile:
    """Every part of a split model into one snapshot folder, where llama.cpp finds them beside the first.

    * Cache first: all parts complete in the cache for `rev` is an answer with no network at all. Offline with a
      part missing is exit 10 naming the first missing one.
    * One commit: the first HEAD (the first missing part, at `rev`) decides the commit, and every other part is
      asked for at that commit, so a branch that moves meanwhile cannot mix two commits' parts. Parts cached
      under another commit are asked for too: their blob, when the content is the same, is linked, not fetched.
    * Every HEAD before a byte is fetched: a part missing on the Hub is exit 10 naming it, with nothing fetched
      or linked; then one free-space check for the total the parts still lack (their partials deducted).
    * Each part is then fetched as one file is (`transfer`): resumable, its snapshot link made only once its
      blob is complete. A failure keeps the parts already linked and the failing part's partial; the next run
      asks only for what is still missing.
    * Progress: one DownloadProgress stream for the whole set, labelled with the first part and the number of
      parts fetched, its bytes those of all the parts being fetched.
    """
    from huggingface_hub import constants

    count, first = len(parts), parts[0]
    part_no = {part: i for i, part in enumerate(parts, start=1)}  # gguf-split counts up to 65535 parts
    label = f"{repo_id}/{first} @ {rev}"
    hits = {part: lookup_cache(repo_id, part, rev) for part in parts}
    cached = {part: hit for part, hit in hits.items() if isinstance(hit, tuple)}
    if len(cached) == count:
        size = sum(cached[part][0].stat().st_size for part in parts)
        return ModelFile(cached[first][0], repo_id, first, rev, cached[first][1], size, "cache", None, count)
    missing = [part for part in parts if part not in cached]
    if constants.HF_HUB_OFFLINE:
        raise offline_part(repo_id, rev, parts, missing, hits[missing[0]] is True)

    check_cache_folders(label)
    timeout = metadata_timeout()

    def ask(part: str, at: str | None) -> Remote:
        return fetch_metadata(repo_id, part, rev, token, timeout, at=at, part=(part_no[part], count))

    remotes = {missing[0]: ask(missing[0], None)}
    commit = remotes[missing[0]].commit
    stale = [part for part, (_, at) in cached.items() if at != commit]  # not in the folder llama.cpp reads
    for part in missing[1:] + stale:
        remote = remotes[part] = ask(part, commit)
        if remote.commit != commit:
            raise HubUnreachableError(
                f"{hub_host()} answered for {repo_id}/{part} at commit {commit} with another commit "
                f"({remote.commit}), so the parts of {label} cannot be had from one commit",
                fix="Check HF_ENDPOINT and any proxy or captive portal between you and the Hub, " + OR_OFFLINE,
            )

    storage = cache_dir() / repo_folder(repo_id)
    fetch = [part for part in parts if part in remotes and not (storage / "blobs" / remotes[part].etag).is_file()]
    check_writable(cache_dir(), label)
    need = have = 0
    for part in fetch:
        remote = remotes[part]
        if remote.size is None:
            continue
        got = 0 if remote.xet else file_size(partial_path(storage, remote.etag, part))
        got = got if got <= remote.size else 0
        need, have = need + remote.size - got, have + got
    if need:
        if len(fetch) == count:
            needs = f"its {count} parts need"
        elif len(fetch) == 1:
            needs = f"its part {part_no[fetch[0]]} of {count}, still missing, needs"
        else:
            needs = f"the {len(fetch)} of its {count} parts still missing need"
        check_free_space(cache_dir(), need, label, have, needs=needs)

    progress = SetProgress(label, count, [(part, remotes[part].size) for part in fetch], on_progress)
    paths: dict[str, Path] = {}
    downloaded = False
    start = time.perf_counter()
    for part in parts:
        if part not in remotes:
            paths[part] = cached[part][0]
            continue
        local, transferred = transfer(
            remotes[part], repo_id, part, rev, token, timeout, progress.reporter(part), (part_no[part], count)
        )
        paths[part], downloaded = local, downloaded or transferred
    elapsed = time.perf_counter() - start
    size = sum(paths[part].stat().st_size for part in parts)
    source: Source = "download" if downloaded else "cache"
    return ModelFile(paths[first], repo_id, first, rev, commit, size, source, elapsed if downloaded else None, count)


def offline_part(repo_id: str, rev: str, parts: list[str], missing: list[str], recorded_absent: bool) -> KcudaError:
    """Offline, and a part of the split model is not in the cache: exit 10 naming the first missing part."""
    part, count = missing[0], len(parts)
    which = f"part {parts.index(part) + 1} of {count} of a split model"
    if recorded_absent:
        return ModelNotFoundError(
            f"file '{part}' ({which}) does not exist in repo '{repo_id}' at revision '{rev}' "
            "(as recorded in the cache; offline mode is on)",
            fix="Name a split model whose parts all exist in the repo, or unset HF_HUB_OFFLINE to ask the Hub again.",
        )
    more = f", the first of its {len(missing)} parts missing" if len(missing) > 1 else ""
    return offline_error(f"{repo_id}/{part} @ {rev} ({which}{more})")


class SetProgress:
    """One progress stream for the parts of a split model that this run fetches: bytes on disk across them all.

    Each part's own reports (its bytes so far, resumed ones included) are offset by the sizes of the parts
    fetched before it; the total is theirs together (None when the Hub did not say a part's size)."""

    def __init__(
        self, label: str, count: int, fetch: list[tuple[str, int | None]], on_progress: OnProgress | None
    ) -> None:
        shown = f"{count} parts" if len(fetch) == count else f"{len(fetch)} of {count} parts"
        self.label = f"{label} ({shown})"
        sizes = [size for _, size in fetch]
        self.total = None if None in sizes else sum(s or 0 for s in sizes)
        self.offsets: dict[str, int] = {}
        offset = 0
        for part, size in fetch:
            self.offsets[part] = offset
            offset += size or 0
        self.on_progress = on_progress

    def reporter(self, part: str) -> OnProgress | None:
        """The callback for `part`'s transfer; None for a part that is only linked (its blob is there)."""
        sink, offset = self.on_progress, self.offsets.get(part)
        if sink is None or offset is None:
            return None

        def report(p: DownloadProgress) -> None:
            sink(DownloadProgress(self.label, offset + p.done, self.total))

        return report


def check_cache_folders(label: str) -> None:
    """A file where the Hub cache or HF_HOME must be a folder: nothing can ever be cached there, so exit 13 before
    asking the Hub (huggingface_hub would fail on it with an OSError: reading HF_HOME/token, making the cache)."""
    from huggingface_hub import constants

    for where, variable in ((cache_dir(), None), (Path(constants.HF_HOME), "HF_HOME")):
        problem = blocked_by(where)
        if problem is not None:
            raise unwritable_error(label, where, problem, variable=variable)


def _download_xet(
    remote: Remote,
    repo_id: str,
    filename: str,
    rev: str,
    token: str | None,
    timeout: float,
    label: str,
    on_progress: OnProgress | None,
    at: str | None = None,
) -> tuple[Path, bool]:
    """A Xet-served file through hf_hub_download (hf_xet does the transfer); (snapshot path, transferred).

    hf_hub_download writes the standard cache, refs/<rev> included. Its temp file is unique to the call and
    deleted on any failure, KeyboardInterrupt included: nothing partial survives the process. We never pass
    force_download, which would bypass the cache. `at`: the revision to fetch at, when not `rev` (a split model's
    commit); refs/<rev> is then ours to write, as hub_transfer does.
    """
    from huggingface_hub import hf_hub_download

    storage = cache_dir() / repo_folder(repo_id)
    blob = storage / "blobs" / remote.etag
    pointer = storage / "snapshots" / remote.commit / filename
    already_local = blob.is_file() or pointer.is_file()
    if not already_local:
        check_writable(cache_dir(), label)
        remove_stale_partials(blob)
        if remote.size:
            check_free_space(cache_dir(), remote.size, label)
    local = hf_hub_download(
        repo_id,
        filename,
        revision=at or rev,
        token=token,
        etag_timeout=timeout,
        tqdm_class=progress_class(label, on_progress),  # any tqdm-like class works
    )
    if at is not None:
        record_ref(storage, rev, at)
    return Path(local), not already_local


def progress_class(label: str, on_progress: OnProgress | None) -> type:
    """A tqdm-like class for huggingface_hub to drive, reporting to `on_progress` (and keeping tqdm off our streams).

    huggingface_hub instantiates a non-tqdm `tqdm_class` with keyword arguments (`desc`, `total`, `initial`,
    `unit`, ...) and calls `update`, `update_transfer`, `set_postfix_str`, `close` and the context manager
    protocol on it. Because `update_transfer` exists, Xet downloads drive one bar with bytes written to disk.
    """

    class Reporter:
        def __init__(self, *args: Any, total: float | None = None, initial: float = 0, **kwargs: Any) -> None:
            self.n = int(initial)
            self.total = total
            self._report()

        def _report(self) -> None:
            if on_progress is not None:
                on_progress(DownloadProgress(label, self.n, None if self.total is None else int(self.total)))

        def update(self, n: float = 1) -> None:
            self.n += int(n)
            self._report()

        def update_transfer(self, n: float = 1) -> None:
            """Network bytes (Xet dedup/compression): we show bytes written instead."""

        def close(self) -> None:
            """Nothing to release."""

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        def __getattr__(self, name: str) -> Any:
            # set_postfix_str, refresh or any other tqdm method a future huggingface_hub calls: a no-op.
            if name.startswith("_"):
                raise AttributeError(name)
            return lambda *args, **kwargs: None

    return Reporter


# --------------------------------------------------------------------------------------------------------------
# Probe (for detect)


@dataclass(frozen=True)
class HubProbe:
    """Whether `load` could get the default model now: from the cache, or from the Hub's answer to one HEAD.

    detect's Hub check judges this instead of the environment alone: HF_HUB_OFFLINE unset says nothing about a
    firewall, a dead proxy or a rejected token, and HF_HUB_OFFLINE set is harmless when the model is cached.
    """

    repo_id: str
    filename: str
    revision: str
    host: str  # the Hub as messages name it (never HF_ENDPOINT's credentials)
    offline: bool  # HF_HUB_OFFLINE, as huggingface_hub read it
    cached: bool  # complete in the cache: load needs no network
    answer_ms: float | None = None  # the HEAD's wall time, when the Hub answered for the file
    size_bytes: int | None = None  # the file's size from that answer
    error: str | None = None  # one line: why the file cannot be had now
    fix: str | None = None
    parts: int = 1  # a split model's (cached: all of them; the HEAD and size_bytes are of the first only)

    @property
    def default(self) -> bool:
        return (self.repo_id, self.filename, self.revision) == (DEFAULT_REPO_ID, DEFAULT_FILENAME, DEFAULT_REVISION)

    def to_json(self) -> dict[str, Any]:
        doc = {
            "model": f"{self.repo_id}/{self.filename} @ {self.revision}",
            "hub": self.host,
            "offline": self.offline,
            "cached": self.cached,
            "answer_ms": None if self.answer_ms is None else round(self.answer_ms, 1),
            "size_bytes": self.size_bytes,
            "error": self.error,
        }
        if self.parts > 1:
            doc["parts"] = self.parts
        return doc


def probe_hub(
    repo_id: str = DEFAULT_REPO_ID, filename: str = DEFAULT_FILENAME, revision: str = DEFAULT_REVISION
) -> HubProbe:
    """The cache, then (online and not cached) the same one HEAD `load` starts with, within the same deadline.

    A split model is cached when all its parts are; online, only its first part is asked for (one HEAD)."""
    bad = environment_error()
    if bad is not None:  # huggingface_hub would not even import
        endpoint = netloc(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        return HubProbe(repo_id, filename, revision, endpoint, False, False, error=bad.message, fix=bad.fix)
    from huggingface_hub import constants

    host, offline = hub_host(), bool(constants.HF_HUB_OFFLINE)
    try:
        parts = split_parts(filename) or [filename]
    except UsageError as err:
        return HubProbe(repo_id, filename, revision, host, offline, False, error=err.message, fix=err.fix)

    def found(**answer: Any) -> HubProbe:
        return HubProbe(repo_id, filename, revision, host, offline, cached=False, parts=len(parts), **answer)

    if all(isinstance(lookup_cache(repo_id, part, revision), tuple) for part in parts):
        return HubProbe(repo_id, filename, revision, host, offline, cached=True, parts=len(parts))
    if offline:
        return found()
    start = time.perf_counter()
    try:
        remote = fetch_metadata(repo_id, filename, revision, None, metadata_timeout())
    except KcudaError as err:
        return found(error=err.message, fix=err.fix)
    except Exception as err:  # noqa: BLE001 - an unmapped failure is still an answer, in one line
        return found(error=f"asking {host} for {repo_id}/{filename} @ {revision} failed: {one_line(err)}")
    return found(answer_ms=(time.perf_counter() - start) * 1000, size_bytes=remote.size)


# --------------------------------------------------------------------------------------------------------------
# Metadata


def metadata_timeout() -> float:
    from huggingface_hub import constants

    if constants.HF_HUB_ETAG_TIMEOUT != constants.DEFAULT_ETAG_TIMEOUT:  # the user set HF_HUB_ETAG_TIMEOUT
        return float(constants.HF_HUB_ETAG_TIMEOUT)
    return METADATA_TIMEOUT_S


def fetch_metadata(
    repo_id: str,
    filename: str,
    rev: str,
    token: str | None,
    timeout: float,
    *,
    at: str | None = None,
    part: tuple[int, int] | None = None,
) -> Remote:
    """One HEAD on /resolve: commit, etag and size, or the reason we cannot have the file, within the deadline.

    No retries (`retry_on_errors=False`): an unreachable Hub is reported at once instead of after backoff.
    `at`: the revision to ask at, when not `rev` (the commit the other parts of a split model resolved to);
    messages still name `rev`, as the user gave it. `part`: (number, count) of a split model's part.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)  # the library's own rules, in case they are stricter than check_names
    except ValueError as err:
        raise UsageError(
            f"--repo-id {repo_id!r} is not a Hub repo id ({one_line(err)})",
            fix="Use the form owner/name, e.g. --repo-id Qwen/Qwen2.5-0.5B-Instruct-GGUF.",
        ) from None
    url = hf_hub_url(repo_id, filename, revision=at or rev)
    try:
        meta = with_deadline(
            lambda: get_hf_file_metadata(url, token=token, timeout=timeout, retry_on_errors=False),
            timeout + DEADLINE_GRACE_S,
        )
    except NoAnswer:
        raise HubUnreachableError(
            f"cannot reach {hub_host()} (no answer within {timeout + DEADLINE_GRACE_S:g} s) "
            f"to fetch {repo_id}/{filename} @ {rev}",
            fix=UNREACHABLE_FIX + SLOW_LINK_HINT,
        ) from None
    except Exception as err:
        listing = lambda: gguf_listing(repo_id, rev, token, timeout)  # noqa: E731 - only called for a missing file
        mapped = map_error(err, Attempt(repo_id, filename, rev, timeout, token=token, listing=listing, part=part))
        if mapped is None:
            raise
        raise mapped from err
    if not meta.commit_hash or not meta.etag:
        missing = "X-Repo-Commit" if not meta.commit_hash else "ETag"
        raise HubUnreachableError(
            f"{hub_host()} answered for {repo_id}/{filename} @ {rev} but not like the Hugging Face Hub "
            f"(no {missing} header)",
            fix="Check HF_ENDPOINT and any proxy or captive portal between you and the Hub, " + OR_OFFLINE,
        )
    return Remote(commit=meta.commit_hash, etag=meta.etag, size=meta.size, **download_source(url, meta))


def download_source(url: str, meta: Any) -> dict[str, Any]:
    """Where the bytes come from and whether the token goes there, from the same HEAD.

    A non-Xet file comes from `meta.location` (the CDN URL of the Hub's 302, saving a redirect), with the token
    only if that is the requested URL's origin or the Hub's, as hf_hub_download decides. A Xet file is fetched
    from the /resolve URL, following the redirect (httpx2 drops the token cross-host), unless hf_xet is asked for.
    """
    if meta.xet_file_data is not None:
        # hf_xet transfers in parallel but cannot resume across runs; a model download that survives Ctrl-C
        # matters more here, so Xet-backed files come over resumable HTTP unless KCUDA_HUB_XET=1 asks for hf_xet.
        use_xet = os.environ.get("KCUDA_HUB_XET", "") not in ("", "0") and xet_usable()
        return {"url": url, "send_token": True, "xet": use_xet}
    location = meta.location or url
    if location == url:
        return {"url": url, "send_token": True, "xet": False}
    return {"url": location, "send_token": same_or_hub_origin(url, location), "xet": False}


def xet_usable() -> bool:
    """hf_xet is installed and HF_HUB_DISABLE_XET does not turn it off (what hf_hub_download checks)."""
    from huggingface_hub import constants

    return not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(parts.scheme, 0)


def same_or_hub_origin(url: str, target: str) -> bool:
    """Whether `target` is served from `url`'s origin or from the Hub's own (HF_ENDPOINT included)."""
    from huggingface_hub import constants

    return _origin(target) in {_origin(url), _origin(constants.ENDPOINT), *map(_origin, _HUB_HOSTS)}


def gguf_listing(repo_id: str, rev: str, token: str | None, timeout: float) -> str:
    """'; .gguf files there: a, b, c (+2 more)' if the repo listing comes back quickly, else '' (a hint only)."""
    from huggingface_hub import HfApi

    try:
        info = with_deadline(
            lambda: HfApi().model_info(repo_id, revision=rev, timeout=timeout, token=token), timeout + DEADLINE_GRACE_S
        )
    except Exception:  # noqa: BLE001 - the listing only decorates an error we are already raising
        return ""
    names = sorted(s.rfilename for s in (info.siblings or []) if s.rfilename.lower().endswith(".gguf"))
    if not names:
        return "; the repo has no .gguf files"
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return "; .gguf files there: " + ", ".join(names[:_MAX_LISTED]) + more


class NoAnswer(Exception):
    """The call did not return within its deadline."""


def in_thread(fn: Callable[[], _T], name: str = "kcuda-hub-request") -> Future[_T]:
    """`fn()` in a daemon thread, its result (or exception) in the future: nothing waits for it at exit."""
    future: Future[_T] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as err:  # noqa: BLE001 - handed to whoever asks for the result
            future.set_exception(err)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def with_deadline(fn: Callable[[], _T], deadline_s: float) -> _T:
    """Run `fn` in a daemon thread and give up after `deadline_s`.

    httpx2 timeouts bound connect and read, but not name resolution (getaddrinfo blocks for the resolver's
    own timeouts, 5 s or more per server). An abandoned thread ends on its own; being a daemon it never
    delays exit.
    """
    try:
        return in_thread(fn).result(timeout=deadline_s)
    except FutureTimeout:
        raise NoAnswer from None


__all__ = [
    "DEFAULT_FILENAME",
    "DEFAULT_REPO_ID",
    "DEFAULT_REVISION",
    "METADATA_TIMEOUT_S",
    "DownloadProgress",
    "HubProbe",
    "ModelFile",
    "cache_dir",
    "fetch_model",
    "probe_hub",
]
