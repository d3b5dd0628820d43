"""The real ModelLoader on the real Gemma-3-270M with this project's CPU-only llama-cpp-python build.

Two loads (~1 s each): a CPU run, and a "GPU" run that must FAIL because the build cannot offload — the
regression test for the old tool's worst bug, passing on a CPU-only build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gguf_rewrite import rewrite_model
from kcuda_validate.checks import Status
from kcuda_validate.errors import ExitCode
from kcuda_validate.llm.build import probe_llama_build, setup_fix
from kcuda_validate.llm.loader import LoadOptions, LoadResult, ModelLoader, OffloadVerdict, judge_offload
from kcuda_validate.model.gguf_file import read_gguf
from machine import HOST_ONLY, inprocess_llama_has_gpu

pytestmark = pytest.mark.slow
MIB = 1024 * 1024


def _verdict(result: LoadResult) -> OffloadVerdict:
    """The parent's judgement of the worker's load: the real judge on the real result (no NVML here)."""
    return judge_offload(result.evidence, result.options, read_gguf(result.model_path).block_count, None)


def _load(model: Path, options: LoadOptions) -> tuple[LoadResult, list[str]]:
    # Module-scoped, so conftest's per-test environment is not in place yet: `uv run pytest` would leave its
    # UV_RUN_RECURSION_DEPTH here, and the fix texts would name `./run kcuda-validate`.
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("UV_RUN_RECURSION_DEPTH", raising=False)
        loader = ModelLoader(options)
        with loader.load(model) as loaded:
            return loaded.result, [ln.text for ln in loader.capture.lines]


@pytest.fixture(scope="module")
def cpu_run(real_model: Path) -> tuple[LoadResult, list[str]]:
    if inprocess_llama_has_gpu():
        pytest.skip(HOST_ONLY)
    return _load(real_model, LoadOptions(cpu_mode=True, n_ctx=512))


@pytest.fixture(scope="module")
def gpu_run_on_cpu_build(real_model: Path) -> tuple[LoadResult, list[str]]:
    if probe_llama_build().supports_gpu_offload:
        pytest.skip("this llama-cpp-python can offload; the CPU-only regression needs the CPU build")
    return _load(real_model, LoadOptions(gpu_layers=-1, cpu_mode=False, n_ctx=512))


def test_cpu_run_captures_llama_cpp_evidence(cpu_run: tuple[LoadResult, list[str]]) -> None:
    result, texts = cpu_run
    ev = result.evidence
    assert result.n_ctx == 512
    # Every layer (18 blocks + output) is placed on the CPU, per llama.cpp's own debug lines.
    assert ev.layer_devices == {i: "CPU" for i in range(19)}
    assert set(ev.model_buffers) >= {"CPU_Mapped"}
    assert 230 * MIB < ev.model_buffers["CPU_Mapped"] < 240 * MIB
    assert ev.kv_buffers == {"CPU": 9 * MIB}  # 512 cells x 18 layers x 1 KV head x (256 + 256) x f16
    assert ev.compute_buffers["CPU"] > 256 * MIB  # 262144-token vocabulary: the logits dominate
    assert ev.gpu_families == () and ev.errors == ()
    v = _verdict(result)
    assert v.status == Status.SKIP
    assert v.line.startswith("CPU run: 0/19 layers offloaded (by request), ")
    check = v.check(ev, result.options.cpu_mode, duration_s=result.load_s)
    assert (check.id, check.status, check.exit_code, check.title) == (
        "load.offload",
        Status.SKIP,
        ExitCode.OK,
        "GPU offload (CPU run)",
    )
    # The capture kept lines whole: progress dots never prefix the next message.
    assert "llama_context: constructing llama_context" in texts
    assert all(set(t) == {"."} for t in texts if t.startswith("."))


def test_gpu_request_on_a_cpu_only_build_fails(gpu_run_on_cpu_build: tuple[LoadResult, list[str]]) -> None:
    result, _ = gpu_run_on_cpu_build
    ev = result.evidence
    # llama.cpp loaded the model anyway, entirely in host memory, and said nothing about offloading.
    assert ev.offloaded is None and ev.devices == ()
    assert ev.layer_devices == {i: "CPU" for i in range(19)}
    assert ev.model_buffers and all(k.startswith("CPU") for k in ev.model_buffers)
    assert ev.gpu_families == ()
    v = _verdict(result)
    assert v.status == Status.FAIL
    assert v.line.startswith("no offload evidence")
    assert v.exit_code == ExitCode.GPU_UNUSABLE
    assert setup_fix("kcuda-validate") in (v.fix or "")
    check = v.check(ev, result.options.cpu_mode, duration_s=result.load_s)
    assert (check.status, check.exit_code) == (Status.FAIL, ExitCode.GPU_UNUSABLE)
    assert check.evidence["llama_log"]["layer_devices"]["18"] == "CPU"


def test_a_tensor_of_the_wrong_shape_is_llama_cpps_one_line_error_and_exit_5(tiny_model: Path, tmp_path: Path) -> None:
    """The header reader checks the layout, not each tensor against the hyperparameters: llama.cpp does that at load,
    and its verdict reaches the user as one readable line naming the tensor and both shapes."""
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    bad = tmp_path / "short-attn-q.gguf"
    rewrite_model(tiny_model, bad, rows=lambda name, rows: rows[:-1] if name == "blk.0.attn_q.weight" else rows)
    assert read_gguf(bad).block_count == read_gguf(tiny_model).block_count  # the header still reads
    n_embd = read_gguf(tiny_model).metadata["llama.embedding_length"]
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "--model-path", str(bad)])
    assert result.exit_code == ExitCode.MODEL_INVALID, result.output
    assert result.stderr.splitlines()[0] == (
        f"Error: {bad}: llama.cpp could not load the model (llama_model_load: error loading model: check_tensor_dims:"
        f" tensor 'blk.0.attn_q.weight' has wrong shape; expected {n_embd}, {n_embd}, got {n_embd}, {n_embd - 1},"
        " 1, 1)"
    )
    assert "Traceback" not in result.output


def test_a_chat_template_jinja_cannot_compile_is_exit_5_naming_the_field(tiny_model: Path, tmp_path: Path) -> None:
    """llama-cpp-python compiles the header's template while it loads (the tool formats with llama.cpp's own
    formatter, so this is the only place it matters): a syntax error is the model's fault, exit 5, not a bug (70)."""
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    bad = rewrite_model(tiny_model, tmp_path / "bad-template.gguf", fields={"tokenizer.chat_template": "{% for %}"})
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "-q", "--model-path", str(bad)])
    assert result.exit_code == ExitCode.MODEL_INVALID, result.output
    assert result.stderr.splitlines()[:2] == [
        f"Error: {bad}: its chat template (tokenizer.chat_template) is not valid Jinja, so llama-cpp-python refuses "
        "the model (TemplateSyntaxError: Expected an expression, got 'end of statement block')",
        "Fix: Replace or drop the template with gguf's own editor, installed with this tool: gguf-new-metadata "
        "--remove-metadata tokenizer.chat_template IN.gguf OUT.gguf (or --chat-template-file FILE.jinja), or use "
        "another file.",
    ]
    assert "Traceback" not in result.output


def test_bytes_llama_cpp_cannot_decode_are_shown_as_escapes_not_replacement_marks(
    tiny_model: Path, tmp_path: Path
) -> None:
    """llama.cpp quotes the file's architecture in its error; a byte that is not UTF-8 is shown as `\\xNN` (as every
    other sink shows bytes), and ESC cannot reach the terminal."""
    import struct

    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    data = tiny_model.read_bytes()
    key = b"general.architecture"
    value = key + struct.pack("<IQ", 8, 5) + b"llama"  # GGUF string type 8, length 5
    assert data.count(value) == 1
    bad = tmp_path / "odd-arch.gguf"
    bad.write_bytes(data.replace(value, key + struct.pack("<IQ", 8, 5) + b"\xff\x1b[2J"))
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "-q", "--model-path", str(bad)])
    assert result.exit_code == ExitCode.MODEL_INVALID, result.output
    assert result.stderr.splitlines()[0] == (
        f"Error: {bad}: llama.cpp could not load the model (llama_model_load: error loading model: unknown model"
        " architecture: '\\xff\\x1b[2J')"
    )
    assert "\ufffd" not in result.output and "\x1b" not in result.output
