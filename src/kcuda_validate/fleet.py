"""`kcuda-validate fleet`: many nodes' JSON reports -> one table, outliers and mixed versions.

Pure, apart from the loader at the end (`find_report_files`, `load_report`): a report dict becomes frozen
`FleetRow`s (`rows_from_report`), and `summarize` keeps the newest report per node, GPU and command, then
judges outliers (`judge_outliers`) and mixed versions (`judge_mixed`) into one frozen `FleetSummary`.
Every figure is read from a report; one a report does not have stays None (n/a), never a guess.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The outlier rule, in one place: a node/GPU whose gen tok/s is at least this fraction below the median of the
# other nodes with the same GPU model, model file and settings, when there are at least OUTLIER_MIN_PEERS of them.
OUTLIER_BELOW_MEDIAN = 0.20
OUTLIER_MIN_PEERS = 2
# A report is a few tens of KB; a file over this size is refused before a byte of it is read.
MAX_REPORT_BYTES = 16 * 1024 * 1024

FLEET_SCHEMA_VERSION = "1.0"
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
        parts = [f"{len(nodes)} {_plural(len(nodes), 'node')}, {len(self.rows)} {_plural(len(self.rows), 'row')}"]
        if failed:
            parts.append(f"{len(failed)} failed ({_names(failed)})")
        if self.problems:
            parts.append(f"{len(self.problems)} {_plural(len(self.problems), 'file')} unreadable")
        if self.outliers:
            parts.append(f"{len(self.outliers)} {_plural(len(self.outliers), 'outlier')}")
        if self.mixed:
            parts.append(f"{len(self.mixed)} mixed {_plural(len(self.mixed), 'version')}")
        if self.superseded:
            parts.append(f"{self.superseded} superseded {_plural(self.superseded, 'report')}")
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
# A report dict -> rows


def rows_from_report(doc: Any, file: str) -> tuple[FleetRow, ...]:
    """The rows one report gives: one, or one per GPU for `--all-devices`. ReportShapeError when it is no report."""
    if not isinstance(doc, dict):
        raise ReportShapeError(f"a JSON {type(doc).__name__}, not a report object")
    version = doc.get("schema_version")
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
                    exit_reason="ok" if code == 0 else exit_reason,
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
    return float(value) if math.isfinite(value) else None


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
        if isinstance(load, dict):
            chosen |= {"n_ctx": load.get("n_ctx"), "gpu_layers": load.get("gpu_layers_requested")}
        settings = json.dumps(chosen, sort_keys=True, default=str)
    return {"model": name, "model_key": None if name is None else f"{name} ({size} bytes)", "settings": settings}


# ---------------------------------------------------------------------------------------------------------------
# Judges


def newest(rows: Iterable[FleetRow]) -> tuple[tuple[FleetRow, ...], int]:
    """The newest row (report time) per node, GPU and command; and how many older ones it superseded."""
    best: dict[tuple[str, str, str], FleetRow] = {}
    total = 0
    for row in rows:
        total += 1
        gpu = row.gpu_uuid or ("" if row.gpu_index is None else str(row.gpu_index))
        key = (row.node, gpu, row.command)
        old = best.get(key)
        if old is None or (row.timestamp, row.file) > (old.timestamp, old.file):
            best[key] = row
    kept = sorted(best.values(), key=lambda r: (natural_key(r.node), r.gpu_index or 0, r.command))
    return tuple(kept), total - len(kept)


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
                parts.append(f"{version} ({n} {_plural(n, 'node')}{named})")
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


def natural_key(text: str) -> tuple[Any, ...]:
    """node-2 before node-10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _tps(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _names(nodes: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(nodes[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


# ---------------------------------------------------------------------------------------------------------------
# The loader: the only I/O in this module


class NoReportsError(ValueError):
    """A path that does not exist, or a directory with no *.json in it (a usage error, exit 2)."""


def find_report_files(paths: Sequence[Path]) -> list[Path]:
    """Files named on the command line, and the `*.json` directly inside each directory (not recursive; names
    starting with `.`, such as the temporary files of an atomic write, are skipped). Each file once."""
    found: list[Path] = []
    seen: set[str] = set()
    for path in paths:
        if not os.path.lexists(path):
            raise NoReportsError(f"REPORT {path}: no such file or directory")
        if path.is_dir():
            try:
                names = sorted(n for n in os.listdir(path) if n.endswith(".json") and not n.startswith("."))
            except OSError as exc:
                raise NoReportsError(f"REPORT {path}: cannot list the directory ({exc.strerror or exc})") from exc
            if not names:
                raise NoReportsError(f"REPORT {path}: a directory with no reports (*.json) in it")
            candidates = [path / n for n in names]
        else:
            candidates = [path]
        for c in candidates:
            key = os.path.abspath(c)
            if key not in seen:
                seen.add(key)
                found.append(c)
    return found


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
    try:
        return rows_from_report(doc, name), None
    except ReportShapeError as exc:
        return (), FileProblem(name, f"not a kcuda-validate report: {exc}")


def load_fleet(paths: Sequence[Path]) -> FleetSummary:
    """Every report under `paths`, summarized. NoReportsError for a path that gives none."""
    files = find_report_files(paths)
    rows: list[FleetRow] = []
    problems: list[FileProblem] = []
    for f in files:
        got, problem = load_report(f)
        rows.extend(got)
        if problem is not None:
            problems.append(problem)
    return summarize(rows, problems, files=len(files))
