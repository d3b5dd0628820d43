"""The report: one versioned schema for --json and --report, and a JUnit file CI systems can show."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
from click.testing import CliRunner

from kcuda_validate.checks import Metric, failed, passed, skipped, warned
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode
from kcuda_validate.report import Report, write_atomic

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "specs" / "report.schema.json").read_text())


def validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize(
    "args",
    [
        ["detect", "--skip-torch"],
        ["detect", "--device", "cpu"],
        ["load", "--device", "cpu", "--model-path", "/nonexistent.gguf"],
    ],
)
def test_cli_json_validates(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["--json", *args])
    doc = json.loads(result.stdout)
    validate(doc)
    assert doc["exit_code"] == result.exit_code


def test_full_cpu_run_report_validates_and_carries_units(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        cli,
        ["validate-all", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "8", "--report", str(out)],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    validate(doc)
    for name in ("gen_tps", "gen_tps_wall", "prompt_tps", "ttft_cold_ms", "ttft_warm_ms", "load_time"):
        metric = doc["metrics"][name]
        assert metric["value"] is not None and metric["value"] > 0, name
        assert metric["unit"] and metric["method"], name
    assert doc["versions"]["llama-cpp-python"]
    assert doc["started_at"] <= doc["finished_at"]
    assert doc["summary"]["fail"] == 0


def _sample_report() -> Report:
    r = Report("validate-all", argv=["validate-all"])
    r.add(
        passed("driver.nvml", "detect", "NVIDIA driver (NVML)", "driver 560.35.03", driver="560.35.03"),
        warned("env.hub", "detect", "Hub", "offline", "unset HF_HUB_OFFLINE"),
        skipped("torch.cuda", "detect", "PyTorch CUDA", "skipped (--skip-torch)"),
        failed("load.offload", "load", "GPU offload", "0/25 layers on a GPU", "rebuild <with> & CUDA", ExitCode(4)),
    )
    r.add_metrics([Metric("gen_tps", 51.5, "tokens/s", "llama_perf_context", samples=(50.0, 53.0), stddev=2.1)])
    return r


def test_exit_code_is_the_most_specific_failure() -> None:
    r = _sample_report()
    assert r.exit_code == ExitCode.GPU_UNUSABLE
    r.add(failed("threshold.min_gen_tps", "threshold", "t", "slow", None, ExitCode.BELOW_THRESHOLD))
    assert r.exit_code == ExitCode.GPU_UNUSABLE
    validate(r.to_json())


def test_junit_has_one_testcase_per_check_and_readable_failures() -> None:
    root = ET.fromstring(_sample_report().to_junit_xml().split("\n", 1)[1])
    assert root.tag == "testsuite"
    assert root.get("tests") == "4" and root.get("failures") == "1" and root.get("skipped") == "1"
    cases = root.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "driver.nvml: NVIDIA driver (NVML)",
        "env.hub: Hub",
        "torch.cuda: PyTorch CUDA",
        "load.offload: GPU offload",
    ]
    failure = cases[3].find("failure")
    assert failure is not None and failure.text is not None
    assert failure.get("message") == "0/25 layers on a GPU"
    assert failure.get("type") == "gpu_unusable"
    assert "Fix: rebuild <with> & CUDA" in failure.text  # escaped by the XML writer, readable after parsing
    assert cases[2].find("skipped") is not None
    properties = root.find("properties")
    assert properties is not None
    props = {p.get("name"): p.get("value") for p in properties}
    assert props["exit_code"] == "4"
    assert props["metric.gen_tps"] == "51.5 tokens/s"  # measured figures ride along for CI dashboards


def test_junit_is_well_formed_whatever_the_text_held_and_times_only_what_was_timed() -> None:
    r = Report("detect", argv=["detect"])
    r.add(
        warned("env.hub", "detect", "Hub", "cannot reach a\x1bb\x01.invalid", "check \x00 HF_ENDPOINT"),
        dataclasses.replace(passed("platform.os", "detect", "OS", "Linux \ud800"), duration_s=0.25),
    )
    root = ET.fromstring(r.to_junit_xml().split("\n", 1)[1])  # raw ESC or NUL would not parse at all

    hub, os_case = root.findall("testcase")
    out = hub.find("system-out")
    assert out is not None and out.text == "[warn] cannot reach a\\x1bb\\x01.invalid\nFix: check \\x00 HF_ENDPOINT"
    assert hub.get("time") is None  # not timed on its own: no figure, rather than a 0 nobody measured
    assert os_case.get("time") == "0.250"
    assert root.get("time") is not None


def test_write_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_atomic(target, "{}")
    assert target.read_text() == "{}"

    with pytest.raises(TypeError):
        write_atomic(target, cast(str, 123))
    assert target.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


TOO_LONG = "r" * 300 + ".json"  # over NAME_MAX (255): the parent is made, then the file cannot be


def test_a_failed_write_removes_the_directories_it_created(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    target = tmp_path / "kept" / "ci" / "artifacts" / TOO_LONG
    with pytest.raises(OSError, match="File name too long") as err:
        write_atomic(target, "{}")
    assert err.value.errno == errno.ENAMETOOLONG
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [Path("kept")]  # kept was there before


@pytest.fixture
def disk_full_for(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """The disk fills up during the run for these paths (no real full disk here): every other write is real.

    Every name and path a run can be given is checked before the run (tests/test_cli.py), so a full disk, or a
    directory changed under the run, is what is left to fail at the end."""
    import kcuda_validate.report as report_mod

    real = report_mod.write_atomic

    def install(*paths: Path) -> None:
        def write(path: Path, text: str) -> None:
            if Path(path) in paths:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real(path, text)

        monkeypatch.setattr(report_mod, "write_atomic", write)

    return install


def test_a_failed_report_write_still_writes_the_junit_file(
    tiny_model: Path, tmp_path: Path, disk_full_for: Callable[..., None]
) -> None:
    report, junit = tmp_path / "out" / "r.json", tmp_path / "junit" / "j.xml"
    disk_full_for(report)
    result = CliRunner().invoke(
        cli,
        ["--json", "load", "--device", "cpu", "--model-path", str(tiny_model)]
        + ["--report", str(report), "--junit-xml", str(junit)],
    )
    assert json.loads(result.stdout)["passed"] is True  # the result is printed first
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines()[:2] == [
        f"Error: --report {report}: the report could not be written (No space left on device); the result above stands",
        "Fix: Pass a path in a directory you can write to, or leave the option out.",
    ]
    assert ET.parse(junit).getroot().tag == "testsuite"  # the other file was still written


def test_both_report_files_failing_is_one_error_naming_both(
    tiny_model: Path, tmp_path: Path, disk_full_for: Callable[..., None]
) -> None:
    report, junit = tmp_path / "a" / "r.json", tmp_path / "b" / "j.xml"
    disk_full_for(report, junit)
    result = CliRunner().invoke(
        cli,
        ["load", "--device", "cpu", "--model-path", str(tiny_model)]
        + ["--report", str(report), "--junit-xml", str(junit)],
    )
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines()[0] == (
        f"Error: --report {report}: the report could not be written (No space left on device); "
        f"--junit-xml {junit}: the report could not be written (No space left on device); the result above stands"
    )
    assert not report.exists() and not junit.exists()


def test_a_path_too_long_for_the_filesystem_is_refused_before_the_run(tiny_model: Path, tmp_path: Path) -> None:
    report = tmp_path / "a" / Path(*["d" * 200] * 25) / "r.json"  # every name fits, the whole path does not
    result = CliRunner().invoke(
        cli, ["load", "--device", "cpu", "--model-path", str(tiny_model), "--report", str(report)]
    )
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines()[0] == (
        f"Error: --report {report}: the path is {len(os.fsencode(report))} bytes, more than this system allows"
    )
    assert result.stdout == "" and not (tmp_path / "a").exists()
