"""llama.cpp's own log, captured and read as evidence.

llama.cpp says exactly where every layer and buffer went; we capture that
text through `llama_log_set` and parse it. Levels follow ggml.h (1 debug,
2 info, 3 warn, 4 error, 5 continuation); llama-cpp-python's own logger
assumes an older order and hides load errors, so we replace it.

The parsers are pure functions over text so they can be tested on recorded
logs from real CUDA runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GGML_LOG_LEVEL = {0: "none", 1: "debug", 2: "info", 3: "warn", 4: "error", 5: "cont"}
_PY_LEVEL = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
MIB = 1024 * 1024


@dataclass(frozen=True)
class LogLine:
    level: int
    text: str

    @property
    def level_name(self) -> str:
        return GGML_LOG_LEVEL.get(self.level, str(self.level))


class LlamaLogCapture:
    """Collects llama.cpp log lines (all levels) while installed; keeps the tail for crash reports."""

    def __init__(self, keep: int = 20000, tail: int = 40) -> None:
        self.lines: list[LogLine] = []
        self.tail: deque[str] = deque(maxlen=tail)
        self._keep = keep
        # llama.cpp writes one serial stream: at most one line is open (`_partial`, at `_partial_level`), plus one
        # interrupted by another level's message (`_stash`) that a continuation chunk may resume.
        self._partial = ""
        self._partial_level = 2
        self._stash: tuple[int, str] | None = None
        self._last_level = 2
        self._lock = threading.Lock()
        self.echo: Any = None  # optional callable(LogLine) for live forwarding (e.g. to a parent process)

    def feed(self, level: int, text: str) -> None:
        """Accept one callback chunk; chunks without a newline are joined with what continues them.

        GGML_LOG_LEVEL_CONT (5) continues the open line. The model-load progress dots are such chunks, and debug
        lines (e.g. `repack: ...`) arrive between them: a message of another level sets the open line aside and
        the next continuation resumes it, so the dots end as one line of their own and never prefix the next
        message. Same-level chunks without a newline (e.g. llama-graph.cpp's debug pieces) are joined.
        """
        with self._lock:
            if level == 5:
                if not self._partial and self._stash is not None:
                    self._partial_level, self._partial = self._stash
                    self._stash = None
                elif not self._partial:
                    self._partial_level = self._last_level
            else:
                if self._partial and level != self._partial_level:
                    if self._stash is not None:
                        self._add(LogLine(*self._stash))
                    self._stash = (self._partial_level, self._partial)
                    self._partial = ""
                elif self._stash is not None and self._stash[0] == level:
                    # A new message at the stashed line's level: that line is not coming back.
                    self._add(LogLine(*self._stash))
                    self._stash = None
                if not self._partial:
                    self._partial_level = level
                self._last_level = level
            *complete, self._partial = (self._partial + text).split("\n")
            for line in complete:
                self._add(LogLine(self._partial_level, line))

    def _add(self, line: LogLine) -> None:
        if len(self.lines) < self._keep:
            self.lines.append(line)
        if line.level >= 2:
            self.tail.append(line.text)
        if line.level >= 3:
            log.log(_PY_LEVEL.get(line.level, logging.INFO), "llama.cpp: %s", line.text)
        if self.echo is not None:
            self.echo(line)

    def flush(self) -> None:
        with self._lock:
            if self._stash is not None:
                self._add(LogLine(*self._stash))
                self._stash = None
            if self._partial:
                self._add(LogLine(self._partial_level, self._partial))
                self._partial = ""

    def text(self, min_level: int = 1) -> str:
        self.flush()
        return "\n".join(line.text for line in self.lines if line.level >= min_level)

    def mark(self) -> int:
        """Position to slice from later (e.g. lines logged during one load)."""
        self.flush()
        return len(self.lines)

    def since(self, mark: int) -> list[LogLine]:
        self.flush()
        return self.lines[mark:]

    def install(self) -> None:
        """Route llama.cpp's logging to this capture (global in llama.cpp; the latest install wins)."""
        global _active
        _active = self
        _install_trampoline()


# llama.cpp keeps one global log callback. It must outlive every capture: a ctypes callback that is garbage
# collected while llama.cpp still holds its pointer crashes the process at the next log line. So a single
# module-level trampoline is installed once and forwards to whichever capture is active.
_active: LlamaLogCapture | None = None
_trampoline: Any = None


def _install_trampoline() -> None:
    global _trampoline
    if _trampoline is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # llama_cpp ships no annotations for it
    def _cb(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        capture = _active
        if capture is None:
            return
        # An exception must never cross into C.
        # A byte that is not UTF-8 becomes `\xNN`, as printable shows bytes everywhere else.
        with contextlib.suppress(Exception):
            capture.feed(int(level), text.decode("utf-8", errors="backslashreplace") if text else "")

    _trampoline = _cb
    llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))


# ---------------------------------------------------------------------------------------------------
# Parsers: text in, evidence out.

_RE_USING_DEVICE = re.compile(r"using device (\S+) \((.*?)\)(?: \((.*?)\))? - (\d+) MiB free")
_RE_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_RE_LAYER_DEVICE = re.compile(r"layer\s+(\d+) assigned to device ([^,\s]+)")
_RE_MODEL_BUF = re.compile(r"^\S*:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_RE_KV_BUF = re.compile(r"^\S*:\s+(\S+) KV buffer size =\s+([\d.]+) MiB")
_RE_RS_BUF = re.compile(r"^\S*:\s+(\S+) RS buffer size =\s+([\d.]+) MiB")
_RE_COMPUTE_BUF = re.compile(r"^\S*:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
_RE_OUTPUT_BUF = re.compile(r"^\S*:\s+(\S+)\s+output buffer size =\s+([\d.]+) MiB")
# llama-model-loader.cpp's done_getting_tensors(): one debug line per load naming the first weight that could not
# use its layer's preferred buffer type, how many more did the same (any move, not only this one), and the pair.
_RE_FALLBACK = re.compile(
    r"tensor '([^']+)' \(([^)]*)\) \(and (\d+) others\) cannot be used with preferred buffer type (\S+), using (\S+)"
)


def device_family(buffer_name: str) -> str:
    """Map a buffer type name to where its bytes live: CUDA0_Host/CPU_Mapped -> host, CUDA0 -> CUDA0."""
    name = buffer_name
    if name.upper().startswith("CPU") or name.endswith("_Host") or name.upper() in ("HOST",):
        return "CPU"
    for suffix in ("_Split", "_Mapped", "_REPACK", "_AARCH64"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class LoadEvidence:
    """What llama.cpp's log says about a load. Sizes in bytes, keyed by buffer name (CUDA0, CPU_Mapped...)."""

    devices: tuple[dict[str, Any], ...] = ()
    offloaded: int | None = None
    offloadable: int | None = None
    layer_devices: dict[int, str] = field(default_factory=dict)
    model_buffers: dict[str, int] = field(default_factory=dict)
    kv_buffers: dict[str, int] = field(default_factory=dict)
    rs_buffers: dict[str, int] = field(default_factory=dict)  # a recurrent or hybrid model's recurrent state
    compute_buffers: dict[str, int] = field(default_factory=dict)
    output_buffers: dict[str, int] = field(default_factory=dict)
    # {"tensor", "type", "others", "preferred", "used"} per fallback line (buffer type names as llama.cpp prints them)
    tensor_fallbacks: tuple[dict[str, Any], ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def bytes_on(self, family: str) -> int:
        """Bytes llama.cpp allocated on a device family (e.g. "CUDA0"), summed over buffer kinds."""
        total = 0
        for bufs in (self.model_buffers, self.kv_buffers, self.rs_buffers, self.compute_buffers, self.output_buffers):
            total += sum(v for k, v in bufs.items() if device_family(k) == family)
        return total

    @property
    def gpu_families(self) -> tuple[str, ...]:
        fams = []
        for bufs in (self.model_buffers, self.kv_buffers, self.rs_buffers, self.compute_buffers):
            for k in bufs:
                fam = device_family(k)
                if fam != "CPU" and fam not in fams:
                    fams.append(fam)
        for dev in self.devices:
            if dev["name"] not in fams:
                fams.append(dev["name"])
        return tuple(fams)

    def layers_on(self, family: str) -> int:
        return sum(1 for d in self.layer_devices.values() if d == family)

    def gpu_weights_on_cpu(self) -> dict[str, Any] | None:
        """The fallback line whose weight wanted a GPU buffer and got host memory, if llama.cpp logged one.

        A move between host buffer types (CUDA_Host or CPU_REPACK to CPU, as the input embedding always does under
        mmap) is not one. llama.cpp names only the first move of a load, so a GPU-to-host move behind a benign first
        one is not visible here; the layer count and the buffer sizes still are.
        """
        for fb in self.tensor_fallbacks:
            if device_family(fb["preferred"]) != "CPU" and device_family(fb["used"]) == "CPU":
                return fb
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "offloaded_layers": self.offloaded,
            "offloadable_layers": self.offloadable,
            "layer_devices": {str(k): v for k, v in sorted(self.layer_devices.items())},
            "model_buffers_bytes": self.model_buffers,
            "kv_buffers_bytes": self.kv_buffers,
            "rs_buffers_bytes": self.rs_buffers,
            "compute_buffers_bytes": self.compute_buffers,
            "output_buffers_bytes": self.output_buffers,
            "tensor_fallbacks": list(self.tensor_fallbacks),
            "errors": list(self.errors),
            "warnings": list(self.warnings),
        }


def _add_size(target: dict[str, int], name: str, mib: str) -> None:
    target[name] = target.get(name, 0) + round(float(mib) * MIB)


def parse_load_log(lines: list[LogLine] | str) -> LoadEvidence:
    """Read device list, offload count, per-layer devices and buffer sizes from a load's log."""
    if isinstance(lines, str):
        lines = [LogLine(2, t) for t in lines.splitlines()]
    devices: list[dict[str, Any]] = []
    offloaded = offloadable = None
    layer_devices: dict[int, str] = {}
    model_b: dict[str, int] = {}
    kv_b: dict[str, int] = {}
    rs_b: dict[str, int] = {}
    comp_b: dict[str, int] = {}
    out_b: dict[str, int] = {}
    fallbacks: list[dict[str, Any]] = []
    errors: list[str] = []
    warnings: list[str] = []
    for line in lines:
        text = line.text
        if line.level == 4:
            errors.append(text.strip())
        elif line.level == 3:
            warnings.append(text.strip())
        if m := _RE_USING_DEVICE.search(text):
            devices.append(
                {"name": m.group(1), "description": m.group(2), "id": m.group(3), "free_mib": int(m.group(4))}
            )
        elif m := _RE_OFFLOADED.search(text):
            offloaded, offloadable = int(m.group(1)), int(m.group(2))
        elif m := _RE_LAYER_DEVICE.search(text):
            layer_devices[int(m.group(1))] = m.group(2)
        elif m := _RE_MODEL_BUF.search(text):
            _add_size(model_b, m.group(1), m.group(2))
        elif m := _RE_KV_BUF.search(text):
            _add_size(kv_b, m.group(1), m.group(2))
        elif m := _RE_RS_BUF.search(text):
            _add_size(rs_b, m.group(1), m.group(2))
        elif m := _RE_COMPUTE_BUF.search(text):
            _add_size(comp_b, m.group(1), m.group(2))
        elif m := _RE_OUTPUT_BUF.search(text):
            _add_size(out_b, m.group(1), m.group(2))
        elif m := _RE_FALLBACK.search(text):
            fallbacks.append(
                {
                    "tensor": m.group(1),
                    "type": m.group(2),
                    "others": int(m.group(3)),
                    "preferred": m.group(4),
                    "used": m.group(5),
                }
            )
    return LoadEvidence(
        devices=tuple(devices),
        offloaded=offloaded,
        offloadable=offloadable,
        layer_devices=layer_devices,
        model_buffers=model_b,
        kv_buffers=kv_b,
        rs_buffers=rs_b,
        compute_buffers=comp_b,
        output_buffers=out_b,
        tensor_fallbacks=tuple(fallbacks),
        errors=tuple(errors),
        warnings=tuple(warnings),
    )


def load_failure_reason(lines: list[LogLine]) -> str | None:
    """The most telling error line of a failed load (llama.cpp logs the cause, then returns NULL).

    Runs of spaces are one space: llama.cpp pads its numbers (`expected    768,    768`) for aligned logs."""
    errs = [" ".join(ln.text.split()) for ln in lines if ln.level == 4 and ln.text.strip()]
    if not errs:
        return None
    for needle in ("out of memory", "failed to allocate", "cudaMalloc", "tensor", "invalid", "unknown"):
        for e in errs:
            if needle.lower() in e.lower():
                return e
    return errs[0]
