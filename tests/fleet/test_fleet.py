"""`kcuda-validate fleet`: on reports written by real CPU runs of the real CLI (copies differ only in the host
name, to stand for several nodes), plus the pure judges on constructed rows.

No GPU here: the real reports are CPU runs and stay labelled so; the GPU model names appear only in rows
constructed for the judges."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kcuda_validate.cli import cli
from kcuda_validate.fleet import (
    MAX_REPORT_BYTES,
    OUTLIER_BELOW_MEDIAN,
    OUTLIER_MIN_PEERS,
    FileProblem,
    judge_mixed,
    judge_outliers,
    newest,
    summarize,
)
from kcuda_validate.fleet_rows import FleetRow, rows_from_report

pytestmark = pytest.mark.fleet

SPECS = Path(__file__).resolve().parents[2] / "specs"


@dataclasses.dataclass(frozen=True)
class RealReports:
    older: dict[str, Any]  # a passing CPU validate-all
    newer: dict[str, Any]  # the same, run a moment later
    failed: dict[str, Any]  # a CPU validate-all on a file that is not GGUF: exit 5 at the model stage


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> RealReports:
    """Three real runs of the CLI (the tiny synthetic model, the real llama.cpp, the real worker)."""
    where = tmp_path_factory.mktemp("real-reports")
    bad = where / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file\n")
    docs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KCUDA_LOG_DIR", str(where / "logs"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        for name, model, code in (("a", tiny_model, 0), ("b", tiny_model, 0), ("fail", bad, 5)):
            args = ["validate-all", "--device", "cpu", "--model-path", str(model), "--max-tokens", "8", "--repeat", "2"]
            result = CliRunner().invoke(cli, [*args, "--report", str(where / f"{name}.json")])
            assert result.exit_code == code, result.stderr
            docs.append(json.loads((where / f"{name}.json").read_text()))
    assert docs[0]["finished_at"] < docs[1]["finished_at"]
    return RealReports(*docs)


def as_node(doc: dict[str, Any], node: str) -> dict[str, Any]:
    """The same report, as if another node had written it: only the host name changes."""
    copy: dict[str, Any] = json.loads(json.dumps(doc))
    copy["host"]["hostname"] = node
    return copy


def write(directory: Path, name: str, doc: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(doc))
    return path


def fleet(*args: str) -> Any:
    return CliRunner().invoke(cli, ["fleet", *args])


def cells(line: str) -> str:
    """A table line with its column padding folded to ' | ' (widths follow the figures' lengths)."""
    return re.sub(r" {2,}", " | ", line.strip())


def row_cells(doc: dict[str, Any], node: str, verdict: str = "pass (CPU run)", stopped: str = "-") -> str:
    m = doc["metrics"]
    figures = f"{m['gen_tps']['value']:.1f} | {m['ttft_warm_ms']['value']:.1f}" if m else "n/a | n/a"
    engine = doc["versions"]["llama-cpp-python"] + " CPU"
    return f"{node} | CPU run (no GPU) | validate-all | {verdict} | {stopped} | n/a | n/a | {engine} | {figures} | n/a"


HEADER = "Node | GPU | Command | Verdict | Stopped at | Driver | CUDA | Engine | Gen tok/s | TTFT ms | J/token"


def test_three_nodes_from_real_reports_pass(real: RealReports, tmp_path: Path) -> None:
    for node in ("node-10", "node-2", "node-1"):
        write(tmp_path / "reports", f"{node}.json", as_node(real.newer, node))
    result = fleet(str(tmp_path / "reports"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Fleet: 3 report files, 3 nodes"
    assert [cells(line) for line in (lines[2], *lines[4:7])] == [
        HEADER,
        row_cells(real.newer, "node-1"),
        row_cells(real.newer, "node-2"),
        row_cells(real.newer, "node-10"),
    ]
    assert set(lines[3]) == {"-", " "}
    assert lines[7:] == ["", "3 rows are CPU runs: not a GPU validation.", "PASS: 3 nodes, 3 rows"]
    assert result.stderr == ""


def test_one_report_is_said_in_the_singular(real: RealReports, tmp_path: Path) -> None:
    result = fleet(str(write(tmp_path, "node-1.json", as_node(real.newer, "node-1"))))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (lines[0], lines[-2:]) == (
        "Fleet: 1 report file, 1 node",
        ["1 row is a CPU run: not a GPU validation.", "PASS: 1 node, 1 row"],
    )


def test_the_newest_report_per_node_counts_and_the_older_are_counted(real: RealReports, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    write(reports, "node-1-old.json", as_node(real.older, "node-1"))
    write(reports, "node-1-new.json", as_node(real.newer, "node-1"))
    write(reports, "node-2.json", as_node(real.older, "node-2"))
    result = fleet(str(reports), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["files"] == {"read": 3, "superseded": 1}
    assert [(r["node"], r["file"], r["finished_at"]) for r in doc["rows"]] == [
        ("node-1", str(reports / "node-1-new.json"), real.newer["finished_at"]),
        ("node-2", str(reports / "node-2.json"), real.older["finished_at"]),
    ]
    assert doc["rows"][0]["gen_tps"] == real.newer["metrics"]["gen_tps"]["value"]
    assert doc["summary"] == "PASS: 2 nodes, 2 rows; 1 superseded report"
    human = fleet(str(reports)).stdout.splitlines()
    assert "1 older report superseded (the newest per node, GPU and command counts)." in human


def test_a_failed_node_fails_the_fleet_and_is_named(real: RealReports, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    write(reports, "node-1.json", as_node(real.newer, "node-1"))
    write(reports, "node-3.json", as_node(real.failed, "node-3"))
    result = fleet(str(reports))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert [cells(line) for line in lines[4:6]] == [
        row_cells(real.newer, "node-1"),
        row_cells(real.failed, "node-3", "FAIL (exit 5 model_invalid)", "model"),
    ]
    assert lines[-1] == "FAIL: 2 nodes, 2 rows; 1 failed (node-3)"
    doc = json.loads(fleet(str(reports), "--json").stdout)
    assert (doc["passed"], doc["exit_code"], doc["failed_nodes"]) == (False, 1, ["node-3"])
    assert doc["rows"][1]["gen_tps"] is None  # the run stopped before inference: n/a, never a number


def test_files_that_are_not_reports_are_lines_not_tracebacks(real: RealReports, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    write(reports, "node-1.json", as_node(real.newer, "node-1"))
    (reports / "truncated.json").write_text(json.dumps(real.newer)[:100])
    (reports / "binary.json").write_bytes(b"\xff\xfe\x00junk")
    write(reports, "list.json", [1, 2])
    no_host = as_node(real.newer, "x")
    del no_host["host"]["hostname"]
    write(reports, "no-host.json", no_host)
    write(reports, "future.json", {**real.newer, "schema_version": "2.0"})
    with (reports / "huge.json").open("wb") as fh:  # sparse: refused by its size, never read
        fh.truncate(MAX_REPORT_BYTES + 1)
    os.mkfifo(reports / "fifo.json")  # opening it for reading must not wait for a writer
    (reports / "dangling.json").symlink_to(tmp_path / "gone.json")
    (reports / ".node-1.json.abc.tmp").write_text("half a report")  # an atomic write in progress: skipped
    result = fleet(str(reports))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    start = lines.index("Files that gave no report (each counts as a failure):")
    d = str(reports)
    assert lines[start + 1 : start + 10] == [
        f"  FAIL {d}/binary.json: not JSON (not UTF-8 text)",
        f"  FAIL {d}/dangling.json: cannot be read (No such file or directory)",
        f"  FAIL {d}/fifo.json: not a regular file",
        f'  FAIL {d}/future.json: not a kcuda-validate report: schema_version "2.0", this tool reads 1.0',
        f"  FAIL {d}/huge.json: 16777217 bytes, over the 16 MiB report limit",
        f"  FAIL {d}/list.json: not a kcuda-validate report: a JSON list, not a report object",
        f"  FAIL {d}/no-host.json: not a kcuda-validate report: host.hostname is missing",
        f"  FAIL {d}/truncated.json: not JSON (Unterminated string starting at: line 1 column 94)",
        "",
    ]
    assert lines[-1] == "FAIL: 1 node, 1 row; 8 files unreadable"
    assert result.stderr == ""
    doc = json.loads(fleet(str(reports), "--json").stdout)
    assert [p["file"] for p in doc["problems"]] == [
        f"{d}/{n}.json" for n in ("binary", "dangling", "fifo", "future", "huge", "list", "no-host", "truncated")
    ]


def test_hostile_numbers_are_lines_not_tracebacks(real: RealReports, tmp_path: Path) -> None:
    """JSON integers have no size limit; a float and Python's int() parser have one."""
    reports = tmp_path / "reports"
    huge_figure = as_node(real.newer, "node-1")
    huge_figure["metrics"]["gen_tps"]["value"] = 10**400
    write(reports, "huge-figure.json", huge_figure)
    (reports / "many-digits.json").write_text(
        json.dumps(as_node(real.newer, "node-2"))[:-1] + ', "x": 1' + "0" * 4300 + "}"
    )
    write(reports, "number-version.json", {**as_node(real.newer, "node-3"), "schema_version": 1.0})
    no_version = as_node(real.newer, "node-4")
    del no_version["schema_version"]
    write(reports, "no-version.json", no_version)
    result = fleet(str(reports))
    assert result.exit_code == 1, result.output
    d = str(reports)
    assert result.stdout.splitlines()[2:] == [
        "Files that gave no report (each counts as a failure):",
        f"  FAIL {d}/huge-figure.json: not a kcuda-validate report: metrics.gen_tps.value is 1{'0' * 36}..., too"
        " large for a figure",
        f"  FAIL {d}/many-digits.json: not a report (an integer of over 4300 digits)",
        f"  FAIL {d}/no-version.json: not a kcuda-validate report: schema_version is missing",
        f'  FAIL {d}/number-version.json: not a kcuda-validate report: schema_version is 1.0, not the string "1.0"',
        "",
        "FAIL: 0 nodes, 0 rows; 4 files unreadable",
    ]
    assert result.stderr == ""


def test_digits_that_are_no_ascii_digits_or_too_many_sort_without_a_crash(real: RealReports, tmp_path: Path) -> None:
    """'²' is str.isdigit() but int() refuses it; int() refuses a run of over 4300 digits too."""
    long = "node-" + "9" * 5000
    for node in ("²", "node-10", "node-2", long):
        write(tmp_path / "r", f"{node[:10]}.json", as_node(real.newer, node))
    doc = json.loads(fleet(str(tmp_path / "r"), "--json").stdout)
    assert doc["nodes"] == ["node-2", "node-10", long, "²"]
    assert doc["summary"] == "PASS: 4 nodes, 4 rows"


def test_a_device_key_that_is_no_number_is_a_row(real: RealReports) -> None:
    doc = json.loads(json.dumps(real.newer))
    doc["sections"]["devices"] = {
        key: {"gpu": {"index": i, "name": "made-up GPU (test)"}, "exit_code": 0, "stopped_at": None, "sections": {}}
        for i, key in ((1, "²"), (0, "10"), (2, "2"))
    }
    assert [r.gpu_index for r in rows_from_report(doc, "r.json")] == [2, 0, 1]  # "2", "10", then "²"


def test_the_verdict_line_spells_out_control_characters(real: RealReports, tmp_path: Path) -> None:
    node = "evil\x1b[2J\nx\u202e"
    write(tmp_path / "r", "evil.json", as_node(real.failed, node))
    human, quiet = fleet(str(tmp_path / "r")), fleet(str(tmp_path / "r"), "-q")
    assert (human.exit_code, quiet.exit_code) == (1, 1)
    assert human.stdout.splitlines()[-1] == "FAIL: 1 node, 1 row; 1 failed (evil\\x1b[2J\\nx\\u202e)"
    assert quiet.stdout == "FAIL: 1 node, 1 row; 1 failed (evil\\x1b[2J\\nx\\u202e)\n"
    doc = json.loads(fleet(str(tmp_path / "r"), "--json").stdout)
    assert doc["summary"] == f"FAIL: 1 node, 1 row; 1 failed ({node})"  # JSON keeps the text as it is


def test_a_file_named_twice_is_one_report(real: RealReports, tmp_path: Path) -> None:
    report = write(tmp_path, "a.json", as_node(real.newer, "node-1"))
    (tmp_path / "alias.json").symlink_to(report)
    os.link(report, tmp_path / "hard.json")
    result = fleet(str(report), str(tmp_path / "alias.json"), str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["files"], doc["summary"]) == ({"read": 1, "superseded": 0}, "PASS: 1 node, 1 row")
    assert [r["file"] for r in doc["rows"]] == [str(report)]


def test_a_directory_named_json_in_a_report_directory_is_skipped(real: RealReports, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    write(reports, "node-1.json", as_node(real.newer, "node-1"))
    (reports / "sub.json").mkdir()
    (reports / "link.json").symlink_to(reports / "sub.json")
    result = fleet(str(reports), "-q")
    assert (result.exit_code, result.stdout) == (0, "PASS: 1 node, 1 row\n")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "sub.json").mkdir()
    alone = fleet(str(tmp_path / "only"))
    assert (alone.exit_code, alone.stderr) == (
        2,
        f"Error: REPORT {tmp_path}/only: a directory with no reports (*.json) in it\n"
        "Fix: Name report files written by `--json`/`--report`, or directories of them.\n",
    )


@pytest.mark.parametrize(
    ("before", "after", "target"),
    [
        ((), ("{d}/a.json",), "{d}/a.json"),  # the file named
        ((), ("{d}",), "{d}/a.json"),  # a file in a directory named
        ((), ("{d}/a.json",), "{d}/alias.json"),  # the file, through a symlink
        (("--report", "{d}/a.json"), ("{d}/a.json",), None),  # given before the command name
    ],
)
def test_report_over_an_input_is_refused_before_reading(
    real: RealReports, tmp_path: Path, before: tuple[str, ...], after: tuple[str, ...], target: str | None
) -> None:
    d = tmp_path / "reports"
    report = write(d, "a.json", as_node(real.newer, "node-1"))
    (tmp_path / "alias.json").symlink_to(report)
    original = report.read_bytes()
    args = [a.format(d=d) for a in before] + ["fleet"] + [a.format(d=d) for a in after]
    if target is not None:
        args += ["--report", target.format(d=d if "alias" not in target else tmp_path)]
    result = CliRunner().invoke(cli, args)
    named = args[args.index("--report") + 1]
    assert (result.exit_code, result.stdout, report.read_bytes()) == (2, "", original)
    assert result.stderr == (
        f"Error: --report {named}: is one of the REPORT files, which the fleet JSON would replace\n"
        "Fix: Write the fleet JSON to a path that is not one of the reports.\n"
    )


def test_help_lists_only_the_options_fleet_takes(tmp_path: Path) -> None:
    result = fleet("--help")
    assert result.exit_code == 0
    options = [line.split()[0].rstrip(",") for line in result.stdout.split("Options:\n")[1].splitlines()]
    assert options == ["--json", "-v", "-q", "--report", "--debug", "-h"]
    (tmp_path / "r").mkdir()
    for args in (["fleet", str(tmp_path / "r"), "--junit-xml", "j.xml"], ["--junit-xml", "j.xml", "fleet", "x"]):
        refused = CliRunner().invoke(cli, args)
        assert (refused.exit_code, refused.stderr) == (
            2,
            "Error: --junit-xml: fleet writes no junit-xml file (each node's own run writes one)\n"
            "Fix: Leave --junit-xml out; `--report PATH` writes the fleet JSON.\n",
        )


def test_an_explicit_bad_file_alone_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "r.json"
    bad.write_text("{}")
    result = fleet(str(bad), "-q")
    assert (result.exit_code, result.stdout) == (1, "FAIL: 0 nodes, 0 rows; 1 file unreadable\n")


@pytest.mark.parametrize(
    ("args", "message", "fix"),
    [
        (
            ("{tmp}/missing",),
            "REPORT {tmp}/missing: no such file or directory",
            "Name report files written by `--json`/`--report`, or directories of them.",
        ),
        (
            ("{tmp}/empty",),
            "REPORT {tmp}/empty: a directory with no reports (*.json) in it",
            "Name report files written by `--json`/`--report`, or directories of them.",
        ),
        (
            ("{tmp}/empty", "--prometheus", "{tmp}/f.prom"),
            "--prometheus: fleet writes no prometheus file (each node's own run writes one)",
            "Leave --prometheus out; `--report PATH` writes the fleet JSON.",
        ),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str, fix: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a report")
    result = fleet(*(a.format(tmp=tmp_path) for a in args), "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"Error: {message.format(tmp=tmp_path)}\nFix: {fix}\n"


def test_no_report_argument_is_a_usage_error() -> None:
    result = fleet()
    assert result.exit_code == 2
    assert "Missing argument 'REPORT...'" in result.stderr


def test_json_follows_its_schema_and_report_writes_the_same(real: RealReports, tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    reports = tmp_path / "reports"
    for node in ("node-1", "node-2"):
        write(reports, f"{node}.json", as_node(real.newer, node))
    write(reports, "node-3.json", as_node(real.failed, "node-3"))
    (reports / "junk.json").write_text("nope")
    out = tmp_path / "out" / "fleet.json"
    result = fleet(str(reports), "--json", "--report", str(out))
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, json.loads((SPECS / "fleet.schema.json").read_text()))
    assert json.loads(out.read_text()) == doc
    assert doc["kind"] == "kcuda-validate fleet" and doc["schema_version"] == "1.0"
    assert doc["nodes"] == ["node-1", "node-2", "node-3"]
    assert doc["thresholds"] == {"outlier_below_median": OUTLIER_BELOW_MEDIAN, "outlier_min_peers": OUTLIER_MIN_PEERS}
    assert doc["rows"][0] == {
        "node": "node-1",
        "gpu_index": None,
        "gpu_uuid": None,
        "gpu_model": None,
        "command": "validate-all",
        "device_mode": "cpu",
        "passed": True,
        "exit_code": 0,
        "exit_reason": "ok",
        "stopped_at": None,
        "nvidia_driver": None,
        "cuda_driver": None,
        "engine": real.newer["versions"]["llama-cpp-python"] + " CPU",
        "engine_version": real.newer["versions"]["llama-cpp-python"],
        "engine_build": "CPU",
        "gen_tps": real.newer["metrics"]["gen_tps"]["value"],
        "ttft_warm_ms": real.newer["metrics"]["ttft_warm_ms"]["value"],
        "energy_per_token_j": None,
        "model": real.newer["sections"]["model"]["path"].rsplit("/", 1)[1],
        "finished_at": real.newer["finished_at"],
        "file": str(reports / "node-1.json"),
    }
    assert doc["problems"] == [
        {"file": str(reports / "junk.json"), "why": "not JSON (Expecting value: line 1 column 1)"}
    ]


def test_a_cpu_report_is_never_a_gpu_row(real: RealReports) -> None:
    (row,) = rows_from_report(real.newer, "r.json")
    assert (row.device_mode, row.gpu_model, row.gpu_label, row.verdict) == (
        "cpu",
        None,
        "CPU run (no GPU)",
        "pass (CPU run)",
    )
    assert row.group_model == "CPU run (no GPU)"


# ---------------------------------------------------------------------------------------------------------------
# The pure judges, on constructed rows

H100 = "NVIDIA H100 80GB HBM3"


def row(node: str, gen_tps: float | None = 800.0, **kw: Any) -> FleetRow:
    fields: dict[str, Any] = {
        "file": f"{node}.json",
        "node": node,
        "command": "validate-all",
        "gpu_index": 0,
        "gpu_uuid": f"GPU-{node}",
        "gpu_model": H100,
        "device_mode": "gpu",
        "passed": True,
        "exit_code": 0,
        "exit_reason": "ok",
        "stopped_at": None,
        "driver": "550.54.15",
        "cuda": "12.4",
        "engine_version": "0.3.36",
        "engine_build": "CUDA 9.0",
        "gen_tps": gen_tps,
        "ttft_ms": 20.0,
        "j_per_token": 0.5,
        "model": "m.gguf",
        "model_key": "m.gguf (100 bytes)",
        "settings": "{}",
        "finished_at": "2026-12-05T10:00:00.000+00:00",
        "timestamp": 1.0,
    }
    return FleetRow(**(fields | kw))


def test_outlier_is_named_with_its_figure_and_its_peers() -> None:
    rows = [row(f"node-{i}", 887.0) for i in range(1, 9)] + [row("node-17", 612.0)]
    (outlier,) = judge_outliers(rows)
    assert outlier.message == (
        f"node-17: 612 tok/s, 31 % below the median 887 tok/s of the 8 other {H100} nodes (model m.gguf, same settings)"
    )
    assert (outlier.peers, outlier.median, round(outlier.below, 4)) == (8, 887.0, 0.31)


def test_outlier_threshold_is_inclusive_and_needs_two_other_nodes() -> None:
    assert [o.row.node for o in judge_outliers([row("a", 1000.0), row("b", 1000.0), row("c", 800.0)])] == ["c"]
    assert judge_outliers([row("a", 1000.0), row("b", 1000.0), row("c", 801.0)]) == ()
    assert judge_outliers([row("a", 1000.0), row("c", 500.0)]) == ()  # one other node is not a median
    # the same node's other GPUs are not its peers
    same_node = [row("a", 1000.0, gpu_index=i, gpu_uuid=f"a{i}") for i in range(4)] + [row("b", 500.0)]
    assert judge_outliers(same_node) == ()


def test_outliers_compare_only_the_same_gpu_model_model_file_and_settings() -> None:
    slow = row("c", 500.0)
    for other in (
        {"gpu_model": "NVIDIA A100-SXM4-80GB"},
        {"model_key": "other.gguf (5 bytes)"},
        {"settings": '{"max_tokens": 16}'},
        {"device_mode": "cpu", "gpu_model": None},
    ):
        assert judge_outliers([row("a", 1000.0, **other), row("b", 1000.0, **other), slow]) == (), other
    assert judge_outliers([row("a", None), row("b", None), slow]) == ()  # n/a figures are no peers


def test_outlier_label_names_the_gpu_on_a_node_with_several() -> None:
    rows = [
        row("a", 1000.0),
        row("b", 1000.0),
        row("c", 1000.0, gpu_index=0),
        row("c", 700.0, gpu_index=1, gpu_uuid="c1"),
    ]
    (outlier,) = judge_outliers(rows)
    assert outlier.message == (
        f"c GPU 1: 700 tok/s, 30 % below the median 1,000 tok/s of the 2 other {H100} nodes"
        " (model m.gguf, same settings)"
    )


def test_mixed_drivers_are_named_with_the_odd_nodes() -> None:
    rows = [row(f"node-{i}") for i in (1, 2, 4, 5, 6, 7, 8)] + [row("node-3", driver="535.104.05")]
    (mixed,) = judge_mixed(rows)
    assert mixed.message == f"2 driver versions among {H100} nodes: 550.54.15 (7 nodes), 535.104.05 (1 node: node-3)"
    assert mixed.versions == (
        ("550.54.15", ("node-1", "node-2", "node-4", "node-5", "node-6", "node-7", "node-8")),
        ("535.104.05", ("node-3",)),
    )


def test_mixed_engines_ties_name_every_node_and_models_are_apart() -> None:
    rows = [
        row("a", engine_version="0.3.36"),
        row("b", engine_version="0.3.16", engine_build="CUDA 8.0,9.0"),
        row("x", gpu_model="NVIDIA L4", driver="535.104.05"),  # alone in its model: nothing mixed
    ]
    assert [m.message for m in judge_mixed(rows)] == [
        f"2 engine versions among {H100} nodes: 0.3.16 (1 node: b), 0.3.36 (1 node: a)",
        f"2 engine build versions among {H100} nodes: CUDA 8.0,9.0 (1 node: b), CUDA 9.0 (1 node: a)",
    ]
    assert judge_mixed([row("a"), row("b", driver=None)]) == ()  # n/a is not a version


def test_newest_per_node_gpu_and_command() -> None:
    old, new = row("a", 1.0, timestamp=1.0, file="old.json"), row("a", 2.0, timestamp=2.0, file="new.json")
    detect = row("a", None, command="detect", timestamp=0.5)
    kept, superseded = newest([new, detect, old, row("b")])
    assert ([r.file for r in kept], superseded) == (["a.json", "new.json", "b.json"], 1)


def test_summary_verdict_and_exit_code() -> None:
    good = summarize([row("a"), row("b")])
    assert (good.passed, good.exit_code, good.line) == (True, 0, "PASS: 2 nodes, 2 rows")
    bad = summarize(
        [row("a"), row("b", passed=False, exit_code=6, exit_reason="below_threshold")],
        [FileProblem("x.json", "not JSON")],
    )
    assert (bad.passed, bad.exit_code, bad.failed_nodes) == (False, 1, ("b",))
    assert bad.line == "FAIL: 2 nodes, 2 rows; 1 failed (b); 1 file unreadable"


def test_all_devices_report_gives_a_row_per_gpu(real: RealReports) -> None:
    """The shape `--all-devices` writes (pipeline.all_devices): per-GPU results under sections.devices, metrics
    prefixed gpuN. Built from the real report's structure; the GPU identities are made up and say so."""
    doc = json.loads(json.dumps(real.newer))
    doc["device_mode"] = "gpu"
    gen = doc["metrics"].pop("gen_tps")
    doc["metrics"] = {"gpu0.gen_tps": gen, "gpu1.gen_tps": {**gen, "value": None}}
    fake_gpu = {
        "name": "made-up GPU (test)",
        "uuid": None,
        "pci_bus_id": None,
        "compute_capability": None,
        "memory_total_bytes": None,
    }
    doc["sections"]["devices"] = {
        "0": {"gpu": {"index": 0, **fake_gpu}, "exit_code": 0, "stopped_at": None, "sections": real.newer["sections"]},
        "1": {"gpu": {"index": 1, **fake_gpu}, "exit_code": 6, "stopped_at": "infer", "sections": {}},
    }
    first, second = rows_from_report(doc, "r.json")
    assert (first.gpu_label, first.passed, first.gen_tps) == ("0: made-up GPU (test)", True, gen["value"])
    assert (second.gpu_label, second.passed, second.stopped_at, second.gen_tps) == (
        "1: made-up GPU (test)",
        False,
        "infer",
        None,
    )


def test_a_host_name_with_control_characters_cannot_drive_the_terminal(real: RealReports, tmp_path: Path) -> None:
    write(tmp_path / "r", "evil.json", as_node(real.newer, "evil\x1b[2J\x07"))
    result = fleet(str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert cells(result.stdout.splitlines()[4]) == row_cells(real.newer, "evil\\x1b[2J\\x07")
    assert json.loads(fleet(str(tmp_path / "r"), "--json").stdout)["nodes"] == ["evil\x1b[2J\x07"]


# ---------------------------------------------------------------------------------------------------------------
# Which report counts, GPU by GPU; per-GPU exit reasons; the sampling path in the peer groups. Real reports turned
# into GPU runs: only the GPU identity (made up, and named so), the time and the outcome change.

MADE_UP_GPU = {"name": "made-up GPU (test)", "pci_bus_id": None, "compute_capability": None, "memory_total_bytes": None}


def on_gpu(doc: dict[str, Any], node: str, finished_at: str, index: int = 0) -> dict[str, Any]:
    """The real report as the run on GPU `index` of `node`, finished at `finished_at`."""
    copy = as_node(doc, node)
    copy |= {"device_mode": "gpu", "finished_at": finished_at}
    copy["gpu"] = {"index": index, "uuid": f"GPU-{node}-{index}", **MADE_UP_GPU}
    return copy


def no_driver(doc: dict[str, Any], node: str, finished_at: str) -> dict[str, Any]:
    """What validate-all writes when it stops at detect, before choosing a GPU: no GPU, no figures."""
    copy = as_node(doc, node)
    copy |= {
        "device_mode": "gpu",
        "finished_at": finished_at,
        "passed": False,
        "exit_code": 3,
        "exit_reason": "no_gpu",
        "stopped_at": "detect",
        "gpu": None,
        "metrics": {},
        "sections": {"detect": doc["sections"]["detect"]},
    }
    return copy


MON, TUE, WED = "2026-01-05T10:00:00+00:00", "2026-01-06T10:00:00+00:00", "2026-01-07T10:00:00+00:00"


def counted(doc: dict[str, Any]) -> list[tuple[str, int | None, str, bool, str]]:
    return [(r["node"], r["gpu_index"], Path(r["file"]).name, r["passed"], r["exit_reason"]) for r in doc["rows"]]


def test_a_pass_supersedes_the_older_failure_that_named_no_gpu(real: RealReports, tmp_path: Path) -> None:
    write(tmp_path, "mon.json", no_driver(real.newer, "node-1", MON))
    write(tmp_path, "tue.json", on_gpu(real.newer, "node-1", TUE))
    result = fleet(str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert counted(doc) == [("node-1", 0, "tue.json", True, "ok")]
    assert (doc["files"], doc["summary"]) == (
        {"read": 2, "superseded": 1},
        "PASS: 1 node, 1 row; 1 superseded report",
    )


def test_a_newer_failure_that_names_no_gpu_supersedes_the_older_pass(real: RealReports, tmp_path: Path) -> None:
    """The driver went away: the GPU's old pass says nothing of the node now."""
    write(tmp_path, "mon.json", on_gpu(real.newer, "node-1", MON))
    write(tmp_path, "tue.json", no_driver(real.newer, "node-1", TUE))
    result = fleet(str(tmp_path), "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert counted(doc) == [("node-1", None, "tue.json", False, "no_gpu")]
    assert (doc["files"], doc["summary"]) == (
        {"read": 2, "superseded": 1},
        "FAIL: 1 node, 1 row; 1 failed (node-1); 1 superseded report",
    )


def test_separate_device_runs_each_keep_their_gpu(real: RealReports, tmp_path: Path) -> None:
    """`--device 0` on Monday, `--device 1` on Tuesday: both GPUs count; Wednesday's GPU 0 run replaces Monday's."""
    write(tmp_path, "mon.json", on_gpu(real.newer, "node-1", MON, index=0))
    write(tmp_path, "tue.json", on_gpu(real.newer, "node-1", TUE, index=1))
    assert counted(json.loads(fleet(str(tmp_path), "--json").stdout)) == [
        ("node-1", 0, "mon.json", True, "ok"),
        ("node-1", 1, "tue.json", True, "ok"),
    ]
    wed = on_gpu(real.newer, "node-1", WED, index=0) | {
        "passed": False,
        "exit_code": 6,
        "exit_reason": "below_threshold",
    }
    write(tmp_path, "wed.json", wed)
    result = fleet(str(tmp_path), "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert counted(doc) == [("node-1", 0, "wed.json", False, "below_threshold"), ("node-1", 1, "tue.json", True, "ok")]
    assert doc["summary"] == "FAIL: 1 node, 2 rows; 1 failed (node-1); 1 superseded report"


def test_a_cpu_run_neither_supersedes_a_gpu_run_nor_is_superseded_by_one(real: RealReports, tmp_path: Path) -> None:
    """`--device cpu` says nothing of the GPUs: a CPU pass after a failure to find the driver leaves the failure."""
    write(tmp_path, "mon.json", as_node(real.older, "node-1") | {"finished_at": MON})
    write(tmp_path, "tue.json", no_driver(real.newer, "node-1", TUE))
    write(tmp_path, "wed.json", as_node(real.newer, "node-1") | {"finished_at": WED})
    result = fleet(str(tmp_path), "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert [(r["device_mode"], *row) for r, row in zip(doc["rows"], counted(doc), strict=True)] == [
        ("gpu", "node-1", None, "tue.json", False, "no_gpu"),
        ("cpu", "node-1", None, "wed.json", True, "ok"),
    ]
    assert doc["files"] == {"read": 3, "superseded": 1}


def test_newest_counts_reports_and_a_gpu_less_report_ends_what_came_before() -> None:
    """Superseded counts reports, not rows: a two-GPU report with one GPU still current is not superseded."""
    both = [row("a", gpu_index=i, gpu_uuid=f"a{i}", file="all.json", timestamp=1.0) for i in (0, 1)]
    again = row("a", gpu_index=0, gpu_uuid="a0", file="gpu0.json", timestamp=2.0)
    assert newest([*both, again]) == ((again, both[1]), 0)
    lost = row("a", None, gpu_index=None, gpu_uuid=None, passed=False, file="lost.json", timestamp=3.0)
    back = row("a", gpu_index=1, gpu_uuid="a1", file="back.json", timestamp=4.0)
    assert newest([*both, again, lost]) == ((lost,), 2)
    assert newest([*both, again, lost, back]) == ((back,), 3)


def test_all_devices_rows_carry_their_own_exit_reason(real: RealReports, tmp_path: Path) -> None:
    """GPU 0 below the threshold (6) beside GPU 1 that crashed (7): the report's reason is GPU 1's alone."""
    doc = on_gpu(real.failed, "node-1", MON) | {
        "gpu": None,
        "exit_code": 7,
        "exit_reason": "crashed",
        "stopped_at": "gpu1.infer",
        "metrics": {},
    }
    doc["sections"] = {
        "detect": real.failed["sections"]["detect"],
        "devices": {
            str(i): {"gpu": {"index": i, "uuid": f"GPU-{i}", **MADE_UP_GPU}, "exit_code": code, "stopped_at": at}
            for i, (code, at) in enumerate(((6, None), (7, "infer")))
        },
    }
    write(tmp_path, "node-1.json", doc)
    got = json.loads(fleet(str(tmp_path), "--json").stdout)
    assert [(r["gpu_index"], r["exit_code"], r["exit_reason"], r["stopped_at"]) for r in got["rows"]] == [
        (0, 6, "below_threshold", None),
        (1, 7, "crashed", "infer"),
    ]
    lines = [cells(line) for line in fleet(str(tmp_path)).stdout.splitlines()]
    engine = real.failed["versions"]["llama-cpp-python"] + " CPU"
    assert lines[4:6] == [
        f"node-1 GPU 0 | 0: made-up GPU (test) | validate-all | FAIL (exit 6 below_threshold) | - | n/a | n/a"
        f" | {engine} | n/a | n/a | n/a",
        f"node-1 GPU 1 | 1: made-up GPU (test) | validate-all | FAIL (exit 7 crashed) | infer | n/a | n/a"
        f" | {engine} | n/a | n/a | n/a",
    ]
    doc["sections"]["devices"]["1"]["exit_code"] = 99  # no exit code of this tool's: said so, never a traceback
    assert [r.verdict for r in rows_from_report(doc, "node-1.json")] == [
        "FAIL (exit 6 below_threshold)",
        "FAIL (exit 99 unknown)",
    ]


def sampled(
    doc: dict[str, Any], node: str, gen_tps: float, sampling: str | None, asked: str = "auto"
) -> dict[str, Any]:
    """The real report as a GPU run whose measured runs sampled on `sampling` (None: a report without the field)."""
    copy = on_gpu(doc, node, MON)
    copy["metrics"]["gen_tps"]["value"] = gen_tps
    inference = copy["sections"]["inference"]
    inference["options"]["sampling"] = asked
    if sampling is None:
        del inference["sampling"]
    else:
        inference["sampling"] = sampling
    return copy


SLOW_C = (
    "c: 500 tok/s, 50 % below the median 1,000 tok/s of the 2 other made-up GPU (test) nodes"
    " (model {model}, same settings)"
)


@pytest.mark.parametrize(
    ("slow", "outliers"),
    [
        (("backend", "auto"), [SLOW_C]),
        (("cpu", "auto"), []),  # the measured runs sampled on the CPU: no peer of the backend runs
        ((None, "backend"), [SLOW_C]),  # no measured path in the report: the path asked for stands in
        ((None, "cpu"), []),
    ],
)
def test_the_sampling_path_divides_the_peer_groups(
    real: RealReports, tmp_path: Path, slow: tuple[str | None, str], outliers: list[str]
) -> None:
    write(tmp_path, "a.json", sampled(real.newer, "a", 1000.0, "backend"))
    write(tmp_path, "b.json", sampled(real.newer, "b", 1000.0, "backend"))
    write(tmp_path, "c.json", sampled(real.newer, "c", 500.0, *slow))
    got = json.loads(fleet(str(tmp_path), "--json").stdout)
    model = real.newer["sections"]["model"]["path"].rsplit("/", 1)[1]
    assert [o["message"] for o in got["outliers"]] == [m.format(model=model) for m in outliers]
