"""Every exit code of specs/exit-codes.md, reached by a real CLI run of each command that can give it.

The table is parsed from the spec, so a code documented there with no path here fails
`test_every_documented_code_has_a_path`. Hardware comes from the named scenarios of fakes/hardware.py; the
model runs use the tiny synthetic model with the real llama.cpp in the real worker (faults injected with
KCUDA_TEST_FAULT, as specs/cli.md documents).

Codes whose paths are still covered only elsewhere are listed in ELSEWHERE, with the test that covers them:
moving one here is the remaining work, and a new code in the spec cannot hide among them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from fakes.hardware import install
from kcuda_validate.cli import cli

REPO = Path(__file__).resolve().parent.parent
MODEL = "<model>"  # replaced by the tiny synthetic model's path


def documented_codes() -> dict[int, str]:
    """code -> name, from the table of specs/exit-codes.md."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([a-z_]+)\s*\|", (REPO / "specs" / "exit-codes.md").read_text(), re.M)
    return {int(code): name for code, name in rows}


@dataclass(frozen=True)
class Run:
    code: int
    args: tuple[str, ...]
    scenario: str | None = None
    fault: str | None = None


CPU = ("--device", "cpu", "--model-path", MODEL)
INFER = ("--max-tokens", "1", "--repeat", "1")

PATHS: dict[str, Run] = {
    # 0 ok
    "detect-ok": Run(0, ("detect",), "healthy_one_gpu"),
    "load-ok-cpu": Run(0, ("load", *CPU), "no_driver"),
    "infer-ok-cpu": Run(0, ("infer", *CPU, *INFER), "no_driver"),
    "validate-all-ok-cpu": Run(0, ("validate-all", *CPU, *INFER), "no_driver"),
    "health-ok": Run(0, ("health",), "healthy_one_gpu"),
    "setup-ok-dry-run": Run(0, ("setup", "--dry-run"), "llama_cpu_only_with_gpu"),
    "exit-codes-ok": Run(0, ("exit-codes",)),
    # 1 check_failed
    "health-check-failed": Run(1, ("health",), "no_driver"),
    # 2 usage
    "detect-usage": Run(2, ("detect", "--device", "gpu0")),
    "load-usage": Run(2, ("load", "--gpu-layers", "-2")),
    "infer-usage": Run(2, ("infer", "   ", "--device", "cpu")),
    "validate-all-usage": Run(2, ("validate-all", "--min-vram-gb", "nan")),
    "setup-usage": Run(2, ("setup", "--arch", "1")),
    "health-usage": Run(2, ("health", "--check", "no.such.check")),
    "exit-codes-usage": Run(2, ("exit-codes", "--no-such-option")),
    # 3 no_gpu
    "detect-no-gpu": Run(3, ("detect",), "no_driver"),
    "load-no-gpu": Run(3, ("load", "--model-path", MODEL), "no_device"),
    "infer-no-gpu": Run(3, ("infer", "--model-path", MODEL, *INFER), "no_driver"),
    "validate-all-no-gpu": Run(3, ("validate-all", "--model-path", MODEL, *INFER), "no_driver"),
    "setup-no-gpu": Run(3, ("setup",), "no_driver"),
    # 4 gpu_unusable
    "detect-gpu-unusable": Run(4, ("detect",), "gpu_lost"),
    "load-gpu-unusable": Run(4, ("load", "--model-path", MODEL), "all_gpus_hidden"),
    "infer-gpu-unusable": Run(4, ("infer", "--model-path", MODEL, *INFER), "gpu_no_handle"),
    "validate-all-gpu-unusable": Run(4, ("validate-all", "--model-path", MODEL, *INFER), "llama_cpu_only_with_gpu"),
    # 5 model_invalid
    "load-model-invalid": Run(5, ("load", "--device", "cpu", "--model-path", "/nonexistent/m.gguf")),
    "infer-model-invalid": Run(5, ("infer", "--device", "cpu", "--model-path", "/nonexistent/m.gguf")),
    "validate-all-model-invalid": Run(
        5, ("validate-all", "--device", "cpu", "--model-path", "/nonexistent/m.gguf"), "no_driver"
    ),
    # 6 below_threshold
    "detect-below-threshold": Run(6, ("detect",), "below_minimums"),
    "infer-below-threshold": Run(6, ("infer", *CPU, *INFER, "--max-ttft-ms", "0"), "no_driver"),
    "validate-all-below-threshold": Run(6, ("validate-all", "--model-path", MODEL, *INFER), "below_minimums"),
    # 7 crashed
    "load-crashed": Run(7, ("load", *CPU), "no_driver", fault="segv:load"),
    "infer-crashed": Run(7, ("infer", *CPU, *INFER), "no_driver", fault="segv:infer"),
    "validate-all-crashed": Run(7, ("validate-all", *CPU, *INFER), "no_driver", fault="abort:infer"),
    # 124 timeout
    "load-timeout": Run(124, ("load", *CPU, "--timeout", "1"), "no_driver", fault="hang:load"),
    "infer-timeout": Run(124, ("infer", *CPU, *INFER, "--timeout", "1"), "no_driver", fault="hang:infer"),
    "validate-all-timeout": Run(124, ("validate-all", *CPU, *INFER, "--timeout", "1"), "no_driver", fault="hang:load"),
    "health-timeout": Run(124, ("health", "--check", "llama.build", "--timeout", "0.5"), fault="hang:llama"),
}

# code -> where its paths are tested today (not yet moved here).
ELSEWHERE = {
    10: "tests/model/test_hub.py (local Hub server)",
    11: "tests/model/test_hub.py (local Hub server)",
    12: "tests/model/test_hub.py (local Hub server)",
    13: "tests/model/test_synthetic.py (disk full)",
    70: "tests/test_stage_errors.py",
    130: "tests/test_signals.py (real SIGINT)",
    143: "tests/test_signals.py (real SIGTERM)",
}


def test_the_spec_table_parses() -> None:
    codes = documented_codes()
    assert codes[0] == "ok" and codes[2] == "usage" and codes[124] == "timeout"


def test_every_documented_code_has_a_path() -> None:
    covered = {p.code for p in PATHS.values()}
    assert set(documented_codes()) == covered | set(ELSEWHERE)
    assert not covered & set(ELSEWHERE)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_exit_code_path(name: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = PATHS[name]
    if path.scenario is not None:
        install(path.scenario, monkeypatch, tmp_path)
    if path.fault is not None:
        monkeypatch.setenv("KCUDA_TEST_FAULT", path.fault)
    args = [str(tiny_model) if a == MODEL else a for a in path.args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == path.code, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    if name.startswith("health-") and path.code in (0, 1, 124):  # node-problem-detector's one line
        first = {0: "OK: ", 1: "FAIL ", 124: "UNKNOWN: "}[path.code]
        assert result.stdout.startswith(first) and len(result.stdout.splitlines()) == 1, result.stdout
    elif path.code == 2:
        assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) <= 2, result.stderr
    elif path.code != 0:
        verdicts = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
        assert (verdicts and verdicts[0].endswith(f"(exit {path.code})")) or result.stderr.startswith("Error: "), (
            result.stdout,
            result.stderr,
        )
