"""llama.cpp's load log as evidence: parsing recorded logs, capturing callback chunks, and the offload verdict.

The CPU logs were captured from this project's CPU-only llama-cpp-python build loading Gemma-3-270M; the `cuda_h100_*`
ones were captured from a CUDA build on an NVIDIA H100 80GB HBM3 (Gemma-3-270M at --gpu-layers -1/4/0, and the tool's
synthetic 64 MiB model); the `*.from_source.log` ones (two GPUs, OOM, an RTX 4090) are synthesized from llama.cpp's
format strings (see tests/data/llama_logs/README.md). All tests here are pure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kcuda_validate.checks import Status
from kcuda_validate.errors import ExitCode
from kcuda_validate.llm.build import setup_fix
from kcuda_validate.llm.llamalog import (
    LlamaLogCapture,
    LoadEvidence,
    LogLine,
    device_family,
    load_failure_reason,
    parse_load_log,
)
from kcuda_validate.llm.loader import LoadOptions, ModelLoader, judge_offload

DATA = Path(__file__).resolve().parent.parent / "data" / "llama_logs"
MIB = 1024 * 1024
CPU_LOG = "cpu_gemma3_270m_ngl-1.log"
CPU_LOG_NGL0 = "cpu_gemma3_270m_ngl0.log"
FULL = "cuda_rtx4090_full_offload.from_source.log"
PARTIAL = "cuda_rtx4090_partial_ngl10.from_source.log"
TWO_GPUS = "cuda_two_gpus_split.from_source.log"
OOM = "cuda_rtx4090_oom.from_source.log"
RTX4090 = "NVIDIA GeForce RTX 4090"
# Real captures on an H100 (CUDA build, n_ctx 512); the verdicts quoted in the tests are what the tool printed there.
H100_LOG = "cuda_h100_gemma3_270m_ngl-1.log"
H100_LOG_NGL4 = "cuda_h100_gemma3_270m_ngl4.log"
H100_LOG_NGL0 = "cuda_h100_gemma3_270m_ngl0.log"
H100_SYNTH = "cuda_h100_synthetic_64mib_ngl-1.log"
H100 = "NVIDIA H100 80GB HBM3"


def read_log(name: str) -> list[LogLine]:
    """A recording: `<level>|<text>` per line, `#` lines are comments."""
    lines = []
    for raw in (DATA / name).read_text(encoding="utf-8").splitlines():
        if raw.startswith("#"):
            continue
        level, sep, text = raw.partition("|")
        assert sep, f"{name}: malformed line {raw!r}"
        lines.append(LogLine(int(level), text))
    return lines


def evidence(name: str) -> LoadEvidence:
    return parse_load_log(read_log(name))


def mib(x: float) -> int:
    return round(x * MIB)


# --------------------------------------------------------------------------------------------------------------
# parse_load_log on each recording


def test_real_cpu_build_log_has_buffers_but_no_offload() -> None:
    ev = evidence(CPU_LOG)
    assert ev.devices == ()  # a CPU-only build lists no GPU device
    assert ev.offloaded is None and ev.offloadable is None  # ... and never prints "offloaded N/M layers to GPU"
    assert ev.layer_devices == {i: "CPU" for i in range(19)}  # 18 blocks + the output layer
    assert ev.layers_on("CPU") == 19
    assert ev.model_buffers == {"CPU_Mapped": mib(235.16), "CPU_REPACK": mib(12.66)}
    assert ev.kv_buffers == {"CPU": mib(1.50) + mib(7.50)}  # non-SWA (3 layers) + SWA (15 layers) caches
    assert ev.compute_buffers == {"CPU": mib(515.75)}
    assert ev.output_buffers == {"CPU": mib(1.00)}
    assert ev.gpu_families == ()
    assert ev.bytes_on("CUDA0") == 0
    assert ev.bytes_on("CPU") == mib(235.16) + mib(12.66) + mib(9.0) + mib(515.75) + mib(1.0)
    assert ev.errors == ()
    assert any("using full-size SWA cache" in w for w in ev.warnings)


def test_cpu_only_build_ignores_gpu_layers() -> None:
    """--gpu-layers -1 and 0 produce the same evidence on a CPU-only build: the request is silently dropped."""
    assert evidence(CPU_LOG).to_json() == evidence(CPU_LOG_NGL0).to_json()


@pytest.mark.parametrize(
    ("name", "device", "layers", "model", "kv", "compute", "output"),
    [
        pytest.param(
            FULL,
            {"name": "CUDA0", "description": RTX4090, "id": "0000:01:00.0", "free_mib": 23582},
            25,
            {"CUDA0": 355.84, "CPU_Mapped": 137.94},
            {"CUDA0": 48.0},
            {"CUDA0": 300.25, "CUDA_Host": 9.75},
            {"CUDA_Host": 0.58},
            id="rtx4090-from-source",
        ),
        pytest.param(
            H100_LOG,
            {"name": "CUDA0", "description": H100, "id": "0000:00:06.0", "free_mib": 80552},
            19,  # 18 blocks + the output layer
            {"CPU_Mapped": 170.00, "CUDA0": 235.20},
            {"CUDA0": 1.50 + 7.50},  # non-SWA (3 layers) + SWA (15 layers) caches, both on CUDA0
            # ~llama_context's "CUDA0 compute buffer size is 513.2500 MiB, matches expectation" is not counted again
            {"CUDA0": 513.25, "CUDA_Host": 6.51},
            {"CUDA_Host": 1.00},
            id="h100-gemma3-real",
        ),
        pytest.param(
            H100_SYNTH,
            {"name": "CUDA0", "description": H100, "id": "0000:00:06.0", "free_mib": 80552},
            8,  # 7 blocks + the output layer
            {"CPU_Mapped": 10.01, "CUDA0": 54.00},
            {"CUDA0": 2.62},
            {"CUDA0": 26.62, "CUDA_Host": 4.76},
            {"CUDA_Host": 0.05},
            id="h100-synthetic-real",
        ),
    ],
)
def test_full_cuda_offload(
    name: str,
    device: dict[str, object],
    layers: int,
    model: dict[str, float],
    kv: dict[str, float],
    compute: dict[str, float],
    output: dict[str, float],
) -> None:
    ev = evidence(name)
    assert ev.devices == (device,)
    assert (ev.offloaded, ev.offloadable) == (layers, layers)
    assert ev.layer_devices == {i: "CUDA0" for i in range(layers)}
    assert ev.model_buffers == {k: mib(v) for k, v in model.items()}
    assert ev.kv_buffers == {k: mib(v) for k, v in kv.items()}
    assert ev.compute_buffers == {k: mib(v) for k, v in compute.items()}
    assert ev.output_buffers == {k: mib(v) for k, v in output.items()}
    assert ev.gpu_families == ("CUDA0",)
    assert ev.bytes_on("CUDA0") == mib(model["CUDA0"]) + mib(kv["CUDA0"]) + mib(compute["CUDA0"])
    # Token embeddings (CPU_Mapped) and the pinned CUDA_Host buffers are host memory.
    assert ev.bytes_on("CPU") == mib(model["CPU_Mapped"]) + mib(compute["CUDA_Host"]) + mib(output["CUDA_Host"])
    assert ev.errors == ()


@pytest.mark.parametrize(
    ("name", "free_mib", "first_load"),
    [(H100_LOG, 80552, True), (H100_LOG_NGL4, 80550, False), (H100_LOG_NGL0, 80550, False), (H100_SYNTH, 80552, True)],
    ids=["gemma3-ngl-1", "gemma3-ngl4", "gemma3-ngl0", "synthetic-ngl-1"],
)
def test_real_h100_logs_name_the_backend_device(name: str, free_mib: int, first_load: bool) -> None:
    lines = read_log(name)
    ev = parse_load_log(lines)
    assert ev.devices == ({"name": "CUDA0", "description": H100, "id": "0000:00:06.0", "free_mib": free_mib},)
    assert ev.gpu_families == ("CUDA0",)
    assert ev.errors == ()
    # ggml initialises the CUDA backend once per process: only the first load of the capture run lists the devices;
    # later loads name the GPU by the `using device` line alone.
    texts = [ln.text for ln in lines]
    init = [
        "ggml_cuda_init: found 1 CUDA devices (Total VRAM: 81079 MiB):",
        f"  Device 0: {H100}, compute capability 9.0, VMM: yes, VRAM: 81079 MiB",
    ]
    assert (texts[:2] == init) is first_load
    assert f"llama_prepare_model_devices: using device CUDA0 ({H100}) (0000:00:06.0) - {free_mib} MiB free" in texts


@pytest.mark.parametrize(
    ("name", "on_gpu", "total", "model", "kv", "vram"),
    [
        pytest.param(
            PARTIAL,
            10,
            25,
            {"CUDA0": 219.66, "CPU_Mapped": 274.13},
            {"CPU": 30.0, "CUDA0": 18.0},
            mib(219.66) + mib(18.0) + mib(300.25),
            id="rtx4090-ngl10-from-source",
        ),
        pytest.param(
            H100_LOG_NGL4,
            4,  # 3 blocks + the output layer
            19,
            {"CPU_Mapped": 223.73, "CUDA0": 181.44},
            {"CPU": 1.00 + 6.50, "CUDA0": 0.50 + 1.00},  # non-SWA + SWA caches, each split CPU/CUDA0
            mib(181.44) + mib(0.50) + mib(1.00) + mib(513.25),
            id="h100-gemma3-ngl4-real",
        ),
    ],
)
def test_partial_offload_splits_layers_between_cpu_and_cuda0(
    name: str, on_gpu: int, total: int, model: dict[str, float], kv: dict[str, float], vram: int
) -> None:
    ev = evidence(name)
    on_cpu = total - on_gpu
    assert (ev.offloaded, ev.offloadable) == (on_gpu, total)
    # llama.cpp offloads the last layers: the first ones (from layer 0) stay on the CPU
    assert ev.layer_devices == {i: ("CPU" if i < on_cpu else "CUDA0") for i in range(total)}
    assert (ev.layers_on("CPU"), ev.layers_on("CUDA0")) == (on_cpu, on_gpu)
    assert ev.model_buffers == {k: mib(v) for k, v in model.items()}
    assert ev.kv_buffers == {k: mib(v) for k, v in kv.items()}
    assert ev.gpu_families == ("CUDA0",)
    assert ev.bytes_on("CUDA0") == vram


def test_real_cuda_build_honours_gpu_layers_0_but_still_reserves_a_gpu_compute_buffer() -> None:
    """Unlike the CPU-only build, the CUDA build obeys --gpu-layers 0; the weights stay in host memory, yet the
    scheduler still reserves a CUDA0 compute buffer (bigger than at full offload) for offloading batch ops."""
    ev = evidence(H100_LOG_NGL0)
    assert (ev.offloaded, ev.offloadable) == (0, 19)
    assert ev.layer_devices == {i: "CPU" for i in range(19)}
    assert ev.model_buffers == {"CPU_Mapped": mib(235.16)}  # no CPU_REPACK buffer in the CUDA build
    assert ev.kv_buffers == {"CPU": mib(1.50) + mib(7.50)}
    assert ev.output_buffers == {"CPU": mib(1.00)}
    assert ev.compute_buffers == {"CUDA0": mib(685.53), "CUDA_Host": mib(6.51)}
    assert ev.bytes_on("CUDA0") == mib(685.53)
    assert ev.to_json() != evidence(H100_LOG).to_json()


def test_two_gpu_split() -> None:
    ev = evidence(TWO_GPUS)
    assert [(d["name"], d["description"]) for d in ev.devices] == [
        ("CUDA0", RTX4090),
        ("CUDA1", "NVIDIA GeForce RTX 3090"),
    ]
    assert (ev.offloaded, ev.offloadable) == (25, 25)
    assert (ev.layers_on("CUDA0"), ev.layers_on("CUDA1"), ev.layers_on("CPU")) == (13, 12, 0)
    assert ev.layer_devices[12] == "CUDA0" and ev.layer_devices[13] == "CUDA1"
    assert ev.gpu_families == ("CUDA0", "CUDA1")
    assert ev.bytes_on("CUDA0") == mib(118.03) + mib(26.0) + mib(14.0)
    assert ev.bytes_on("CUDA1") == mib(237.82) + mib(22.0) + mib(300.25)


def test_oom_load() -> None:
    lines = read_log(OOM)
    ev = parse_load_log(lines)
    assert ev.offloaded is None  # the load died before the offload summary
    assert ev.model_buffers == {}
    assert ev.layers_on("CUDA0") == 81
    assert len(ev.errors) == 4
    assert load_failure_reason(lines) == (
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 39509.56 MiB on device 0: "
        "cudaMalloc failed: out of memory"
    )


def test_load_failure_reason_prefers_allocation_lines_and_handles_no_errors() -> None:
    lines = [
        LogLine(4, "llama_model_load: error loading model: unable to allocate CUDA0 buffer"),
        LogLine(4, "alloc_tensor_range: failed to allocate CUDA0 buffer of size 41428779008"),
    ]
    assert load_failure_reason(lines) == "alloc_tensor_range: failed to allocate CUDA0 buffer of size 41428779008"
    assert load_failure_reason(read_log(CPU_LOG)) is None  # warnings are not errors
    # llama.cpp's own message for a tensor of the wrong shape, as it printed it for a truncated attn_q
    shape = (
        "llama_model_load: error loading model: check_tensor_dims: tensor 'blk.0.attn_q.weight' has wrong shape;"
        " expected   768,   768, got   768,   767,     1,     1"
    )
    assert load_failure_reason([LogLine(4, shape)]) == (
        "llama_model_load: error loading model: check_tensor_dims: tensor 'blk.0.attn_q.weight' has wrong shape;"
        " expected 768, 768, got 768, 767, 1, 1"
    )


def test_oom_reason_becomes_a_below_threshold_load_error() -> None:
    reason = load_failure_reason(read_log(OOM))
    err = ModelLoader(LoadOptions())._load_error(Path("big.gguf"), reason or "")
    assert "ran out of memory" in str(err) and "cudaMalloc failed: out of memory" in str(err)
    assert err.exit_code == ExitCode.BELOW_THRESHOLD
    assert "--n-ctx" in (err.fix or "") and "--gpu-layers" in (err.fix or "")


def test_parser_tolerates_comments_and_raw_recording_text() -> None:
    """The recordings' `#` header and `<level>|` prefixes do not confuse the text parser."""
    ev = parse_load_log((DATA / FULL).read_text(encoding="utf-8"))
    assert (ev.offloaded, ev.offloadable) == (25, 25)
    assert ev.model_buffers == {"CUDA0": mib(355.84), "CPU_Mapped": mib(137.94)}


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("CUDA0", "CUDA0"),
        ("CUDA1", "CUDA1"),
        ("CUDA0_Split", "CUDA0"),
        ("CUDA_Host", "CPU"),
        ("CUDA0_Host", "CPU"),
        ("CPU_Mapped", "CPU"),
        ("CPU_REPACK", "CPU"),
        ("CPU", "CPU"),
    ],
)
def test_device_family(name: str, family: str) -> None:
    assert device_family(name) == family


# --------------------------------------------------------------------------------------------------------------
# LlamaLogCapture.feed: callback chunks -> lines


def fed(chunks: list[tuple[int, str]]) -> list[tuple[int, str]]:
    cap = LlamaLogCapture()
    for level, text in chunks:
        cap.feed(level, text)
    cap.flush()
    return [(ln.level, ln.text) for ln in cap.lines]


@pytest.mark.parametrize(
    ("log_name", "n_dots"),
    [(CPU_LOG, 29), (H100_LOG, 19), (H100_SYNTH, 39)],
    ids=["cpu-gemma3", "h100-gemma3", "h100-synthetic"],
)
def test_replaying_the_real_chunks_gives_the_recorded_lines(log_name: str, n_dots: int) -> None:
    chunks_file = DATA / log_name.replace(".log", ".chunks.jsonl")
    chunks = [tuple(json.loads(x)) for x in chunks_file.read_text(encoding="utf-8").splitlines()]
    # the progress dots arrive as continuation chunks, one "." each and a final "\n"
    assert [t for level, t in chunks if level == 5] == ["."] * n_dots + ["\n"]
    lines = fed(chunks)
    assert lines == [(ln.level, ln.text) for ln in read_log(log_name)]
    texts = [t for _, t in lines]
    # The dots end as a line of their own and never prefix the next message.
    dots = [t for t in texts if t.startswith(".")]
    assert dots == ["." * n_dots]
    assert (2, dots[0]) in lines
    assert "llama_context: constructing llama_context" in texts
    assert all(t.startswith("repack: ") for t in texts if "repack tensor" in t)


def test_continuation_joins_the_open_line() -> None:
    assert fed([(2, "abc"), (5, "def"), (5, "\n")]) == [(2, "abcdef")]
    assert fed([(5, "."), (5, "\n")]) == [(2, ".")]  # a continuation with nothing before: info level


def test_partial_lines_and_several_lines_per_chunk() -> None:
    assert fed([(2, "hello "), (2, "world\n"), (2, "a\nb\nc")]) == [(2, "hello world"), (2, "a"), (2, "b"), (2, "c")]
    # llama-graph.cpp prints debug rows in pieces at the same level
    assert fed([(1, "    "), (1, " 0"), (1, " ∞"), (1, "\n")]) == [(1, "     0 ∞")]


def test_progress_dots_interleaved_with_debug_lines_do_not_corrupt_the_next_line() -> None:
    chunks = [
        (2, "load_tensors:   CPU_REPACK model buffer size =    12.66 MiB\n"),
        (5, "."),
        (5, "."),
        (1, "repack: repack tensor blk.0.attn_output.weight with q4_K_8x8\n"),
        (5, "."),
        (1, "repack: repack tensor blk.2.ffn_down.weight with q4_K_8x8\n"),
        (5, "."),
        (5, "\n"),
        (2, "llama_context: constructing llama_context\n"),
    ]
    assert fed(chunks) == [
        (2, "load_tensors:   CPU_REPACK model buffer size =    12.66 MiB"),
        (1, "repack: repack tensor blk.0.attn_output.weight with q4_K_8x8"),
        (1, "repack: repack tensor blk.2.ffn_down.weight with q4_K_8x8"),
        (2, "...."),
        (2, "llama_context: constructing llama_context"),
    ]


def test_an_interrupted_line_that_never_resumes_is_kept() -> None:
    assert fed([(2, "partial"), (3, "a warning\n"), (2, "next\n")]) == [
        (3, "a warning"),
        (2, "partial"),
        (2, "next"),
    ]


def test_tail_mark_and_since() -> None:
    cap = LlamaLogCapture(tail=2)
    cap.feed(1, "debug\n")
    cap.feed(2, "one\n")
    mark = cap.mark()
    cap.feed(3, "two\n")
    cap.feed(4, "three")
    assert [ln.text for ln in cap.since(mark)] == ["two", "three"]  # since() flushes the open line
    assert list(cap.tail) == ["two", "three"]  # debug lines never enter the crash tail
    assert cap.text(min_level=3) == "two\nthree"


# --------------------------------------------------------------------------------------------------------------
# judge_offload: evidence -> verdict


@pytest.mark.parametrize(
    ("name", "n_layer", "gpu_name", "line"),
    [
        (FULL, 24, RTX4090, "25/25 layers on CUDA0 (NVIDIA GeForce RTX 4090), 704 MiB VRAM"),
        # the verdicts the tool printed on the H100
        (H100_LOG, 18, H100, "19/19 layers on CUDA0 (NVIDIA H100 80GB HBM3), 757 MiB VRAM"),
        (H100_SYNTH, 7, H100, "8/8 layers on CUDA0 (NVIDIA H100 80GB HBM3), 83 MiB VRAM"),
    ],
    ids=["rtx4090-from-source", "h100-gemma3-real", "h100-synthetic-real"],
)
def test_full_offload_passes_with_one_trustworthy_line(name: str, n_layer: int, gpu_name: str, line: str) -> None:
    ev = evidence(name)
    v = judge_offload(ev, LoadOptions(gpu_layers=-1), n_layer, None)
    assert v.status == Status.PASS and v.exit_code == ExitCode.OK
    vram = ev.bytes_on("CUDA0") / MIB
    total = n_layer + 1
    assert v.line == f"{total}/{total} layers on CUDA0 ({gpu_name}), {vram:.0f} MiB VRAM" == line
    assert (v.layers_on_gpu, v.layers_total, v.device, v.device_name) == (total, total, "CUDA0", gpu_name)
    assert v.gpu_buffer_bytes == ev.bytes_on("CUDA0")
    # capture.py loads without the GGUF's block count: the "offloaded N/M" line alone gives the same verdict
    assert judge_offload(ev, LoadOptions(gpu_layers=-1, n_ctx=512), None, None).line == line


def test_full_offload_with_a_consistent_nvml_delta() -> None:
    ev = evidence(FULL)
    v = judge_offload(ev, LoadOptions(), 24, ev.bytes_on("CUDA0") + 300 * MIB, gpu_name=RTX4090)
    assert v.status == Status.PASS
    assert v.line.endswith("704 MiB VRAM (NVML +1004 MiB)")


def test_real_cpu_only_build_fails_with_no_offload_evidence() -> None:
    """The old tool's worst bug: passing a "GPU" load on a build that cannot offload."""
    for name, layers in ((CPU_LOG, -1), (CPU_LOG_NGL0, 0)):
        v = judge_offload(evidence(name), LoadOptions(gpu_layers=layers), 18, None)
        assert v.status == Status.FAIL
        assert v.line.startswith("no offload evidence")
        assert v.exit_code == ExitCode.GPU_UNUSABLE == 4
        assert setup_fix("kcuda-validate") in (v.fix or "")
        assert v.gpu_buffer_bytes == 0 and v.layers_total == 19


@pytest.mark.parametrize(
    ("name", "n_layer", "head"),
    [(PARTIAL, 24, f"10/25 layers on CUDA0 ({RTX4090}), "), (H100_LOG_NGL4, 18, f"4/19 layers on CUDA0 ({H100}), ")],
    ids=["rtx4090-ngl10-from-source", "h100-gemma3-ngl4-real"],
)
def test_partial_offload_when_all_layers_were_requested_fails(name: str, n_layer: int, head: str) -> None:
    v = judge_offload(evidence(name), LoadOptions(gpu_layers=-1), n_layer, None)
    assert v.status == Status.FAIL and v.exit_code == ExitCode.CHECK_FAILED
    assert v.line.startswith(head)
    assert v.line.endswith("; 15 layer(s) stayed on the CPU")
    assert "--n-ctx" in (v.fix or "")


@pytest.mark.parametrize(
    ("name", "gpu_layers", "n_layer", "gpu_name", "line"),
    [
        (
            PARTIAL,
            10,
            24,
            RTX4090,
            "10/25 layers on CUDA0 (NVIDIA GeForce RTX 4090), 538 MiB VRAM "
            "(partial offload requested: --gpu-layers 10)",
        ),
        # the verdict the tool printed on the H100
        (
            H100_LOG_NGL4,
            4,
            18,
            H100,
            "4/19 layers on CUDA0 (NVIDIA H100 80GB HBM3), 696 MiB VRAM (partial offload requested: --gpu-layers 4)",
        ),
    ],
    ids=["rtx4090-ngl10-from-source", "h100-gemma3-ngl4-real"],
)
def test_partial_offload_that_was_requested_passes(
    name: str, gpu_layers: int, n_layer: int, gpu_name: str, line: str
) -> None:
    ev = evidence(name)
    v = judge_offload(ev, LoadOptions(gpu_layers=gpu_layers), n_layer, None)
    assert v.status == Status.PASS and v.exit_code == ExitCode.OK
    vram = ev.bytes_on("CUDA0") / MIB
    total = n_layer + 1
    assert v.line == f"{gpu_layers}/{total} layers on CUDA0 ({gpu_name}), {vram:.0f} MiB VRAM" + (
        f" (partial offload requested: --gpu-layers {gpu_layers})"
    )
    assert v.line == line
    assert (v.layers_on_gpu, v.layers_total, v.device_name) == (gpu_layers, total, gpu_name)
    # as a check it passes even when a full offload is required: the partial offload was asked for
    assert v.check(ev, cpu_mode=False).status == Status.PASS


def test_real_h100_gpu_layers_0_is_judged_not_on_the_gpu() -> None:
    """The tool printed this on the H100 for --gpu-layers 0: no layer on the GPU is a failure, whatever was asked."""
    ev = evidence(H100_LOG_NGL0)
    v = judge_offload(ev, LoadOptions(gpu_layers=0), 18, None)
    assert v.status == Status.FAIL and v.exit_code == ExitCode.GPU_UNUSABLE
    assert v.line == "0/19 layers on a GPU: llama.cpp kept the model in host memory"
    assert (v.layers_on_gpu, v.layers_total, v.device, v.device_name) == (0, 19, "CUDA0", H100)
    # the CUDA0 compute buffer is still reported as GPU memory in use, though no weights went there
    assert v.gpu_buffer_bytes == mib(685.53)
    assert setup_fix("kcuda-validate") in (v.fix or "")


def test_nvml_delta_much_smaller_than_the_buffers_warns() -> None:
    v = judge_offload(evidence(FULL), LoadOptions(), 24, 100 * MIB)
    assert v.status == Status.WARN and v.exit_code == ExitCode.OK
    assert "NVML saw less VRAM in use than llama.cpp allocated" in v.line
    assert v.line.startswith("25/25 layers on CUDA0")
    assert v.fix


def test_cpu_mode_is_a_labelled_skip() -> None:
    v = judge_offload(evidence(CPU_LOG), LoadOptions(cpu_mode=True), None, None)
    assert v.status == Status.SKIP and v.exit_code == ExitCode.OK
    assert v.line == "CPU run: 0/19 layers offloaded (by request), 248 MiB of weights in host memory"
    assert (v.layers_on_gpu, v.layers_total, v.device) == (0, 19, "CPU")


def test_two_gpu_split_names_both_devices() -> None:
    ev = evidence(TWO_GPUS)
    v = judge_offload(ev, LoadOptions(), 24, None)
    assert v.status == Status.PASS
    total = (ev.bytes_on("CUDA0") + ev.bytes_on("CUDA1")) / MIB
    assert v.line == (f"25/25 layers on CUDA0 ({RTX4090}) + CUDA1 (NVIDIA GeForce RTX 3090), {total:.0f} MiB VRAM")
    assert v.gpu_buffer_bytes == ev.bytes_on("CUDA0") + ev.bytes_on("CUDA1")


def test_gpu_buffers_without_the_offload_summary_still_fail() -> None:
    """Evidence is required, not inferred: GPU buffers alone (no "offloaded N/M") are not a pass."""
    lines = [ln for ln in read_log(FULL) if "offloaded" not in ln.text]
    v = judge_offload(parse_load_log(lines), LoadOptions(), 24, None)
    assert v.status == Status.FAIL and v.exit_code == ExitCode.GPU_UNUSABLE


# --------------------------------------------------------------------------------------------------------------
# Weights llama.cpp moved off their layer's preferred buffer type (issue 14: where the output layer really went)

H100_FALLBACK = "done_getting_tensors: tensor 'token_embd.weight' (q8_0) (and 0 others) cannot be used with preferred"


def test_the_recorded_h100_load_moved_only_the_input_embedding_between_host_buffers() -> None:
    """Under mmap llama.cpp keeps the input embedding in plain CPU memory instead of pinned CUDA_Host: benign."""
    ev = evidence(H100_LOG)
    assert ev.tensor_fallbacks == (
        {"tensor": "token_embd.weight", "type": "q8_0", "others": 0, "preferred": "CUDA_Host", "used": "CPU"},
    )
    assert ev.gpu_weights_on_cpu() is None
    assert ev.to_json()["tensor_fallbacks"] == list(ev.tensor_fallbacks)
    assert evidence(CPU_LOG).gpu_weights_on_cpu() is None  # CPU_REPACK -> CPU stays in host memory too


def with_fallback(text: str) -> list[LogLine]:
    lines = read_log(H100_LOG)
    out = [LogLine(ln.level, text) if ln.text.startswith(H100_FALLBACK) else ln for ln in lines]
    assert out != lines
    return out


def test_a_weight_the_gpu_backend_refused_makes_a_full_offload_fail() -> None:
    """Synthesised from the recorded H100 log with llama.cpp's format string: every layer is assigned to CUDA0 and
    the count says 19/19, but the output weights' type could not use CUDA0, so they sit in host memory."""
    moved = (
        "done_getting_tensors: tensor 'output.weight' (iq1_m) (and 18 others) cannot be used with preferred"
        " buffer type CUDA0, using CPU instead"
    )
    ev = parse_load_log(with_fallback(moved))
    assert ev.gpu_weights_on_cpu() == {
        "tensor": "output.weight",
        "type": "iq1_m",
        "others": 18,
        "preferred": "CUDA0",
        "used": "CPU",
    }
    v = judge_offload(ev, LoadOptions(gpu_layers=-1), 18, None, gpu_name=H100)
    assert (v.status, v.exit_code, v.layers_on_gpu, v.layers_total) == (Status.FAIL, ExitCode.CHECK_FAILED, 19, 19)
    assert v.line == (
        f"19/19 layers on CUDA0 ({H100}), 757 MiB VRAM; weight 'output.weight' (iq1_m) could not use CUDA0 and went"
        " to CPU, 18 more weight(s) moved"
    )
    assert v.fix == (
        "This llama.cpp build cannot use iq1_m weights on CUDA0, so their matmuls run on the CPU: pick a GGUF in a"
        " quantization the CUDA backend runs (Q4_K_M, Q8_0) with --model-path or --filename."
    )
    allowed = v.check(ev, cpu_mode=False, require_full=False)  # --allow-partial-offload
    assert (allowed.status, allowed.exit_code) == (Status.WARN, ExitCode.OK)
    assert allowed.evidence["llama_log"]["tensor_fallbacks"][0]["tensor"] == "output.weight"


def test_a_move_between_gpu_buffer_types_or_in_a_requested_partial_offload_is_not_a_failure() -> None:
    split = "done_getting_tensors: tensor 'blk.0.attn_q.weight' (q8_0) (and 0 others) cannot be used with preferred"
    ev = parse_load_log(with_fallback(split + " buffer type CUDA_Split, using CUDA0 instead"))
    assert ev.gpu_weights_on_cpu() is None
    assert judge_offload(ev, LoadOptions(gpu_layers=-1), 18, None).status == Status.PASS
    partial = evidence(H100_LOG_NGL4)
    assert judge_offload(partial, LoadOptions(gpu_layers=4), 18, None).status == Status.PASS
