"""How the bundled llama.cpp lays a model out in memory, read from its GGUF header alone: which layers keep a
KV cache and how wide it is, which keep a recurrent state and how big, which tensors are input lookups, and
how much of a mixture of experts a token reads.

Each rule mirrors the vendored llama.cpp source it names (llama-kv-cache.cpp, llama-memory-recurrent.cpp,
llama-hparams.cpp, llama-arch.cpp, src/models/<arch>.cpp). The fit estimate (fit.py) and the roofline
(verdicts.roofline_metrics, through decode_reads) both use them; tests/model/test_fit.py sets them against
real llama.cpp loads.
"""

from __future__ import annotations

from kcuda_validate.model.gguf_info import MAX_LAYERS, GgufInfo

# How the vendored llama.cpp marks a hybrid's recurrent layers (SSM, linear attention), which its hybrid memory
# gives no KV cache: the is_recr_impl setters in src/models/<arch>.cpp, for the archs of llm_arch_is_hybrid.
_RECURRENT_BUT_EVERY_NTH = frozenset({"qwen3next", "qwen35", "qwen35moe", "qwen4exp", "minimax-01"})
_RECURRENT_WITHOUT_KV_HEADS = frozenset(
    {"jamba", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next"}
)
_RECURRENT_WITHOUT_KV_HEADS_OR_FFN = frozenset({"nemotron_h", "nemotron_h_moe"})
# gemma3n hard-codes that only its first 20 layers keep a KV cache (the rest reuse it); gemma4 says so in the file.
_KV_LAYERS_FIXED = {"gemma3n": 20}


# llm_arch_is_recurrent in the vendored llama-arch.cpp: every layer keeps a recurrent state, none a KV cache.
_ALL_RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})


def recurrent_layers(info: GgufInfo) -> frozenset[int]:
    """The layers llama.cpp keeps a recurrent state for instead of a KV cache: every layer of a recurrent model
    (Mamba, RWKV), those its rules mark in a hybrid, none elsewhere."""
    heads, arch = info.kv_heads_per_layer, info.architecture
    if arch in _ALL_RECURRENT:
        return frozenset(range(min(info.block_count or 0, MAX_LAYERS)))
    if arch in _RECURRENT_BUT_EVERY_NTH:
        marks = info.arch_key("attention.recurrent_layers")
        if isinstance(marks, list) and len(marks) == len(heads):
            return frozenset(i for i, mark in enumerate(marks) if mark)
        every = info.arch_int("full_attention_interval") or 4  # llama.cpp's default for these
        return frozenset(i for i in range(len(heads)) if (i + 1) % every)
    if arch in _RECURRENT_WITHOUT_KV_HEADS:
        return frozenset(i for i, h in enumerate(heads) if h == 0)
    if arch in _RECURRENT_WITHOUT_KV_HEADS_OR_FFN:
        ff = info.per_layer("feed_forward_length") or (0,) * len(heads)
        return frozenset(i for i, (h, f) in enumerate(zip(heads, ff, strict=False)) if h == 0 and f == 0)
    return frozenset()


def recurrent_state_bytes(info: GgufInfo, first_layer: int = 0) -> int:
    """The f32 state one sequence keeps in each recurrent layer from `first_layer` on: llama.cpp's RS buffers, of
    n_embd_r() (the convolution or token-shift history) + n_embd_s() (the state) floats per layer, as the vendored
    llama-hparams.cpp sizes them for RWKV, LFM2's short convolution, Kimi's KDA, MiniMax's linear attention and
    the Mamba-style rest (Mamba, Mamba-2, gated delta nets). Fixed whatever the context: about 2 MiB a layer
    for a gated delta net with 32 value heads of 128 and 16 key heads of 128."""
    count = sum(1 for il in recurrent_layers(info) if il >= first_layer)
    if not count:
        return 0

    def key(suffix: str) -> int:
        return max(info.arch_int(suffix) or 0, 0)

    n_embd, heads = info.embedding_length or 0, info.head_count or 0
    d_conv, d_inner, d_state = key("ssm.conv_kernel"), key("ssm.inner_size"), key("ssm.state_size")
    wkv, l_cache, kda = key("wkv.head_size"), key("shortconv.l_cache"), key("kda.head_dim")
    if wkv:
        r = (key("token_shift_count") or 2) * n_embd
    elif l_cache:
        r = n_embd * max(l_cache - 1, 0)
    elif kda:
        r = 3 * (d_conv - 1 if d_conv > 0 else 3) * heads * kda
    else:
        r = max(d_conv - 1, 0) * (d_inner + 2 * key("ssm.group_count") * d_state)
    if wkv:
        s = n_embd * wkv
    elif kda:
        s = kda * kda * heads
    elif info.architecture == "minimax-01":
        s = (info.key_length or 0) ** 2 * heads
    else:
        s = d_state * d_inner
    return count * (r + s) * 4


def _head_sizes(info: GgufInfo) -> list[tuple[int, int]]:
    """Each layer's K and V head size: key_length/value_length, and on the sliding-window layers of a model that
    gives them their own (gemma4: key_length_swa, with a sliding_window_pattern per layer) those."""
    full = (info.key_length or 0, info.value_length or 0)
    n = len(info.kv_heads_per_layer)
    pattern = info.arch_key("attention.sliding_window_pattern")
    k_swa = info.arch_int("attention.key_length_swa")
    if k_swa is None or not isinstance(pattern, list) or len(pattern) != n:
        return [full] * n
    swa = (k_swa, info.arch_int("attention.value_length_swa") or k_swa)
    return [swa if is_swa else full for is_swa in pattern]


def kv_bytes_per_token(info: GgufInfo, first_layer: int = 0, padded_v: bool = True) -> int:
    """f16 K and V for one token in the layers from `first_layer` on (a partial offload's GPU layers), laid out
    as the vendored llama.cpp's llama_kv_cache allocates them:

    - each layer with its own KV heads (the first layer's count for every layer overstated a hybrid's cache),
      and its own head sizes (gemma4's sliding-window layers);
    - none for a hybrid's recurrent layers, nor past the layers that keep one (gemma3n and gemma4 share theirs);
    - `padded_v` (no flash attention: V is stored transposed): every layer's V as wide as the widest layer's;
    - multi-head latent attention (DeepSeek-V2/V3, Kimi-K2, GLM-4.7-Flash: key_length_mla) keeps K only, the
      compressed latent, and reads V from it.
    """
    heads = info.kv_heads_per_layer
    sizes = _head_sizes(info)
    if info.arch_int("attention.key_length_mla") and info.arch_int("attention.value_length_mla"):
        sizes = [(k, 0) for k, _ in sizes]
    skip = recurrent_layers(info)
    keep = _KV_LAYERS_FIXED.get(info.architecture or "")
    shared = info.arch_int("attention.shared_kv_layers")
    if keep is None and shared:
        keep = len(heads) - shared
    widest = max((h * v for h, (_, v) in zip(heads, sizes, strict=True)), default=0)
    total = 0
    for il in range(first_layer, len(heads) if keep is None else min(keep, len(heads))):
        if il not in skip:
            k, v = sizes[il]
            total += heads[il] * k + (widest if padded_v else heads[il] * v)
    return total * 2


# The input layer's lookup tables besides token_embd (LLM_TENSOR_LAYER_INPUT in the vendored llama-arch.cpp): the
# input layer is never offloaded, so they stay in host memory on a full offload, and a token reads one row of each.
# gemma3n's and gemma4's per-layer embeddings are a large part of their E2B/E4B files.
INPUT_TABLES = frozenset(
    {
        "position_embd.weight",
        "token_types.weight",
        "per_layer_token_embd.weight",
        "masked_embd_centroids.weight",
        "masked_embd_ordering",
    }
)


def _is_routed_expert(name: str) -> bool:
    """blk.<i>.ffn_{gate,up,down,gate_up}_exps.{weight,bias}: all of a layer's routed experts in one 3-D tensor.
    Shared experts (`_shexp`) and the router (`ffn_gate_inp`) are read whole for every token."""
    return name.startswith("blk.") and "_exps." in name


def routed_experts(info: GgufInfo) -> tuple[int, int] | None:
    """(experts a token uses, experts per layer) of a mixture of experts with routed-expert tensors; None for a
    dense model, or a header that cannot tell the share (no used count, or more used than exist)."""
    count, used = info.arch_int("expert_count"), info.arch_int("expert_used_count")
    if not count or not used or used > count or not any(_is_routed_expert(t.name) for t in info.tensors):
        return None
    return used, count


def decode_reads(info: GgufInfo, context: float) -> float:
    """Bytes read from memory to decode one token at `context` cells of KV: the roofline's numerator.

    Every weight is read once, except the input layer's lookup tables (one row each: the token embedding,
    unless it is tied as the output matrix too, and INPUT_TABLES) and, in a mixture of experts, the routed
    experts: a token reads the `expert_used_count` of `expert_count`, so their tensors count at that share
    (counting them whole overstated a MoE's bandwidth several times over). Plus f16 K and V over the context
    in every layer that keeps a cache, and each recurrent layer's state, read once.
    """
    tied = info.tied_output
    experts = routed_experts(info)
    share = experts[0] / experts[1] if experts else 1.0
    weights = 0.0
    for t in info.tensors:
        if (t.name == "token_embd.weight" and not tied) or t.name in INPUT_TABLES:
            continue
        weights += t.nbytes * share if _is_routed_expert(t.name) else t.nbytes
    kv = kv_bytes_per_token(info, padded_v=False) * context  # a layer reads its own V, not the padding
    return weights + kv + recurrent_state_bytes(info)
