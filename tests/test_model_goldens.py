"""`load` and `validate-all` through the real CLI: whole output (human and JSON) compared with golden files.

Two kinds of case, each one run of the real CLI giving stdout, stderr and the JSON report (`--report`):

- GPU runs on the no-GPU hardware scenarios of fakes/hardware.py (no driver, no device, every GPU hidden,
  lost, no handle, a CPU-only llama.cpp build with a GPU, ...): only the hardware seams are faked.
- CPU runs (`--device cpu`) of the tiny synthetic model with the real llama.cpp in the real worker.

Figures that vary from run to run are masked in one way, `mask_text` / `mask_json` below:

1. this run's temporary directories become `<tmp>` (the test's) and `<models>` (the synthetic model cache);
2. human output only: table rows that rich wrapped are joined back into one line and the inference panel's
   right border is drawn at one width, so a figure's width cannot move a line break;
3. every figure that measures this run becomes `#`: a number followed by `s`, `ms`, `ms/token` or `tok/s`,
   a figure with its spread (`# ± #`), and the host memory available (`of # MiB available host memory`);
4. JSON only: every float becomes "#" (the report's floats are measurements or figures derived from them;
   the options they could also be are pinned by the command line), and so do `budget_bytes`, the llama.cpp
   devices' `memory_free`/`memory_total`, `started_at`/`finished_at`, `argv` (pytest's) and the `host`
   block; strings get rule 3.

The model is linked from a directory whose name has a fixed length, so that rich folds its path the same way
on every run.

Regenerate after an intended change to the output, then review the diff of tests/golden/ like code:

    KCUDA_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_model_goldens.py
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fakes.hardware import install
from goldens import GOLDEN, assert_golden
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode


@dataclass(frozen=True)
class Case:
    command: str
    scenario: str
    args: tuple[str, ...]
    exit_code: ExitCode
    needs_cpu_only_llama: bool = False  # the real worker's llama.cpp build decides the outcome


NO_GPU_SCENARIOS = {
    "no_driver": ExitCode.NO_GPU,
    "no_device": ExitCode.NO_GPU,
    "wsl1": ExitCode.NO_GPU,
    "wsl2_missing_libs": ExitCode.NO_GPU,
    "all_gpus_hidden": ExitCode.GPU_UNUSABLE,
    "all_gpus_hidden_empty": ExitCode.GPU_UNUSABLE,
    "visible_devices_unknown_uuid": ExitCode.GPU_UNUSABLE,
    "gpu_lost": ExitCode.GPU_UNUSABLE,
    "gpu_no_handle": ExitCode.GPU_UNUSABLE,
    "driver_mismatch": ExitCode.GPU_UNUSABLE,
}
# One token, one measured run: no decode window, so no perf-counter-vs-wall-clock check whose verdict
# (within or outside ±15%) depends on how busy the machine is.
INFER = ("--max-tokens", "1", "--repeat", "1")

CASES: dict[str, Case] = {}
for _name, _code in NO_GPU_SCENARIOS.items():
    CASES[f"load/{_name}"] = Case("load", _name, (), _code)
    CASES[f"validate_all/{_name}"] = Case("validate-all", _name, INFER, _code)
CASES["validate_all/llama_cpu_only_with_gpu"] = Case(
    "validate-all", "llama_cpu_only_with_gpu", INFER, ExitCode.GPU_UNUSABLE
)
CASES["validate_all/gpu_lost_after_detect"] = Case(
    "validate-all", "gpu_lost_after_detect", (*INFER, "--skip-torch"), ExitCode.GPU_UNUSABLE
)
CASES["load/llama_cpu_only_with_gpu"] = Case(
    "load", "llama_cpu_only_with_gpu", (), ExitCode.GPU_UNUSABLE, needs_cpu_only_llama=True
)
for _name in ("no_driver", "healthy_one_gpu", "llama_cpu_only_with_gpu"):
    CASES[f"load/cpu_run_{_name}"] = Case("load", _name, ("--device", "cpu"), ExitCode.OK)
    CASES[f"validate_all/cpu_run_{_name}"] = Case("validate-all", _name, ("--device", "cpu", *INFER), ExitCode.OK)

_UNIT = r"(?:ms/token|tok/s|ms|s)\b"
_FIGURES = (
    (re.compile(r"\d[\d,]*(?:\.\d+)?(?= ± )"), "#"),
    (re.compile(r"\d[\d,]*(?:\.\d+)?(?=\s?" + _UNIT + ")"), "#"),
    (re.compile(r"± \d[\d,]*(?:\.\d+)?"), "± #"),
    (re.compile(r"of \d[\d,]* MiB available host memory"), "of # MiB available host memory"),
)
_ROW = re.compile(r"^(PASS|WARN|FAIL|SKIP) ")
_MASKED_KEYS = {"budget_bytes", "memory_free", "memory_total", "started_at", "finished_at", "argv"}


def _paths(text: str, tmp: Path, models: Path) -> str:
    return text.replace(str(models), "<models>").replace(str(tmp), "<tmp>")


def mask_text(text: str) -> str:
    """Rule 3: every figure that measures this run becomes #."""
    for pattern, repl in _FIGURES:
        text = pattern.sub(repl, text)
    return text


def unwrap(text: str) -> str:
    """Rule 2: wrapped table rows joined, panel lines without the padding before their right border."""
    out: list[str] = []
    in_row = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if in_row and line.startswith(" " * 8) and line.strip():
            out[-1] += " " + line.strip()
            continue
        in_row = bool(_ROW.match(line))
        line = re.sub(r"\s+│$", " │", line)
        line = re.sub(r"─{2,}([╮╯])$", r"─\1", line)
        out.append(line)
    return "\n".join(out) + "\n"


def mask_json(value: Any, key: str = "") -> Any:
    """Rule 4."""
    if key == "host" or key in _MASKED_KEYS:
        return "#"
    if isinstance(value, dict):
        return {k: mask_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json(v) for v in value]
    if isinstance(value, float):
        return "#"
    if isinstance(value, str):
        return mask_text(value)
    return value


def human(stdout: str, stderr: str) -> str:
    text = mask_text(unwrap(stdout))
    if stderr:
        text += "--- stderr ---\n" + mask_text(unwrap(stderr))
    return text


def have_cpu_only_llama() -> bool:
    from kcuda_validate.llm.build import probe_llama_build

    return not probe_llama_build().supports_gpu_offload


@pytest.fixture
def model(tiny_model: Path) -> Iterator[Path]:
    """The tiny model under /tmp/kcuda-golden-XXXXXXXX/ (a fixed-length path, see the module docstring)."""
    base = Path(tempfile.mkdtemp(prefix="kcuda-golden-", dir="/tmp"))
    link = base / tiny_model.name
    link.symlink_to(tiny_model)
    yield link
    shutil.rmtree(base)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_output(name: str, model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    case = CASES[name]
    if case.needs_cpu_only_llama and not have_cpu_only_llama():
        pytest.skip("the worker's llama.cpp can offload: this golden is for a CPU-only build")
    install(case.scenario, monkeypatch, tmp_path)
    report = tmp_path / "report.json"
    args = [case.command, "--model-path", str(model), *case.args, "--report", str(report)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == case.exit_code, result.output
    assert "Traceback" not in result.output
    models = model.parent
    got = human(_paths(result.stdout, tmp_path, models), _paths(result.stderr, tmp_path, models))
    assert_golden(GOLDEN / f"{name}.txt", got)
    doc = mask_json(json.loads(_paths(report.read_text(encoding="utf-8"), tmp_path, models)))
    assert doc["exit_code"] == case.exit_code
    assert_golden(GOLDEN / f"{name}.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def test_no_stale_golden_files() -> None:
    found = {f"{p.parent.name}/{p.stem}" for d in ("load", "validate_all") for p in (GOLDEN / d).glob("*.*")}
    assert found == set(CASES)


def test_the_mask_is_one_rule_for_every_figure() -> None:
    assert mask_text("loaded in 0.03 s (n_ctx 4096, CPU only)") == "loaded in # s (n_ctx 4096, CPU only)"
    assert mask_text("3,962 ± 31 tok/s · decode 0.25 ms/token, TTFT 5 ms, 1 run(s)") == (
        "# ± # tok/s · decode # ms/token, TTFT # ms, 1 run(s)"
    )
    assert mask_text("needs ~60 MiB of 23,377 MiB available host memory") == (
        "needs ~60 MiB of # MiB available host memory"
    )
    assert unwrap("PASS   Memory fit   needs ~60 MiB of 23,402  \n                    MiB available\n") == (
        "PASS   Memory fit   needs ~60 MiB of 23,402 MiB available\n"
    )
