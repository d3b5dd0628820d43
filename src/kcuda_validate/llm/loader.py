"""The GGUF model loader: load through llama.cpp and prove where the layers went.

A load is only a GPU pass when llama.cpp's own log says the layers were
offloaded and its GPU buffers hold the weights; missing evidence is a
failure, never a pass. NVML's view of used VRAM (read by the caller around
the load, so this module never touches NVML) cross-checks the buffer sizes.

The loader measures (`LoadResult`, run in the worker process); `judge_offload`
judges, once, in the parent, from the log the worker sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcuda_validate import defaults
from kcuda_validate.checks import Check, Status
from kcuda_validate.errors import ExitCode, KcudaError
from kcuda_validate.llm.build import invocation, setup_fix
from kcuda_validate.llm.llamalog import (
    LlamaLogCapture,
    LoadEvidence,
    LogLine,
    device_family,
    load_failure_reason,
    parse_load_log,
)
from kcuda_validate.model.gguf_file import TEMPLATE_FIX

log = logging.getLogger(__name__)

MIB = 1024 * 1024
STAGE = "load"


@dataclass(frozen=True)
class LoadOptions:
    gpu_layers: int = defaults.GPU_LAYERS  # -1 = all
    n_ctx: int = defaults.N_CTX
    cpu_mode: bool = False
    n_threads: int | None = None
    n_batch: int = 2048
    flash_attn: bool = False


@dataclass(frozen=True)
class OffloadVerdict:
    """One line the user can trust, e.g. "29/29 layers on CUDA0 (NVIDIA RTX 4090), 412 MiB VRAM"."""

    status: Status
    line: str
    layers_on_gpu: int | None
    layers_total: int | None
    device: str | None
    device_name: str | None
    gpu_buffer_bytes: int
    vram_delta_bytes: int | None
    fix: str | None = None
    exit_code: ExitCode = ExitCode.OK

    def check(
        self, evidence: LoadEvidence, cpu_mode: bool, require_full: bool = True, duration_s: float | None = None
    ) -> Check:
        """The load.offload check. With require_full=False a partial offload warns instead of failing."""
        status = self.status
        if status == Status.FAIL and not require_full and self.exit_code == ExitCode.CHECK_FAILED:
            status = Status.WARN
        return Check(
            "load.offload",
            STAGE,
            "GPU offload (CPU run)" if cpu_mode else "GPU offload",
            status,
            self.line,
            self.to_json() | {"llama_log": evidence.to_json()},
            self.fix,
            self.exit_code if status == Status.FAIL else ExitCode.OK,
            duration_s,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "verdict": self.line,
            "layers_on_gpu": self.layers_on_gpu,
            "layers_total": self.layers_total,
            "device": self.device,
            "device_name": self.device_name,
            "gpu_buffer_bytes": self.gpu_buffer_bytes,
            "nvml_vram_delta_bytes": self.vram_delta_bytes,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class LoadResult:
    """What llama.cpp did, with its own log: the evidence, not yet a verdict (see judge_offload).

    The worker process measures this; the parent judges it, once, with the VRAM it read around the load."""

    model_path: Path
    options: LoadOptions
    load_s: float
    n_ctx: int
    log: tuple[LogLine, ...] = ()

    @property
    def evidence(self) -> LoadEvidence:
        return parse_load_log(list(self.log))

    def to_json(self) -> dict[str, Any]:
        """The wire form the worker sends (see worker_protocol)."""
        return {
            "model_path": str(self.model_path),
            "options": dataclasses.asdict(self.options),
            "load_s": self.load_s,
            "n_ctx": self.n_ctx,
            "log": [[ln.level, ln.text] for ln in self.log],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LoadResult:
        return cls(
            model_path=Path(d["model_path"]),
            options=LoadOptions(**d["options"]),
            load_s=float(d["load_s"]),
            n_ctx=int(d["n_ctx"]),
            log=tuple(LogLine(int(level), str(text)) for level, text in d["log"]),
        )


class ModelLoadError(KcudaError):
    """llama.cpp refused the model; the message carries its own error line."""


def judge_offload(
    evidence: LoadEvidence,
    options: LoadOptions,
    n_layer: int | None,
    vram_delta: int | None,
    gpu_name: str | None = None,
) -> OffloadVerdict:
    """Turn llama.cpp's log evidence into the offload verdict. Pure, so recorded CUDA logs can test it."""
    total = evidence.offloadable if evidence.offloadable is not None else ((n_layer + 1) if n_layer else None)
    if total is None and evidence.layer_devices:
        # A CPU-only build never prints "offloaded N/M"; its per-layer lines still count the layers (+ output).
        total = len(evidence.layer_devices)
    if options.cpu_mode:
        return OffloadVerdict(
            Status.SKIP,
            f"CPU run: 0/{total if total is not None else '?'} layers offloaded (by request), "
            f"{sum(evidence.model_buffers.values()) / MIB:.0f} MiB of weights in host memory",
            0,
            total,
            "CPU",
            None,
            0,
            vram_delta,
        )
    families = [f for f in evidence.gpu_families]
    used = [f for f in families if evidence.bytes_on(f) > 0]
    gpu = used[0] if used else (families[0] if families else None)
    gpu_bytes = sum(evidence.bytes_on(f) for f in families)

    def describe(family: str | None, name: str | None) -> str | None:
        return name or next((d["description"] for d in evidence.devices if d["name"] == family), None)

    desc = describe(gpu, gpu_name)
    where = f"{gpu} ({desc})" if gpu and desc else (gpu or "GPU")
    for other in used[1:]:  # a split over several GPUs names each one
        other_desc = describe(other, None)
        where += f" + {other} ({other_desc})" if other_desc else f" + {other}"
    if evidence.offloaded is None:
        return OffloadVerdict(
            Status.FAIL,
            "no offload evidence: llama.cpp never reported offloading layers (CPU-only build?)",
            None,
            total,
            None,
            None,
            0,
            vram_delta,
            setup_fix(invocation()),
            ExitCode.GPU_UNUSABLE,
        )
    wanted = total if options.gpu_layers < 0 or total is None else min(options.gpu_layers, total)
    on_gpu = evidence.offloaded
    # Per-layer assignments (debug lines) are the stronger evidence when present.
    if evidence.layer_devices:
        on_gpu_layers = sum(1 for d in evidence.layer_devices.values() if device_family(d) != "CPU")
        on_gpu = min(on_gpu, on_gpu_layers) if on_gpu_layers else on_gpu_layers
    vram = f"{gpu_bytes / MIB:.0f} MiB VRAM"
    nvml = ""
    if vram_delta is not None:
        nvml = f" (NVML +{vram_delta / MIB:.0f} MiB)"
    line = f"{on_gpu}/{total} layers on {where}, {vram}{nvml}"

    def judged(status: Status, summary: str, fix: str | None = None, code: ExitCode = ExitCode.OK) -> OffloadVerdict:
        return OffloadVerdict(status, summary, on_gpu, total, gpu, desc, gpu_bytes, vram_delta, fix, code)

    if gpu_bytes == 0 or on_gpu == 0:
        return judged(
            Status.FAIL,
            f"0/{total} layers on a GPU: llama.cpp kept the model in host memory",
            "Pass --gpu-layers -1 and check that this build can offload; if it cannot, " + setup_fix(invocation()),
            ExitCode.GPU_UNUSABLE,
        )
    full = wanted is None or wanted == total  # a partial offload keeps its CPU layers' weights and KV there
    if wanted is not None and on_gpu < wanted:
        missing = wanted - on_gpu
        return judged(
            Status.FAIL,
            line + f"; {missing} layer(s) stayed on the CPU",
            "Free VRAM (close other GPU processes) or lower --n-ctx so every layer fits.",
            ExitCode.CHECK_FAILED,
        )
    # llama.cpp assigns the output layer to a GPU first whenever any layer goes there, so its placement shows in the
    # layer count; what the count cannot show is a weight whose type the GPU backend refused and put in host memory.
    moved = evidence.gpu_weights_on_cpu()
    if moved is not None and full:
        others = f", {moved['others']} more weight(s) moved" if moved["others"] else ""
        return judged(
            Status.FAIL,
            line + f"; weight '{moved['tensor']}' ({moved['type']}) could not use {moved['preferred']} and went to"
            f" {moved['used']}{others}",
            f"This llama.cpp build cannot use {moved['type']} weights on {moved['preferred']}, so their matmuls run on"
            " the CPU: pick a GGUF in a quantization the CUDA backend runs (Q4_K_M, Q8_0) with --model-path or"
            " --filename.",
            ExitCode.CHECK_FAILED,
        )
    host_kv = sum(v for k, v in evidence.kv_buffers.items() if device_family(k) == "CPU")
    host_rs = sum(v for k, v in evidence.rs_buffers.items() if device_family(k) == "CPU")  # a recurrent layer's state
    if (host_kv > 0 or host_rs > 0) and full:
        left = [(what, size) for what, size in (("the KV cache", host_kv), ("the recurrent state", host_rs)) if size]
        names = " and ".join(what for what, _ in left)
        sizes = " and ".join(f"{what} ({size / MIB:.0f} MiB)" for what, size in left)
        reads = f"every token reads {'them' if host_kv else 'it'}" if host_rs else "every token's attention reads it"
        return judged(
            Status.FAIL,
            f"{line}; {sizes} stayed in host memory",
            f"llama.cpp kept {names} on the CPU, so {reads} across PCIe: free VRAM or lower --n-ctx, and check that"
            " nothing turns KV offload off (offload_kqv=False, --no-kv-offload).",
            ExitCode.CHECK_FAILED,
        )
    if vram_delta is not None and vram_delta < 0.5 * evidence.bytes_on(gpu or ""):
        return judged(
            Status.WARN,
            line + "; NVML saw less VRAM in use than llama.cpp allocated",
            "Another process may have freed VRAM during the load; rerun on an idle GPU for a clean cross-check.",
        )
    if options.gpu_layers >= 0 and total is not None and options.gpu_layers < total:
        line += f" (partial offload requested: --gpu-layers {options.gpu_layers})"
    return judged(Status.PASS, line)


class LoadedModel:
    """A model and context held by llama.cpp. Close it to give the memory back."""

    def __init__(self, llm: Any, capture: LlamaLogCapture, result: LoadResult) -> None:
        self.llm = llm
        self.capture = capture
        self.result = result

    def close(self) -> None:
        if self.llm is not None:
            with contextlib.suppress(Exception):
                self.llm.close()
            self.llm = None

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _engine_path(path: Path) -> Iterator[str]:
    """A name for `path` that llama-cpp-python can pass to C: it encodes the path as UTF-8, strictly.

    A file name with bytes that are not UTF-8 (legal on Linux) would fail the load with a codec error that
    reads like a broken model. There the open file is named through /proc/self/fd instead; llama.cpp maps
    it, so the descriptor can close once the load is done."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        if not os.path.isdir("/proc/self/fd"):
            yield name
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
    else:
        yield name


class ModelLoader:
    """Loads a GGUF file with llama.cpp, capturing its log as offload evidence."""

    def __init__(self, options: LoadOptions, capture: LlamaLogCapture | None = None) -> None:
        self.opts = options
        self.capture = capture or LlamaLogCapture()

    def load(self, path: Path) -> LoadedModel:
        import jinja2
        import llama_cpp

        self.capture.install()
        mark = self.capture.mark()
        gpu_layers = 0 if self.opts.cpu_mode else self.opts.gpu_layers
        threads = self.opts.n_threads or default_threads()
        start = time.perf_counter()
        # Llama(verbose=False) redirects fd 1/2 to /dev/null, which would also swallow a native crash's last
        # words; verbose=True keeps them, and its few Python prints are caught here instead.
        with (
            _engine_path(path) as engine_path,
            contextlib.redirect_stderr(io.StringIO()),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            try:
                llm = llama_cpp.Llama(
                    engine_path,
                    n_gpu_layers=gpu_layers,
                    n_ctx=self.opts.n_ctx,
                    n_batch=min(self.opts.n_batch, self.opts.n_ctx),
                    n_ubatch=512,
                    n_threads=threads,
                    n_threads_batch=threads,
                    flash_attn=self.opts.flash_attn,
                    verbose=True,
                )
            except (ValueError, RuntimeError) as exc:
                lines = self.capture.since(mark)
                reason = load_failure_reason(lines) or str(exc)
                raise self._load_error(path, reason) from None
            except jinja2.TemplateError as exc:
                # llama-cpp-python compiles every chat template in the header while it loads, used or not.
                raise ModelLoadError(
                    f"{path}: its chat template (tokenizer.chat_template) is not valid Jinja, so "
                    f"llama-cpp-python refuses the model ({type(exc).__name__}: {exc})",
                    fix=TEMPLATE_FIX.format(key="tokenizer.chat_template"),
                    exit_code=ExitCode.MODEL_INVALID,
                ) from None
        load_s = time.perf_counter() - start
        result = LoadResult(
            model_path=path,
            options=self.opts,
            load_s=load_s,
            n_ctx=int(llama_cpp.llama_n_ctx(llm.ctx)),
            log=tuple(self.capture.since(mark)),
        )
        log.info("loaded %s in %.2fs", path, load_s)
        return LoadedModel(llm, self.capture, result)

    def _load_error(self, path: Path, reason: str) -> KcudaError:
        lowered = reason.lower()
        if "out of memory" in lowered or "failed to allocate" in lowered or "cudamalloc" in lowered:
            return ModelLoadError(
                f"{path}: llama.cpp ran out of memory loading the model ({reason})",
                fix="Lower --n-ctx, offload fewer layers with --gpu-layers, or use a smaller quantization.",
                exit_code=ExitCode.BELOW_THRESHOLD,
            )
        return ModelLoadError(
            f"{path}: llama.cpp could not load the model ({reason})",
            fix="Check that the file is a complete GGUF for an architecture this llama.cpp supports; "
            "update llama-cpp-python for new architectures.",
            exit_code=ExitCode.MODEL_INVALID,
        )
