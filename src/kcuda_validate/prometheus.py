"""A report as a Prometheus textfile (node_exporter's textfile collector reads `*.prom` files).

`textfile(doc)` is a pure function of the report's JSON document (`Report.to_json()`, specs/report.schema.json):
the same document always gives the same text. It follows the Prometheus naming conventions so the figures
join with everyone else's:

* every name starts with `kcuda_`; each measured figure is converted to its base unit and named for it
  (`_seconds` not ms, `_bytes`, `_watts`, `_joules`, `_hertz`, `_celsius`, `_ratio` for a percentage or a
  speedup; tokens/s as `_tokens_per_second`); `_info` carries the versions as labels, value 1;
* GPUs carry dcgm-exporter's labels, `gpu` (the NVML index) and `UUID`, so `kcuda_gen_tokens_per_second`
  joins `DCGM_FI_DEV_GPU_UTIL` on them; every series also carries `command`, `device_mode` (a CPU run is
  `cpu`, never mistaken for a GPU figure) and `model` (the GGUF file name). A check about one GPU (`gpu.N`,
  `perf.idle.N`, `min.N`, `llama.archs.N`: N the NVML index; `torch.kernel.N`, `torch.bandwidth.N`: N torch's
  CUDA index, mapped to NVML's by the check's `nvml_index`) carries that GPU's labels; the run-wide series
  carry the GPU the model ran on, or none (`gpu=""`) when the run is about several (`detect` or `health` on a
  multi-GPU node, `--all-devices`);
* every family has HELP and TYPE lines. HELP texts are fixed per name (never the run's own method text,
  which varies): the textfile collector merges files, and one family must read the same in all of them;
* no timestamps on samples (the textfile collector refuses them): the run's time is the value of
  `kcuda_last_run_timestamp_seconds`;
* a figure that was not measured (null) is not written at all: a missing series, never a made-up 0;
* label values are any text: passed through `safetext.safe` (undecodable bytes as `\\xNN`, credentials as
  `***`), control characters spelled out, then escaped as the exposition format requires.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kcuda_validate.errors import ExitCode
from kcuda_validate.safetext import safe

PREFIX = "kcuda_"
STATUSES = ("pass", "warn", "fail", "skip")
MAX_LABEL_CHARS = 256  # a label is an identifier, not a log: a longer value is cut (with "…")

# Report unit -> (factor to the base unit, name suffix). Prometheus: base units, ratios not percentages.
UNITS: dict[str, tuple[float, str]] = {
    "s": (1.0, "seconds"),
    "ms": (1e-3, "seconds"),
    "bytes": (1.0, "bytes"),
    "bytes/s": (1.0, "bytes_per_second"),
    "tokens/s": (1.0, "tokens_per_second"),
    "tokens": (1.0, "tokens"),
    "%": (1e-2, "ratio"),
    "×": (1.0, "ratio"),
    "W": (1.0, "watts"),
    "J": (1.0, "joules"),
    "J/token": (1.0, "joules"),
    "°C": (1.0, "celsius"),
    "MHz": (1e6, "hertz"),
}

# Report metric name -> (Prometheus name without the prefix, HELP). Names the generic rule (see
# `metric_name`) would spell badly, and the HELP of every figure the tool measures today.
KNOWN: dict[str, tuple[str, str]] = {
    "load_time": ("load_seconds", "Wall clock of the llama.cpp model and context load."),
    "gpu_buffers": ("gpu_buffers_bytes", "Model, KV cache and compute buffers llama.cpp put on the GPU."),
    "vram_load_delta": ("vram_load_delta_bytes", "NVML used GPU memory after the load minus before it."),
    "gen_tps": ("gen_tokens_per_second", "Generation speed by llama.cpp's perf counters (mean of measured runs)."),
    "gen_tps_wall": ("gen_wall_tokens_per_second", "Generation speed by the wall clock (mean of measured runs)."),
    "decode_ms_per_token": ("decode_per_token_seconds", "Decode time per generated token, llama.cpp perf counters."),
    "decode_ms_per_token_wall": ("decode_per_token_wall_seconds", "Decode time per generated token, wall clock."),
    "sample_ms_per_token": ("sample_per_token_seconds", "Sampling time per generated token, wall clock."),
    "gen_tps_wall_cpu_sampling": (
        "gen_wall_cpu_sampling_tokens_per_second",
        "Generation speed by the wall clock of the runs sampled on the CPU, beside backend-sampled ones.",
    ),
    "sample_ms_per_token_cpu_sampling": (
        "sample_per_token_cpu_sampling_seconds",
        "Sampling time per generated token on the CPU in those runs, wall clock.",
    ),
    "other_ms_per_token": ("other_per_token_seconds", "Time per generated token outside decode and sampling."),
    "prompt_tps": ("prompt_tokens_per_second", "Prompt processing speed by llama.cpp's perf counters."),
    "prompt_tps_wall": ("prompt_wall_tokens_per_second", "Prompt processing speed by the wall clock."),
    "ttft_warm_ms": ("ttft_warm_seconds", "Time to first token of the warm runs (mean)."),
    "ttft_cold_ms": ("ttft_cold_seconds", "Time to first token of the first run after the load."),
    "total_s": ("inference_run_seconds", "Wall clock of one measured inference run (mean)."),
    "prompt_tokens": ("prompt_tokens", "Tokens in the benchmark prompt."),
    "generated_tokens": ("generated_tokens", "Tokens generated per measured run (mean)."),
    "bytes_per_token": ("read_per_token_bytes", "Estimate: bytes read from memory per generated token."),
    "bandwidth_achieved": ("bandwidth_achieved_bytes_per_second", "Estimate: memory bandwidth achieved."),
    "bandwidth_peak": ("bandwidth_peak_bytes_per_second", "Estimate: the GPU's peak memory bandwidth."),
    "bandwidth_pct_of_peak": ("bandwidth_of_peak_ratio", "Estimate: achieved over peak memory bandwidth."),
    "bandwidth_probed": ("bandwidth_probed_bytes_per_second", "Device memory bandwidth of detect's timed copies."),
    "bandwidth_pct_of_probed": (
        "bandwidth_of_probed_ratio",
        "Estimate: achieved over the probed memory bandwidth.",
    ),
    "gpu_util_mean": ("gpu_utilization_mean_ratio", "NVML GPU utilisation during inference, mean (0-1)."),
    "gpu_util_max": ("gpu_utilization_max_ratio", "NVML GPU utilisation during inference, max (0-1)."),
    "vram_peak": ("vram_peak_bytes", "NVML used GPU memory during inference, peak."),
    "power_mean": ("power_mean_watts", "NVML power draw during inference, mean."),
    "power_max": ("power_max_watts", "NVML power draw during inference, max."),
    "temperature_max": ("temperature_max_celsius", "NVML GPU temperature during inference, max."),
    "sm_clock_mean": ("sm_clock_mean_hertz", "NVML SM clock during inference, mean."),
    "energy": ("inference_energy_joules", "NVML energy counter difference across the inference window."),
    "energy_per_token": ("energy_per_token_joules", "Energy per generated token across the inference window."),
    "cpu_gen_tps": ("cpu_gen_tokens_per_second", "Generation speed of the 0-GPU-layer comparison run."),
    "speedup_vs_cpu": ("speedup_vs_cpu_ratio", "GPU generation speed over the CPU comparison run."),
}

_UNIT_WORDS = {"ms", "s", "tps", "pct"}  # unit spellings inside report names, replaced by the base-unit suffix
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]+")
_GPU_PREFIX = re.compile(r"^gpu(\d+)\.(.+)$")
_PER_NVML_GPU = re.compile(r"^(?:gpu|perf\.idle|min|llama\.archs)\.(\d+)$")  # detect's checks of GPU N
# detect's checks of torch's cuda:N: N is CUDA's numbering, not NVML's; the evidence's nvml_index maps it
_PER_TORCH_GPU = re.compile(r"^torch\.(?:kernel|bandwidth)\.\d+$")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def metric_name(report_name: str, unit: str) -> tuple[str, str, float] | None:
    """(Prometheus name, HELP, factor) for a report metric; None for a unit with no base-unit rule.

    A figure in a unit not in `UNITS` is left out rather than written under a name that lies about it."""
    if unit not in UNITS:
        return None
    factor, suffix = UNITS[unit]
    if report_name in KNOWN:
        name, help_text = KNOWN[report_name]
        return PREFIX + name, help_text, factor
    words = [w for w in _NAME_BAD.sub("_", report_name).lower().split("_") if w and w not in _UNIT_WORDS]
    base = "_".join(words) or "metric"
    if base == suffix or base.endswith("_" + suffix):
        base = base[: -len(suffix)].rstrip("_") or "value"
    if base.endswith("_total"):  # _total is the counter suffix; these are gauges
        base = base[: -len("_total")] + "_sum"
    return f"{PREFIX}{base}_{suffix}", f"kcuda-validate figure {report_name} ({unit}), in base units.", factor


def label_value(text: Any) -> str:
    """Any text as a label value in the exposition format: safe, single-line, escaped."""
    value = safe(str(text))
    if len(value) > MAX_LABEL_CHARS:
        value = value[: MAX_LABEL_CHARS - 1] + "…"
    value = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help_text(text: str) -> str:
    return safe(text).replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


@dataclass
class _Family:
    help: str
    samples: list[tuple[tuple[tuple[str, str], ...], float]] = field(default_factory=list)


class _Builder:
    """Families in first-seen order; one series per name and label set (the first wins)."""

    def __init__(self, common: Mapping[str, str]) -> None:
        self.common = dict(common)
        self.families: dict[str, _Family] = {}
        self._seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def add(self, name: str, help_text: str, value: float | int | bool | None, **labels: Any) -> None:
        if value is None or isinstance(value, str):
            return
        if isinstance(value, float) and not math.isfinite(value):
            return
        merged = {**self.common, **{k: str(v) for k, v in labels.items() if v is not None}}
        key = tuple(sorted(merged.items()))
        if (name, key) in self._seen:
            return
        self._seen.add((name, key))
        self.families.setdefault(name, _Family(help_text)).samples.append((key, value))

    def text(self) -> str:
        lines: list[str] = []
        for name, fam in self.families.items():
            lines.append(f"# HELP {name} {_help_text(fam.help)}")
            lines.append(f"# TYPE {name} gauge")
            for labels, value in fam.samples:
                body = ",".join(f'{k}="{label_value(v)}"' for k, v in labels)
                lines.append(f"{name}{{{body}}} {_number(value)}")
        return "\n".join(lines) + "\n"


def model_label(doc: Mapping[str, Any]) -> str:
    """The GGUF file name this run used ("" when it got that far): never the directory, which is the user's."""
    sections = doc.get("sections") or {}
    model = sections.get("model") or {}
    path = model.get("path") or (sections.get("load") or {}).get("model_path")
    if not path:
        source = sections.get("model_source") or {}
        path = source.get("filename") or ""
    return str(path).rsplit("/", 1)[-1]  # a POSIX path: a backslash is part of a Linux file name


def _gpu_labels(gpu: Mapping[str, Any] | None) -> dict[str, str]:
    if not gpu:
        return {"gpu": "", "UUID": ""}
    index = gpu.get("index")
    return {"gpu": "" if index is None else str(index), "UUID": str(gpu.get("uuid") or "")}


def _timestamp(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def textfile(doc: Mapping[str, Any]) -> str:
    """The Prometheus textfile for one report document (see the module docstring for the conventions)."""
    sections = doc.get("sections") or {}
    devices: Mapping[str, Any] = sections.get("devices") or {}
    versions = doc.get("versions") or {}
    b = _Builder(
        {
            "command": str(doc.get("command") or ""),
            "device_mode": str(doc.get("device_mode") or ""),
            "model": model_label(doc),
        }
    )
    seen = {
        str(g["index"]): _gpu_labels(g)
        for g in (sections.get("detect") or {}).get("gpus") or []
        if isinstance(g, Mapping) and g.get("index") is not None
    }
    # --all-devices, or a node-wide command on several GPUs: the run-wide series are about all of them.
    about_all = bool(devices) or (doc.get("command") in ("detect", "health") and len(seen) > 1)
    run_gpu = {"gpu": "", "UUID": ""} if about_all else _gpu_labels(doc.get("gpu"))
    device_gpu = {str(k): _gpu_labels((v or {}).get("gpu") or {"index": k}) for k, v in devices.items()}

    def gpu_of(name: str, evidence: Any = None) -> tuple[dict[str, str], str]:
        m = _GPU_PREFIX.match(name)
        if m and devices:
            return device_gpu.get(m.group(1), {"gpu": m.group(1), "UUID": ""}), m.group(2)
        one = _PER_NVML_GPU.match(name)
        if one and one.group(1) in seen:
            return seen[one.group(1)], name
        if _PER_TORCH_GPU.match(name):
            index = evidence.get("nvml_index") if isinstance(evidence, Mapping) else None
            # unmapped (torch and NVML disagree on the card): no GPU's labels rather than the wrong one's
            return seen.get(str(index), {"gpu": "", "UUID": ""}), name
        return run_gpu, name

    b.add(
        PREFIX + "info",
        "Versions of the tool, the engine, the NVIDIA driver and its CUDA; value 1.",
        1,
        version=versions.get("kcuda-validate") or (doc.get("tool") or {}).get("version") or "",
        llama_cpp_python=versions.get("llama-cpp-python") or "",
        driver=versions.get("nvidia_driver") or "",
        cuda=versions.get("cuda_driver") or "",
        torch=versions.get("torch") or "",
        torch_cuda=versions.get("torch_cuda") or "",
        **run_gpu,
    )
    b.add(
        PREFIX + "last_run_timestamp_seconds",
        "When the run finished, in seconds since the Unix epoch.",
        _timestamp(doc.get("finished_at")),
        **run_gpu,
    )
    b.add(PREFIX + "run_duration_seconds", "Wall clock of the whole command.", doc.get("duration_s"), **run_gpu)
    b.add(
        PREFIX + "exit_code",
        "The exit code (0 passed; see `kcuda-validate exit-codes`); per GPU too with --all-devices.",
        doc.get("exit_code"),
        reason=doc.get("exit_reason") or "",
        stopped_at=doc.get("stopped_at") or "",
        **run_gpu,
    )
    for key, dev in devices.items():
        dev = dev or {}
        b.add(
            PREFIX + "exit_code",
            "",
            dev.get("exit_code"),
            reason=ExitCode.reason_of(dev.get("exit_code"), ""),
            stopped_at=dev.get("stopped_at") or "",
            **device_gpu[str(key)],
        )
    b.add(
        PREFIX + "passed", "1 when every check passed (a CPU run can pass), else 0.", bool(doc.get("passed")), **run_gpu
    )
    b.add(
        PREFIX + "gpu_validated",
        "1 only when a model ran on a GPU and every check passed, else 0.",
        bool(doc.get("gpu_validated")),
        **run_gpu,
    )
    b.add(
        PREFIX + "interrupted",
        "1 when the run was interrupted (SIGINT/SIGTERM).",
        bool(doc.get("interrupted")),
        **run_gpu,
    )
    for check in _checks(doc.get("checks")):
        labels, check_id = gpu_of(str(check.get("id") or ""), check.get("evidence"))
        status = str(check.get("status") or "")
        for s in STATUSES:
            b.add(
                PREFIX + "check_status",
                "1 for the check's status (pass, warn, fail or skip), 0 for the other three.",
                s == status,
                check=check_id,
                stage=check.get("stage") or "",
                status=s,
                **labels,
            )
    for name, metric in (doc.get("metrics") or {}).items():
        if not isinstance(metric, Mapping):
            continue
        labels, base = gpu_of(str(name))
        named = metric_name(base, str(metric.get("unit") or ""))
        value = metric.get("value")
        if named is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        prom, help_text, factor = named
        b.add(prom, help_text, value * factor if factor != 1.0 else value, **labels)
    return b.text()


def _checks(checks: Any) -> Iterable[Mapping[str, Any]]:
    return [c for c in checks or () if isinstance(c, Mapping)]
