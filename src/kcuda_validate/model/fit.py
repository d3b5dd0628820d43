"""Will it fit? An estimate of the memory a load needs, made from the GGUF header before loading.

Weights (what llama.cpp puts on the GPU), the KV cache for the requested
context (each layer's KV heads × head size × 2 bytes each for K and V), and the
compute buffer (the larger of the logits of one micro-batch and the attention
scores) are compared with free VRAM — or with available host memory on a CPU
run — so a hopeless load fails in milliseconds with a concrete alternative.

Each term mirrors an allocation llama.cpp logs (see `estimate`); checked against
a real load in tests/model/test_fit.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kcuda_validate.checks import Check, Status
from kcuda_validate.errors import ExitCode, UsageError
from kcuda_validate.model.gguf_info import GgufInfo
from kcuda_validate.model.layout import INPUT_TABLES, kv_bytes_per_token, recurrent_state_bytes

MIB = 1024 * 1024
# What the CUDA runtime and cuBLAS take beyond llama.cpp's own buffers: NVML's used-memory delta over a load
# minus the buffers llama.cpp logged was 528-533 MiB over five loads on an H100 80GB (driver 580, CUDA 13.0;
# docs/benchmarks.md §6).
# Smaller GPUs need less; over-estimating by ~100 MiB is the safe side of a fit check.
CUDA_CONTEXT = 530 * MIB
# Typical bits per weight of common quantizations, for "what would fit" advice.
BPW = {"Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.7, "Q4_K_M": 4.85, "Q4_0": 4.55, "Q3_K_M": 3.9, "Q2_K": 3.35}


@dataclass(frozen=True)
class FitEstimate:
    weights: int
    kv_cache: int
    compute: int
    overhead: int
    layers_on_gpu: int
    n_layer: int
    recurrent_state: int = 0  # the RS buffers of a recurrent or hybrid model's recurrent layers

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.recurrent_state + self.compute + self.overhead

    def to_json(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights,
            "kv_cache_bytes": self.kv_cache,
            "recurrent_state_bytes": self.recurrent_state,
            "compute_bytes": self.compute,
            "overhead_bytes": self.overhead,
            "total_bytes": self.total,
            "layers_on_gpu": self.layers_on_gpu,
            "n_layer": self.n_layer,
        }


@dataclass(frozen=True)
class _Weights:
    """The tensor bytes the estimate places, summed once per header: the searches below call it many times."""

    per_layer: tuple[tuple[int, int], ...]  # (layer index, bytes), only layers that have tensors
    embd: int
    other: int
    tied: bool
    inputs: int = 0  # the input layer's other lookup tables (INPUT_TABLES): host memory, never offloaded

    def last_layers(self, n_layer: int, blocks: int) -> int:
        """Bytes of the last `blocks` repeating layers: O(layers present), whatever n_layer claims."""
        first = n_layer - blocks
        return sum(b for i, b in self.per_layer if first <= i < n_layer)


def _layer_index(name: str) -> int | None:
    """blk.<i>.… -> i; None for anything else (read_gguf refuses a blk. name without a number)."""
    if not name.startswith("blk."):
        return None
    index = name.split(".", 2)[1]
    return int(index) if index.isascii() and index.isdigit() else None


def _layer_weights(info: GgufInfo) -> _Weights:
    per_layer: dict[int, int] = {}
    embd = other = inputs = 0
    tied = info.tied_output
    for t in info.tensors:
        idx = _layer_index(t.name)
        if idx is not None:
            per_layer[idx] = per_layer.get(idx, 0) + t.nbytes
        elif t.name == "token_embd.weight":
            embd = t.nbytes
        elif t.name in INPUT_TABLES:
            inputs += t.nbytes
        else:
            other += t.nbytes
    return _Weights(tuple(per_layer.items()), embd, other, tied, inputs)


CTX_PAD = 256  # llama-context.cpp pads n_ctx (and so the KV cache) up to a multiple of 256


def padded_ctx(n_ctx: int) -> int:
    """The n_ctx llama.cpp makes of a requested one."""
    return -(-n_ctx // CTX_PAD) * CTX_PAD


def _ff_length(info: GgufInfo) -> int:
    ff = info.arch_key("feed_forward_length") or 0
    return max(ff) if isinstance(ff, list) and ff else int(ff or 0)


def estimate(
    info: GgufInfo, n_ctx: int, gpu_layers: int, n_ubatch: int = 512, gpu: bool = True, flash_attn: bool = False
) -> FitEstimate:
    """Bytes needed on the device that holds the offloaded layers (or in host RAM for a CPU run).

    How each term maps onto what llama.cpp allocates and logs:

    - weights ~ the `<dev> model buffer size` lines. llama.cpp places layer il on the GPU when
      il >= n_layer + 1 - gpu_layers, where layer n_layer is the output layer: any offload puts the output layer
      (output.weight, or a GPU copy of token_embd.weight when the embeddings are tied) on the GPU first, then the
      last gpu_layers - 1 blocks. token_embd.weight itself (and the other INPUT_TABLES) always stays in host
      memory (CPU_Mapped) because the input layer is never offloaded, so on a full CUDA offload it is not VRAM.
      On a CPU run every tensor is counted once, which matches the CPU_Mapped buffer (the mapped tensor data);
      CPU_REPACK buffers are re-laid-out copies of some matmul weights (12.7 MiB of Q4_K on Gemma-3-270M) and
      are not counted.
    - kv_cache = the `<dev> KV buffer size` lines: f16 K and V for n_ctx (padded to 256) cells in each layer on
      the device that keeps a cache (offload_kqv puts a layer's cache on that layer's device), each layer as
      wide as `kv_bytes_per_token` says. Sliding-window models get full-size
      SWA caches because llama-cpp-python leaves swa_full on, so every layer counts n_ctx cells.
    - recurrent_state = the `<dev> RS buffer size` lines of a recurrent or hybrid model: each recurrent layer's
      fixed state (`recurrent_state_bytes`), on that layer's device like its KV cache.
    - compute ~ the `<dev> compute buffer size` line of the device with the output layer (CUDA0, or CPU on a CPU
      run). ggml's allocator reuses memory, so the buffer is the graph's peak, not a sum: the larger of the f32
      logits of one micro-batch (n_vocab x ubatch, usually the peak), the f32 attention scores without flash
      attention (n_head x n_ctx x ubatch) and the FFN activations, plus a few n_embd x ubatch activations. On
      CUDA the small `CUDA_Host compute buffer` (inputs, masks) is host memory and is not counted.
    - overhead: the CUDA context and cuBLAS workspace, which NVML sees but llama.cpp never logs.
    """
    return _estimate(info, _layer_weights(info), n_ctx, gpu_layers, n_ubatch, gpu, flash_attn)


def _estimate(
    info: GgufInfo, w: _Weights, n_ctx: int, gpu_layers: int, n_ubatch: int, gpu: bool, flash_attn: bool
) -> FitEstimate:
    n_layer = info.block_count or 0
    if not gpu:
        offloaded = 0
        blocks = n_layer
        output_on = True
    else:
        offloaded = n_layer + 1 if gpu_layers < 0 else min(gpu_layers, n_layer + 1)
        output_on = offloaded > 0
        blocks = max(offloaded - 1, 0)
    # The last `blocks` repeating layers are the ones on the device.
    weights = w.last_layers(n_layer, blocks)
    if output_on:
        weights += w.other + (w.embd if w.tied else 0)  # output layer; a tied model's output is token_embd (a GPU copy)
    if not gpu:
        weights += w.inputs + (0 if w.tied else w.embd)  # the input layer, in host memory with everything else
    cells = padded_ctx(n_ctx)
    kv = cells * kv_bytes_per_token(info, n_layer - blocks, padded_v=not flash_attn)
    ub = min(n_ubatch, n_ctx)
    n_embd = info.embedding_length or 0
    logits = (info.vocab_size or 0) * ub * 4
    scores = 0 if flash_attn else (info.head_count or 0) * cells * ub * 4
    ffn = 3 * _ff_length(info) * ub * 4
    compute = max(logits, scores, ffn) + 2 * n_embd * ub * 4 if output_on or blocks else 0
    overhead = CUDA_CONTEXT if gpu and offloaded else 0
    state = recurrent_state_bytes(info, n_layer - blocks)  # with its layer, as the KV cache
    return FitEstimate(weights, kv, compute, overhead, offloaded, n_layer, state)


def host_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _max_ctx(info: GgufInfo, w: _Weights, budget: int, gpu_layers: int, gpu: bool, flash_attn: bool = False) -> int:
    """The largest context that fits: a binary search, ~32 estimates for any trained context."""
    return _largest(
        info.context_length or 131072,
        lambda n_ctx: _estimate(info, w, n_ctx, gpu_layers, 512, gpu, flash_attn).total <= budget,
    )


def _max_layers(info: GgufInfo, w: _Weights, budget: int, n_ctx: int, flash_attn: bool = False) -> int:
    """The most --gpu-layers that fit. The estimate only grows with the layer count, so this is a binary search:
    ~log2(n_layer) estimates, never one per layer (a header can claim any layer count)."""
    return _largest(
        (info.block_count or 0) + 1,
        lambda layers: _estimate(info, w, n_ctx, layers, 512, True, flash_attn).total <= budget,
    )


def _largest(hi: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [0, hi] with fits(n), for a `fits` that only turns false as n grows (0 if none)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def context_fix(
    prompt_tokens: int, max_tokens: int, n_ctx: int, n_ctx_train: int | None, synthetic: bool = False
) -> str:
    """What to do when prompt + --max-tokens overflows --n-ctx, offering only a context the model can take.

    "Raise --n-ctx" is advice only up to the model's trained context (llama.cpp's n_ctx_train, which the
    command line also caps --n-ctx at); past it the prompt or --max-tokens must shrink instead."""
    needed = prompt_tokens + max_tokens
    limit = n_ctx_train if n_ctx_train and n_ctx_train > 0 else None
    if limit is None or needed <= limit:
        also = " or --prompt-tokens" if synthetic else ""
        return f"Raise --n-ctx to at least {needed} or lower --max-tokens{also}."
    room = max(n_ctx, limit) - prompt_tokens  # the most tokens the largest allowed context leaves for the answer
    if room < 1:
        return (
            f"{'Lower --prompt-tokens' if synthetic else 'Shorten the prompt'}: it alone is {prompt_tokens} tokens "
            f"and the model's trained context is {limit} "
            "(--n-ctx cannot go past it)."
        )
    if n_ctx >= limit:
        return f"Lower --max-tokens to at most {room} (--n-ctx {n_ctx} is already the model's trained context)."
    here = f", or to at most {n_ctx - prompt_tokens} at --n-ctx {n_ctx}" if n_ctx > prompt_tokens else ""
    return (
        f"Lower --max-tokens to at most {room} with --n-ctx {limit} (the model's trained context, the most "
        f"--n-ctx can be){here}."
    )


def ctx_label(asked: int, actual: int) -> str:
    """The context as the user asked for it, and what llama.cpp made of it when that differs (it pads n_ctx up to
    a multiple of CTX_PAD), so a message never names a --n-ctx the user did not pass."""
    return f"--n-ctx {asked}" if asked == actual else f"--n-ctx {asked}, which llama.cpp made {actual}"


def synthetic_prompt_overflow(
    prompt_tokens: int, max_tokens: int, asked: int, actual: int, n_ctx_train: int | None
) -> UsageError | None:
    """--prompt-tokens N with --max-tokens past the context: known from the options and the header alone, so the
    run refuses it before loading (and the worker again, should a caller skip that)."""
    needed = prompt_tokens + max_tokens
    if needed <= actual:
        return None
    return UsageError(
        f"--prompt-tokens {prompt_tokens}: with --max-tokens {max_tokens} that is {needed} tokens, more than the "
        f"context holds ({ctx_label(asked, actual)})",
        fix=context_fix(prompt_tokens, max_tokens, actual, n_ctx_train, synthetic=True),
    )


def estimate_fit(info: GgufInfo, load: Any, free_bytes: int | None, cpu_mode: bool = False) -> Check:
    """The fit check: pass with the estimate, or fail saying by how much and what would fit."""
    gpu = not cpu_mode
    fa = bool(getattr(load, "flash_attn", False))
    w = _layer_weights(info)
    est = _estimate(info, w, load.n_ctx, load.gpu_layers if gpu else 0, 512, gpu, fa)
    budget = free_bytes if gpu else host_available()
    where = "free VRAM" if gpu else "available host memory"
    ev: dict[str, Any] = est.to_json() | {"budget_bytes": budget, "budget": where, "n_ctx": load.n_ctx}
    need = f"{est.total / MIB:,.0f} MiB"
    parts = f"weights {est.weights / MIB:,.0f} + KV {est.kv_cache / MIB:,.0f}"
    if est.recurrent_state:
        parts += f" + state {est.recurrent_state / MIB:,.0f}"
    parts += f" + compute {est.compute / MIB:,.0f}"
    if gpu:
        parts += f" + CUDA {est.overhead / MIB:,.0f}"
    if budget is None:
        return Check("model.fit", "model", "Memory fit", Status.SKIP, f"needs ~{need} ({parts} MiB); {where} n/a", ev)
    if est.total <= budget:
        return Check(
            "model.fit",
            "model",
            "Memory fit",
            Status.PASS,
            f"needs ~{need} ({parts} MiB) of {budget / MIB:,.0f} MiB {where}",
            ev,
        )
    short = est.total - budget
    options: list[str] = []
    ctx = _max_ctx(info, w, budget, load.gpu_layers if gpu else 0, gpu, fa)
    if ctx >= 256:
        options.append(f"--n-ctx {ctx // 256 * 256}")
    if gpu:
        layers = _max_layers(info, w, budget, load.n_ctx, fa)
        if layers > 0:
            options.append(f"--gpu-layers {layers} (partial offload, slower)")
    bpw_now = info.tensor_bytes * 8 / max(info.parameter_count, 1)
    for name, bpw in sorted(BPW.items(), key=lambda kv: -kv[1]):
        if bpw < bpw_now and est.weights * bpw / bpw_now + (est.total - est.weights) <= budget:
            options.append(f"a {name} quantization of this model")
            break
    ev["suggestions"] = options
    return Check(
        "model.fit",
        "model",
        "Memory fit",
        Status.FAIL,
        f"needs ~{need} ({parts} MiB) but only {budget / MIB:,.0f} MiB {where}: short by {short / MIB:,.0f} MiB",
        ev,
        ("Would fit: " + "; or ".join(options)) if options else "Use a smaller model or a GPU with more memory.",
        ExitCode.BELOW_THRESHOLD,
    )
