"""Write the CUDA recordings in this folder from llama.cpp's own format strings (not a test; run by hand).

    .venv/bin/python tests/data/llama_logs/synthesize_from_source.py

No GPU was available where these were made, so every line below is one of llama.cpp's printf formats (copied
from the llama.cpp vendored in llama-cpp-python 0.3.36; file:line in the comment above each one), filled in with
the arguments that code would pass for the scenario. The numbers (sizes, free memory, timings) are made up but
consistent: buffer sizes follow from a 24-layer Qwen2.5-0.5B-shaped model, layer placement follows
llama-model.cpp's own arithmetic (i_gpu_start, the free-memory split). Lines are stored as `<level>|<text>`
with ggml's levels (1 debug, 2 info, 3 warn, 4 error); `#` lines are comments.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
DEBUG, INFO, WARN, ERROR = 1, 2, 3, 4


def c(fmt: str, *args: object) -> str:
    """printf with C's length modifiers dropped (%zu, %u, %lld -> %d); the trailing newline is the line end."""
    fmt = re.sub(r"%(-?\d*(?:\.\d+)?)(?:zu|u|ld|lld|zd)", r"%\1d", fmt)
    text = fmt % args
    assert text.endswith("\n"), fmt
    return text[:-1]


# ---- the model: a 24-layer Qwen2.5-0.5B-Instruct-shaped Q4_K_M --------------------------------------------------
PATH = "/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"
N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_VOCAB = 24, 896, 14, 2, 64, 151936
N_CTX, N_UBATCH = 4096, 512
EMBD = N_VOCAB * N_EMBD * 34 // 32  # token_embd.weight, Q8_0: stays in host memory (CPU_Mapped)
OUTPUT = EMBD + N_EMBD * 4  # tied output (token_embd duplicated onto the output device) + output_norm
LAYER = 9_520_128  # one repeating block's weights
KV_LAYER = N_CTX * N_HEAD_KV * HEAD_DIM * 2 * 2  # f16 K + V for one layer: 2 MiB at 4096 cells
COMPUTE_GPU = N_VOCAB * N_UBATCH * 4 + 2 * N_EMBD * N_UBATCH * 4  # logits of one ubatch + activations
COMPUTE_HOST = N_EMBD * N_UBATCH * 4 + N_CTX * N_UBATCH * 4  # input embeddings + KQ mask
OUTPUT_BUF = N_VOCAB * 4  # llama_context's logits output buffer for one sequence


def header(title: str) -> list[str]:
    return [
        "# SYNTHESIZED FROM SOURCE, not captured: no GPU was available. Each line is a llama.cpp format string",
        f"# (llama-cpp-python 0.3.36's vendored llama.cpp; see README.md) filled in for: {title}",
    ]


def cuda_init(devices: list[tuple[str, int, str]]) -> list[tuple[int, str]]:
    total = sum(d[1] for d in devices)
    out = [
        # ggml/src/ggml-cuda/ggml-cuda.cu:267 (GGML_CUDA_NAME = "CUDA")
        (INFO, c("%s: found %d CUDA devices (Total VRAM: %zu MiB):\n", "ggml_cuda_init", len(devices), total))
    ]
    for i, (name, vram, cc) in enumerate(devices):
        # ggml/src/ggml-cuda/ggml-cuda.cu:345
        fmt = "  Device %d: %s, compute capability %d.%d, VMM: %s, VRAM: %zu MiB\n"
        out.append((INFO, c(fmt, i, name, int(cc[0]), int(cc[2]), "yes", vram)))
    return out


def model_header(path: str = PATH, n_tensors: int = 290, size_mib: float = 379.38) -> list[tuple[int, str]]:
    # src/llama-model-loader.cpp:1806-1809: MiB below 1 GiB, else GiB
    size_fmt = "%s: file size   = %.2f GiB (%.2f BPW) \n"
    if size_mib < 1024:
        size_fmt = "%s: file size   = %.2f MiB (%.2f BPW) \n"
    size = size_mib if size_mib < 1024 else size_mib / 1024
    return [
        # src/llama-model-loader.cpp:722
        (
            INFO,
            c(
                "%s: loaded meta data with %d key-value pairs and %d tensors from %s (version %s)\n",
                "llama_model_loader",
                34,
                n_tensors,
                path,
                "GGUF V3 (latest)",
            ),
        ),
        # src/llama-model-loader.cpp:1804-1805
        (INFO, c("%s: file format = %s\n", "print_info", "GGUF V3 (latest)")),
        (INFO, c("%s: file type   = %s\n", "print_info", "Q4_K - Medium")),
        (INFO, c(size_fmt, "print_info", size, 6.38 if size_mib < 1024 else 4.82)),
    ]


def using_devices(devices: list[tuple[str, str, str, int]]) -> list[tuple[int, str]]:
    # src/llama.cpp:306 (in llama_prepare_model_devices)
    fmt = "%s: using device %s (%s) (%s) - %zu MiB free\n"
    return [(INFO, c(fmt, "llama_prepare_model_devices", *dev)) for dev in devices]


QWEN = {"arch": "qwen2", "n_embd": N_EMBD, "n_layer": N_LAYER, "n_head": N_HEAD, "n_head_kv": N_HEAD_KV}
QWEN["n_vocab"] = N_VOCAB
LLAMA70B = {"arch": "llama", "n_embd": 8192, "n_layer": 80, "n_head": 64, "n_head_kv": 8, "n_vocab": 128256}


def print_info(m: dict[str, object] = QWEN) -> list[tuple[int, str]]:
    return [
        # src/llama-model.cpp:2067, 2074, 2076, 2078, 2079
        (INFO, c("%s: arch                  = %s\n", "print_info", m["arch"])),
        (INFO, c("%s: n_embd                = %u\n", "print_info", m["n_embd"])),
        (INFO, c("%s: n_layer               = %u\n", "print_info", m["n_layer"])),
        (INFO, c("%s: n_head                = %s\n", "print_info", str(m["n_head"]))),
        (INFO, c("%s: n_head_kv             = %s\n", "print_info", str(m["n_head_kv"]))),
        # src/llama-vocab.cpp:3903
        (INFO, c("%s: n_vocab               = %u\n", "print_info", m["n_vocab"])),
        # src/llama-model.cpp:1539
        (INFO, c("%s: loading model tensors, this can take a while... (load_mode = %s)\n", "load_tensors", "mmap")),
    ]


def layer_assignment(n_layer: int, n_gpu_layers: int, free: list[int], names: list[str]) -> dict[int, str]:
    """src/llama-model.cpp:1560-1600: i_gpu_start, and the split of GPU layers by free memory (upper_bound)."""
    splits, acc = [], 0.0
    for f in free:
        acc += f
        splits.append(acc)
    splits = [s / acc for s in splits]
    i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)
    act_gpu_layers = min(n_gpu_layers, n_layer + 1)
    where = {}
    for il in range(n_layer + 1):  # n_layer is the output layer
        if il < i_gpu_start or (il - i_gpu_start) >= act_gpu_layers:
            where[il] = "CPU"
        else:
            where[il] = names[bisect.bisect_right(splits, (il - i_gpu_start) / act_gpu_layers)]
    return where


def assignment_lines(where: dict[int, str]) -> list[tuple[int, str]]:
    # src/llama-model.cpp:1594 (CPU) and 1599 (GPU); qwen2 has no sliding-window layers: is_swa = 0
    fmt = "load_tensors: layer %3d assigned to device %s, is_swa = %d\n"
    return [(DEBUG, c(fmt, il, dev, 0)) for il, dev in sorted(where.items())]


def embd_on_host(qtype: str = "q8_0") -> tuple[int, str]:
    # src/llama-model-loader.cpp:1404
    fmt = "%s: tensor '%s' (%s) (and %zu others) cannot be used with preferred buffer type %s, using %s instead\n"
    return (DEBUG, c(fmt, "done_getting_tensors", "token_embd.weight", qtype, 0, "CUDA_Host", "CPU"))


def offload_lines(n_gpu_layers: int, n_layer: int = N_LAYER) -> list[tuple[int, str]]:
    """src/llama-model.cpp:1911-1925, verbatim logic: note it counts the output layer out of min(ngl, n_layer)."""
    out = []
    n_gpu = min(n_gpu_layers, n_layer)
    n_repeating = n_gpu
    if n_repeating > 0:
        out.append((INFO, c("%s: offloading output layer to GPU\n", "load_tensors")))  # :1916
        n_repeating -= 1
    out.append((INFO, c("%s: offloading %d repeating layers to GPU\n", "load_tensors", n_repeating)))  # :1919
    out.append(  # :1924
        (INFO, c("%s: offloaded %d/%d layers to GPU\n", "load_tensors", min(n_gpu_layers, n_layer + 1), n_layer + 1))
    )
    return out


def model_buffers(bufs: list[tuple[str, int]]) -> list[tuple[int, str]]:
    # src/llama-model.cpp:1930
    return [(INFO, c("%s: %12s model buffer size = %8.2f MiB\n", "load_tensors", n, b / MIB)) for n, b in bufs]


def progress() -> tuple[int, str]:
    # src/llama.cpp:420-422: LLAMA_LOG_CONT(".") per progress step, then "\n"; LlamaLogCapture files them as one
    # info line (see cpu_gemma3_270m_ngl-1.log)
    return (INFO, "." * 57)


def context(kv: list[tuple[str, int, int]], compute: list[tuple[str, int]], splits: int, pipeline: bool = False):
    out = [
        (INFO, c("%s: constructing llama_context\n", "llama_context")),  # src/llama-context.cpp:93
        (INFO, c("%s: n_ctx                 = %u\n", "llama_context", N_CTX)),  # :309
        (INFO, c("%s: n_batch               = %u\n", "llama_context", 2048)),  # :311
        (INFO, c("%s: n_ubatch              = %u\n", "llama_context", N_UBATCH)),  # :312
        (INFO, c("%s: flash_attn            = %s\n", "llama_context", "disabled")),  # :314
    ]
    if pipeline:
        out.append((INFO, c("%s: pipeline parallelism enabled\n", "llama_context")))  # :460
    # src/llama-context.cpp:381
    out.append((INFO, c("%s: %10s  output buffer size = %8.2f MiB\n", "llama_context", "CUDA_Host", OUTPUT_BUF / MIB)))
    for name, _layers, size in kv:
        out.append((INFO, c("%s: %10s KV buffer size = %8.2f MiB\n", "llama_kv_cache", name, size / MIB)))  # kv:291
    total_layers = sum(n for _, n, _ in kv)
    total = sum(s for _, _, s in kv)
    # src/llama-kv-cache.cpp:301
    fmt = "%s: size = %7.2f MiB (%6u cells, %3d layers, %2u/%u seqs), K (%s): %7.2f MiB, V (%s): %7.2f MiB\n"
    kv_args = (total / MIB, N_CTX, total_layers, 1, 1, "f16", total / 2 / MIB, "f16", total / 2 / MIB)
    out.append((INFO, c(fmt, "llama_kv_cache", *kv_args)))
    out.append((INFO, c("%s: reserving ...\n", "sched_reserve")))  # src/llama-context.cpp:622
    for name, size in compute:  # src/llama-context.cpp:740
        out.append((INFO, c("%s: %10s compute buffer size = %8.2f MiB\n", "sched_reserve", name, size / MIB)))
    # src/llama-context.cpp:754 (pp and tg graphs alike: no "(pp bs=..)" part)
    fmt = "%s: graph%s: nodes = %s, splits = %s, input objects = %s, input tensors = %s\n"
    out.append((INFO, c(fmt, "sched_reserve", "", "847", str(splits), "4", "9")))
    copies = 4 if pipeline else 1
    out.append((INFO, c("%s: reserve took %.2f ms, sched copies = %d\n", "sched_reserve", 41.37, copies)))  # :765
    return out


RTX4090 = ("CUDA0", "NVIDIA GeForce RTX 4090", "0000:01:00.0", 23582)
RTX3090 = ("CUDA1", "NVIDIA GeForce RTX 3090", "0000:02:00.0", 23870)


def full_offload() -> list:
    where = layer_assignment(N_LAYER, N_LAYER + 1, [RTX4090[3]], ["CUDA0"])
    return (
        cuda_init([(RTX4090[1], 24080, "8.9")])
        + model_header()
        + using_devices([RTX4090])
        + print_info()
        + assignment_lines(where)
        + [embd_on_host()]
        + offload_lines(0x7FFFFFFF)  # llama-cpp-python passes n_gpu_layers=-1 as 0x7FFFFFFF
        + model_buffers([("CUDA0", N_LAYER * LAYER + OUTPUT), ("CPU_Mapped", EMBD)])
        + [progress()]
        + context([("CUDA0", N_LAYER, N_LAYER * KV_LAYER)], [("CUDA0", COMPUTE_GPU), ("CUDA_Host", COMPUTE_HOST)], 2)
    )


def partial_offload(ngl: int = 10) -> list:
    where = layer_assignment(N_LAYER, ngl, [RTX4090[3]], ["CUDA0"])
    gpu_blocks = sum(1 for il, d in where.items() if d == "CUDA0" and il < N_LAYER)
    cpu_blocks = N_LAYER - gpu_blocks
    return (
        cuda_init([(RTX4090[1], 24080, "8.9")])
        + model_header()
        + using_devices([RTX4090])
        + print_info()
        + assignment_lines(where)
        + [embd_on_host()]
        + offload_lines(ngl)
        + model_buffers([("CUDA0", gpu_blocks * LAYER + OUTPUT), ("CPU_Mapped", cpu_blocks * LAYER + EMBD)])
        + [progress()]
        + context(
            [("CPU", cpu_blocks, cpu_blocks * KV_LAYER), ("CUDA0", gpu_blocks, gpu_blocks * KV_LAYER)],
            [("CUDA0", COMPUTE_GPU), ("CUDA_Host", COMPUTE_HOST)],
            4,
        )
    )


def two_gpus() -> list:
    where = layer_assignment(N_LAYER, N_LAYER + 1, [RTX4090[3], RTX3090[3]], ["CUDA0", "CUDA1"])
    on0 = sum(1 for il, d in where.items() if d == "CUDA0" and il < N_LAYER)
    on1 = N_LAYER - on0
    return (
        cuda_init([(RTX4090[1], 24080, "8.9"), (RTX3090[1], 24135, "8.6")])
        + model_header()
        + using_devices([RTX4090, RTX3090])
        + print_info()
        + assignment_lines(where)
        + [embd_on_host()]
        + offload_lines(0x7FFFFFFF)
        + model_buffers([("CUDA0", on0 * LAYER), ("CUDA1", on1 * LAYER + OUTPUT), ("CPU_Mapped", EMBD)])
        + [progress()]
        + context(
            [("CUDA0", on0, on0 * KV_LAYER), ("CUDA1", on1, on1 * KV_LAYER)],
            [("CUDA0", 4 * 2 * N_EMBD * N_UBATCH * 4), ("CUDA1", COMPUTE_GPU), ("CUDA_Host", 4 * COMPUTE_HOST)],
            3,
            pipeline=True,
        )
    )


# An 80-layer 70B Q4_K_M on a 24 GB card: the weights alone do not fit, so the CUDA0 weight buffer fails.
BIG_PATH = "/models/Llama-3.3-70B-Instruct-Q4_K_M.gguf"
BIG_LAYERS = 80
BIG_CUDA0 = 41_428_779_008  # 80 blocks + output.weight (Q6_K) + output_norm


def oom() -> list:
    where = layer_assignment(BIG_LAYERS, BIG_LAYERS + 1, [RTX4090[3]], ["CUDA0"])
    return (
        cuda_init([(RTX4090[1], 24080, "8.9")])
        + model_header(BIG_PATH, 724, 40_543.11)
        + using_devices([RTX4090])
        + print_info(LLAMA70B)
        + assignment_lines(where)
        + [embd_on_host("q4_K")]
        + [
            # ggml/src/ggml-cuda/ggml-cuda.cu:888 (cudaGetErrorString(cudaErrorMemoryAllocation) = "out of memory")
            (
                ERROR,
                c(
                    "%s: allocating %.2f MiB on device %d: cudaMalloc failed: %s\n",
                    "ggml_backend_cuda_buffer_type_alloc_buffer",
                    BIG_CUDA0 / MIB,
                    0,
                    "out of memory",
                ),
            ),
            # ggml/src/ggml-alloc.c:1134
            (ERROR, c("%s: failed to allocate %s buffer of size %zu\n", "alloc_tensor_range", "CUDA0", BIG_CUDA0)),
            # src/llama.cpp:375 with the exception from src/llama-model.cpp:1886 ("unable to allocate %s buffer")
            (ERROR, c("%s: error loading model: %s\n", "llama_model_load", "unable to allocate CUDA0 buffer")),
            # src/llama.cpp:433
            (ERROR, c("%s: failed to load model\n", "llama_model_load_from_file_impl")),
        ]
    )


SCENARIOS = {
    "cuda_rtx4090_full_offload": ("full offload of a 24-layer model on one RTX 4090, n_gpu_layers=-1", full_offload),
    "cuda_rtx4090_partial_ngl10": ("partial offload, n_gpu_layers=10: 15 blocks on CPU", partial_offload),
    "cuda_two_gpus_split": ("n_gpu_layers=-1 split by free memory over CUDA0 (RTX 4090) + CUDA1 (RTX 3090)", two_gpus),
    "cuda_rtx4090_oom": ("an 80-layer 70B Q4_K_M that cannot fit: cudaMalloc out of memory, load fails", oom),
}


def main() -> None:
    for stem, (title, build) in SCENARIOS.items():
        lines = header(title) + [f"{level}|{text}" for level, text in build()]
        (HERE / f"{stem}.from_source.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(stem, len(lines))


if __name__ == "__main__":
    main()
