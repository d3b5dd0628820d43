"""`kcuda-validate fleet`: many nodes' JSON reports -> one table, outliers and mixed versions.

Pure, apart from the loader at the end (`find_report_files`, `load_report`): a report dict becomes frozen
`FleetRow`s (`fleet_rows.rows_from_report`), and `summarize` keeps the rows that no newer report of their node and
command supersedes (`newest`), then judges outliers (`judge_outliers`) and mixed versions (`judge_mixed`) into one
frozen `FleetSummary`.
Every figure is read from a report; one a report does not have stays None (n/a), never a guess.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import stat
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcuda_validate.fleet_rows import (
    FleetRow,
    ReportShapeError,
    natural_key,
    rows_from_report,
)

# The outlier rule, in one place: a node/GPU whose gen tok/s is at least this fraction below the median of the
# other nodes with the same GPU model, model file and settings, when there are at least OUTLIER_MIN_PEERS of them.
OUTLIER_BELOW_MEDIAN = 0.20
OUTLIER_MIN_PEERS = 2
# A report is a few tens of KB; a file over this size is refused before a byte of it is read.
MAX_REPORT_BYTES = 16 * 1024 * 1024

FLEET_SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class FileProblem:
    """A file that gave no report: unreadable, too big, not JSON, or not a report. It counts as a failure."""

    file: str
    why: str

    @property
    def message(self) -> str:
        return f"{self.file}: {self.why}"


@dataclass(frozen=True)
class Outlier:
    row: FleetRow
    label: str
    median: float
    peers: int
    below: float  # fraction below the peers' median, 0.31 = 31 %
    message: str


@dataclass(frozen=True)
class Mixed:
    what: str  # "driver", "engine", "engine build"
    group: str  # the GPU model (or CPU_RUN)
    versions: tuple[tuple[str, tuple[str, ...]], ...]  # (version, nodes), most nodes first
    message: str


@dataclass(frozen=True)
class FleetSummary:
    rows: tuple[FleetRow, ...]
    problems: tuple[FileProblem, ...]
    outliers: tuple[Outlier, ...]
    mixed: tuple[Mixed, ...]
    superseded: int
    files: int

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted({r.node for r in self.rows}, key=natural_key))

    @property
    def failed_nodes(self) -> tuple[str, ...]:
        return tuple(sorted({r.node for r in self.rows if not r.passed}, key=natural_key))

    @property
    def passed(self) -> bool:
        return not self.failed_nodes and not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def line(self) -> str:
        """The verdict in one line (what `-q` prints)."""
        nodes, failed = self.nodes, self.failed_nodes
        parts = [f"{len(nodes)} {plural(len(nodes), 'node')}, {len(self.rows)} {plural(len(self.rows), 'row')}"]
        if failed:
            parts.append(f"{len(failed)} failed ({_names(failed)})")
        if self.problems:
            parts.append(f"{len(self.problems)} {plural(len(self.problems), 'file')} unreadable")
        if self.outliers:
            parts.append(f"{len(self.outliers)} {plural(len(self.outliers), 'outlier')}")
        if self.mixed:
            parts.append(f"{len(self.mixed)} mixed {plural(len(self.mixed), 'version')}")
        if self.superseded:
            parts.append(f"{self.superseded} superseded {plural(self.superseded, 'report')}")
        return ("PASS: " if self.passed else "FAIL: ") + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "kcuda-validate fleet",
            "schema_version": FLEET_SCHEMA_VERSION,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "summary": self.line,
            "nodes": list(self.nodes),
            "failed_nodes": list(self.failed_nodes),
            "files": {"read": self.files, "superseded": self.superseded},
            "rows": [r.to_json() for r in self.rows],
            "problems": [{"file": p.file, "why": p.why} for p in self.problems],
            "outliers": [
                {
                    "node": o.row.node,
                    "gpu_index": o.row.gpu_index,
                    "gpu_model": o.row.group_model,
                    "model": o.row.model,
                    "gen_tps": o.row.gen_tps,
                    "peers_median_gen_tps": o.median,
                    "peers": o.peers,
                    "below_median": o.below,
                    "message": o.message,
                }
                for o in self.outliers
            ],
            "mixed": [
                {
                    "what": m.what,
                    "gpu_model": m.group,
                    "versions": [{"version": v, "nodes": list(n)} for v, n in m.versions],
                    "message": m.message,
                }
                for m in self.mixed
            ],
            "thresholds": {"outlier_below_median": OUTLIER_BELOW_MEDIAN, "outlier_min_peers": OUTLIER_MIN_PEERS},
        }


# ---------------------------------------------------------------------------------------------------------------
# Judges


def newest(rows: Iterable[FleetRow]) -> tuple[tuple[FleetRow, ...], int]:
    """The rows that still count, and how many reports none of whose rows do (superseded).

    Per node and command, the newest report (finished_at) counts whole. An older report's GPU row still counts
    while every newer report names a GPU and none names this one (separate `--device N` runs each keep their
    GPU); a newer report that names no GPU stopped before choosing one, so the node is broken now and nothing
    older counts. A CPU run says nothing of the GPUs: CPU runs supersede only CPU runs, and only by time."""
    reports: dict[tuple[str, str, bool], dict[tuple[float, str], list[FleetRow]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for row in rows:
        reports[(row.node, row.command, row.device_mode == "cpu")][(row.timestamp, row.file)].append(row)
    kept: list[FleetRow] = []
    superseded = 0
    for by_report in reports.values():
        named: set[str] = set()  # the GPUs a newer report named
        blanket = False  # a newer report named no GPU: nothing older counts
        for i, when in enumerate(sorted(by_report, reverse=True)):
            report = by_report[when]
            if i == 0:
                current = report
            elif blanket:
                current = []
            else:
                current = [r for r in report if (gpu := _gpu_key(r)) is not None and gpu not in named]
            kept.extend(current)
            superseded += not current
            for r in report:
                gpu = _gpu_key(r)
                if gpu is None:
                    blanket = True
                else:
                    named.add(gpu)
    # GPU runs before a CPU run of the same node and command, whatever order the files came in
    kept.sort(key=lambda r: (natural_key(r.node), r.gpu_index or 0, r.command, r.device_mode == "cpu"))
    return tuple(kept), superseded


def _gpu_key(row: FleetRow) -> str | None:
    """Which GPU a row is about (its UUID, else its index); None for a row that names none."""
    return row.gpu_uuid or (None if row.gpu_index is None else str(row.gpu_index))


def row_labels(rows: Sequence[FleetRow]) -> dict[FleetRow, str]:
    """`node-17`, or `node-17 GPU 3` where the node has several GPUs among the rows."""
    gpus: dict[str, set[int | None]] = defaultdict(set)
    for r in rows:
        gpus[r.node].add(r.gpu_index)
    return {
        r: f"{r.node} GPU {r.gpu_index}" if len(gpus[r.node]) > 1 and r.gpu_index is not None else r.node for r in rows
    }


def judge_outliers(rows: Sequence[FleetRow]) -> tuple[Outlier, ...]:
    """Rows whose gen tok/s is ≥ OUTLIER_BELOW_MEDIAN below the median of the other nodes' rows in their group
    (same GPU model, model file and settings), when at least OUTLIER_MIN_PEERS other nodes are in it."""
    groups: dict[tuple[str, str, str], list[FleetRow]] = defaultdict(list)
    for r in rows:
        if r.gen_tps is not None and r.model_key is not None and r.settings is not None:
            groups[(r.group_model, r.model_key, r.settings)].append(r)
    labels = row_labels(rows)
    found: list[Outlier] = []
    for (group_model, _, _), members in groups.items():
        ordered = sorted(m.gen_tps for m in members if m.gen_tps is not None)
        by_node: dict[str, list[float]] = defaultdict(list)
        for m in members:
            if m.gen_tps is not None:
                by_node[m.node].append(m.gen_tps)
        for r in members:
            peer_nodes = len(by_node) - 1
            if peer_nodes < OUTLIER_MIN_PEERS or r.gen_tps is None:
                continue
            median = _median_without(ordered, by_node[r.node])
            if median <= 0:
                continue
            below = 1 - r.gen_tps / median
            if r.gen_tps <= median * (1 - OUTLIER_BELOW_MEDIAN):  # not `below >=`: 1 - 800/1000 is 0.19999...
                message = (
                    f"{labels[r]}: {_tps(r.gen_tps)} tok/s, {below * 100:.0f} % below the median {_tps(median)} tok/s"
                    f" of the {peer_nodes} other {group_model} nodes (model {r.model}, same settings)"
                )
                found.append(Outlier(r, labels[r], median, peer_nodes, below, message))
    found.sort(key=lambda o: (natural_key(o.row.node), o.row.gpu_index or 0))
    return tuple(found)


def _median_without(ordered: Sequence[float], removed: Sequence[float]) -> float:
    """statistics.median of `ordered` (sorted) less the values `removed` (each one in it), without copying:
    a node's own figures leave the group in O(k log n), so thousands of nodes are judged in linear time."""
    positions: list[int] = []
    for value, count in Counter(removed).items():
        first = bisect.bisect_left(ordered, value)
        positions.extend(range(first, first + count))
    positions.sort()

    def kth(j: int) -> float:  # the j-th smallest of what remains
        for p in positions:
            if p <= j:
                j += 1
            else:
                break
        return ordered[j]

    left = len(ordered) - len(positions)
    if left % 2:
        return kth(left // 2)
    return (kth(left // 2 - 1) + kth(left // 2)) / 2


_VERSIONS: tuple[tuple[str, Callable[[FleetRow], str | None]], ...] = (
    ("driver", lambda r: r.driver),
    ("engine", lambda r: r.engine_version),
    ("engine build", lambda r: r.engine_build),
)


def judge_mixed(rows: Sequence[FleetRow]) -> tuple[Mixed, ...]:
    """Where nodes of one GPU model run more than one driver, engine version or engine build."""
    found: list[Mixed] = []
    for what, get in _VERSIONS:
        by_group: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for r in rows:
            value = get(r)
            if value is not None:
                by_group[r.group_model][value].add(r.node)
        for group in sorted(by_group):
            versions = by_group[group]
            if len(versions) < 2:
                continue
            ordered = sorted(versions.items(), key=lambda kv: (-len(kv[1]), natural_key(kv[0])))
            largest_alone = len(ordered[0][1]) > len(ordered[1][1])
            parts = []
            for i, (version, nodes) in enumerate(ordered):
                n = len(nodes)
                named = "" if i == 0 and largest_alone else f": {_names(sorted(nodes, key=natural_key))}"
                parts.append(f"{version} ({n} {plural(n, 'node')}{named})")
            message = f"{len(ordered)} {what} versions among {group} nodes: " + ", ".join(parts)
            found.append(Mixed(what, group, tuple((v, tuple(sorted(n, key=natural_key))) for v, n in ordered), message))
    return tuple(found)


def summarize(rows: Iterable[FleetRow], problems: Iterable[FileProblem] = (), files: int = 0) -> FleetSummary:
    kept, superseded = newest(rows)
    return FleetSummary(
        rows=kept,
        problems=tuple(sorted(problems, key=lambda p: p.file)),
        outliers=judge_outliers(kept),
        mixed=judge_mixed(kept),
        superseded=superseded,
        files=files,
    )


def _tps(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _names(nodes: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(nodes[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


# ---------------------------------------------------------------------------------------------------------------
# The loader: the only I/O in this module


class NoReportsError(ValueError):
    """A path that does not exist, or a directory with no *.json in it (a usage error, exit 2)."""


def file_identity(path: Path | str) -> tuple[Any, ...]:
    """What names one file: its device and inode (a symlink or hard link is the same file), or, for a path that
    cannot be stat'ed (missing, a dangling link), its resolved path."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.realpath(path))
    return ("inode", info.st_dev, info.st_ino)


def find_report_files(paths: Sequence[Path]) -> list[Path]:
    """Files named on the command line, and the `*.json` files directly inside each directory (not recursive; a
    directory named `*.json` is no file, and names starting with `.`, such as the temporary files of an atomic
    write, are skipped). Each file once, however often it is named (through a symlink too)."""
    found: list[Path] = []
    seen: set[tuple[Any, ...]] = set()
    for path in paths:
        if not os.path.lexists(path):
            raise NoReportsError(f"REPORT {path}: no such file or directory")
        if path.is_dir():
            try:
                with os.scandir(path) as entries:
                    names = sorted(e.name for e in entries if _report_name(e))
            except OSError as exc:
                raise NoReportsError(f"REPORT {path}: cannot list the directory ({exc.strerror or exc})") from exc
            if not names:
                raise NoReportsError(f"REPORT {path}: a directory with no reports (*.json) in it")
            candidates = [path / n for n in names]
        else:
            candidates = [path]
        for c in candidates:
            key = file_identity(c)
            if key not in seen:
                seen.add(key)
                found.append(c)
    return found


def _report_name(entry: os.DirEntry[str]) -> bool:
    """A `*.json` entry that is not a directory. A FIFO or a dangling link stays: load_report names it a failure."""
    if not entry.name.endswith(".json") or entry.name.startswith("."):
        return False
    try:
        return not entry.is_dir()  # follows a symlink: a link to a directory is skipped too
    except OSError:
        return True


def load_report(path: Path, limit: int = MAX_REPORT_BYTES) -> tuple[tuple[FleetRow, ...], FileProblem | None]:
    """Read one report file: its rows, or the problem that kept it from being one (never an exception)."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block: it is refused below, unread
    except OSError as exc:
        return (), FileProblem(name, f"cannot be read ({exc.strerror or exc})")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return (), FileProblem(name, "not a regular file")
        if info.st_size > limit:
            return (), FileProblem(name, f"{info.st_size} bytes, over the {limit // (1024 * 1024)} MiB report limit")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        return (), FileProblem(name, f"cannot be read ({exc.strerror or exc})")
    finally:
        os.close(fd)
    if len(data) > limit:
        return (), FileProblem(name, f"over the {limit // (1024 * 1024)} MiB report limit")
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        return (), FileProblem(name, "not JSON (not UTF-8 text)")
    except json.JSONDecodeError as exc:
        return (), FileProblem(name, f"not JSON ({re.sub(r' [(]char [0-9]+[)]$', '', str(exc))})")
    except RecursionError:
        return (), FileProblem(name, "not a report (JSON nested too deeply)")
    except ValueError:  # int() refuses a JSON integer of more digits than this (4300 by default)
        return (), FileProblem(name, f"not a report (an integer of over {sys.get_int_max_str_digits()} digits)")
    try:
        return rows_from_report(doc, name), None
    except ReportShapeError as exc:
        return (), FileProblem(name, f"not a kcuda-validate report: {exc}")


def load_fleet(paths: Sequence[Path]) -> FleetSummary:
    """Every report under `paths`, summarized. NoReportsError for a path that gives none."""
    return load_files(find_report_files(paths))


def load_files(files: Sequence[Path]) -> FleetSummary:
    """The report files `find_report_files` found, read and summarized."""
    rows: list[FleetRow] = []
    problems: list[FileProblem] = []
    for f in files:
        got, problem = load_report(f)
        rows.extend(got)
        if problem is not None:
            problems.append(problem)
    return summarize(rows, problems, files=len(files))
