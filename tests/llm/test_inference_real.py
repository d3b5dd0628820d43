"""Real llama.cpp generations on the real Gemma-3-270M model (CPU): what is measured, and how."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcuda_validate.errors import UsageError
from kcuda_validate.llm.inference import Inferencer, TextStream
from kcuda_validate.llm.loader import LoadedModel, LoadOptions, ModelLoader
from kcuda_validate.llm.measures import InferOptions
from kcuda_validate.pipeline import PERF_WALL_TOLERANCE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(real_model: Path) -> LoadedModel:
    model = ModelLoader(LoadOptions(n_ctx=512, cpu_mode=True)).load(real_model)
    yield model
    model.close()


@pytest.fixture(scope="module")
def inferencer(loaded: LoadedModel) -> Inferencer:
    return Inferencer(loaded)


def test_generates_real_text(inferencer: Inferencer) -> None:
    streamed: list[str] = []
    result = inferencer.run(
        InferOptions(prompt="The capital of France is Paris. The capital of Germany is", max_tokens=6, repeat=1),
        on_text=streamed.append,
    )
    assert "Berlin" in result.text
    assert "".join(streamed) == result.text  # what the user saw is what we report
    # One measured run has no spread: no stddev is reported (0.0 would be a number nobody measured).
    gen = {m.name: m for m in result.metrics()}["gen_tps"]
    assert (len(gen.samples), gen.stddev) == (1, None)
    assert "stddev" not in gen.to_json()


def test_counts_come_from_the_tokenizer_and_the_decode_loop(inferencer: Inferencer) -> None:
    prompt = "Count: one two three"
    result = inferencer.run(InferOptions(prompt=prompt, max_tokens=12, repeat=2, ignore_eos=True))
    expected_prompt = len(inferencer.tokenize(prompt))
    for run in (result.warmup, *result.runs):
        assert run.prompt_tokens == expected_prompt
        assert run.generated_tokens == 12 == len(run.token_ids)
        # llama.cpp's own counters agree: every prompt token evaluated, every generated token but the last decoded.
        assert run.perf_prompt_n == expected_prompt
        assert run.perf_gen_n == 11
        # Time to first token includes the prompt pass and ends before the run does.
        assert run.prompt_s <= run.ttft_s < run.total_s


def test_kv_cache_is_reset_between_runs(inferencer: Inferencer) -> None:
    """Prefix reuse would make later runs evaluate fewer prompt tokens and look faster."""
    result = inferencer.run(InferOptions(prompt="A long enough prompt to notice reuse", max_tokens=4, repeat=3))
    counts = {r.perf_prompt_n for r in (result.warmup, *result.runs)}
    assert counts == {result.runs[0].prompt_tokens}


def test_greedy_runs_are_deterministic(inferencer: Inferencer) -> None:
    result = inferencer.run(InferOptions(prompt="Once upon a time", max_tokens=16, repeat=2))
    assert result.deterministic is True
    assert result.warmup.token_ids == result.runs[0].token_ids == result.runs[1].token_ids


def test_seeded_sampling_is_reproducible(inferencer: Inferencer) -> None:
    opts = InferOptions(prompt="Once upon a time", max_tokens=16, repeat=1, temperature=0.9, seed=7)
    a = inferencer.run(opts)
    b = inferencer.run(opts)
    assert a.runs[0].token_ids == b.runs[0].token_ids
    c = inferencer.run(InferOptions(prompt="Once upon a time", max_tokens=16, repeat=1, temperature=0.9, seed=8))
    assert c.runs[0].token_ids != a.runs[0].token_ids


def test_perf_counters_agree_with_the_wall_clock(inferencer: Inferencer) -> None:
    result = inferencer.run(InferOptions(prompt="Tell me about GPUs.", max_tokens=32, repeat=2, ignore_eos=True))
    for run in result.runs:
        # The same decode window, timed by llama.cpp (t_eval) and by our clock, agrees within the stated tolerance.
        assert abs(1 - run.decode_ms_perf / run.decode_ms_wall) <= PERF_WALL_TOLERANCE
        assert abs(1 - run.prompt_tps_wall / run.prompt_tps_perf) <= PERF_WALL_TOLERANCE
        # End to end, each token also pays for sampling and streaming; the three parts add up to the wall clock.
        assert run.sample_ms > 0 and run.other_ms >= 0
        parts = run.decode_ms_wall + run.sample_ms + run.other_ms
        assert parts == pytest.approx(run.gen_s / (run.generated_tokens - 1) * 1000)
        # How large that extra cost is depends on the machine (on an H100 sampling Gemma's 262k-token vocabulary
        # took as long as the decode itself: docs/benchmarks.md), so the end-to-end ratio is reported, not held.
    names = {m.name: m for m in result.metrics()}
    assert names["sample_ms_per_token"].unit == "ms" and names["decode_ms_per_token_wall"].samples
    assert names["gen_tps"].samples and names["gen_tps"].unit == "tokens/s"
    assert "llama_perf_context" in names["gen_tps"].method
    assert names["ttft_cold_ms"].value is not None


def test_exact_prompt_token_count_for_benchmarks(inferencer: Inferencer) -> None:
    result = inferencer.run(InferOptions(prompt_tokens=100, max_tokens=2, repeat=1, warmup=False))
    assert result.runs[0].prompt_tokens == 100
    assert result.runs[0].perf_prompt_n == 100


def test_a_synthetic_prompt_fills_the_context_exactly(inferencer: Inferencer) -> None:
    n = inferencer.n_ctx - 2
    assert len(inferencer.synthetic_prompt(n)) == n


def test_synthetic_tokens_past_the_context_are_refused_before_any_is_made(inferencer: Inferencer) -> None:
    """Seen: 2^20 synthetic tokens ran the old one-filler-at-a-time loop (quadratic) into the 600 s timeout, and a
    smaller overflow blamed --max-tokens. The count is known up front, so the refusal is immediate and names it."""
    n_ctx, train = inferencer.n_ctx, inferencer.n_ctx_train
    with pytest.raises(UsageError) as err:
        inferencer.run(InferOptions(prompt_tokens=1 << 20, max_tokens=4))
    assert err.value.message == (
        f"--prompt-tokens 1048576: with --max-tokens 4 that is 1048580 tokens, more than the context holds "
        f"(--n-ctx {n_ctx})"
    )
    assert err.value.fix == (
        f"Lower --prompt-tokens: it alone is 1048576 tokens and the model's trained context is {train} (--n-ctx "
        "cannot go past it)."
    )


def test_context_overflow_is_a_usage_error(inferencer: Inferencer) -> None:
    pattern = r"--max-tokens 600: prompt \(\d+ tokens\) \+ max tokens = \d+ exceeds --n-ctx 512"
    with pytest.raises(UsageError, match=pattern):
        inferencer.run(InferOptions(prompt="hi", max_tokens=600))


def test_empty_prompt_is_a_usage_error(inferencer: Inferencer) -> None:
    with pytest.raises(UsageError, match="empty prompt"):
        inferencer.run(InferOptions(prompt="  "))


def test_streaming_keeps_split_multibyte_characters_whole(inferencer: Inferencer) -> None:
    """Byte-fallback tokens split 4-byte characters; the stream must never emit half a character."""
    text = "𝔘𝔫𝔦 日本語 é"
    tokens = inferencer.tokenize(text)
    pieces = [inferencer.piece(t) for t in tokens]
    assert any(p and p[0] >= 0xF0 and len(p) == 1 for p in pieces), "the test needs a split character"
    stream = TextStream()
    emitted = [stream.push(p) for p in pieces] + [stream.close()]
    assert "".join(emitted).lstrip() == text
    assert "\ufffd" not in "".join(emitted)
    for chunk in emitted:
        chunk.encode("utf-8")  # every emitted chunk is valid on its own


def test_incomplete_trailing_bytes_become_replacement_not_garbage() -> None:
    stream = TextStream()
    assert stream.push(b"ok \xe6\x97") == "ok "
    assert stream.close() == "\ufffd"


def test_a_run_that_stops_at_eos_times_the_same_decodes_as_llama_cpp(tiny_model: Path) -> None:
    """The decode that produces the EOS token is counted by llama.cpp (n_eval) and must be by us too.

    Before decodes were counted, a short answer ending at EOS inflated the wall-clock ms per decode by
    N/(N-1) and could fail the perf-vs-wall check on its own. The tiny random model samples EOS within a
    few hundred tokens at a high temperature; the first short such run is taken."""
    model = ModelLoader(LoadOptions(n_ctx=1024, cpu_mode=True)).load(tiny_model)
    try:
        inf = Inferencer(model)
        run = None
        for seed in range(40):
            opts = InferOptions(
                prompt="Hello",
                max_tokens=900,
                repeat=1,
                warmup=False,
                chat=False,
                temperature=5.0,
                top_k=100_000,
                top_p=1.0,
                seed=seed,
            )
            candidate = inf.run(opts).runs[0]
            if candidate.stop_reason == "eos" and 4 <= candidate.generated_tokens <= 120:
                run = candidate
                break
        assert run is not None, "no seed stopped at EOS within 120 tokens"
        assert run.decode_calls == run.perf_gen_n == run.generated_tokens  # one more than the tokens after the first
        assert abs(1 - run.decode_ms_perf / run.decode_ms_wall) <= PERF_WALL_TOLERANCE
        assert run.other_ms >= 0
        assert run.gen_tps_wall == pytest.approx((run.generated_tokens - 1) / run.gen_s)
    finally:
        model.close()


def test_a_run_that_stops_at_max_tokens_counts_one_decode_per_token_after_the_first(inferencer: Inferencer) -> None:
    run = inferencer.run(InferOptions(prompt="Once upon a time", max_tokens=12, repeat=1, ignore_eos=True)).runs[0]
    assert run.stop_reason == "length"
    assert run.decode_calls == run.perf_gen_n == run.generated_tokens - 1 == 11


def test_greedy_sampling_runs_on_the_backend_with_cpu_sampled_runs_beside_it(inferencer: Inferencer) -> None:
    """The path llama-server takes: greedy sampling inside the decode graph (llama_set_sampler). On this CPU build
    the backend is the CPU one, and it still saves the per-token pass over the 262k-token logits in Python's
    sampler call; the CPU-sampled runs, alternated, give the figure beside it and must pick the same tokens."""
    opts = InferOptions(prompt="Once upon a time", max_tokens=24, repeat=2, ignore_eos=True, sampling="backend")
    result = inferencer.run(opts)
    assert result.sampling == "backend"
    assert len(result.cpu_sampled_runs) == len(result.runs) == 2
    assert result.deterministic is True  # backend argmax and CPU greedy agree token for token
    assert {r.token_ids for r in (*result.runs, *result.cpu_sampled_runs)} == {result.warmup.token_ids}
    backend_ms = sum(r.sample_ms for r in result.runs) / 2
    cpu_ms = sum(r.sample_ms for r in result.cpu_sampled_runs) / 2
    assert backend_ms < cpu_ms  # reading a sampled token is cheaper than sampling 262k logits in the call
    for run in (*result.runs, *result.cpu_sampled_runs):
        # llama.cpp's counters stay true across the attach/detach (the graph re-reserve is primed off the clock).
        assert abs(1 - run.prompt_tps_wall / run.prompt_tps_perf) <= PERF_WALL_TOLERANCE
        assert abs(1 - run.decode_ms_perf / run.decode_ms_wall) <= PERF_WALL_TOLERANCE
    names = {m.name: m for m in result.metrics()}
    assert "inside the decode graph" in names["sample_ms_per_token"].method
    assert names["gen_tps_wall_cpu_sampling"].samples and names["sample_ms_per_token_cpu_sampling"].value
    # Across the process boundary (the worker's JSON) nothing is lost.
    again = type(result).from_json(result.to_json())
    assert (again.sampling, again.cpu_sampled_runs) == (result.sampling, result.cpu_sampled_runs)


def test_cpu_runs_non_greedy_sampling_and_sampling_cpu_stay_on_the_cpu(inferencer: Inferencer) -> None:
    """auto (the default) samples on the backend on GPU runs only: on a CPU build the in-graph argmax costs more
    per token than it saves. Seeded sampling (temperature > 0) stays on the CPU, as --sampling cpu does."""
    prompt = "Once upon a time"
    auto = inferencer.run(InferOptions(prompt=prompt, max_tokens=8, repeat=1))
    cpu = inferencer.run(InferOptions(prompt=prompt, max_tokens=8, repeat=1, sampling="cpu"))
    seeded = inferencer.run(InferOptions(prompt=prompt, max_tokens=8, repeat=1, temperature=0.9, sampling="backend"))
    for result in (auto, cpu, seeded):
        assert (result.sampling, result.cpu_sampled_runs) == ("cpu", ())
        names = {m.name for m in result.metrics()}
        assert "gen_tps_wall_cpu_sampling" not in names
