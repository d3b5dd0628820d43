"""One kcuda-validate JSON report -> frozen `FleetRow`s, the unit `fleet` compares: pure, no I/O.

A row holds only what the report says; a figure it does not have stays None (n/a), never a guess.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kcuda_validate.errors import ExitCode

REPORT_SCHEMA_VERSION = "1.0"
COMMANDS = ("detect", "setup", "health", "load", "infer", "validate-all")
CPU_RUN = "CPU run (no GPU)"


class ReportShapeError(ValueError):
    """A JSON document that is not a kcuda-validate report of the schema this tool reads."""


@dataclass(frozen=True)
class FleetRow:
    """One node/GPU/command, from the newest report that has it."""

    file: str
    node: str
    command: str
    gpu_index: int | None
    gpu_uuid: str | None
    gpu_model: str | None  # None: no GPU in the report (a CPU run, or the run stopped before choosing one)
    device_mode: str
    passed: bool
    exit_code: int
    exit_reason: str
    stopped_at: str | None
    driver: str | None
    cuda: str | None
    engine_version: str | None
    engine_build: str | None  # "CUDA 8.9,9.0" / "CPU"; None when the report has no detect section
    gen_tps: float | None
    ttft_ms: float | None
    j_per_token: float | None
    model: str | None  # the model file's name
    model_key: str | None  # name and size: the same file on every node
    settings: str | None  # the inference and load options that change the speed, canonical JSON
    finished_at: str
    timestamp: float

    @property
    def gpu_label(self) -> str:
        if self.gpu_model is None:
            return CPU_RUN if self.device_mode == "cpu" else "none"
        return self.gpu_model if self.gpu_index is None else f"{self.gpu_index}: {self.gpu_model}"

    @property
    def group_model(self) -> str:
        """The GPU model for grouping: CPU runs form their own group, never one with a GPU."""
        if self.device_mode == "cpu":
            return CPU_RUN
        return self.gpu_model or "no GPU"

    @property
    def engine(self) -> str | None:
        if self.engine_version is None:
            return None
        return self.engine_version + (f" {self.engine_build}" if self.engine_build else "")

    @property
    def verdict(self) -> str:
        if not self.passed:
            return f"FAIL (exit {self.exit_code} {self.exit_reason})"
        return "pass (CPU run)" if self.device_mode == "cpu" else "pass"

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "gpu_index": self.gpu_index,
            "gpu_uuid": self.gpu_uuid,
            "gpu_model": self.gpu_model,
            "command": self.command,
            "device_mode": self.device_mode,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "exit_reason": self.exit_reason,
            "stopped_at": self.stopped_at,
            "nvidia_driver": self.driver,
            "cuda_driver": self.cuda,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "engine_build": self.engine_build,
            "gen_tps": self.gen_tps,
            "ttft_warm_ms": self.ttft_ms,
            "energy_per_token_j": self.j_per_token,
            "model": self.model,
            "finished_at": self.finished_at,
            "file": self.file,
        }


def rows_from_report(doc: Any, file: str) -> tuple[FleetRow, ...]:
    """The rows one report gives: one, or one per GPU for `--all-devices`. ReportShapeError when it is no report."""
    if not isinstance(doc, dict):
        raise ReportShapeError(f"a JSON {type(doc).__name__}, not a report object")
    if "schema_version" not in doc:
        raise ReportShapeError("schema_version is missing")
    version = doc["schema_version"]
    if not isinstance(version, str):  # 1.0 (a number) looks like "1.0" when shown bare
        raise ReportShapeError(f'schema_version is {_show(version)}, not the string "{REPORT_SCHEMA_VERSION}"')
    if version != REPORT_SCHEMA_VERSION:
        raise ReportShapeError(f"schema_version {_show(version)}, this tool reads {REPORT_SCHEMA_VERSION}")
    tool = _field(doc, "tool", dict)
    if tool.get("name") != "kcuda-validate":
        raise ReportShapeError(f"tool.name {_show(tool.get('name'))}, not 'kcuda-validate'")
    command = _field(doc, "command", str)
    if command not in COMMANDS:
        raise ReportShapeError(f"command {command!r} is not one of {', '.join(COMMANDS)}")
    host = _field(doc, "host", dict)
    node = _field(host, "hostname", str, "host.")
    if not node:
        raise ReportShapeError("host.hostname is empty")
    device_mode = _field(doc, "device_mode", str)
    if device_mode not in ("gpu", "cpu"):
        raise ReportShapeError(f"device_mode {device_mode!r} is not 'gpu' or 'cpu'")
    passed = _field(doc, "passed", bool)
    exit_code = _field(doc, "exit_code", int)
    exit_reason = _field(doc, "exit_reason", str)
    stopped_at = _field(doc, "stopped_at", (str, type(None)))
    finished_at = _field(doc, "finished_at", str)
    timestamp = _timestamp(finished_at)
    versions = _field(doc, "versions", dict)
    metrics = _field(doc, "metrics", dict)
    sections = _field(doc, "sections", dict)
    gpu = _field(doc, "gpu", (dict, type(None)))
    engine_version = _str_or_none(versions.get("llama-cpp-python"))
    engine_build = _engine_build(sections.get("detect"))
    common = {
        "file": file,
        "node": node,
        "command": command,
        "device_mode": device_mode,
        "driver": _str_or_none(versions.get("nvidia_driver")),
        "cuda": _str_or_none(versions.get("cuda_driver")),
        "engine_version": engine_version,
        "engine_build": engine_build,
        "finished_at": finished_at,
        "timestamp": timestamp,
    }
    devices = sections.get("devices")
    if isinstance(devices, dict) and devices:  # --all-devices: one row per GPU, metrics prefixed gpuN.
        rows = []
        for key, dev in sorted(devices.items(), key=lambda kv: natural_key(kv[0])):
            if not isinstance(dev, dict):
                raise ReportShapeError(f"sections.devices.{key} is not an object")
            code = dev.get("exit_code")
            if not isinstance(code, int) or isinstance(code, bool):
                raise ReportShapeError(f"sections.devices.{key}.exit_code is not an integer")
            got = dev.get("sections")
            dev_sections: dict[str, Any] = got if isinstance(got, dict) else {}
            rows.append(
                FleetRow(
                    **common,
                    **_gpu_fields(dev.get("gpu"), f"sections.devices.{key}.gpu"),
                    passed=code == 0,
                    exit_code=code,
                    exit_reason=ExitCode.reason_of(code, "unknown"),  # its own: the report's is the worst over all GPUs
                    stopped_at=_str_or_none(dev.get("stopped_at")),
                    **_figures(metrics, f"gpu{key}."),
                    **_model_fields(dev_sections),
                )
            )
        return tuple(rows)
    return (
        FleetRow(
            **common,
            **_gpu_fields(gpu, "gpu"),
            passed=passed,
            exit_code=exit_code,
            exit_reason=exit_reason,
            stopped_at=stopped_at,
            **_figures(metrics, ""),
            **_model_fields(sections),
        ),
    )


def _field(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...], prefix: str = "") -> Any:
    if name not in doc:
        raise ReportShapeError(f"{prefix}{name} is missing")
    value = doc[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ReportShapeError(f"{prefix}{name} is {_show(value)}, not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", str: "a string", bool: "true or false", int: "an integer", type(None): "null"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _timestamp(text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ReportShapeError(f"finished_at {_show(text)} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _gpu_fields(gpu: Any, where: str) -> dict[str, Any]:
    if gpu is None:
        return {"gpu_index": None, "gpu_uuid": None, "gpu_model": None}
    if not isinstance(gpu, dict):
        raise ReportShapeError(f"{where} is not an object or null")
    index = gpu.get("index")
    return {
        "gpu_index": index if isinstance(index, int) and not isinstance(index, bool) else None,
        "gpu_uuid": _str_or_none(gpu.get("uuid")),
        "gpu_model": _str_or_none(gpu.get("name")),
    }


def _figures(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {
        "gen_tps": _metric(metrics, prefix + "gen_tps"),
        "ttft_ms": _metric(metrics, prefix + "ttft_warm_ms"),
        "j_per_token": _metric(metrics, prefix + "energy_per_token"),
    }


def _metric(metrics: Mapping[str, Any], name: str) -> float | None:
    m = metrics.get(name)
    if m is None:
        return None
    if not isinstance(m, dict):
        raise ReportShapeError(f"metrics.{name} is not an object")
    value = m.get("value")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportShapeError(f"metrics.{name}.value is {_show(value)}, not a number or null")
    try:
        number = float(value)  # a JSON integer has no size limit; a float does
    except OverflowError:
        raise ReportShapeError(f"metrics.{name}.value is {_show(value)}, too large for a figure") from None
    return number if math.isfinite(number) else None


def _engine_build(detect: Any) -> str | None:
    """What the llama-cpp-python build runs on (detect's llama_cpp section): "CUDA 8.9,9.0", "CPU"."""
    llama = detect.get("llama_cpp") if isinstance(detect, dict) else None
    if not isinstance(llama, dict) or not llama.get("installed"):
        return None
    backends = [b for b in llama.get("backends") or () if isinstance(b, str)]
    archs = [a for a in llama.get("cuda_archs") or () if isinstance(a, str)]
    if "CUDA" in backends:
        return "CUDA " + ",".join(archs) if archs else "CUDA"
    return "/".join(backends) or None


# The options that change the speed: the same model file, these and the GPU model make a comparable group.
_SPEED_OPTIONS = ("max_tokens", "temperature", "repeat", "warmup", "prompt", "prompt_tokens", "chat", "top_k", "top_p")


def _model_fields(sections: Mapping[str, Any]) -> dict[str, Any]:
    model = sections.get("model")
    name = size = None
    if isinstance(model, dict):
        path = model.get("path")
        name = os.path.basename(path) if isinstance(path, str) and path else None
        size = model.get("file_size_bytes")
    inference, load = sections.get("inference"), sections.get("load")
    settings = None
    if isinstance(inference, dict) and isinstance(inference.get("options"), dict):
        options = inference["options"]
        chosen = {k: options.get(k) for k in _SPEED_OPTIONS}
        # The path the measured runs took (auto resolves per build and device), else the one asked for.
        chosen["sampling"] = inference.get("sampling") or options.get("sampling")
        if isinstance(load, dict):
            chosen |= {"n_ctx": load.get("n_ctx"), "gpu_layers": load.get("gpu_layers_requested")}
        settings = json.dumps(chosen, sort_keys=True, default=str)
    return {"model": name, "model_key": None if name is None else f"{name} ({size} bytes)", "settings": settings}


def natural_key(text: str) -> tuple[Any, ...]:
    """node-2 before node-10. Runs of ASCII digits only ('²' is isdigit() but no int), compared by length then
    digits rather than by int(), which refuses a run of over 4300 digits."""
    parts = re.split(r"([0-9]+)", text)  # digit runs at the odd places, so like is always compared with like
    return tuple((len(p.lstrip("0")), p.lstrip("0")) if i % 2 else p for i, p in enumerate(parts))
