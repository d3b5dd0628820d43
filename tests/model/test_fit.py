"""The fit estimate and the memory layout under it (model/layout.py) against what llama.cpp really allocates, and
the fit check's messages.

Two real CPU loads of Gemma-3-270M (n_ctx 512 and 2048) give llama.cpp's own buffer sizes; the estimate made from
the GGUF header alone must match them (KV within 5%, compute within 25%, weights within 1%). The tiny synthetic
llama, rewritten as a DeciLM with per-layer KV heads, an LFM2 hybrid and a Mixtral-style MoE, is loaded and run
by real llama.cpp too; the other architectures' rules are exact cases on Gemma's header relabelled.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from gguf_rewrite import rewrite_model
from kcuda_validate.checks import Status
from kcuda_validate.errors import ExitCode
from kcuda_validate.llm.llamalog import LoadEvidence
from kcuda_validate.llm.loader import LoadOptions, ModelLoader
from kcuda_validate.model import fit, layout
from kcuda_validate.model.gguf_file import read_gguf
from kcuda_validate.model.gguf_info import GgufInfo, TensorInfo
from machine import HOST_ONLY, inprocess_llama_has_gpu

MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.fixture(scope="module")
def info(real_model: Path) -> GgufInfo:
    return read_gguf(real_model)


@pytest.fixture(scope="module")
def real(real_model: Path) -> dict[int, LoadEvidence]:
    if inprocess_llama_has_gpu():
        pytest.skip(HOST_ONLY)
    out = {}
    for n_ctx in (512, 2048):
        with ModelLoader(LoadOptions(cpu_mode=True, n_ctx=n_ctx)).load(real_model) as loaded:
            assert loaded.result.n_ctx == n_ctx
            out[n_ctx] = loaded.result.evidence
    return out


def close(estimate: int, actual: int, tolerance: float) -> bool:
    return abs(estimate - actual) <= tolerance * actual


# --------------------------------------------------------------------------------------------------------------
# estimate vs llama.cpp (real loads)


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", [512, 2048])
def test_kv_cache_matches_llama_cpp(info: GgufInfo, real: dict[int, LoadEvidence], n_ctx: int) -> None:
    est = fit.estimate(info, n_ctx, 0, gpu=False)
    actual = sum(real[n_ctx].kv_buffers.values())  # the non-SWA and SWA caches, both in the CPU buffer
    assert actual == n_ctx * 18 * 1024  # 18 layers x 1 KV head x (256 + 256) dims x 2 bytes
    assert close(est.kv_cache, actual, 0.05), (est.kv_cache / MIB, actual / MIB)


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", [512, 2048])
def test_compute_buffer_matches_llama_cpp(info: GgufInfo, real: dict[int, LoadEvidence], n_ctx: int) -> None:
    est = fit.estimate(info, n_ctx, 0, gpu=False)
    actual = real[n_ctx].compute_buffers["CPU"]
    assert close(est.compute, actual, 0.25), (est.compute / MIB, actual / MIB)
    # It is the graph's peak, not a sum: 4x the context does not grow it (the 512 MiB of logits dominate).
    assert est.compute == fit.estimate(info, 4 * n_ctx, 0, gpu=False).compute


@pytest.mark.slow
def test_weights_match_the_mapped_model_buffer(info: GgufInfo, real: dict[int, LoadEvidence]) -> None:
    est = fit.estimate(info, 512, 0, gpu=False)
    bufs = real[512].model_buffers
    assert close(est.weights, bufs["CPU_Mapped"], 0.01), (est.weights / MIB, bufs["CPU_Mapped"] / MIB)
    # CPU_REPACK holds re-laid-out copies of some Q4_K matmul weights, on top of the mapping: small, not counted.
    assert 0 < bufs["CPU_REPACK"] < 0.1 * est.weights
    assert est.weights < bufs["CPU_Mapped"] + bufs["CPU_REPACK"]
    assert real[2048].model_buffers == bufs  # weights do not depend on the context


# --------------------------------------------------------------------------------------------------------------
# estimate: pure


def test_context_is_padded_like_llama_cpp(info: GgufInfo) -> None:
    """llama.cpp rounds n_ctx up to a multiple of 256 (a load at 1000 reports n_ctx 1024)."""
    assert fit.estimate(info, 1000, 0, gpu=False).kv_cache == fit.estimate(info, 1024, 0, gpu=False).kv_cache


def test_gpu_layer_placement_follows_llama_cpp(info: GgufInfo) -> None:
    full = fit.estimate(info, 2048, -1)
    assert full.layers_on_gpu == 19 and full.kv_cache == 2048 * 18 * 1024
    # Gemma ties its output to token_embd: llama.cpp puts a copy on the GPU as the output layer, so the GPU holds
    # as many weight bytes as the file (the input embeddings stay in host memory too).
    assert full.weights == info.tensor_bytes
    assert full.overhead == fit.CUDA_CONTEXT
    # --gpu-layers 10: the output layer first, then the last 9 blocks (llama-model.cpp's i_gpu_start).
    part = fit.estimate(info, 2048, 10)
    assert part.layers_on_gpu == 10 and part.kv_cache == 2048 * 9 * 1024
    assert part.compute == full.compute  # the logits are computed where the output layer is
    assert fit.estimate(info, 2048, 19).weights == full.weights == fit.estimate(info, 2048, 99).weights
    none = fit.estimate(info, 2048, 0)
    assert (none.weights, none.kv_cache, none.compute, none.overhead, none.layers_on_gpu) == (0, 0, 0, 0, 0)


def test_untied_output_leaves_token_embeddings_off_the_gpu(info: GgufInfo) -> None:
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    output = TensorInfo("output.weight", embd.shape, embd.ggml_type, embd.offset, embd.nbytes)
    untied = dataclasses.replace(info, tensors=(*info.tensors, output))
    gpu = fit.estimate(untied, 2048, -1)
    assert gpu.weights == untied.tensor_bytes - embd.nbytes  # token_embd stays in CPU_Mapped on a full offload
    assert fit.estimate(untied, 2048, 0, gpu=False).weights == untied.tensor_bytes


def test_the_input_layers_other_tables_stay_in_host_memory_and_are_read_a_row_at_a_time(info: GgufInfo) -> None:
    """gemma3n's and gemma4's per-layer embeddings (a large part of an E4B file), GPT-2's positions and BERT's token
    types are input-layer lookups like token_embd: never offloaded, one row read per token. Counting them as GPU
    weights could refuse a model that fits."""
    tables = (
        TensorInfo("per_layer_token_embd.weight", (10752, 262144), 12, 0, 1500 * MIB),
        TensorInfo("position_embd.weight", (640, 32768), 0, 0, 80 * MIB),
    )
    more = dataclasses.replace(info, tensors=(*info.tensors, *tables))
    assert fit.estimate(more, 2048, -1).weights == fit.estimate(info, 2048, -1).weights
    assert fit.estimate(more, 2048, 0, gpu=False).weights == fit.estimate(info, 2048, 0, gpu=False).weights + 1580 * MIB
    assert layout.decode_reads(more, 10) == layout.decode_reads(info, 10)


def test_flash_attention_drops_the_attention_scores(info: GgufInfo) -> None:
    # At 131072 cells the f32 scores (4 heads x ctx x 512) outgrow the logits; flash attention never builds them.
    plain = fit.estimate(info, 131072, 0, gpu=False)
    flash = fit.estimate(info, 131072, 0, gpu=False, flash_attn=True)
    assert plain.compute > flash.compute == fit.estimate(info, 512, 0, gpu=False).compute


def test_each_layer_keeps_the_kv_cache_of_its_own_heads_as_llama_cpp_does(tiny_model: Path, tmp_path: Path) -> None:
    """Per-layer KV heads against real loads. The tiny llama is rewritten as DeciLM, whose converter writes one
    head_count_kv per layer, with 5, 0 and 1: layer 1 attends with no KV (Q, K and V dropped), layer 2's K and V
    are cut to one head of 64. The estimate must be the KV buffer llama.cpp logs, with and without flash
    attention: without it llama.cpp stores V transposed and pads every layer's V to the widest (5 heads)."""
    if inprocess_llama_has_gpu():
        pytest.skip(HOST_ONLY)

    def heads(name: str, rows: Any) -> Any:
        if name.split(".")[:3] in (["blk", "1", "attn_q"], ["blk", "1", "attn_k"], ["blk", "1", "attn_v"]):
            return None
        return rows[:64] if name in ("blk.2.attn_k.weight", "blk.2.attn_v.weight") else rows

    model = rewrite_model(
        tiny_model, tmp_path / "deci.gguf", arch="deci", fields={"deci.attention.head_count_kv": [5, 0, 1]}, rows=heads
    )
    info = read_gguf(model)
    assert (info.kv_heads_per_layer, info.head_count_kv) == ((5, 0, 1), 5)
    k = (5 + 0 + 1) * 64
    for flash_attn, v in ((False, 3 * 5 * 64), (True, (5 + 0 + 1) * 64)):
        options = LoadOptions(cpu_mode=True, n_ctx=2048, flash_attn=flash_attn)
        with ModelLoader(options).load(model) as loaded:
            actual = sum(loaded.result.evidence.kv_buffers.values())
        assert actual == 2048 * (k + v) * 2, flash_attn  # f16: 5.25 and 3 MiB, exact in llama.cpp's log
        assert fit.estimate(info, 2048, 0, gpu=False, flash_attn=flash_attn).kv_cache == actual
    # --gpu-layers 3 puts the output layer and the last two blocks on the GPU: K of 0 + 1 heads, V of 2 x 5.
    assert fit.estimate(info, 2048, 3).kv_cache == 2048 * (1 * 64 + 2 * 5 * 64) * 2
    assert layout.decode_reads(info, 10) - layout.decode_reads(info, 0) == 10 * (k + k) * 2  # own V, not padding


def test_a_real_mixture_of_experts_is_placed_and_read_as_llama_cpp_runs_it(tiny_model: Path, tmp_path: Path) -> None:
    """The tiny llama rewritten as a Mixtral-style MoE (llama.cpp's llama architecture with experts): each layer's
    FFN stacked into 4 experts and a router, 2 experts per token. Real llama.cpp loads it, and `infer` runs it:
    the fit estimate's weights are the mapped buffer, and the roofline reads half of each layer's experts."""
    import json

    import numpy as np
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    if inprocess_llama_has_gpu():
        pytest.skip(HOST_ONLY)
    router = np.random.default_rng(0).standard_normal((4, 320)).astype(np.float32)

    def experts(name: str, rows: Any) -> Any:
        kind = name.split(".")[2] if name.startswith("blk.") else ""
        if kind not in ("ffn_gate", "ffn_up", "ffn_down"):
            return rows
        stacked = [(name.replace(kind, f"{kind}_exps"), np.stack([rows] * 4))]
        return stacked + [(name.replace(kind, "ffn_gate_inp"), router)] if kind == "ffn_gate" else stacked

    counts = {"llama.expert_count": 4, "llama.expert_used_count": 2}
    model = rewrite_model(tiny_model, tmp_path / "moe.gguf", fields=counts, rows=experts)
    info = read_gguf(model)
    exps = sum(t.nbytes for t in info.tensors if "_exps." in t.name)
    assert layout.routed_experts(info) == (2, 4) and exps == 3 * 4 * (2 * 768 * 340 + 320 * 816)  # 3 layers x 4
    with ModelLoader(LoadOptions(cpu_mode=True, n_ctx=512)).load(model) as loaded:
        mapped = loaded.result.evidence.model_buffers["CPU_Mapped"]
    assert close(fit.estimate(info, 512, 0, gpu=False).weights, mapped, 0.01), (info.tensor_bytes, mapped)

    result = CliRunner().invoke(
        cli, ["--json", "infer", "--device", "cpu", "--model-path", str(model), "--max-tokens", "6", "--repeat", "1"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    header = next(c["summary"] for c in doc["checks"] if c["id"] == "model.gguf")
    assert header == "llama, 11 M params, Q8_0, ctx 4096, 11 MiB, 2 of 4 experts per token (synthetic)"
    per_token = doc["metrics"]["bytes_per_token"]["value"]
    embd = next(t.nbytes for t in info.tensors if t.name == "token_embd.weight")  # untied: one row is read
    weights = info.tensor_bytes - embd - exps / 2
    context = (per_token - weights) / layout.kv_bytes_per_token(info, padded_v=False)  # the rest is KV, per cell
    assert 1 <= context <= 512 and context * 2 == round(context * 2), context  # prompt + half the tokens made


def test_a_real_hybrids_recurrent_layers_get_no_kv_cache(tiny_model: Path, tmp_path: Path) -> None:
    """The tiny llama rewritten as an LFM2 hybrid: layers 0 and 2 short-convolution (recurrent, 0 KV heads, their
    Q, K, V and output weights reused as the convolution's projections), layer 1 attention with 5 KV heads. Real
    llama.cpp loads and runs it: its KV buffer holds the one attention layer, as the estimate says, and `load`
    and `infer` pass on it."""
    import json

    import numpy as np
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    if inprocess_llama_has_gpu():
        pytest.skip(HOST_ONLY)
    kept: dict[str, Any] = {}

    def lfm2(name: str, rows: Any) -> Any:
        if name == "output_norm.weight":
            return [("token_embd_norm.weight", rows)]  # LFM2's name for it
        parts = name.split(".")
        if parts[0] != "blk":
            return rows
        layer, kind = parts[1], parts[2]
        if layer == "1" and kind == "attn_k":
            norms = np.ones(64, dtype=np.float32)
            return [(name, rows), ("blk.1.attn_q_norm.weight", norms), ("blk.1.attn_k_norm.weight", norms)]
        if layer == "1" or kind not in ("attn_q", "attn_k", "attn_v", "attn_output"):
            return rows
        kept[kind] = rows
        if kind == "attn_output":
            return [(f"blk.{layer}.shortconv.out_proj.weight", rows)]
        if kind != "attn_v":
            return None  # Q and K go into the convolution's input projection with V
        qkv = np.concatenate([kept["attn_q"], kept["attn_k"], rows])
        conv = np.full((320, 65), 0.01, dtype=np.float32)
        return [(f"blk.{layer}.shortconv.in_proj.weight", qkv), (f"blk.{layer}.shortconv.conv.weight", conv)]

    fields = {"lfm2.attention.head_count_kv": [0, 5, 0], "lfm2.shortconv.l_cache": 65}  # a state big enough to see
    model = rewrite_model(tiny_model, tmp_path / "lfm2.gguf", arch="lfm2", fields=fields, rows=lfm2)
    info = read_gguf(model)
    assert layout.recurrent_layers(info) == {0, 2}
    with ModelLoader(LoadOptions(cpu_mode=True, n_ctx=2048)).load(model) as loaded:
        evidence = loaded.result.evidence
    actual, state = sum(evidence.kv_buffers.values()), sum(evidence.rs_buffers.values())
    assert actual == 2048 * 5 * 128 * 2  # one layer of 5 heads x (64 + 64) dims, f16: 2.5 MiB
    estimate = fit.estimate(info, 2048, 0, gpu=False)
    assert estimate.kv_cache == actual
    # Each convolution layer keeps its last 64 inputs of 320 floats; llama.cpp logs the RS buffer to 0.01 MiB.
    assert estimate.recurrent_state == 2 * 64 * 320 * 4 and abs(state - estimate.recurrent_state) <= 0.005 * MIB
    result = CliRunner().invoke(
        cli, ["--json", "infer", "--device", "cpu", "--model-path", str(model), "--max-tokens", "6", "--repeat", "1"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["metrics"]["gen_tps"]["value"] > 0
    checks = {c["id"]: c for c in doc["checks"]}
    assert checks["model.fit"]["status"] == "pass"
    header = "lfm2, 4 M params, Q8_0, ctx 4096, 4 MiB, 2 of 3 layers recurrent (synthetic)"
    assert checks["model.gguf"]["summary"] == header


def as_arch(info: GgufInfo, arch: str, **keys: Any) -> GgufInfo:
    """Gemma's header (18 layers, 1 KV head of 256 + 256) as another architecture, with `keys` (`<arch>.` added)."""
    meta = {k.replace("gemma3.", f"{arch}.", 1): v for k, v in info.metadata.items()}
    meta |= {"general.architecture": arch} | {f"{arch}.{k}": v for k, v in keys.items()}
    return dataclasses.replace(info, metadata=meta)


PER_LAYER = 1024  # bytes of f16 K and V per token in one of those layers


def kv(info: GgufInfo, layers: int = 0, flash_attn: bool = True) -> int:
    return fit.estimate(info, 2048, layers, gpu=layers > 0, flash_attn=flash_attn).kv_cache


def test_a_hybrids_recurrent_layers_keep_no_kv_cache(info: GgufInfo) -> None:
    """Hybrids mark their recurrent (SSM, linear-attention) layers as the vendored llama.cpp reads them, and its
    hybrid memory gives those none. Taking layer 0's KV count for all made Granite-4.0-H's Mamba first layer
    (0 heads) fall back to every query head: 4 x 18 heads on this header instead of 6."""
    attends = [1 if i % 3 == 2 else 0 for i in range(18)]
    granite = as_arch(info, "granitehybrid", **{"attention.head_count_kv": attends})
    assert (granite.kv_heads_per_layer, granite.head_count_kv) == (tuple(attends), 1)
    assert layout.recurrent_layers(granite) == {i for i in range(18) if i % 3 != 2}
    assert kv(granite) == kv(granite, flash_attn=False) == 2048 * 6 * PER_LAYER
    assert kv(granite, 7) == 2048 * 2 * PER_LAYER  # the last 6 blocks: layers 14 and 17 attend
    assert layout.decode_reads(granite, 10) == info.tensor_bytes + 10 * 6 * PER_LAYER
    # The same counts in a model that is not a hybrid (DeciLM's no-KV layers) keep a cache: V padded, no K.
    deci = as_arch(info, "deci", **{"attention.head_count_kv": attends})
    assert kv(deci, flash_attn=False) == 2048 * (6 * 256 + 18 * 256) * 2
    # Qwen3-Next and Qwen3.5 attend every full_attention_interval-th layer (4 where the file does not say).
    assert kv(as_arch(info, "qwen35")) == 2048 * 4 * PER_LAYER
    assert kv(as_arch(info, "qwen3next", full_attention_interval=3)) == 2048 * 6 * PER_LAYER
    marks = [i != 0 for i in range(18)]
    assert kv(as_arch(info, "qwen35moe", **{"attention.recurrent_layers": marks})) == 2048 * PER_LAYER
    # Nemotron-H: a layer with neither KV heads nor an FFN is Mamba; one with an FFN only keeps an empty K.
    nemotron = as_arch(
        info,
        "nemotron_h",
        **{"attention.head_count_kv": [1, 0, 0] * 6, "feed_forward_length": [0, 0, 2048] * 6},
    )
    assert layout.recurrent_layers(nemotron) == set(range(1, 18, 3))
    assert kv(nemotron, flash_attn=False) == 2048 * (6 * PER_LAYER + 6 * 512)


def test_recurrent_layers_keep_a_fixed_state_sized_as_llama_cpp_sizes_it(info: GgufInfo) -> None:
    """n_embd_r() + n_embd_s() f32 per recurrent layer. A Qwen3-Next-style gated delta net (a 4-wide convolution
    over 4096 values and 16 groups of 128 keys, a 128 x 4096 state) on 18 layers, 14 of them linear attention;
    Mamba keeps one in every layer; a dense model none."""
    ssm = {"ssm.conv_kernel": 4, "ssm.inner_size": 4096, "ssm.state_size": 128, "ssm.group_count": 16}
    per_layer = (3 * (4096 + 2 * 16 * 128) + 128 * 4096) * 4  # 2.09 MiB
    qwen = as_arch(info, "qwen35", **ssm)
    assert layout.recurrent_state_bytes(qwen) == 14 * per_layer
    assert fit.estimate(qwen, 2048, 5).recurrent_state == 3 * per_layer  # of the last 4 blocks, 14, 16 and 17 recur
    assert layout.recurrent_state_bytes(as_arch(info, "mamba", **ssm)) == 18 * per_layer
    rwkv = as_arch(info, "rwkv7", **{"wkv.head_size": 64})
    assert layout.recurrent_state_bytes(rwkv) == 18 * (2 * 640 + 640 * 64) * 4
    assert layout.recurrent_state_bytes(info) == fit.estimate(info, 2048, -1).recurrent_state == 0
    assert layout.decode_reads(qwen, 10) == info.tensor_bytes + 10 * 4 * PER_LAYER + 14 * per_layer  # state read once


def test_latent_attention_and_shared_caches_are_counted_as_llama_cpp_keeps_them(info: GgufInfo) -> None:
    # MLA (DeepSeek-V3, Kimi-K2, GLM-4.7-Flash): one head of the compressed latent, K only (V is read from it).
    mla = as_arch(info, "deepseek2", **{"attention.key_length_mla": 192, "attention.value_length_mla": 128})
    assert kv(mla) == kv(mla, flash_attn=False) == 2048 * 18 * 512
    # gemma4 keeps a cache in its first block_count - shared_kv_layers layers; gemma3n in its first 20.
    assert kv(as_arch(info, "gemma4", **{"attention.shared_kv_layers": 8})) == 2048 * 10 * PER_LAYER
    # gemma4's sliding-window layers have heads of their own size (here 128 on 5 of each 6 layers, 256 on the
    # rest); without flash attention every V is padded to the widest.
    pattern = [i % 6 != 5 for i in range(18)]
    gemma4 = as_arch(info, "gemma4", **{"attention.sliding_window_pattern": pattern, "attention.key_length_swa": 128})
    assert kv(gemma4) == 2048 * (15 * 128 + 3 * 256) * 2 * 2
    assert kv(gemma4, flash_attn=False) == 2048 * ((15 * 128 + 3 * 256) + 18 * 256) * 2
    assert kv(as_arch(info, "gemma3n")) == 2048 * 18 * PER_LAYER  # 18 layers, all within the first 20


def test_odd_layout_keys_give_an_estimate_not_a_crash(info: GgufInfo) -> None:
    """The layout keys come from the file: values no converter writes still give a bounded, whole answer."""
    odd = [
        as_arch(info, "qwen35", full_attention_interval=0, **{"attention.recurrent_layers": [True]}),  # wrong length
        as_arch(info, "qwen3next", full_attention_interval=-3),
        as_arch(info, "gemma4", **{"attention.shared_kv_layers": 99}),
        as_arch(info, "gemma4", **{"attention.sliding_window_pattern": [1, 0], "attention.key_length_swa": 128}),
        as_arch(info, "nemotron_h", **{"attention.head_count_kv": [0] * 18}),  # no FFN lengths per layer
        as_arch(info, "deepseek2", **{"attention.key_length_mla": 192}),  # half of MLA's pair: not MLA
    ]
    assert [kv(o) // (2048 * PER_LAYER) for o in odd] == [4, 6, 0, 18, 0, 18]
    assert fit.estimate_fit(odd[0], LoadOptions(n_ctx=2048), 1 << 40).status is Status.PASS


# --------------------------------------------------------------------------------------------------------------
# decode_reads: the roofline's bytes per token


def test_a_dense_tied_model_reads_every_weight_and_its_kv_per_token(info: GgufInfo) -> None:
    # Gemma ties its output to token_embd, so the whole table is read as the output matrix; KV is 18 x 1 x 512 x 2.
    assert layout.decode_reads(info, 100.5) == info.tensor_bytes + 100.5 * 18 * 1024
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    output = TensorInfo("output.weight", embd.shape, embd.ggml_type, embd.offset, embd.nbytes)
    untied = dataclasses.replace(info, tensors=(*info.tensors, output))
    assert layout.decode_reads(untied, 0) == info.tensor_bytes  # one row of the input table, the output matrix whole


def test_a_mixture_of_experts_token_reads_only_its_routed_experts(info: GgufInfo) -> None:
    """8 experts, 2 used: a token reads a quarter of each layer's routed-expert tensors (weights and biases), and
    its shared expert and router whole, as llama.cpp's MoE graph does (ggml_mul_mat_id on the chosen rows)."""
    names = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight", "ffn_down_exps.bias")
    experts = tuple(TensorInfo(f"blk.{i}.{n}", (640, 2048, 8), 12, 0, 8 * MIB) for i in range(18) for n in names)
    always = (
        TensorInfo("blk.0.ffn_gate_inp.weight", (640, 8), 0, 0, 20480),
        TensorInfo("blk.0.ffn_up_shexp.weight", (640, 2048), 12, 0, MIB),
    )
    meta = {**info.metadata, "gemma3.expert_count": 8, "gemma3.expert_used_count": 2}
    moe = dataclasses.replace(info, metadata=meta, tensors=(*info.tensors, *experts, *always))
    dense = layout.decode_reads(info, 64)
    assert (layout.routed_experts(moe), layout.routed_experts(info)) == ((2, 8), None)
    assert layout.decode_reads(moe, 64) == dense + 18 * 4 * 8 * MIB / 4 + 20480 + MIB
    # A header that cannot tell the share (no used count, or more used than there are) counts every expert.
    for broken in ({"gemma3.expert_count": 8}, {"gemma3.expert_count": 2, "gemma3.expert_used_count": 8}):
        odd = dataclasses.replace(moe, metadata={**info.metadata, **broken})
        assert layout.routed_experts(odd) is None
        assert layout.decode_reads(odd, 64) == dense + 18 * 4 * 8 * MIB + 20480 + MIB


# --------------------------------------------------------------------------------------------------------------
# estimate_fit: the check and its messages


def test_fit_passes_with_room(info: GgufInfo) -> None:
    check = fit.estimate_fit(info, LoadOptions(n_ctx=2048), 8 * GIB)
    assert check.status == Status.PASS and check.exit_code == ExitCode.OK
    assert check.summary.startswith("needs ~") and check.summary.endswith("of 8,192 MiB free VRAM")
    assert check.evidence["total_bytes"] == fit.estimate(info, 2048, -1).total


def test_fit_fails_saying_by_how_much_and_what_would_fit(info: GgufInfo) -> None:
    budget = 1400 * MIB
    est = fit.estimate(info, 32768, -1)
    check = fit.estimate_fit(info, LoadOptions(n_ctx=32768), budget)
    assert check.status == Status.FAIL and check.exit_code == ExitCode.BELOW_THRESHOLD
    assert f"short by {(est.total - budget) / MIB:,.0f} MiB" in check.summary
    assert "1,400 MiB free VRAM" in check.summary
    fix = check.fix or ""
    assert fix.startswith("Would fit: --n-ctx ") and "--gpu-layers " in fix
    # The suggestions really fit.
    ctx = int(fix.split("--n-ctx ")[1].split(";")[0])
    layers = int(fix.split("--gpu-layers ")[1].split(" ")[0])
    assert fit.estimate(info, ctx, -1).total <= budget < fit.estimate(info, ctx + 256, -1).total
    assert fit.estimate(info, 32768, layers).total <= budget < fit.estimate(info, 32768, layers + 1).total


def test_fit_suggests_a_smaller_quantization_when_weights_are_the_problem(info: GgufInfo) -> None:
    est = fit.estimate(info, 512, -1)
    check = fit.estimate_fit(info, LoadOptions(n_ctx=512), est.total - 10 * MIB)
    assert check.status == Status.FAIL
    assert "short by 10 MiB" in check.summary
    assert "a Q6_K quantization of this model" in (check.fix or "")


def test_absurd_context_on_cpu_fails_in_milliseconds(info: GgufInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit, "host_available", lambda: 24 * GIB)
    start = time.perf_counter()
    check = fit.estimate_fit(info, LoadOptions(n_ctx=1_000_000, cpu_mode=True), None, cpu_mode=True)
    elapsed = time.perf_counter() - start
    assert check.status == Status.FAIL and check.exit_code == ExitCode.BELOW_THRESHOLD
    assert "available host memory: short by" in check.summary
    assert "KV 17,582" in check.summary  # 1,000,192 cells x 18 layers x 1 KiB
    assert (check.fix or "").startswith("Would fit: --n-ctx 32768")  # the model's whole trained context fits
    assert elapsed < 2.0, elapsed  # the point: refused at once, not after llama.cpp spends 20 s (speed is in bench/)


def test_fit_skips_without_a_budget(info: GgufInfo) -> None:
    check = fit.estimate_fit(info, LoadOptions(n_ctx=2048), None)
    assert check.status == Status.SKIP and "free VRAM n/a" in check.summary


# --------------------------------------------------------------------------------------------------------------
# context overflow advice: only a context the model can take


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "n_ctx", "n_ctx_train", "fix"),
    [
        (10, 600, 512, 4096, "Raise --n-ctx to at least 610 or lower --max-tokens."),
        (10, 600, 512, None, "Raise --n-ctx to at least 610 or lower --max-tokens."),  # trained context unknown
        # Seen: "Raise --n-ctx to at least 65424" for a model trained on 4096.
        (
            400,
            65024,
            512,
            4096,
            "Lower --max-tokens to at most 3696 with --n-ctx 4096 (the model's trained context, the most --n-ctx can "
            "be), or to at most 112 at --n-ctx 512.",
        ),
        (
            400,
            65024,
            4096,
            4096,
            "Lower --max-tokens to at most 3696 (--n-ctx 4096 is already the model's trained context).",
        ),
        (
            5000,
            10,
            4096,
            4096,
            "Shorten the prompt: it alone is 5000 tokens and the model's trained context is 4096 (--n-ctx cannot go "
            "past it).",
        ),
    ],
)
def test_context_overflow_advice_stays_within_the_trained_context(
    prompt: int, max_tokens: int, n_ctx: int, n_ctx_train: int | None, fix: str
) -> None:
    assert fit.context_fix(prompt, max_tokens, n_ctx, n_ctx_train) == fix


def test_context_overflow_through_the_cli_never_offers_an_impossible_n_ctx(tiny_model: Path) -> None:
    """The synthetic model is trained on 4096 tokens; asking for 65000 new ones cannot be fixed by --n-ctx."""
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    args = ["infer", "hi", "--device", "cpu", "--model-path", str(tiny_model), "--n-ctx", "4096"]
    result = CliRunner().invoke(cli, [*args, "--max-tokens", "65000", "--no-warmup"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Raise --n-ctx" not in result.stdout + result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    error = next(line for line in lines if "exceeds --n-ctx 4096" in line)
    prompt = int(error.split("prompt (")[1].split(" tokens")[0])
    expected = f"Lower --max-tokens to at most {4096 - prompt} (--n-ctx 4096 is already the model's trained context)."
    assert any(expected in line for line in lines), result.output
