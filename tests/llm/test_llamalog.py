"""llama.cpp's load log as evidence: parsing recorded logs, capturing callback chunks, and the offload verdict.

The CPU logs were captured from this project's CPU-only llama-cpp-python build loading Gemma-3-270M; the CUDA ones
are synthesized from llama.cpp's format strings (see tests/data/llama_logs/README.md). All tests here are pure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kcuda_validate.checks import Status
from kcuda_validate.errors import ExitCode
from kcuda_validate.llm.build import REBUILD_CMD
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


def test_full_cuda_offload() -> None:
    ev = evidence(FULL)
    assert ev.devices == ({"name": "CUDA0", "description": RTX4090, "id": "0000:01:00.0", "free_mib": 23582},)
    assert (ev.offloaded, ev.offloadable) == (25, 25)
    assert ev.layer_devices == {i: "CUDA0" for i in range(25)}
    assert ev.model_buffers == {"CUDA0": mib(355.84), "CPU_Mapped": mib(137.94)}
    assert ev.kv_buffers == {"CUDA0": mib(48.0)}
    assert ev.compute_buffers == {"CUDA0": mib(300.25), "CUDA_Host": mib(9.75)}
    assert ev.output_buffers == {"CUDA_Host": mib(0.58)}
    assert ev.gpu_families == ("CUDA0",)
    assert ev.bytes_on("CUDA0") == mib(355.84) + mib(48.0) + mib(300.25)
    # Token embeddings (CPU_Mapped) and the pinned CUDA_Host buffers are host memory.
    assert ev.bytes_on("CPU") == mib(137.94) + mib(9.75) + mib(0.58)
    assert ev.errors == ()


def test_partial_offload_splits_layers_between_cpu_and_cuda0() -> None:
    ev = evidence(PARTIAL)
    assert (ev.offloaded, ev.offloadable) == (10, 25)
    assert ev.layer_devices == {i: ("CPU" if i < 15 else "CUDA0") for i in range(25)}
    assert (ev.layers_on("CPU"), ev.layers_on("CUDA0")) == (15, 10)
    assert ev.model_buffers == {"CUDA0": mib(219.66), "CPU_Mapped": mib(274.13)}
    assert ev.kv_buffers == {"CPU": mib(30.0), "CUDA0": mib(18.0)}
    assert ev.gpu_families == ("CUDA0",)
    assert ev.bytes_on("CUDA0") == mib(219.66) + mib(18.0) + mib(300.25)


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


def test_replaying_the_real_chunks_gives_the_recorded_lines() -> None:
    chunks = [tuple(json.loads(x)) for x in (DATA / "cpu_gemma3_270m_ngl-1.chunks.jsonl").read_text().splitlines()]
    assert sum(1 for level, _ in chunks if level == 5) > 20  # the progress dots arrive as continuation chunks
    lines = fed(chunks)
    assert lines == [(ln.level, ln.text) for ln in read_log(CPU_LOG)]
    texts = [t for _, t in lines]
    # The dots end as a line of their own and never prefix the next message.
    dots = [t for t in texts if t.startswith(".")]
    assert len(dots) == 1 and set(dots[0]) == {"."}
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


def test_full_offload_passes_with_one_trustworthy_line() -> None:
    ev = evidence(FULL)
    v = judge_offload(ev, LoadOptions(gpu_layers=-1), 24, None)
    assert v.status == Status.PASS and v.exit_code == ExitCode.OK
    vram = ev.bytes_on("CUDA0") / MIB
    assert (
        v.line
        == f"25/25 layers on CUDA0 ({RTX4090}), {vram:.0f} MiB VRAM"
        == "25/25 layers on CUDA0 (NVIDIA GeForce RTX 4090), 704 MiB VRAM"
    )
    assert (v.layers_on_gpu, v.layers_total, v.device, v.device_name) == (25, 25, "CUDA0", RTX4090)
    assert v.gpu_buffer_bytes == ev.bytes_on("CUDA0")


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
        assert REBUILD_CMD in (v.fix or "")
        assert v.gpu_buffer_bytes == 0 and v.layers_total == 19


def test_partial_offload_when_all_layers_were_requested_fails() -> None:
    v = judge_offload(evidence(PARTIAL), LoadOptions(gpu_layers=-1), 24, None)
    assert v.status == Status.FAIL and v.exit_code == ExitCode.CHECK_FAILED
    assert v.line.startswith(f"10/25 layers on CUDA0 ({RTX4090}), ")
    assert v.line.endswith("; 15 layer(s) stayed on the CPU")
    assert "--n-ctx" in (v.fix or "")


def test_partial_offload_that_was_requested_passes() -> None:
    ev = evidence(PARTIAL)
    v = judge_offload(ev, LoadOptions(gpu_layers=10), 24, None)
    assert v.status == Status.PASS
    vram = ev.bytes_on("CUDA0") / MIB
    assert v.line == f"10/25 layers on CUDA0 ({RTX4090}), {vram:.0f} MiB VRAM" + (
        " (partial offload requested: --gpu-layers 10)"
    )


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
