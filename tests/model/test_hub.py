"""kcuda_validate.model.hub against a real Hub cache layout and a fake Hub on 127.0.0.1.

Nothing here talks to huggingface.co. The HTTP seam is a tiny HTTP server set as the Hub endpoint, so the
whole real client stack runs (huggingface_hub -> httpx2 -> sockets), with the headers the Hub really sends:
X-Repo-Commit, X-Linked-Etag, X-Linked-Size, X-Error-Code / X-Error-Message, and a 302 to a "CDN" host.

Resumable downloads: a plain-HTTP transfer accumulates in a partial file in blobs/ that survives the run
(Ctrl-C, a dropped connection, an HTTP error, a full disk); the next run continues it with a Range request, and
only a size- and sha256-checked whole file becomes the blob. The fake CDN records the Range asked for and the
bytes it sent, can ignore Range, serve corrupt bytes, or stop half-way (dropping, hanging or pausing).

How env changes take effect: huggingface_hub reads HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE,
HF_HUB_ETAG_TIMEOUT, HF_TOKEN_PATH, ... once, when `huggingface_hub.constants` is first imported, and derives
more constants from them (HUGGINGFACE_CO_URL_TEMPLATE from ENDPOINT). Setting os.environ in a test is therefore
not enough (and the conftest's HF_HOME / HF_HUB_OFFLINE only count if the first import happened after it ran), so
the `hub_env` fixture monkeypatches the constants themselves, and the derived ones with them. HF_TOKEN itself is
read from os.environ on every request, so monkeypatch.setenv works for it. The shared httpx client is closed
around each test so that it is rebuilt with this test's environment (proxies are read when it is created).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from kcuda_validate.errors import (
    DiskFullError,
    ExitCode,
    HubAuthError,
    HubUnreachableError,
    ModelNotFoundError,
    UsageError,
)
from kcuda_validate.model import hub, hub_transfer

REPO = "acme/Tiny-GGUF"
FILE = "tiny-q4_k_m.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONTENT = b"GGUF" + bytes(range(256)) * 256  # 64 KiB + 4: several socket reads, small enough to be instant
SHA = hashlib.sha256(CONTENT).hexdigest()
SECRET = "hf_kcudaTestSecretTokenValue0123456789"


# ----------------------------------------------------------------------------------------------------------------
# Environment


@dataclass
class HubEnv:
    cache: Path
    monkeypatch: pytest.MonkeyPatch

    def endpoint(self, url: str) -> None:
        """Point huggingface_hub at `url` (what HF_ENDPOINT does at import time)."""
        from huggingface_hub import constants

        self.monkeypatch.setenv("HF_ENDPOINT", url)
        self.monkeypatch.setattr(constants, "ENDPOINT", url)
        self.monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
        )

    def offline(self, on: bool = True) -> None:
        from huggingface_hub import constants

        self.monkeypatch.setenv("HF_HUB_OFFLINE", "1" if on else "0")
        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", on)

    def etag_timeout(self, seconds: int) -> None:
        from huggingface_hub import constants

        self.monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", str(seconds))
        self.monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", seconds)

    @property
    def storage(self) -> Path:
        return self.cache / ("models--" + REPO.replace("/", "--"))

    @property
    def partial(self) -> Path:
        """Where an unfinished plain-HTTP download of FILE waits for the next run."""
        return hub_transfer.partial_path(self.storage, SHA, FILE)

    def leftovers(self) -> list[str]:
        """Everything in the repo's cache folder that could be mistaken for (part of) the file."""
        if not self.storage.exists():
            return []
        return sorted(
            str(p.relative_to(self.storage))
            for p in self.storage.rglob("*")
            if p.is_file() or p.is_symlink()
            if not p.is_relative_to(self.storage / "refs")
        )


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """An empty Hub cache in tmp_path, online, no token, no proxy, endpoint a refused port until a test sets one."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent, close_session

    home = tmp_path / "hf"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_TOKEN_PATH": str(home / "token"),  # never the developer's own `hf auth login`
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_ETAG_TIMEOUT": constants.DEFAULT_ETAG_TIMEOUT,
        "HF_HUB_DOWNLOAD_TIMEOUT": constants.DEFAULT_DOWNLOAD_TIMEOUT,
        "HF_HUB_DISABLE_PROGRESS_BARS": None,
        "HF_HUB_DISABLE_XET": False,
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        # Whatever the developer's shell says: these change which requests are made and what they carry.
        "HF_HUB_DISABLE_TELEMETRY": False,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_DEBUG": False,
    }.items():
        monkeypatch.setattr(constants, name, value)
    # huggingface_hub GETs {endpoint}/api/agent-harnesses (3 s timeout) while building the first request's headers,
    # unless HF_HOME holds a copy younger than a day; it then keeps it in memory. Start each test from a fresh copy
    # (a machine that used the Hub today): no extra request, whatever ran before. Tests of a first run delete it.
    home.mkdir(parents=True)
    Path(constants.AGENT_HARNESSES_PATH).write_text('{"standardEnvVars": [], "harnesses": {}}')
    monkeypatch.setattr(_detect_agent, "_registry", None)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(hub_transfer, "RETRY_WAIT_S", 0.05)  # the pause before reconnecting a dropped download (1 s)
    env = HubEnv(cache=cache, monkeypatch=monkeypatch)
    env.offline(False)
    env.endpoint(f"http://127.0.0.1:{_free_port()}")
    close_session()
    yield env
    close_session()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_cache(
    cache: Path, *, refs: tuple[str, ...] = ("main",), with_blob: bool = True, repo: str = REPO, filename: str = FILE
) -> Path:
    """The layout huggingface_hub writes: blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True)
    if with_blob:
        (storage / "blobs" / SHA).write_bytes(CONTENT)
    pointer = storage / "snapshots" / COMMIT / filename
    pointer.parent.mkdir(parents=True)
    pointer.symlink_to(Path("..", "..", "blobs", SHA))
    (storage / "refs").mkdir()
    for ref in refs:
        (storage / "refs" / ref).write_text(COMMIT)  # no newline, as huggingface_hub writes it
    return pointer


# ----------------------------------------------------------------------------------------------------------------
# A fake Hub


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    served: int = 0  # body bytes the fake CDN sent


COMPLETE = sorted([f"blobs/{SHA}", f"snapshots/{COMMIT}/{FILE}"])  # what a good download leaves, nothing else
HALF = len(CONTENT) // 2  # what a transfer that stops half-way leaves
TAIL = 1024  # what a trickling server sends slowly, after the rest at once


@dataclass
class FakeHub:
    """A threaded HTTP/1.1 server answering like huggingface.co; `routes` maps a URL path to a responder."""

    routes: dict[str, Callable[[_Handler, str], None]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    # per CDN GET: ok | drop_half | hang_half (then drop) | pause_half (then the rest) | error_503
    cdn_plan: list[str] = field(default_factory=list)
    content: bytes = CONTENT  # what the CDN serves for SHA (set to other bytes to serve a corrupt file)
    honour_range: bool = True  # False: a server that ignores Range and always sends the whole file with 200
    blobs: dict[str, bytes] = field(default_factory=dict)  # what the CDN serves for other files (serve_file content=)
    release: threading.Event = field(default_factory=threading.Event)
    on_half_sent: Callable[[], None] | None = None
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def cdn(self) -> str:
        """Another host name for the same server: huggingface_hub treats it as a CDN (no redirect-follow, no auth)."""
        assert self.server is not None
        return f"http://localhost:{self.server.server_address[1]}"

    def requests(self, method: str | None = None, prefix: str = "") -> list[Seen]:
        return [s for s in self.seen if (method is None or s.method == method) and s.path.startswith(prefix)]

    # -- routes ---------------------------------------------------------------------------------------------------

    def serve_file(
        self,
        *,
        size: int | None = None,
        revs: tuple[str, ...] = ("main", COMMIT),
        xet: bool = False,
        repo: str = REPO,
        filename: str = FILE,
        content: bytes | None = None,
    ) -> None:
        """FILE as an LFS file: HEAD/GET /resolve -> 302 to the CDN with the linked etag/size, CDN honours Range.

        `xet`: also the headers of a Xet-backed file (X-Xet-Hash, X-Xet-Refresh-Route). `content`: another file's
        bytes, served under their own sha256 (the parts of a split model: see serve_split); `cdn_plan` and
        `honour_range` apply to every file, in the order of the GETs.
        """
        sha = SHA if content is None else hashlib.sha256(content).hexdigest()
        if content is not None:
            self.blobs[sha] = content
        linked_size = str(size if size is not None else len(CONTENT if content is None else content))
        headers = {
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": linked_size,
            "ETag": 'W/"1b4c5f6e7d8c9b0a1b2c3d4e5f60718293a4b5c6"',
            "Location": f"{self.cdn}/cdn/{sha}?X-Amz-Signature=abc",
            "Accept-Ranges": "bytes",
        }
        if xet:
            headers["X-Xet-Hash"] = "ab" * 32 if content is None else sha[::-1]  # its own: huggingface_hub dedups on it
            headers["X-Xet-Refresh-Route"] = f"/api/models/{REPO}/xet-read-token/{COMMIT}"

        def resolve(h: _Handler, method: str) -> None:
            h.reply(302, headers)

        for rev in revs:
            self.routes[f"/{repo}/resolve/{rev}/{filename}"] = resolve
        self.routes[f"/cdn/{sha}"] = lambda h, method: self._cdn(h, method, sha)

    def serve_split(self, parts: dict[str, bytes], *, size: int | None = None, xet: bool = False) -> None:
        """Several files of one repo at one commit (a split model's parts): each at main and at COMMIT."""
        for name, content in parts.items():
            self.serve_file(filename=name, content=content, size=size, xet=xet)

    def _cdn(self, h: _Handler, method: str, sha: str = SHA) -> None:
        plan = self.cdn_plan.pop(0) if (method == "GET" and self.cdn_plan) else "ok"
        if plan == "error_503":
            h.reply(503, {"Content-Type": "text/plain"}, b"Service Unavailable")
            return
        start = 0
        rng = h.headers.get("Range")
        if self.honour_range and rng and rng.startswith("bytes="):
            start = int(rng[len("bytes=") :].split("-")[0])
        content = self.content if sha == SHA else self.blobs[sha]
        body = content[start:]
        headers = {"ETag": '"s3-md5-etag"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        if method == "HEAD" or plan == "ok":
            h.reply(status, headers, body, send_body=method == "GET")
            h.seen_entry.served = len(body) if method == "GET" else 0
            return
        if plan in ("trickle_tail", "steady"):
            self._slowly(h, status, headers, body, plan)
            return
        # A transfer that stops half-way: headers promise the whole body, half of it arrives.
        h.reply(status, headers, body, send_body=False)
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        h.seen_entry.served = len(body) // 2
        if plan in ("hang_half", "pause_half"):
            if self.on_half_sent is not None:
                self.on_half_sent()
            self.release.wait(10)
        if plan == "pause_half":
            h.wfile.write(body[len(body) // 2 :])
            h.wfile.flush()
            h.seen_entry.served = len(body)
            return
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)

    def _slowly(self, h: _Handler, status: int, headers: dict[str, str], body: bytes, plan: str) -> None:
        """trickle_tail: all but the last TAIL bytes at once, then 16 bytes every 0.05 s (320 B/s, each read well
        within any timeout); steady: 8 KiB every 0.25 s (32 KiB/s), slow but far above the stall floor."""
        h.reply(status, headers, body, send_body=False)
        if plan == "trickle_tail":
            h.wfile.write(body[:-TAIL])
            step, pause, sent = 16, 0.05, len(body) - TAIL
        else:
            step, pause, sent = 8192, 0.25, 0
        h.wfile.flush()
        h.seen_entry.served = sent
        while sent < len(body):
            time.sleep(pause)
            try:
                h.wfile.write(body[sent : sent + step])
                h.wfile.flush()
            except OSError:  # the client gave up on us
                return
            sent = min(sent + step, len(body))
            h.seen_entry.served = sent

    def error(self, path: str, status: int, code: str | None, message: str, **extra: str) -> None:
        headers = {"X-Request-Id": "Root=1-fake", "Content-Type": "application/json", **extra}
        if code:
            headers["X-Error-Code"] = code
        headers["X-Error-Message"] = message

        def respond(h: _Handler, method: str) -> None:
            h.reply(status, headers, json.dumps({"error": message}).encode(), send_body=method == "GET")

        self.routes[path] = respond

    def model_info(self, siblings: list[str]) -> None:
        doc = {"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": name} for name in siblings]}

        def respond(h: _Handler, method: str) -> None:
            h.reply(200, {"Content-Type": "application/json"}, json.dumps(doc).encode(), send_body=method == "GET")

        self.routes[f"/api/models/{REPO}/revision/main"] = respond


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any
    seen_entry: Seen

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        fake: FakeHub = self.server.fake
        path = unquote(urlsplit(self.path).path)
        self.seen_entry = Seen(method, path, {k.lower(): v for k, v in self.headers.items()})
        fake.seen.append(self.seen_entry)
        route = fake.routes.get(path)
        if route is None:
            self.reply(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return
        route(self, method)

    def reply(self, status: int, headers: dict[str, str], body: bytes = b"", *, send_body: bool = True) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-response (the interrupted-download tests) are expected here


@pytest.fixture
def fake_hub(hub_env: HubEnv) -> Iterator[FakeHub]:
    fake = FakeHub()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake  # type: ignore[attr-defined]
    fake.server = server
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="fake-hub", daemon=True)
    thread.start()
    hub_env.endpoint(fake.url)
    yield fake
    fake.release.set()
    server.shutdown()
    server.server_close()


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def library_finds(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """What huggingface_hub itself finds complete in the cache: what we wrote must read as its own."""
    from huggingface_hub import constants, try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision)
    return Path(hit) if isinstance(hit, str) else None


# ----------------------------------------------------------------------------------------------------------------
# Cache, no network


def test_cached_file_is_served_offline(hub_env: HubEnv) -> None:
    pointer = seed_cache(hub_env.cache)
    hub_env.offline()

    start = time.perf_counter()
    mf = hub.fetch_model(REPO, FILE)
    elapsed = time.perf_counter() - start

    assert mf == hub.ModelFile(
        path=pointer,
        repo_id=REPO,
        filename=FILE,
        revision="main",
        commit_hash=COMMIT,
        size_bytes=len(CONTENT),
        source="cache",
        download_s=None,
    )
    assert mf.path.read_bytes() == CONTENT
    assert hub.cache_dir() == hub_env.cache
    assert elapsed < 2.0  # served without the network; the speed itself is a benchmark matter


def test_cached_file_is_served_online_without_asking_the_hub(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    seed_cache(hub_env.cache)
    fake_hub.serve_file()

    assert hub.fetch_model(REPO, FILE, "main").source == "cache"
    assert fake_hub.seen == []


def test_find_cached_resolves_branch_tag_and_commit_without_network(hub_env: HubEnv) -> None:
    pointer = seed_cache(hub_env.cache, refs=("main", "v1.0"))

    assert library_finds(REPO, FILE) == pointer
    assert library_finds(REPO, FILE, "v1.0") == pointer
    assert library_finds(REPO, FILE, COMMIT) == pointer
    assert library_finds(REPO, FILE, "v2.0") is None
    assert library_finds(REPO, "other.gguf") is None
    assert library_finds("acme/absent", FILE) is None


def test_snapshot_link_without_its_blob_is_not_cached(hub_env: HubEnv) -> None:
    seed_cache(hub_env.cache, with_blob=False)  # e.g. a blob deleted by hand or by a cleaner
    hub_env.offline()

    assert library_finds(REPO, FILE) is None
    with pytest.raises(ModelNotFoundError):
        hub.fetch_model(REPO, FILE)


def test_offline_and_not_cached_says_so(hub_env: HubEnv) -> None:
    hub_env.offline()

    with pytest.raises(ModelNotFoundError) as info:
        hub.fetch_model(REPO, FILE)

    msg = one_line(info.value)
    assert "offline mode is on" in msg
    assert f"{REPO}/{FILE} @ main" in msg
    assert str(hub_env.cache) in msg
    assert info.value.exit_code == ExitCode.MODEL_NOT_FOUND
    assert "HF_HUB_OFFLINE" in (info.value.fix or "")


def test_offline_with_a_cached_no_such_file_answer(hub_env: HubEnv) -> None:
    """huggingface_hub records a 404 for a file as .no_exist/<commit>/<file>; offline, that is the best answer."""
    seed_cache(hub_env.cache)
    (hub_env.storage / ".no_exist" / COMMIT / "nope.gguf").parent.mkdir(parents=True)
    (hub_env.storage / ".no_exist" / COMMIT / "nope.gguf").touch()
    hub_env.offline()

    with pytest.raises(ModelNotFoundError) as info:
        hub.fetch_model(REPO, "nope.gguf")

    assert one_line(info.value).startswith(f"file 'nope.gguf' does not exist in repo '{REPO}' at revision 'main'")


@pytest.mark.parametrize(("repo_id", "filename"), [("not a repo", FILE), ("a/b/c", FILE), (REPO, "../../etc/passwd")])
def test_malformed_input_is_a_usage_error(hub_env: HubEnv, repo_id: str, filename: str) -> None:
    with pytest.raises(UsageError):
        hub.fetch_model(repo_id, filename)


# ----------------------------------------------------------------------------------------------------------------
# Unreachable Hub: fast, clear


def test_refused_connection_fails_fast(hub_env: HubEnv) -> None:
    port = _free_port()
    hub_env.endpoint(f"http://127.0.0.1:{port}")

    start = time.perf_counter()
    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)
    elapsed = time.perf_counter() - start

    msg = one_line(info.value)
    assert msg.startswith(f"cannot reach 127.0.0.1:{port} (connection refused)")
    assert f"{REPO}/{FILE} @ main" in msg
    assert info.value.fix is not None
    assert "HF_HUB_OFFLINE=1" in info.value.fix
    assert "--model-path / --synthetic" in info.value.fix
    assert info.value.exit_code == ExitCode.HUB_UNREACHABLE
    assert elapsed < 2


@pytest.mark.parametrize(
    ("first_contact", "reason"),
    [(False, "(no answer within 3 s)"), (True, "(no answer within 4 s)")],
    ids=["hub-used-today", "first-contact"],
)
def test_blackholed_hub_fails_within_five_seconds(hub_env: HubEnv, first_contact: bool, reason: str) -> None:
    """A host that accepts the connection and then says nothing (firewall, dead proxy), with default timeouts.

    On first contact huggingface_hub first spends up to 3 s on its agent-registry GET; the deadline still holds.
    The configured timeouts leave the command's start-up room within the promised 5 s (4 s + grace took 5.4 s
    end to end); the elapsed bound is loose so a loaded machine does not fail the test.
    """
    assert hub.METADATA_TIMEOUT_S + hub.DEADLINE_GRACE_S <= 4.0
    from huggingface_hub import constants

    if first_contact:
        Path(constants.AGENT_HARNESSES_PATH).unlink()
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
        port = hole.getsockname()[1]
        hub_env.endpoint(f"http://127.0.0.1:{port}")

        start = time.perf_counter()
        with pytest.raises(HubUnreachableError) as info:
            hub.fetch_model(REPO, FILE)
        elapsed = time.perf_counter() - start

    assert one_line(info.value).startswith(f"cannot reach 127.0.0.1:{port} {reason}")
    assert "HF_HUB_ETAG_TIMEOUT" in (info.value.fix or "")
    assert elapsed < 8


def test_dns_hang_is_cut_by_the_deadline(hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Socket timeouts do not bound name resolution; a resolver that never answers must not hang us."""
    hub_env.endpoint("http://hub.example.invalid")
    hub_env.etag_timeout(1)  # HF_HUB_ETAG_TIMEOUT, honoured for the metadata request
    unblock = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def hanging_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hub.example.invalid":
            unblock.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    start = time.perf_counter()
    try:
        with pytest.raises(HubUnreachableError) as info:
            hub.fetch_model(REPO, FILE)
    finally:
        unblock.set()
    elapsed = time.perf_counter() - start

    assert "cannot reach hub.example.invalid (no answer within 2 s" in one_line(info.value)
    assert elapsed < 3


# ----------------------------------------------------------------------------------------------------------------
# What the Hub says -> the project's errors


GATED_401 = (
    "Access to model acme/Tiny-GGUF is restricted. You must have access to it and be authenticated to access it."
)
GATED_403 = "Access to model acme/Tiny-GGUF is restricted and you are not in the authorized list."


@pytest.mark.parametrize(
    ("rev", "status", "code", "message", "expected", "in_message", "in_fix"),
    [
        ("main", 401, "GatedRepo", GATED_401, HubAuthError, "is gated and you are not logged in", "hf auth login"),
        (
            "main",
            403,
            "GatedRepo",
            GATED_403,
            HubAuthError,
            "is gated and your account has no access",
            "request access on http://127.0.0.1",
        ),
        ("main", 404, "RepoNotFound", "Repository not found", ModelNotFoundError, "not found on the Hub", "private"),
        ("main", 401, "RepoNotFound", "Invalid username or password.", ModelNotFoundError, "(or it is private)", ""),
        ("v9", 404, "RevisionNotFound", "Invalid rev id: v9", ModelNotFoundError, "revision 'v9' not found", "branch"),
        ("main", 401, None, "Invalid credentials in Authorization header", HubAuthError, "rejected your token", ""),
        ("main", 503, None, "Service Unavailable", HubUnreachableError, "answered HTTP 503", "Retry"),
    ],
    ids=["gated-401", "gated-403", "repo-404", "repo-401", "revision-404", "bad-token-401", "hub-503"],
)
def test_hub_answers_map_to_project_errors(
    hub_env: HubEnv,
    fake_hub: FakeHub,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    rev: str,
    status: int,
    code: str | None,
    message: str,
    expected: type[Exception],
    in_message: str,
    in_fix: str,
) -> None:
    hub_env.monkeypatch.setenv("HF_TOKEN", SECRET)
    fake_hub.error(f"/{REPO}/resolve/{rev}/{FILE}", status, code, message)

    start = time.perf_counter()
    with pytest.raises(expected) as info:
        hub.fetch_model(REPO, FILE, rev)

    msg = one_line(info.value)
    assert in_message in msg
    assert REPO in msg
    assert in_fix in (info.value.fix or "")
    assert time.perf_counter() - start < 2  # no retries/backoff on an answer
    assert len(fake_hub.requests("HEAD")) == 1
    assert fake_hub.requests("HEAD")[0].headers.get("authorization") == f"Bearer {SECRET}"  # it was used...
    out = capsys.readouterr()
    for text in (msg, info.value.fix or "", out.out, out.err, caplog.text):  # ...and never shown
        assert SECRET not in text
    assert hub_env.leftovers() == []


@pytest.mark.parametrize(
    ("status", "code", "message", "in_message", "in_fix"),
    [
        (403, "GatedRepo", GATED_403, "is gated and your account has no access", "request access on http://127.0.0.1:"),
        (401, "GatedRepo", GATED_401, "is gated and you are not logged in", "request access on http://127.0.0.1:"),
        (403, None, "Forbidden", "access to repo 'acme/Tiny-GGUF' is forbidden", "request access on http://127.0.0.1:"),
        (503, None, "Service Unavailable", "127.0.0.1:", "Retry"),
    ],
    ids=["gated-403", "gated-401", "forbidden-403", "hub-503"],
)
def test_credentials_in_hf_endpoint_are_never_shown(
    hub_env: HubEnv,
    fake_hub: FakeHub,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: str | None,
    message: str,
    in_message: str,
    in_fix: str,
) -> None:
    """HF_ENDPOINT=http://user:token@host: messages name the host and port, and the pages to visit, without them."""
    password, query = "pw-Sup3rSecretValue", "qtok-Sup3rSecretValue"
    port = urlsplit(fake_hub.url).port
    hub_env.endpoint(f"http://kcuda-user:{password}@127.0.0.1:{port}")
    fake_hub.error(f"/{REPO}/resolve/main/{FILE}", status, code, f"{message} (see ?token={query})")

    with pytest.raises((HubAuthError, HubUnreachableError)) as info:
        hub.fetch_model(REPO, FILE)

    msg, fix = one_line(info.value), info.value.fix or ""
    assert in_message in msg
    assert in_fix in fix
    if "request access on" in in_fix:
        assert f"request access on http://127.0.0.1:{port}/{REPO}" in fix
    out = capsys.readouterr()
    for text in (msg, fix, out.out, out.err, caplog.text):
        assert password not in text
        assert query not in text
        assert "kcuda-user" not in text


def test_credentials_in_a_refused_endpoint_are_never_shown(hub_env: HubEnv) -> None:
    port = _free_port()
    hub_env.endpoint(f"http://kcuda-user:pw-Sup3rSecretValue@127.0.0.1:{port}")

    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == f"cannot reach 127.0.0.1:{port} (connection refused) to fetch {REPO}/{FILE} @ main"


def test_missing_file_lists_the_gguf_files_that_exist(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    fake_hub.error(
        f"/{REPO}/resolve/main/nope.gguf", 404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": COMMIT}
    )
    ggufs = [f"tiny-{q}.gguf" for q in ("q2_k", "q3_k_m", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0")]
    fake_hub.model_info(["README.md", ".gitattributes", *ggufs])

    with pytest.raises(ModelNotFoundError) as info:
        hub.fetch_model(REPO, "nope.gguf")

    msg = one_line(info.value)
    assert msg.startswith(f"file 'nope.gguf' not found in repo '{REPO}' at revision 'main'")
    assert msg.endswith("; .gguf files there: " + ", ".join(sorted(ggufs)[:5]) + " (+2 more)")
    assert "README.md" not in msg


def test_missing_file_without_listing_still_says_what_is_missing(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    fake_hub.error(f"/{REPO}/resolve/main/nope.gguf", 404, "EntryNotFound", "Entry not found")
    # no /api/models route: the listing fails (404) and is simply left out

    with pytest.raises(ModelNotFoundError) as info:
        hub.fetch_model(REPO, "nope.gguf")

    assert one_line(info.value) == f"file 'nope.gguf' not found in repo '{REPO}' at revision 'main'"


def test_endpoint_that_is_not_a_hub(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """A captive portal or a wrong HF_ENDPOINT answers 200 without the Hub's headers."""
    fake_hub.routes[f"/{REPO}/resolve/main/{FILE}"] = lambda h, m: h.reply(200, {"Content-Type": "text/html"}, b"hi")

    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)

    assert "not like the Hugging Face Hub (no X-Repo-Commit header)" in one_line(info.value)
    assert "HF_ENDPOINT" in (info.value.fix or "")


def _redirect_to_itself(h: _Handler, method: str) -> None:
    """A misbehaving proxy, captive portal or HF_ENDPOINT: every answer is a 302 back to the same URL."""
    h.reply(302, {"Location": h.path})


REDIRECT_LOOP_FIX = (
    "Check HF_ENDPOINT and any proxy or captive portal between you and the Hub (one of them answers with a "
    "redirect loop), or set HF_HUB_OFFLINE=1 to use the cache, or pass --model-path / --synthetic"
)


def test_a_redirect_loop_is_an_unreachable_hub_naming_hf_endpoint(
    hub_env: HubEnv, fake_hub: FakeHub, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """httpx2's TooManyRedirects is no TransportError: unmapped, it was an internal error (exit 70)."""
    password = "pw-Sup3rSecretValue"
    port = urlsplit(fake_hub.url).port
    hub_env.endpoint(f"http://kcuda-user:{password}@127.0.0.1:{port}")
    path = f"/{REPO}/resolve/main/{FILE}"
    fake_hub.routes[path] = _redirect_to_itself

    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == (
        f"127.0.0.1:{port} redirected the request for {REPO}/{FILE} @ main in a loop (Exceeded 20 redirects "
        f"while resolving 'http://***@127.0.0.1:{port}{path}'.)"
    )
    assert (info.value.fix, info.value.exit_code) == (REDIRECT_LOOP_FIX, ExitCode.HUB_UNREACHABLE)
    assert len(fake_hub.requests("HEAD")) == 20
    out = capsys.readouterr()
    for text in (out.out, out.err, caplog.text):
        assert password not in text and "kcuda-user" not in text
    assert hub_env.leftovers() == []

    probe = hub.probe_hub(REPO, FILE)  # detect's Hub check says the same, as a warning
    assert (probe.error, probe.fix) == (one_line(info.value), REDIRECT_LOOP_FIX)


def test_a_redirect_loop_on_the_cdn_is_an_unreachable_hub(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    fake_hub.serve_file()
    fake_hub.routes[f"/cdn/{SHA}"] = _redirect_to_itself

    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)

    port = urlsplit(fake_hub.url).port
    assert one_line(info.value) == (
        f"localhost:{port} redirected the download of {REPO}/{FILE} @ main in a loop (Exceeded maximum allowed "
        "redirects.); nothing partial was kept"
    )
    assert info.value.fix == REDIRECT_LOOP_FIX
    assert hub_env.leftovers() == []


def test_a_redirect_loop_from_the_cli_is_exit_11(hub_env: HubEnv, fake_hub: FakeHub, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    hub_env.monkeypatch.setenv("KCUDA_LOG_DIR", str(tmp_path / "logs"))
    fake_hub.routes[f"/{REPO}/resolve/main/{FILE}"] = _redirect_to_itself

    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "--repo-id", REPO, "--filename", FILE, "--json"])

    assert result.exit_code == ExitCode.HUB_UNREACHABLE, (result.stdout, result.stderr)
    check = next(c for c in json.loads(result.stdout)["checks"] if c["id"] == "model.source")
    assert (check["status"], check["fix"]) == ("fail", REDIRECT_LOOP_FIX)
    assert check["summary"].startswith(f"{fake_hub.url.removeprefix('http://')} redirected the request for {REPO}")


# ----------------------------------------------------------------------------------------------------------------
# Downloads


def test_download_lands_in_the_cache_and_the_next_run_uses_it(
    hub_env: HubEnv, fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub_env.monkeypatch.setenv("HF_TOKEN", SECRET)
    fake_hub.serve_file()
    stale = hub_env.storage / "blobs" / f"{SHA}.0badcafe.incomplete"  # left by a killed run
    stale.parent.mkdir(parents=True)
    stale.write_bytes(CONTENT[:100])
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    first = hub.fetch_model(REPO, FILE)

    assert first.source == "download"
    assert first.download_s is not None
    assert 0 < first.download_s < 5
    assert first.commit_hash == COMMIT
    assert first.size_bytes == len(CONTENT)
    assert first.path == hub_env.storage / "snapshots" / COMMIT / FILE
    assert first.path.is_symlink()
    assert first.path.resolve() == hub_env.storage / "blobs" / SHA
    assert first.path.read_bytes() == CONTENT
    assert (hub_env.storage / "refs" / "main").read_text() == COMMIT
    assert not stale.exists()
    assert not list(hub_env.storage.rglob("*.incomplete"))
    # The token goes to the Hub, not to the CDN the file is served from.
    assert fake_hub.requests("HEAD", f"/{REPO}/resolve/")[0].headers["authorization"] == f"Bearer {SECRET}"
    (cdn_get,) = fake_hub.requests("GET", "/cdn/")
    assert "authorization" not in cdn_get.headers
    assert capsys.readouterr().out == ""  # stdout stays clean for --json

    asked = len(fake_hub.seen)
    second = hub.fetch_model(REPO, FILE)
    assert (second.source, second.download_s, second.path) == ("cache", None, first.path)
    assert len(fake_hub.seen) == asked

    hub_env.offline()
    assert hub.fetch_model(REPO, FILE).path == first.path


def test_file_already_in_the_cache_under_another_revision_is_not_downloaded(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    seed_cache(hub_env.cache, refs=("main",))
    fake_hub.serve_file(revs=("v1.0",))  # the tag v1.0 points at the commit we already have

    mf = hub.fetch_model(REPO, FILE, "v1.0")

    assert (mf.source, mf.revision, mf.commit_hash) == ("cache", "v1.0", COMMIT)
    assert fake_hub.requests("GET", "/cdn/") == []
    assert library_finds(REPO, FILE, "v1.0") == mf.path  # refs/v1.0 written: offline next time


def test_dropped_connection_is_resumed_in_the_same_run(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """A connection dropped mid-body is picked up at once with a Range request from the last byte received."""
    fake_hub.serve_file()
    fake_hub.cdn_plan = ["drop_half", "ok"]

    mf = hub.fetch_model(REPO, FILE)

    assert (mf.source, mf.path.read_bytes()) == ("download", CONTENT)
    first, second = fake_hub.requests("GET", "/cdn/")
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={HALF}-"
    assert second.served == len(CONTENT) - HALF
    assert hub_env.leftovers() == COMPLETE


def partial_only(hub_env: HubEnv) -> list[str]:
    return [str(hub_env.partial.relative_to(hub_env.storage))]


def fail_half_way(hub_env: HubEnv, fake_hub: FakeHub, *, xet: bool = False) -> None:
    """A first run that dies half-way (connection dropped, then the CDN fails): its partial file stays."""
    fake_hub.serve_file(xet=xet)
    fake_hub.cdn_plan = ["drop_half", "error_503"]
    with pytest.raises(HubUnreachableError):
        hub.fetch_model(REPO, FILE)
    assert hub_env.partial.read_bytes() == CONTENT[:HALF]
    fake_hub.cdn_plan = []
    fake_hub.seen.clear()


def assert_resumed_from(hub_env: HubEnv, fake_hub: FakeHub, offset: int, *others: Path) -> None:
    """The next run: one GET for the bytes after `offset`, the exact file in the cache, nothing else but `others`."""
    mf = hub.fetch_model(REPO, FILE)

    assert (mf.source, mf.path.read_bytes()) == ("download", CONTENT)
    (get,) = fake_hub.requests("GET", "/cdn/")
    assert get.headers["range"] == f"bytes={offset}-"
    assert get.served == len(CONTENT) - offset
    assert hub_env.leftovers() == sorted([*COMPLETE, *(str(p.relative_to(hub_env.storage)) for p in others)])
    assert (hub_env.storage / "refs" / "main").read_text() == COMMIT
    assert library_finds(REPO, FILE) == mf.path


def test_failed_download_keeps_a_partial_that_the_next_run_resumes(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    fake_hub.serve_file()
    fake_hub.cdn_plan = ["drop_half", "error_503"]  # connection dropped, then the CDN gives up

    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == (
        f"{urlsplit(fake_hub.cdn).netloc} answered HTTP 503 while downloading {REPO}/{FILE} @ main; "
        "the 32.0 KiB downloaded so far are kept and the next run resumes from there"
    )
    assert (info.value.fix or "").startswith("Run again in a minute to resume; ")
    assert hub_env.leftovers() == partial_only(hub_env)  # no blob, no snapshot link: never taken for the file
    assert hub_env.partial.read_bytes() == CONTENT[:HALF]
    assert library_finds(REPO, FILE) is None
    hub_env.offline()
    with pytest.raises(ModelNotFoundError):
        hub.fetch_model(REPO, FILE)
    hub_env.offline(False)

    fake_hub.cdn_plan = []
    fake_hub.seen.clear()
    assert_resumed_from(hub_env, fake_hub, HALF)


def test_a_download_that_trickles_is_stopped_and_the_next_run_resumes_it(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """Every read arrives well within HF_HUB_DOWNLOAD_TIMEOUT, so only the stall window can end it (1 s here)."""
    hub_env.monkeypatch.setenv("KCUDA_HUB_STALL_S", "1")
    fake_hub.serve_file()
    fake_hub.cdn_plan = ["trickle_tail"]
    start = time.monotonic()

    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)

    assert time.monotonic() - start < 10
    kept = hub_env.partial.stat().st_size
    assert len(CONTENT) - TAIL <= kept < len(CONTENT)
    message = one_line(info.value)
    prefix = f"the download of {REPO}/{FILE} @ main from {urlsplit(fake_hub.cdn).netloc} stalled: "
    assert message.startswith(prefix), message
    got = message[len(prefix) :].split(" bytes in the last 1 s")[0]
    assert got.isdigit() and int(got) < 1024, message
    assert message.endswith(
        f" bytes in the last 1 s (under 1.0 KiB/s); the {kept / 1024:.1f} KiB downloaded so far are kept "
        "and the next run resumes from there"
    )
    assert info.value.fix == (
        "Run again to resume; if it stays this slow, check any proxy between you and the Hub, "
        "or set KCUDA_HUB_STALL_S=0 to wait however long it takes."
    )
    assert hub_env.leftovers() == partial_only(hub_env)
    assert hub_env.partial.read_bytes() == CONTENT[:kept]

    fake_hub.cdn_plan = []
    fake_hub.seen.clear()
    assert_resumed_from(hub_env, fake_hub, kept)


def test_a_trickling_download_runs_to_the_end_with_the_stall_limit_off(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    hub_env.monkeypatch.setenv("KCUDA_HUB_STALL_S", "0")
    fake_hub.serve_file()
    fake_hub.cdn_plan = ["trickle_tail"]

    mf = hub.fetch_model(REPO, FILE)

    assert (mf.source, mf.path.read_bytes()) == ("download", CONTENT)
    assert len(fake_hub.requests("GET", "/cdn/")) == 1
    assert hub_env.leftovers() == COMPLETE


def test_a_slow_but_steady_download_is_not_a_stall(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """32 KiB/s over 2 s: two stall windows of 1 s pass, each far above the floor."""
    hub_env.monkeypatch.setenv("KCUDA_HUB_STALL_S", "1")
    fake_hub.serve_file()
    fake_hub.cdn_plan = ["steady"]

    mf = hub.fetch_model(REPO, FILE)

    assert (mf.source, mf.path.read_bytes()) == ("download", CONTENT)
    assert len(fake_hub.requests("GET", "/cdn/")) == 1


def test_interrupted_download_is_resumed_by_the_next_run(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """Ctrl-C half-way through: a real SIGINT, delivered while the client waits for the rest of the body."""
    fake_hub.serve_file()
    fake_hub.cdn_plan = ["hang_half"]
    fake_hub.on_half_sent = lambda: threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        hub.fetch_model(REPO, FILE)
    fake_hub.release.set()

    assert hub_env.leftovers() == partial_only(hub_env)
    assert hub_env.partial.read_bytes() == CONTENT[:HALF]
    assert library_finds(REPO, FILE) is None

    fake_hub.seen.clear()
    assert_resumed_from(hub_env, fake_hub, HALF)


def test_server_that_ignores_range_still_yields_the_right_file(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """A 200 with the whole file in answer to a Range request: the partial restarts from byte 0 with that body."""
    fail_half_way(hub_env, fake_hub)
    fake_hub.honour_range = False

    mf = hub.fetch_model(REPO, FILE)

    assert mf.path.read_bytes() == CONTENT
    (get,) = fake_hub.requests("GET", "/cdn/")
    assert get.headers["range"] == f"bytes={HALF}-"
    assert get.served == len(CONTENT)
    assert hub_env.leftovers() == COMPLETE


@pytest.mark.parametrize("earlier_partial", [False, True], ids=["fresh", "after-a-partial"])
def test_server_that_ignores_range_and_keeps_dropping_gives_up(
    hub_env: HubEnv, fake_hub: FakeHub, earlier_partial: bool
) -> None:
    """Every GET: a 200 with the whole file promised, half of it sent, the connection dropped; Range ignored.

    Each reconnection starts again from byte 0 and gets no further than the one before: bytes written again are
    not progress, so the reconnections run out (it used to ask forever: the count was reset by every chunk
    written, old bytes included). One line naming the server and why; nothing kept, since neither this run nor
    the next can resume from a server that restarts from byte 0.
    """
    if earlier_partial:
        fail_half_way(hub_env, fake_hub)
    else:
        fake_hub.serve_file()
    fake_hub.honour_range = False
    fake_hub.cdn_plan = ["drop_half"] * (hub_transfer.RETRIES + 10)  # then "ok": the old loop would end there

    start = time.perf_counter()
    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)
    assert time.perf_counter() - start < 5

    gets = fake_hub.requests("GET", "/cdn/")
    assert len(gets) == hub_transfer.RETRIES + 1  # the first try (or the resume), then RETRIES reconnections
    assert all(g.served == HALF for g in gets)
    tries = hub_transfer.RETRIES + (1 if earlier_partial else 0)  # a fresh run's first GET got new bytes
    assert one_line(info.value) == (
        f"{urlsplit(fake_hub.cdn).netloc} kept dropping the connection while downloading {REPO}/{FILE} @ main "
        "and does not honour Range requests, so every reconnection started again from byte 0 "
        f"({tries} tries in a row got no further than 32.0 KiB of 64.0 KiB); nothing partial was kept"
    )
    assert info.value.exit_code == ExitCode.HUB_UNREACHABLE
    assert (info.value.fix or "").startswith("Run again later; ")
    assert hub_env.leftovers() == []
    assert library_finds(REPO, FILE) is None

    fake_hub.honour_range = True  # the next run, from a server that behaves: from byte 0, the whole file
    fake_hub.cdn_plan = []
    fake_hub.seen.clear()
    mf = hub.fetch_model(REPO, FILE)
    assert mf.path.read_bytes() == CONTENT
    (get,) = fake_hub.requests("GET", "/cdn/")
    assert "range" not in get.headers
    assert hub_env.leftovers() == COMPLETE


def test_corrupt_partial_is_discarded_and_the_file_fetched_again(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """Bytes an earlier run left may be bad (a crash or power cut can leave garbage at the end of a file).

    The sha256 check at the end catches it; since the bad bytes may be old ones, the partial is dropped and the
    file fetched once more from byte 0, in the same call.
    """
    fail_half_way(hub_env, fake_hub)
    damaged = bytearray(hub_env.partial.read_bytes())
    damaged[100] ^= 0xFF
    hub_env.partial.write_bytes(bytes(damaged))

    mf = hub.fetch_model(REPO, FILE)

    assert (mf.source, mf.path.read_bytes()) == ("download", CONTENT)
    resumed, fresh = fake_hub.requests("GET", "/cdn/")
    assert resumed.headers["range"] == f"bytes={HALF}-"
    assert "range" not in fresh.headers
    assert fresh.served == len(CONTENT)
    assert hub_env.leftovers() == COMPLETE


@pytest.mark.parametrize(
    ("served", "what"),
    [
        (CONTENT[:-1] + b"X", "does not match its sha256"),
        (CONTENT + b"tail", f"sent more than the {len(CONTENT)} bytes the Hub announced"),
        (CONTENT[:-10], f"sent {len(CONTENT) - 10} of the {len(CONTENT)} bytes the Hub announced"),
    ],
    ids=["wrong-bytes", "too-long", "too-short"],
)
def test_download_that_is_not_the_file_is_an_error_and_leaves_nothing(
    hub_env: HubEnv, fake_hub: FakeHub, served: bytes, what: str
) -> None:
    """Bytes all fetched by this call that are not the file: not retried (it would only happen again), not kept."""
    fake_hub.serve_file()
    fake_hub.content = served

    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, FILE)

    msg = one_line(info.value)
    assert what in msg
    assert f"{REPO}/{FILE} @ main" in msg
    assert msg.endswith("nothing partial was kept")
    assert len(fake_hub.requests("GET", "/cdn/")) == 1
    assert hub_env.leftovers() == []
    assert library_finds(REPO, FILE) is None


def test_a_second_run_waits_for_the_first_and_finds_the_file(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """Two runs at once, in two processes: the second waits on huggingface_hub's lock for the blob, then finds it.

    One transfer, both end with the same complete file, and nothing else is left in the cache.
    """
    import subprocess

    fake_hub.serve_file()
    fake_hub.cdn_plan = ["pause_half"]
    half_sent = threading.Event()
    fake_hub.on_half_sent = half_sent.set
    script = (
        f"from kcuda_validate.model import hub; mf = hub.fetch_model({REPO!r}, {FILE!r}); print(mf.source, mf.path)"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert half_sent.wait(20), first.stderr.read() if first.poll() is not None else "no GET from the first run"
        results: list[hub.ModelFile | BaseException] = []

        def second_run() -> None:
            try:
                results.append(hub.fetch_model(REPO, FILE))
            except BaseException as err:  # noqa: BLE001 - reported by the assertions below
                results.append(err)

        second = threading.Thread(target=second_run)
        second.start()
        deadline = time.monotonic() + 10
        while len(fake_hub.requests("HEAD")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the second run has had its answer and is waiting for the lock
        assert second.is_alive()
        fake_hub.release.set()
        out, err = first.communicate(timeout=20)
        second.join(20)
    finally:
        fake_hub.release.set()
        if first.poll() is None:
            first.kill()
            first.wait()

    assert first.returncode == 0, err
    (mf,) = results
    assert isinstance(mf, hub.ModelFile), mf
    assert out.split() == ["download", str(mf.path)]
    assert (mf.source, mf.path.read_bytes()) == ("cache", CONTENT)
    assert len(fake_hub.requests("GET", "/cdn/")) == 1
    assert hub_env.leftovers() == COMPLETE


def test_killed_run_is_resumed_by_the_next(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """SIGKILL half-way (OOM killer, closed terminal): no cleanup runs; the lock dies with the process.

    What reached the file is a prefix of it (the last few KiB may have been in the process's write buffer).
    """
    import subprocess

    fake_hub.serve_file()
    fake_hub.cdn_plan = ["hang_half"]
    half_sent = threading.Event()
    fake_hub.on_half_sent = half_sent.set
    script = f"from kcuda_validate.model import hub; hub.fetch_model({REPO!r}, {FILE!r})"
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        assert half_sent.wait(20), "no GET from the child"
        deadline = time.monotonic() + 5
        while (not hub_env.partial.exists() or hub_env.partial.stat().st_size < HALF - io.DEFAULT_BUFFER_SIZE) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        time.sleep(0.1)
        child.kill()
        child.wait(10)
    finally:
        fake_hub.release.set()
        if child.poll() is None:
            child.kill()
            child.wait()

    assert hub_env.leftovers() == partial_only(hub_env)
    kept = hub_env.partial.read_bytes()
    assert HALF - io.DEFAULT_BUFFER_SIZE <= len(kept) <= HALF
    assert kept == CONTENT[: len(kept)]
    fake_hub.seen.clear()
    assert_resumed_from(hub_env, fake_hub, len(kept))


def test_outdated_partials_go_and_an_old_partial_of_the_current_file_is_resumed(
    hub_env: HubEnv, fake_hub: FakeHub
) -> None:
    """A partial's name carries the content's etag: after the file changed on the Hub it can never be continued."""
    fail_half_way(hub_env, fake_hub)
    day_ago = time.time() - 86400
    os.utime(hub_env.partial, (day_ago, day_ago))  # yesterday's partial of today's file: still good
    outdated = hub_transfer.partial_path(hub_env.storage, "0" * 64, FILE)  # this file, an older version
    live = hub_transfer.partial_path(hub_env.storage, "1" * 64, FILE)  # touched just now: another run may be writing it
    other = hub_transfer.partial_path(hub_env.storage, "2" * 64, "other.gguf")  # another file's, not ours to judge
    for path in (outdated, live, other):
        path.write_bytes(b"partial")
    for path in (outdated, other):
        os.utime(path, (day_ago, day_ago))

    assert_resumed_from(hub_env, fake_hub, HALF, live, other)  # and the outdated partial is gone


def test_huggingface_hub_cache_tools_see_a_partial_as_an_incomplete_download(
    hub_env: HubEnv, fake_hub: FakeHub
) -> None:
    """`hf cache scan` lists the partial (and `hf cache prune` would delete it); the cache never looks corrupt."""
    from huggingface_hub import scan_cache_dir

    fail_half_way(hub_env, fake_hub)
    info = scan_cache_dir(hub_env.cache)
    assert info.warnings == []
    assert {f.file_path for f in info.incomplete_files} == {hub_env.partial}

    hub.fetch_model(REPO, FILE)
    info = scan_cache_dir(hub_env.cache)
    assert info.warnings == []
    assert info.incomplete_files == frozenset()
    (repo,) = info.repos
    assert (repo.repo_id, repo.nb_files, repo.size_on_disk) == (REPO, 1, len(CONTENT))


def test_not_enough_disk_space_fails_before_downloading(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.serve_file(size=400 * 1024**2)  # the Hub says 400 MiB
    seen_paths: list[Path] = []

    def disk_usage(path: str | os.PathLike[str]) -> Any:
        seen_paths.append(Path(path))
        return shutil._ntuple_diskusage(total=10 * 1024**3, used=0, free=100 * 1024**2)  # type: ignore[attr-defined]

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == f"{REPO}/{FILE} @ main: needs 400.0 MiB in {hub_env.cache}, only 100.0 MiB free"
    assert info.value.fix == "free 300.0 MiB or point HF_HUB_CACHE at a bigger disk"
    assert info.value.exit_code == ExitCode.DISK_FULL
    assert seen_paths
    assert all(hub_env.cache.is_relative_to(p) for p in seen_paths)  # the cache dir, or its nearest existing parent
    assert fake_hub.requests("GET") == []
    assert not hub_env.cache.exists()  # no folder, lock file or CACHEDIR.TAG: nothing was made


def test_disk_check_counts_only_the_bytes_still_missing(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.serve_file(size=400 * 1024**2)  # the Hub says 400 MiB
    hub_env.partial.parent.mkdir(parents=True)
    with hub_env.partial.open("wb") as f:
        f.truncate(100 * 1024**2)  # 100 MiB from an earlier run (sparse: instant)
    free = shutil._ntuple_diskusage(total=10 * 1024**3, used=0, free=250 * 1024**2)  # type: ignore[attr-defined]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == (
        f"{REPO}/{FILE} @ main: needs 300.0 MiB more (100.0 MiB already downloaded) in {hub_env.cache}, "
        "only 250.0 MiB free"
    )
    assert info.value.fix == "free 50.0 MiB or point HF_HUB_CACHE at a bigger disk"
    assert fake_hub.requests("GET") == []
    assert hub_env.partial.stat().st_size == 100 * 1024**2  # kept for when there is room


class _DiskFillsUp:
    """The partial file on a disk that fills up after `room` more bytes: the OS seam is the write's ENOSPC."""

    def __init__(self, f: Any, room: int) -> None:
        self._f = f
        self._room = room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _DiskFillsUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def test_disk_filling_up_mid_download_keeps_what_fits(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.serve_file()
    real_open = hub_transfer.open_partial
    monkeypatch.setattr(hub_transfer, "open_partial", lambda path: _DiskFillsUp(real_open(path), room=40_000))

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == (
        f"{REPO}/{FILE} @ main: ran out of disk space in {hub_env.cache} while downloading (the file is 0.1 MiB);"
        " the 39.1 KiB downloaded so far are kept and the next run resumes from there"
    )
    assert info.value.fix == "Free some space there (24.9 KiB more needed), or point HF_HUB_CACHE at a bigger disk."
    assert hub_env.leftovers() == partial_only(hub_env)
    assert hub_env.partial.read_bytes() == CONTENT[:40_000]
    assert not (hub_env.storage / "snapshots" / COMMIT).exists()  # no empty folder for a link never made
    assert (hub_env.storage / "snapshots").is_dir()  # `hf cache scan` needs it beside the partial

    monkeypatch.setattr(hub_transfer, "open_partial", real_open)
    fake_hub.seen.clear()
    assert_resumed_from(hub_env, fake_hub, 40_000)


def everything_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("hub_cache_set", [True, False], ids=["HF_HUB_CACHE", "HF_HOME"])
def test_a_cache_under_a_regular_file_is_exit_13_naming_the_setting(
    hub_env: HubEnv, fake_hub: FakeHub, tmp_path: Path, hub_cache_set: bool
) -> None:
    """ENOTDIR: nothing can ever be cached there, so the Hub is not even asked; exit 13, as for --synthetic."""
    from huggingface_hub import constants

    fake_hub.serve_file()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    if hub_cache_set:
        cache, variable = blocker / "hub", "HF_HUB_CACHE"
        hub_env.monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    else:
        home = blocker / "hf"
        cache, variable = home / "hub", "HF_HOME"
        hub_env.monkeypatch.delenv("HF_HUB_CACHE")
        hub_env.monkeypatch.setenv("HF_HOME", str(home))
        hub_env.monkeypatch.setattr(constants, "HF_HOME", str(home))
        hub_env.monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))  # read by every request
    hub_env.monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == (
        f"{REPO}/{FILE} @ main: cannot write the Hub cache {cache}: {blocker} is a file, not a directory"
    )
    assert info.value.fix == f"Point {variable} at a writable directory."
    assert info.value.exit_code == ExitCode.DISK_FULL
    assert fake_hub.seen == []
    assert blocker.read_text() == "x"


def test_hf_home_under_a_regular_file_is_exit_13_even_with_a_good_hub_cache(
    hub_env: HubEnv, fake_hub: FakeHub, tmp_path: Path
) -> None:
    """huggingface_hub reads HF_HOME/token on every request: through a file that is an OSError (was exit 70)."""
    from huggingface_hub import constants

    fake_hub.serve_file()
    (tmp_path / "file").write_text("x")
    home = tmp_path / "file" / "hf"
    hub_env.monkeypatch.setenv("HF_HOME", str(home))
    hub_env.monkeypatch.setattr(constants, "HF_HOME", str(home))
    hub_env.monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == (
        f"{REPO}/{FILE} @ main: cannot write HF_HOME {home}: {tmp_path / 'file'} is a file, not a directory"
    )
    assert info.value.fix == "Point HF_HOME at a writable directory."
    assert not hub_env.cache.exists()


def test_a_read_only_cache_is_exit_13_before_anything_is_made(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only filesystem (os.access says EROFS, root included): refused after the Hub's answer, at once."""
    fake_hub.serve_file()
    hub_env.cache.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: False if Path(path) == hub_env.cache else real_access(path, mode, **kw)
    )
    flags = os.statvfs(hub_env.cache).f_flag
    monkeypatch.setattr(os, "statvfs", lambda path: type("Vfs", (), {"f_flag": flags | os.ST_RDONLY})())

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == (
        f"{REPO}/{FILE} @ main: cannot write the Hub cache {hub_env.cache}: "
        f"{hub_env.cache} is on a read-only file system"
    )
    assert info.value.fix == "Point HF_HUB_CACHE at a writable directory."
    assert fake_hub.requests("GET") == []
    assert everything_in(hub_env.cache) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anything")
def test_a_cache_without_write_permission_is_exit_13(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    fake_hub.serve_file()
    hub_env.cache.mkdir()
    hub_env.cache.chmod(0o555)
    try:
        with pytest.raises(DiskFullError) as info:
            hub.fetch_model(REPO, FILE)
    finally:
        hub_env.cache.chmod(0o755)

    assert one_line(info.value).endswith(f"{hub_env.cache} is not writable (permission denied)")
    assert info.value.fix == "Point HF_HUB_CACHE at a writable directory."
    assert everything_in(hub_env.cache) == []


def test_a_write_the_os_refuses_mid_way_is_exit_13_and_takes_back_what_the_run_made(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The up-front check passed, then the OS refused (remounted read-only, a folder of another user's):
    one line naming the file, exit 13, and no folder, lock file or CACHEDIR.TAG left in the cache it made."""
    fake_hub.serve_file()

    def refuse(path: Path) -> Any:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(hub_transfer, "open_partial", refuse)

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value) == (
        f"{REPO}/{FILE} @ main: cannot write the Hub cache {hub_env.cache}: {hub_env.partial}: Read-only file system"
    )
    assert info.value.fix == "Point HF_HUB_CACHE at a writable directory."
    assert not hub_env.cache.exists()


def test_an_interrupt_before_the_first_byte_leaves_no_trace(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    fake_hub.serve_file()

    def interrupt(p: hub.DownloadProgress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hub.fetch_model(REPO, FILE, on_progress=interrupt)

    assert not hub_env.cache.exists()


def test_a_failure_in_a_cache_that_was_there_keeps_its_folders(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """Only what this run made goes: a cache (and its CACHEDIR.TAG) from before stays as it was."""
    seed_cache(hub_env.cache, repo="acme/Other", filename="other.gguf")
    (hub_env.cache / "CACHEDIR.TAG").write_text(hub_transfer.CACHEDIR_TAG)
    before = everything_in(hub_env.cache)
    fake_hub.serve_file()

    def interrupt(p: hub.DownloadProgress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hub.fetch_model(REPO, FILE, on_progress=interrupt)

    assert everything_in(hub_env.cache) == before


def test_xet_file_goes_through_huggingface_hub_which_keeps_nothing(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With hf_xet usable, a Xet-backed file is huggingface_hub's to transfer: no resume across runs, and we say so.

    The OS seam (ENOSPC) is inside hf_xet, so file_download.xet_get stands in for it.
    """
    from huggingface_hub import file_download

    fake_hub.serve_file(xet=True)
    monkeypatch.setattr(file_download, "is_xet_available", lambda: True)
    monkeypatch.setenv("KCUDA_HUB_XET", "1")  # opt in: by default Xet files come over resumable HTTP
    calls: list[Path] = []

    def xet_get_until_disk_full(*, incomplete_path: Path, **kwargs: Any) -> None:
        calls.append(incomplete_path)
        incomplete_path.write_bytes(CONTENT[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_download, "xet_get", xet_get_until_disk_full)

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, FILE)

    assert one_line(info.value).endswith("while downloading (the file is 0.1 MiB); nothing partial was kept")
    assert len(calls) == 1
    assert fake_hub.requests("GET") == []
    assert hub_env.leftovers() == []


@pytest.mark.parametrize("xet_installed", [False, True])
def test_xet_file_is_downloaded_resumably_by_default(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, xet_installed: bool
) -> None:
    """Unless KCUDA_HUB_XET=1, a Xet file comes over resumable HTTP (from /resolve, redirected), hf_xet or not."""
    hub_env.monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("KCUDA_HUB_XET", raising=False)
    monkeypatch.setattr(hub, "xet_usable", lambda: xet_installed)
    fail_half_way(hub_env, fake_hub, xet=True)

    mf = hub.fetch_model(REPO, FILE)

    assert (mf.source, mf.path.read_bytes()) == ("download", CONTENT)
    (resolve,) = fake_hub.requests("GET", f"/{REPO}/resolve/")
    (cdn,) = fake_hub.requests("GET", "/cdn/")
    assert resolve.headers["authorization"] == f"Bearer {SECRET}"  # the Hub gets the token...
    assert "authorization" not in cdn.headers  # ...the storage it redirects to does not
    assert cdn.headers["range"] == f"bytes={HALF}-"
    assert hub_env.leftovers() == COMPLETE


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_by_the_output_object_on_stderr_only(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    """The download reports bytes to a callback; the CLI's DownloadBar draws them on a terminal's stderr."""
    from kcuda_validate.cli._output import Output, OutputOptions

    stdout, stderr = Terminal(), Terminal()
    out = Output(OutputOptions(width=100), stdout=stdout, stderr=stderr)
    seen: list[hub.DownloadProgress] = []
    bar = out.download_bar()

    def report(p: hub.DownloadProgress) -> None:
        seen.append(p)
        bar.update(p)

    fake_hub.serve_file()
    hub.fetch_model(REPO, FILE, on_progress=report)
    bar.close()

    assert stdout.getvalue() == ""
    drawn = stderr.getvalue()
    assert f"{REPO}/{FILE} @ main" in drawn
    assert "65.5/65.5 kB" in drawn  # rich's DownloadColumn (decimal units) when the transfer is complete
    label = f"{REPO}/{FILE} @ main"
    assert (seen[0], seen[-1]) == (
        hub.DownloadProgress(label, 0, len(CONTENT)),
        hub.DownloadProgress(label, len(CONTENT), len(CONTENT)),
    )
    assert [p.done for p in seen] == sorted(p.done for p in seen)


def test_a_cache_hit_reports_no_progress(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    fake_hub.serve_file()
    hub.fetch_model(REPO, FILE)
    seen: list[hub.DownloadProgress] = []

    assert hub.fetch_model(REPO, FILE, on_progress=seen.append).source == "cache"
    assert seen == []


def test_no_progress_when_huggingface_hub_bars_are_disabled(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    fake_hub.serve_file()
    seen: list[hub.DownloadProgress] = []

    assert hub.fetch_model(REPO, FILE, on_progress=seen.append).source == "download"
    assert seen == []


def test_the_bar_draws_nothing_off_a_terminal_or_outside_human_mode(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    from kcuda_validate.cli._output import Output, OutputOptions

    piped, json_terminal = io.StringIO(), Terminal()
    bars = [
        Output(OutputOptions(), stderr=piped).download_bar(),
        Output(OutputOptions(json=True), stdout=io.StringIO(), stderr=json_terminal).download_bar(),
    ]
    fake_hub.serve_file()

    hub.fetch_model(REPO, FILE, on_progress=lambda p: [bar.update(p) for bar in bars])
    for bar in bars:
        bar.close()

    assert (piped.getvalue(), json_terminal.getvalue()) == ("", "")


# ----------------------------------------------------------------------------------------------------------------
# detect's Hub check: whether `load` could get the default model now (the real CLI, in process)

DEFAULT = {"repo": hub.DEFAULT_REPO_ID, "filename": hub.DEFAULT_FILENAME}
DEFAULT_LABEL = f"{hub.DEFAULT_REPO_ID}/{hub.DEFAULT_FILENAME} @ main"


def hub_check(*args: str) -> tuple[int, dict[str, Any], str]:
    """`detect --check env.hub`: exit code, the one check as JSON, and the human output's verdict line."""
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    result = CliRunner().invoke(cli, ["detect", "--check", "env.hub", "--json", *args])
    (check,) = json.loads(result.stdout)["checks"]
    human = CliRunner().invoke(cli, ["detect", "--check", "env.hub", *args])
    return result.exit_code, check, human.stdout.rstrip().splitlines()[-1]


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_hub_check_passes_without_asking_when_the_default_model_is_cached(
    hub_env: HubEnv, fake_hub: FakeHub, offline: bool
) -> None:
    seed_cache(hub_env.cache, **DEFAULT)
    hub_env.offline(offline)

    code, check, verdict = hub_check()

    assert code == 0
    assert (check["status"], check["summary"], check["fix"]) == (
        "pass",
        "the default model is in the cache: load and validate-all need no network"
        + (" (HF_HUB_OFFLINE=on)" if offline else ""),
        None,
    )
    assert check["evidence"] == {
        "token": "not set",
        "model": DEFAULT_LABEL,
        "hub": fake_hub.url.removeprefix("http://"),
        "offline": offline,
        "cached": True,
        "answer_ms": None,
        "size_bytes": None,
        "error": None,
    }
    assert verdict == "PASSED: nothing failed in env.hub; the rest of the stack was not checked."
    assert fake_hub.seen == []  # the cache answers: load would not ask the Hub either


def test_hub_check_offline_without_the_model_warns(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    hub_env.offline()

    code, check, _ = hub_check()

    assert (code, check["status"], check["summary"], check["fix"]) == (
        0,
        "warn",
        "HF_HUB_OFFLINE=on and the default model is not in the cache: only cached models can be loaded",
        "Unset HF_HUB_OFFLINE to download, or pass --model-path / --synthetic.",
    )
    assert fake_hub.seen == []


def test_hub_check_online_asks_once_and_names_the_measured_answer(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    fake_hub.serve_file(size=491_400_032, **DEFAULT)

    code, check, _ = hub_check()

    host = fake_hub.url.removeprefix("http://")
    assert code == 0
    assert check["status"] == "pass"
    ms = check["evidence"]["answer_ms"]
    assert isinstance(ms, float) and 0 < ms < 4000
    assert check["summary"] == (
        f"{host} answered in {ms:.0f} ms: the default model (491 MB) can be downloaded, HF_TOKEN not set"
    )
    assert (check["evidence"]["size_bytes"], check["evidence"]["error"]) == (491_400_032, None)
    # Two commands ran (JSON, then human): one HEAD each, never a download.
    assert [(s.method, s.path) for s in fake_hub.seen] == [
        ("HEAD", f"/{hub.DEFAULT_REPO_ID}/resolve/main/{hub.DEFAULT_FILENAME}")
    ] * 2


def test_hub_check_warns_with_the_loads_own_error_when_the_hub_is_unreachable(hub_env: HubEnv) -> None:
    from kcuda_validate.model.hub_errors import UNREACHABLE_FIX

    port = _free_port()
    hub_env.endpoint(f"http://127.0.0.1:{port}")

    code, check, verdict = hub_check()

    assert (code, check["status"], check["summary"], check["fix"]) == (
        0,
        "warn",
        f"cannot reach 127.0.0.1:{port} (connection refused) to fetch {DEFAULT_LABEL}",
        UNREACHABLE_FIX,
    )
    assert verdict == "PASSED: nothing failed in env.hub; the rest of the stack was not checked."


def test_hub_check_names_a_rejected_token_and_never_shows_it(hub_env: HubEnv, fake_hub: FakeHub) -> None:
    hub_env.monkeypatch.setenv("HF_TOKEN", SECRET)
    path = f"/{hub.DEFAULT_REPO_ID}/resolve/main/{hub.DEFAULT_FILENAME}"
    fake_hub.error(path, 401, None, "Invalid credentials in Authorization header")

    code, check, _ = hub_check()

    assert (code, check["status"], check["evidence"]["token"]) == (0, "warn", "set")
    assert "rejected your token" in check["summary"]
    assert SECRET not in json.dumps(check)
    assert fake_hub.requests("HEAD")[0].headers.get("authorization") == f"Bearer {SECRET}"


def test_hub_check_gives_up_on_a_silent_hub_within_its_deadline(hub_env: HubEnv) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts (in the kernel's backlog), never answers
    port = listener.getsockname()[1]
    hub_env.endpoint(f"http://127.0.0.1:{port}")
    hub_env.etag_timeout(1)

    start = time.perf_counter()
    probe = hub.probe_hub()
    elapsed = time.perf_counter() - start
    listener.close()

    assert probe.error == f"cannot reach 127.0.0.1:{port} (no answer within 1 s) to fetch {DEFAULT_LABEL}"
    assert probe.fix is not None and "HF_HUB_ETAG_TIMEOUT" in probe.fix
    assert (probe.cached, probe.answer_ms) == (False, None)
    assert elapsed < 4


def test_validate_all_asks_the_hub_for_its_own_model_and_skips_the_hub_for_a_local_one(
    hub_env: HubEnv, fake_hub: FakeHub, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    fake_hub.serve_file()
    hub_env.monkeypatch.setenv("KCUDA_LOG_DIR", str(tmp_path / "logs"))

    def env_hub(*args: str) -> dict[str, Any]:
        result = CliRunner().invoke(cli, ["validate-all", "--device", "cpu", "--json", "--skip-torch", *args])
        return next(c for c in json.loads(result.stdout)["checks"] if c["id"] == "env.hub")

    asked = env_hub("--repo-id", REPO, "--filename", FILE)
    ms = asked["evidence"]["answer_ms"]
    assert (asked["status"], asked["summary"]) == (
        "pass",
        f"{fake_hub.url.removeprefix('http://')} answered in {ms:.0f} ms: {REPO}/{FILE} @ main (0.1 MB) can be "
        "downloaded, HF_TOKEN not set",
    )
    heads = [s.path for s in fake_hub.requests("HEAD")]
    assert heads[0] == f"/{REPO}/resolve/main/{FILE}"  # detect's HEAD, then the model stage's own

    fake_hub.seen.clear()
    (tmp_path / "local.gguf").write_bytes(CONTENT)
    local = env_hub("--model-path", str(tmp_path / "local.gguf"))
    assert (local["status"], local["summary"]) == (
        "skip",
        "the model is a local file (--model-path): this run needs no Hub",
    )
    assert fake_hub.seen == []


@pytest.mark.parametrize("value", ["junk", "-1", "1.5", "\u0661"])
def test_a_stall_window_that_is_not_whole_seconds_is_a_one_line_error(hub_env: HubEnv, value: str) -> None:
    hub_env.monkeypatch.setenv("KCUDA_HUB_STALL_S", value)

    with pytest.raises(UsageError) as info:
        hub.fetch_model(REPO, FILE)
    assert (info.value.message, info.value.fix, info.value.exit_code) == (
        f"KCUDA_HUB_STALL_S={value!r} is not a whole number of seconds",
        "Set KCUDA_HUB_STALL_S to a whole number of seconds (0: never stop a slow download), or unset it.",
        ExitCode.USAGE,
    )


@pytest.mark.parametrize("value", ["junk", "", "nan", "1e10"])
@pytest.mark.parametrize("name", ["HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"])
def test_a_setting_huggingface_hub_cannot_import_with_is_a_one_line_error(
    hub_env: HubEnv, name: str, value: str
) -> None:
    """huggingface_hub.constants int()s these at import: a bad one would be an internal error (exit 70)."""
    hub_env.monkeypatch.setenv(name, value)
    message = f"{name}={value!r} is not a whole number of seconds"
    fix = f"Set {name} to a whole number of seconds (e.g. {name}=10), or unset it."

    with pytest.raises(UsageError) as info:
        hub.fetch_model(REPO, FILE)
    assert (info.value.message, info.value.fix, info.value.exit_code) == (message, fix, ExitCode.USAGE)

    probe = hub.probe_hub()  # detect's Hub check: a warning with the same line, never a crash
    assert (probe.error, probe.fix, probe.cached, probe.answer_ms) == (message, fix, False, None)


@pytest.mark.parametrize("value", ["0", "-1", " -30 "])
@pytest.mark.parametrize("name", ["HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"])
def test_a_timeout_setting_of_zero_or_less_is_a_one_line_error(hub_env: HubEnv, name: str, value: str) -> None:
    """Not an unreachable Hub (exit 11, "no answer within 0 s"): the request gives up before any answer."""
    hub_env.monkeypatch.setenv(name, value)
    message = f"{name}={value!r} is not above 0 seconds (the request would give up before any answer)"
    fix = f"Set {name} to a whole number of seconds above 0 (e.g. {name}=10), or unset it."

    with pytest.raises(UsageError) as info:
        hub.fetch_model(REPO, FILE)
    assert (info.value.message, info.value.fix, info.value.exit_code) == (message, fix, ExitCode.USAGE)

    probe = hub.probe_hub()
    assert (probe.error, probe.fix, probe.cached, probe.answer_ms) == (message, fix, False, None)


# ----------------------------------------------------------------------------------------------------------------
# Split models (gguf-split): the first part brings every part, into one snapshot folder

SPLIT = [f"tiny-q8_0-{i:05d}-of-00004.gguf" for i in range(1, 5)]
PARTS = {name: b"GGUF" + bytes([i]) * 65_536 for i, name in enumerate(SPLIT, 1)}  # each part its own content
SPLIT_LABEL = f"{REPO}/{SPLIT[0]} @ main"
SPLIT_TOTAL = sum(map(len, PARTS.values()))
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
MIB = 1024**2


def sha_of(name: str) -> str:
    return hashlib.sha256(PARTS[name]).hexdigest()


def seed_part(cache: Path, name: str, commit: str = COMMIT) -> Path:
    """A part complete in the cache under `commit`, which refs/main points at (huggingface_hub's layout)."""
    storage = cache / ("models--" + REPO.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    (storage / "blobs" / sha_of(name)).write_bytes(PARTS[name])
    pointer = storage / "snapshots" / commit / name
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(Path("..", "..", "blobs", sha_of(name)))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return pointer


def split_complete(names: list[str], commit: str = COMMIT) -> list[str]:
    """What complete parts leave in the repo's cache folder: their blobs and their links, nothing else."""
    return sorted([*(f"blobs/{sha_of(n)}" for n in names), *(f"snapshots/{commit}/{n}" for n in names)])


def heads(fake_hub: FakeHub) -> list[str]:
    return [s.path for s in fake_hub.requests("HEAD")]


def test_only_a_gguf_split_name_of_several_parts_is_a_split_model() -> None:
    assert hub.split_parts(SPLIT[0]) == SPLIT
    assert hub.split_parts("q8/m-00001-of-00002.gguf") == ["q8/m-00001-of-00002.gguf", "q8/m-00002-of-00002.gguf"]
    for whole in (FILE, "m-00001-of-00001.gguf", "m-1-of-4.gguf", "m-00001-of-00004.bin", "m-00001-of-00004.GGUF"):
        assert hub.split_parts(whole) is None, whole


def test_a_split_model_comes_whole_into_one_snapshot_folder_and_the_next_run_asks_nothing(
    hub_env: HubEnv, fake_hub: FakeHub
) -> None:
    from kcuda_validate.model.source import ModelSpec, resolve_model

    fake_hub.serve_split(PARTS)
    seen: list[hub.DownloadProgress] = []
    spec = ModelSpec(repo_id=REPO, filename=SPLIT[0])

    first = resolve_model(spec, on_progress=seen.append)

    folder = hub_env.storage / "snapshots" / COMMIT
    assert first.path == folder / SPLIT[0]  # what llama.cpp loads; it opens the others beside it
    assert {name: (folder / name).read_bytes() for name in SPLIT} == PARTS
    assert hub_env.leftovers() == split_complete(SPLIT)
    assert (hub_env.storage / "refs" / "main").read_text() == COMMIT
    download_s = first.detail["download_s"]
    assert isinstance(download_s, float) and 0 < download_s < 5
    assert first.detail == {
        "repo_id": REPO,
        "filename": SPLIT[0],
        "revision": "main",
        "commit": COMMIT,
        "source": "download",
        "size_bytes": SPLIT_TOTAL,
        "download_s": download_s,
        "parts": 4,
    }
    assert first.describe() == f"{SPLIT_LABEL} (4 parts, downloaded)"
    # Every part asked for before a byte is fetched: the first at main, the others at the commit it resolved to.
    assert [(s.method, s.path) for s in fake_hub.seen] == [
        ("HEAD", f"/{REPO}/resolve/main/{SPLIT[0]}"),
        *(("HEAD", f"/{REPO}/resolve/{COMMIT}/{name}") for name in SPLIT[1:]),
        *(("GET", f"/cdn/{sha_of(name)}") for name in SPLIT),
    ]
    # One progress stream for the whole set.
    label = f"{SPLIT_LABEL} (4 parts)"
    assert (seen[0], seen[-1]) == (
        hub.DownloadProgress(label, 0, SPLIT_TOTAL),
        hub.DownloadProgress(label, SPLIT_TOTAL, SPLIT_TOTAL),
    )
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert {(p.label, p.total) for p in seen} == {(label, SPLIT_TOTAL)}

    fake_hub.seen.clear()
    second = resolve_model(spec, on_progress=seen.append)
    assert (second.path, second.describe()) == (first.path, f"{SPLIT_LABEL} (4 parts, cache)")
    assert (second.detail["source"], second.detail["size_bytes"], second.detail["download_s"]) == (
        "cache",
        SPLIT_TOTAL,
        None,
    )
    assert fake_hub.seen == []

    hub_env.offline()
    assert hub.fetch_model(REPO, SPLIT[0]) == hub.ModelFile(
        first.path, REPO, SPLIT[0], "main", COMMIT, SPLIT_TOTAL, "cache", None, parts=4
    )


@pytest.mark.parametrize(
    ("filename", "what"),
    [
        (SPLIT[1], "is part 2 of 4 of a split model, not its first"),
        (SPLIT[3], "is part 4 of 4 of a split model, not its first"),
        (
            "tiny-q8_0-00000-of-00004.gguf",
            "names no part of a split model (gguf-split numbers its 4 parts 00001 to 00004)",
        ),
        (
            "tiny-q8_0-00005-of-00004.gguf",
            "names no part of a split model (gguf-split numbers its 4 parts 00001 to 00004)",
        ),
    ],
    ids=["part-2", "part-4", "part-0", "beyond-the-count"],
)
def test_a_part_other_than_the_first_is_a_usage_error_naming_the_first(
    hub_env: HubEnv, fake_hub: FakeHub, filename: str, what: str
) -> None:
    from click.testing import CliRunner

    from kcuda_validate.cli import cli
    from kcuda_validate.model.source import ModelSpec

    fake_hub.serve_split(PARTS)
    message = f"--filename {filename!r} {what}"
    fix = f"Pass --filename {SPLIT[0]}: llama.cpp loads a split model from its first part."

    with pytest.raises(UsageError) as info:
        hub.fetch_model(REPO, filename)
    assert (one_line(info.value), info.value.fix, info.value.exit_code) == (message, fix, ExitCode.USAGE)
    with pytest.raises(UsageError) as info:
        ModelSpec(repo_id=REPO, filename=filename).validate()  # the CLI's own check, before detect's Hub probe
    assert (info.value.message, info.value.fix) == (message, fix)
    probe = hub.probe_hub(REPO, filename)
    assert (probe.error, probe.fix, probe.cached) == (message, fix, False)
    result = CliRunner().invoke(cli, ["validate-all", "--device", "cpu", "--repo-id", REPO, "--filename", filename])
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines()[:2] == [f"Error: {message}", f"Fix: {fix}"]
    assert fake_hub.seen == []
    assert not hub_env.cache.exists()


def test_a_part_missing_on_the_hub_is_exit_10_naming_it_and_nothing_is_fetched(
    hub_env: HubEnv, fake_hub: FakeHub
) -> None:
    fake_hub.serve_split({name: content for name, content in PARTS.items() if name != SPLIT[2]})
    for rev in ("main", COMMIT):
        fake_hub.error(
            f"/{REPO}/resolve/{rev}/{SPLIT[2]}", 404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": COMMIT}
        )
    fake_hub.model_info(["README.md", SPLIT[0], SPLIT[1], SPLIT[3]])

    with pytest.raises(ModelNotFoundError) as info:
        hub.fetch_model(REPO, SPLIT[0])

    assert (one_line(info.value), info.value.fix, info.value.exit_code) == (
        f"file '{SPLIT[2]}' (part 3 of 4 of a split model) not found in repo '{REPO}' at revision 'main'; "
        f".gguf files there: {SPLIT[0]}, {SPLIT[1]}, {SPLIT[3]}",
        "llama.cpp needs every part of a split model: pass a --revision that has them all, or another --filename "
        "(see the repo's Files tab on the Hub).",
        ExitCode.MODEL_NOT_FOUND,
    )
    assert heads(fake_hub) == [
        f"/{REPO}/resolve/main/{SPLIT[0]}",
        *(f"/{REPO}/resolve/{COMMIT}/{n}" for n in SPLIT[1:3]),
    ]
    assert fake_hub.requests("GET", "/cdn/") == []
    assert not hub_env.cache.exists()  # nothing fetched, linked or made


@pytest.mark.parametrize(
    ("cached", "free", "message", "fix"),
    [
        (
            (),
            300 * MIB,
            "its 4 parts need 350.0 MiB more (50.0 MiB already downloaded) in {cache}, only 300.0 MiB free",
            "free 50.0 MiB or point HF_HUB_CACHE at a bigger disk",
        ),
        (
            (SPLIT[0], SPLIT[1]),
            150 * MIB,
            "the 2 of its 4 parts still missing need 200.0 MiB in {cache}, only 150.0 MiB free",
            "free 50.0 MiB or point HF_HUB_CACHE at a bigger disk",
        ),
    ],
    ids=["a-partial-of-part-1", "two-parts-cached"],
)
def test_the_disk_check_counts_every_missing_part_before_a_byte_is_fetched(
    hub_env: HubEnv,
    fake_hub: FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    cached: tuple[str, ...],
    free: int,
    message: str,
    fix: str,
) -> None:
    """Each part (the Hub says 100 MiB) would fit on its own: only their total must stop the download at once."""
    fake_hub.serve_split(PARTS, size=100 * MIB)
    for name in cached:
        seed_part(hub_env.cache, name)
    partial = hub_transfer.partial_path(hub_env.storage, sha_of(SPLIT[0]), SPLIT[0])
    if not cached:
        partial.parent.mkdir(parents=True)
        with partial.open("wb") as f:
            f.truncate(50 * MIB)  # from an earlier run (sparse: instant)
    usage = shutil._ntuple_diskusage(total=10 * 1024**3, used=0, free=free)  # type: ignore[attr-defined]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)

    with pytest.raises(DiskFullError) as info:
        hub.fetch_model(REPO, SPLIT[0])

    assert (one_line(info.value), info.value.fix, info.value.exit_code) == (
        f"{SPLIT_LABEL}: " + message.format(cache=hub_env.cache),
        fix,
        ExitCode.DISK_FULL,
    )
    missing = [name for name in SPLIT if name not in cached]
    assert heads(fake_hub) == [
        f"/{REPO}/resolve/main/{missing[0]}",
        *(f"/{REPO}/resolve/{COMMIT}/{name}" for name in missing[1:]),
    ]
    assert fake_hub.requests("GET") == []
    if not cached:
        assert hub_env.leftovers() == [str(partial.relative_to(hub_env.storage))]
        assert partial.stat().st_size == 50 * MIB  # kept for when there is room


def test_offline_with_a_part_missing_names_the_first_missing_part(hub_env: HubEnv) -> None:
    seed_part(hub_env.cache, SPLIT[0])
    seed_part(hub_env.cache, SPLIT[2])
    hub_env.offline()

    with pytest.raises(ModelNotFoundError) as info:
        hub.fetch_model(REPO, SPLIT[0])

    assert (one_line(info.value), info.value.fix, info.value.exit_code) == (
        f"{REPO}/{SPLIT[1]} @ main (part 2 of 4 of a split model, the first of its 2 parts missing): "
        f"not in the Hub cache {hub_env.cache} and offline mode is on (HF_HUB_OFFLINE=1)",
        "Unset HF_HUB_OFFLINE to download, or pass --model-path / --synthetic.",
        ExitCode.MODEL_NOT_FOUND,
    )
    probe = hub.probe_hub(REPO, SPLIT[0])  # detect: not cached until every part is
    assert (probe.cached, probe.offline, probe.parts, probe.error) == (False, True, 4, None)


def test_a_failed_split_download_keeps_the_finished_parts_and_the_next_run_fetches_only_the_rest(
    hub_env: HubEnv, fake_hub: FakeHub
) -> None:
    fake_hub.serve_split(PARTS)
    fake_hub.cdn_plan = ["ok", "drop_half", "error_503"]  # part 1 whole; part 2 dropped half-way, then a 503
    half = len(PARTS[SPLIT[1]]) // 2

    with pytest.raises(HubUnreachableError) as info:
        hub.fetch_model(REPO, SPLIT[0])

    assert one_line(info.value) == (
        f"{urlsplit(fake_hub.cdn).netloc} answered HTTP 503 while downloading {REPO}/{SPLIT[1]} @ main; "
        f"the {half / 1024:.1f} KiB downloaded so far are kept and the next run resumes from there"
    )
    partial = hub_transfer.partial_path(hub_env.storage, sha_of(SPLIT[1]), SPLIT[1])
    # Part 1 complete and linked; part 2 only a partial, never linked; nothing of parts 3 and 4.
    assert hub_env.leftovers() == sorted([*split_complete(SPLIT[:1]), str(partial.relative_to(hub_env.storage))])
    assert partial.read_bytes() == PARTS[SPLIT[1]][:half]
    hub_env.offline()
    with pytest.raises(ModelNotFoundError) as offline:
        hub.fetch_model(REPO, SPLIT[0])
    assert one_line(offline.value).startswith(f"{REPO}/{SPLIT[1]} @ main (part 2 of 4 of a split model, ")
    hub_env.offline(False)

    fake_hub.cdn_plan = []
    fake_hub.seen.clear()
    mf = hub.fetch_model(REPO, SPLIT[0])

    assert (mf.source, mf.size_bytes, mf.parts) == ("download", SPLIT_TOTAL, 4)
    assert heads(fake_hub) == [
        f"/{REPO}/resolve/main/{SPLIT[1]}",
        *(f"/{REPO}/resolve/{COMMIT}/{n}" for n in SPLIT[2:]),
    ]
    gets = fake_hub.requests("GET", "/cdn/")
    assert [(g.path, g.headers.get("range")) for g in gets] == [
        (f"/cdn/{sha_of(SPLIT[1])}", f"bytes={half}-"),
        (f"/cdn/{sha_of(SPLIT[2])}", None),
        (f"/cdn/{sha_of(SPLIT[3])}", None),
    ]
    assert hub_env.leftovers() == split_complete(SPLIT)


def test_parts_cached_under_an_older_commit_are_linked_into_the_new_one_without_a_download(
    hub_env: HubEnv, fake_hub: FakeHub
) -> None:
    """main moved on since parts 1 and 2 were cached: llama.cpp needs all four in the new commit's folder."""
    for name in SPLIT[:2]:
        seed_part(hub_env.cache, name, commit=OLD_COMMIT)
    fake_hub.serve_split(PARTS)  # main is COMMIT now, with the same first two parts

    mf = hub.fetch_model(REPO, SPLIT[0])

    folder = hub_env.storage / "snapshots" / COMMIT
    assert (mf.path, mf.commit_hash, mf.source, mf.size_bytes) == (folder / SPLIT[0], COMMIT, "download", SPLIT_TOTAL)
    assert {name: (folder / name).read_bytes() for name in SPLIT} == PARTS
    assert heads(fake_hub) == [
        f"/{REPO}/resolve/main/{SPLIT[2]}",
        *(f"/{REPO}/resolve/{COMMIT}/{name}" for name in (SPLIT[3], SPLIT[0], SPLIT[1])),
    ]
    assert [g.path for g in fake_hub.requests("GET", "/cdn/")] == [f"/cdn/{sha_of(name)}" for name in SPLIT[2:]]
    assert (hub_env.storage / "refs" / "main").read_text() == COMMIT
    assert hub_env.leftovers() == sorted([*split_complete(SPLIT), *(f"snapshots/{OLD_COMMIT}/{n}" for n in SPLIT[:2])])


def test_xet_parts_are_fetched_by_huggingface_hub_at_the_commit_the_first_resolved_to(
    hub_env: HubEnv, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KCUDA_HUB_XET=1: hf_hub_download fetches each part, asked for at the commit (not main, which may move), and
    refs/main is written for the next, offline, run. The OS seam is inside hf_xet: xet_get stands in for it."""
    from huggingface_hub import file_download

    fake_hub.serve_split(PARTS, xet=True)
    monkeypatch.setattr(file_download, "is_xet_available", lambda: True)
    monkeypatch.setenv("KCUDA_HUB_XET", "1")
    fetched: list[str] = []

    def xet_get(*, incomplete_path: Path, displayed_filename: str, **kwargs: Any) -> None:
        fetched.append(displayed_filename)
        incomplete_path.write_bytes(PARTS[displayed_filename])

    monkeypatch.setattr(file_download, "xet_get", xet_get)

    mf = hub.fetch_model(REPO, SPLIT[0])

    folder = hub_env.storage / "snapshots" / COMMIT
    assert (mf.path, mf.source, mf.parts, mf.size_bytes) == (folder / SPLIT[0], "download", 4, SPLIT_TOTAL)
    assert {name: (folder / name).read_bytes() for name in SPLIT} == PARTS
    assert heads(fake_hub)[0] == f"/{REPO}/resolve/main/{SPLIT[0]}"
    assert set(heads(fake_hub)[1:]) == {f"/{REPO}/resolve/{COMMIT}/{name}" for name in SPLIT}
    assert (hub_env.storage / "refs" / "main").read_text() == COMMIT
    assert (fetched, fake_hub.requests("GET")) == (SPLIT, [])
    hub_env.offline()
    assert hub.fetch_model(REPO, SPLIT[0]).source == "cache"


def test_detect_asks_for_the_first_part_of_a_split_model_and_says_how_many_parts(
    hub_env: HubEnv, fake_hub: FakeHub, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    fake_hub.serve_split(PARTS)
    probe = hub.probe_hub(REPO, SPLIT[0])
    assert (probe.cached, probe.parts, probe.size_bytes, probe.error) == (False, 4, len(PARTS[SPLIT[0]]), None)
    assert probe.to_json()["parts"] == 4
    assert heads(fake_hub) == [f"/{REPO}/resolve/main/{SPLIT[0]}"]  # one HEAD, the first part's

    fake_hub.seen.clear()
    hub_env.monkeypatch.setenv("KCUDA_LOG_DIR", str(tmp_path / "logs"))
    result = CliRunner().invoke(
        cli, ["validate-all", "--device", "cpu", "--json", "--skip-torch", "--repo-id", REPO, "--filename", SPLIT[0]]
    )
    check = next(c for c in json.loads(result.stdout)["checks"] if c["id"] == "env.hub")
    ms = check["evidence"]["answer_ms"]
    assert (check["status"], check["summary"]) == (
        "pass",
        f"{fake_hub.url.removeprefix('http://')} answered in {ms:.0f} ms: {SPLIT_LABEL} (4 parts; the first is "
        "0.1 MB) can be downloaded, HF_TOKEN not set",
    )
    assert heads(fake_hub)[0] == f"/{REPO}/resolve/main/{SPLIT[0]}"

    assert hub.probe_hub(REPO, SPLIT[0]).cached is True  # validate-all fetched every part
    (hub_env.storage / "snapshots" / COMMIT / SPLIT[3]).unlink()
    assert hub.probe_hub(REPO, SPLIT[0]).cached is False


def test_real_llama_cpp_loads_a_split_model_resolved_from_the_hub(
    hub_env: HubEnv, fake_hub: FakeHub, tiny_model: Path, tmp_path: Path
) -> None:
    """Real gguf-split parts of a real model, served by the fake Hub; `load --device cpu` resolves the first part
    and llama.cpp opens the others from the same snapshot folder."""
    from click.testing import CliRunner

    from gguf_rewrite import split_model
    from kcuda_validate.cli import cli

    parts = split_model(tiny_model, tmp_path / "split", max_tensors=10, prefix="tiny-q8_0")
    assert len(parts) == 3
    fake_hub.serve_split({part.name: part.read_bytes() for part in parts})
    hub_env.monkeypatch.setenv("KCUDA_LOG_DIR", str(tmp_path / "logs"))

    result = CliRunner().invoke(
        cli, ["--json", "load", "--device", "cpu", "--repo-id", REPO, "--filename", parts[0].name]
    )

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    checks = {c["id"]: c for c in doc["checks"]}
    assert checks["model.source"]["summary"] == f"{REPO}/{parts[0].name} @ main (3 parts, downloaded)"
    source = doc["sections"]["model_source"]
    total = sum(part.stat().st_size for part in parts)
    assert (source["filename"], source["parts"], source["size_bytes"]) == (parts[0].name, 3, total)
    folder = hub_env.storage / "snapshots" / COMMIT
    assert sorted(folder.iterdir()) == [folder / part.name for part in parts]
    assert checks["load.model"]["status"] == "pass"
    assert checks["model.gguf"]["evidence"]["split_count"] == 3
