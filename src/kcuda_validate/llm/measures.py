"""What a measured generation is: the options it ran with, each run's timings and the result the worker
sends back. Plain data, so the parent reads and judges results without loading llama.cpp.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kcuda_validate import defaults
from kcuda_validate.checks import Metric, MetricName, mean_of

DEFAULT_PROMPT = "Explain in two sentences why GPUs are fast at running language models."


@dataclass(frozen=True)
class InferOptions:
    prompt: str = DEFAULT_PROMPT
    max_tokens: int = defaults.MAX_TOKENS
    temperature: float = defaults.TEMPERATURE
    seed: int = defaults.SEED
    repeat: int = defaults.REPEAT
    warmup: bool = True
    sampling: str = defaults.SAMPLING  # auto: greedy on the backend where the build can; cpu: always on the CPU
    prompt_tokens: int | None = None  # build a synthetic prompt of exactly N tokens
    chat: bool = True  # apply the model's chat template when it has one
    top_k: int = 40
    top_p: float = 0.95
    ignore_eos: bool = False


@dataclass(frozen=True)
class RunMeasure:
    """One generation. Times in seconds; perf_* come from llama_perf_context."""

    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    prompt_s: float
    gen_s: float
    total_s: float
    perf_prompt_ms: float
    perf_prompt_n: int
    perf_gen_ms: float
    perf_gen_n: int
    stop_reason: str
    token_ids: tuple[int, ...] = field(repr=False)
    text: str = field(repr=False, default="")
    # Every single-token decode after the prompt: wall time in llama_decode + llama_synchronize, and in the
    # sampler, and how many there were. A run that stops at EOS decodes once more than it emits tokens after
    # the first (the decode that produced the EOS), just as llama.cpp's n_eval counts it.
    decode_s: float = 0.0
    sample_s: float = 0.0
    decode_calls: int = 0

    def _per_call_ms(self, seconds: float) -> float | None:
        return seconds / self.decode_calls * 1000 if self.decode_calls else None

    @property
    def decode_ms_wall(self) -> float | None:
        return self._per_call_ms(self.decode_s)

    @property
    def sample_ms(self) -> float | None:
        return self._per_call_ms(self.sample_s)

    @property
    def other_ms(self) -> float | None:
        """What each emitted token costs beyond decode and sampling (streaming, UTF-8, the callback)."""
        if self.generated_tokens < 2 or self.gen_s <= 0 or not self.decode_calls:
            return None
        per_token = self.gen_s / (self.generated_tokens - 1) * 1000
        return max(per_token - (self.decode_ms_wall or 0.0) - (self.sample_ms or 0.0), 0.0)

    @property
    def decode_ms_perf(self) -> float | None:
        return self.perf_gen_ms / self.perf_gen_n if self.perf_gen_n else None

    @property
    def gen_tps_wall(self) -> float | None:
        # The first token comes from the prompt pass; the rest are one decode each.
        if self.generated_tokens < 2 or self.gen_s <= 0:
            return None
        return (self.generated_tokens - 1) / self.gen_s

    @property
    def prompt_tps_wall(self) -> float | None:
        return self.prompt_tokens / self.prompt_s if self.prompt_s > 0 else None

    @property
    def gen_tps_perf(self) -> float | None:
        return self.perf_gen_n / self.perf_gen_ms * 1000 if self.perf_gen_ms > 0 and self.perf_gen_n else None

    @property
    def prompt_tps_perf(self) -> float | None:
        return self.perf_prompt_n / self.perf_prompt_ms * 1000 if self.perf_prompt_ms > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "ttft_s": self.ttft_s,
            "prompt_s": self.prompt_s,
            "gen_s": self.gen_s,
            "total_s": self.total_s,
            "gen_tps_wall": self.gen_tps_wall,
            "prompt_tps_wall": self.prompt_tps_wall,
            "gen_tps_perf": self.gen_tps_perf,
            "prompt_tps_perf": self.prompt_tps_perf,
            "perf": {
                "t_p_eval_ms": self.perf_prompt_ms,
                "n_p_eval": self.perf_prompt_n,
                "t_eval_ms": self.perf_gen_ms,
                "n_eval": self.perf_gen_n,
            },
            "decode_s": self.decode_s,
            "sample_s": self.sample_s,
            "decode_calls": self.decode_calls,
            "stop_reason": self.stop_reason,
            "token_ids": list(self.token_ids),
            "text": self.text,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunMeasure:
        perf = d["perf"]
        return cls(
            prompt_tokens=d["prompt_tokens"],
            generated_tokens=d["generated_tokens"],
            ttft_s=d["ttft_s"],
            prompt_s=d["prompt_s"],
            gen_s=d["gen_s"],
            total_s=d["total_s"],
            perf_prompt_ms=perf["t_p_eval_ms"],
            perf_prompt_n=perf["n_p_eval"],
            perf_gen_ms=perf["t_eval_ms"],
            perf_gen_n=perf["n_eval"],
            stop_reason=d["stop_reason"],
            token_ids=tuple(d.get("token_ids", ())),
            text=d.get("text", ""),
            decode_s=d.get("decode_s", 0.0),
            sample_s=d.get("sample_s", 0.0),
            decode_calls=d.get("decode_calls", 0),
        )


def _stats(values: list[float | None]) -> tuple[float | None, float | None, tuple[float, ...]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, ()
    import statistics  # off the start-up path: it pulls in fractions and decimal

    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None  # one sample has no spread to measure
    return mean, std, tuple(vals)


@dataclass(frozen=True)
class InferenceResult:
    prompt: str
    formatted_prompt: str
    chat_template_applied: bool
    text: str
    runs: tuple[RunMeasure, ...]
    warmup: RunMeasure | None
    deterministic: bool | None
    divergence: int | None  # first token index where runs differ
    options: InferOptions
    sampling: str = "cpu"  # where the measured runs sampled: "backend" (in the decode graph) or "cpu"
    # With backend sampling, as many CPU-sampled runs, alternated with the measured ones: the figure beside it.
    cpu_sampled_runs: tuple[RunMeasure, ...] = ()

    @property
    def first(self) -> RunMeasure:
        return self.warmup or self.runs[0]

    def metrics(self) -> list[Metric]:
        runs = list(self.runs)
        out: list[Metric] = []

        def add(name: MetricName, unit: str, method: str, values: list[float | None], estimate: bool = False) -> None:
            mean, std, samples = _stats(values)
            out.append(Metric(name, mean, unit, method, estimate, samples, std))

        add(MetricName.GEN_TPS, "tokens/s", "llama_perf_context: n_eval / t_eval", [r.gen_tps_perf for r in runs])
        add(
            MetricName.GEN_TPS_WALL,
            "tokens/s",
            "wall clock: (generated - 1) / (last token time - first token time)",
            [r.gen_tps_wall for r in runs],
        )
        add(
            MetricName.DECODE_MS_PER_TOKEN,
            "ms",
            "llama_perf_context: t_eval / n_eval (decode and GPU work, as llama-bench counts it)",
            [r.decode_ms_perf for r in runs],
        )
        add(
            MetricName.DECODE_MS_PER_TOKEN_WALL,
            "ms",
            "wall clock around llama_decode + llama_synchronize, per single-token decode",
            [r.decode_ms_wall for r in runs],
        )
        if self.sampling == "backend":
            sample_method = (
                "wall clock around llama_sampler_sample, which returns the token the backend sampled inside the"
                " decode graph (greedy), per single-token decode"
            )
        else:
            sample_method = (
                "wall clock around llama_sampler_sample (logits to token, on the CPU), per single-token decode"
            )
        add(MetricName.SAMPLE_MS_PER_TOKEN, "ms", sample_method, [r.sample_ms for r in runs])
        cpu_runs = list(self.cpu_sampled_runs)
        if cpu_runs:
            add(
                MetricName.GEN_TPS_WALL_CPU_SAMPLING,
                "tokens/s",
                "wall clock, as gen_tps_wall, of the runs sampled on the CPU (alternated with the measured runs)",
                [r.gen_tps_wall for r in cpu_runs],
            )
            add(
                MetricName.SAMPLE_MS_PER_TOKEN_CPU_SAMPLING,
                "ms",
                "wall clock around llama_sampler_sample (logits to token, on the CPU) in those runs",
                [r.sample_ms for r in cpu_runs],
            )
        add(
            MetricName.OTHER_MS_PER_TOKEN,
            "ms",
            "wall clock per generated token outside decode and sampling (detokenize, stream)",
            [r.other_ms for r in runs],
        )
        add(
            MetricName.PROMPT_TPS,
            "tokens/s",
            "llama_perf_context: n_p_eval / t_p_eval",
            [r.prompt_tps_perf for r in runs],
        )
        add(
            MetricName.PROMPT_TPS_WALL,
            "tokens/s",
            "wall clock around the prompt decode",
            [r.prompt_tps_wall for r in runs],
        )
        # Without a warm-up the first measured run is the cold one: it is not averaged into the warm figure.
        warm = runs if self.warmup is not None else runs[1:]
        add(
            MetricName.TTFT_WARM_MS,
            "ms",
            "wall clock from request to first sampled token, measured runs after the first run (warm)",
            [r.ttft_s * 1000 for r in warm],
        )
        cold = self.warmup or (runs[0] if runs else None)
        if cold is not None:
            out.append(
                Metric(
                    MetricName.TTFT_COLD_MS,
                    cold.ttft_s * 1000,
                    "ms",
                    "wall clock from request to first sampled token, first run after load",
                )
            )
        add(MetricName.TOTAL_S, "s", "wall clock per measured run", [r.total_s for r in runs])
        out.append(Metric(MetricName.PROMPT_TOKENS, self.first.prompt_tokens, "tokens", "model tokenizer"))
        out.append(
            Metric(
                MetricName.GENERATED_TOKENS,
                mean_of(r.generated_tokens for r in runs),
                "tokens",
                "decode loop (sampled tokens, EOS excluded)",
            )
        )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "chat_template_applied": self.chat_template_applied,
            "text": self.text,
            "warmup": self.warmup.to_json() if self.warmup else None,
            "runs": [r.to_json() for r in self.runs],
            "deterministic": self.deterministic,
            "divergence_token": self.divergence,
            "formatted_prompt": self.formatted_prompt,
            "options": dataclasses.asdict(self.options),
            "sampling": self.sampling,
            "cpu_sampled_runs": [r.to_json() for r in self.cpu_sampled_runs],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InferenceResult:
        return cls(
            prompt=d["prompt"],
            formatted_prompt=d.get("formatted_prompt", ""),
            chat_template_applied=d["chat_template_applied"],
            text=d["text"],
            runs=tuple(RunMeasure.from_json(r) for r in d["runs"]),
            warmup=RunMeasure.from_json(d["warmup"]) if d.get("warmup") else None,
            deterministic=d["deterministic"],
            divergence=d.get("divergence_token"),
            options=InferOptions(**d["options"]),
            sampling=d.get("sampling", "cpu"),
            cpu_sampled_runs=tuple(RunMeasure.from_json(r) for r in d.get("cpu_sampled_runs", ())),
        )
