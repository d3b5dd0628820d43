"""The one result every command produces: checks, metrics, versions, GPU identity, timing.

`--json` prints it, `--report PATH` writes it, `--junit-xml PATH` turns its
checks into test cases. Its shape is versioned (`schema_version`) and
described by specs/report.schema.json, which the tests validate against.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from kcuda_validate import __version__
from kcuda_validate.checks import Check, Metric, Status, verdict
from kcuda_validate.errors import ExitCode
from kcuda_validate.paths import make_parents, remove_empty
from kcuda_validate.safetext import xml_text
from kcuda_validate.versions import dist_version

SCHEMA_VERSION = "1.0"
PACKAGES = ("llama-cpp-python", "torch", "nvidia-ml-py", "huggingface-hub", "gguf", "click", "rich")


def package_versions() -> dict[str, str | None]:
    """Installed versions from package metadata: no heavy import needed."""
    return {name: dist_version(name) for name in PACKAGES}


class Sections(TypedDict, total=False):
    """The report's detail sections, one key per stage that has one (specs/report.schema.json)."""

    setup: dict[str, Any]
    detect: dict[str, Any]
    model_source: dict[str, Any]
    model: dict[str, Any]
    fit: dict[str, Any]
    load: dict[str, Any]
    inference: dict[str, Any]
    telemetry: dict[str, Any]
    crash: dict[str, Any]
    compare_cpu: dict[str, Any]
    devices: dict[str, Any]
    health: dict[str, Any]
    slurm: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Report:
    """Accumulates a command's checks and metrics; renders to JSON and JUnit."""

    def __init__(self, command: str, argv: list[str] | None = None) -> None:
        self.command = command
        self.argv = list(argv if argv is not None else sys.argv[1:])
        self.started_at = _now()
        self._t0 = time.perf_counter()
        self.finished_at: str | None = None
        self.duration_s: float | None = None
        self.checks: list[Check] = []
        self.metrics: list[Metric] = []
        self.sections: Sections = {}
        self.device_mode = "gpu"
        self.gpu: dict[str, Any] | None = None
        self.driver: dict[str, Any] = {}
        self.torch_cuda: str | None = None
        self.exit_override: ExitCode | None = None
        self.stopped_at: str | None = None
        self.interrupted = False

    def add(self, *checks: Check) -> None:
        self.checks.extend(checks)

    def add_metrics(self, metrics: list[Metric], prefix: str = "") -> None:
        for m in metrics:
            if prefix:
                m = Metric(prefix + m.name, m.value, m.unit, m.method, m.estimate, m.samples, m.stddev)
            self.metrics.append(m)

    def log(self, logger: Any) -> None:
        """Record the verdicts and figures in the log file, so a run can be read later without its report."""
        if self.gpu:
            logger.info("gpu: %s (%s)", self.gpu.get("name"), ", ".join(f"{k} {v}" for k, v in self.driver.items()))
        for c in self.checks:
            fix = f" | fix: {c.fix}" if c.fix and c.status in (Status.FAIL, Status.WARN) else ""
            logger.info("check %s %s: %s%s", c.status.value.upper(), c.id, c.summary, fix)
        for m in self.metrics:
            if m.value is None:
                continue
            spread = f" ± {m.stddev:.4g}" if m.stddev else ""
            n = f", {len(m.samples)} samples" if m.samples else ""
            est = ", estimate" if m.estimate else ""
            logger.info("metric %s = %s%s %s (%s%s%s)", m.name, _value_text(m), spread, m.unit, m.method, n, est)
        code = self.exit_code
        logger.info(
            "result: %s exit %d (%s), device_mode %s, stopped_at %s",
            self.command,
            int(code),
            code.reason,
            self.device_mode,
            self.stopped_at,
        )

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @property
    def exit_code(self) -> ExitCode:
        if self.exit_override is not None:
            return self.exit_override
        return verdict(self.checks)

    @property
    def passed(self) -> bool:
        return self.exit_code == ExitCode.OK

    def finish(self) -> None:
        if self.finished_at is None:
            self.finished_at = _now()
            self.duration_s = time.perf_counter() - self._t0

    def to_json(self) -> dict[str, Any]:
        self.finish()
        code = self.exit_code
        counts = {s.value: sum(1 for c in self.checks if c.status == s) for s in Status}
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "kcuda-validate", "version": __version__},
            "command": self.command,
            "argv": self.argv,
            "device_mode": self.device_mode,
            "passed": code == ExitCode.OK,
            "gpu_validated": code == ExitCode.OK
            and self.device_mode == "gpu"
            and self.command not in ("detect", "setup", "health"),
            "exit_code": int(code),
            "exit_reason": code.reason,
            "stopped_at": self.stopped_at,
            "interrupted": self.interrupted,
            "error": None,  # in the schema since 1.0; no command fills it (failures are checks)
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "host": {
                "hostname": platform.node(),
                "system": platform.system(),
                "kernel": platform.release(),
                "machine": platform.machine(),
                "python": platform.python_version(),
            },
            "versions": {
                "kcuda-validate": __version__,
                **package_versions(),
                "nvidia_driver": self.driver.get("driver_version"),
                "cuda_driver": self.driver.get("cuda_version"),
                "torch_cuda": self.torch_cuda,
            },
            "gpu": self.gpu,
            "summary": counts,
            "checks": [c.to_json() for c in self.checks],
            "metrics": {m.name: m.to_json() for m in self.metrics},
            "sections": self.sections,
        }

    def to_junit_xml(self) -> str:
        """One <testcase> per check; failures carry the summary, evidence and fix."""
        self.finish()
        suite = ET.Element(
            "testsuite",
            name=f"kcuda-validate {self.command}",
            tests=str(len(self.checks)),
            failures=str(sum(1 for c in self.checks if c.status == Status.FAIL)),
            skipped=str(sum(1 for c in self.checks if c.status == Status.SKIP)),
            errors="0",
            timestamp=self.started_at,
            hostname=platform.node(),
        )
        if self.duration_s is not None:
            suite.set("time", f"{self.duration_s:.3f}")
        props = ET.SubElement(suite, "properties")
        for key, value in (
            ("device_mode", self.device_mode),
            ("exit_code", str(int(self.exit_code))),
            ("exit_reason", self.exit_code.reason),
            ("gpu", (self.gpu or {}).get("name") or "none"),
            ("nvidia_driver", self.driver.get("driver_version") or "none"),
        ):
            ET.SubElement(props, "property", name=key, value=value)
        for m in self.metrics:  # the measured figures, for CI dashboards that read JUnit properties
            if m.value is not None:
                ET.SubElement(props, "property", name=f"metric.{m.name}", value=f"{_value_text(m)} {m.unit}")
        for c in self.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"kcuda_validate.{c.stage}",
                name=f"{c.id}: {c.title}",
            )
            if c.duration_s is not None:  # a check not timed on its own has no time, never a 0
                case.set("time", f"{c.duration_s:.3f}")
            evidence = json.dumps(dict(c.evidence), indent=2, default=str, sort_keys=True)
            if c.status == Status.FAIL:
                fail = ET.SubElement(case, "failure", message=c.summary, type=c.exit_code.reason)
                fail.text = f"{c.summary}\n\nFix: {c.fix or 'n/a'}\n\nEvidence:\n{evidence}"
            elif c.status == Status.SKIP:
                ET.SubElement(case, "skipped", message=c.summary)
            out = ET.SubElement(case, "system-out")
            out.text = f"[{c.status.value}] {c.summary}" + (f"\nFix: {c.fix}" if c.fix else "")
        ET.indent(suite)
        # What XML cannot carry at all (ESC from a path or a server's message) is spelled out, never written raw.
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + xml_text(ET.tostring(suite, encoding="unicode")) + "\n"


def _value_text(m: Metric) -> str:
    """A figure for the log and JUnit: six significant digits for floats, integers as they are."""
    return f"{m.value:.6g}" if isinstance(m.value, float) else str(m.value)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a reader never sees half a report (see replace_atomically)."""
    path = output_target(Path(path))
    if path.exists() and not path.is_file():  # checked before the run too (check_writable); never replace it
        raise OSError(errno.EISDIR if path.is_dir() else errno.EINVAL, "not a regular file", str(path))

    def fill(fd: int, tmp: str) -> None:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            os.fchmod(fh.fileno(), 0o666 & ~_current_umask())  # mkstemp makes 0600; a report is for sharing

    replace_atomically(path, fill)


def replace_atomically(path: Path, fill: Callable[[int, str], None]) -> None:
    """Make `path` by `fill(fd, tmp)` writing a temporary file beside it, then one rename: no reader (nor a
    crash) ever sees half of it under its name.

    Missing parent directories are created; when the write then fails, the ones created here are removed
    again (those still empty), so a failed write leaves the filesystem as it found it."""
    created = make_parents(path.parent)
    tmp: str | None = None
    try:
        # Short enough for any name the final file may have (NAME_MAX counts the temp name too).
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
        fill(fd, tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        remove_empty(created)
        raise


def output_target(path: Path) -> Path:
    """Where writing `path` lands: a symlink is written through to the file it names, the link kept (a dangling
    one creates that file, as `echo > link` does). Raises OSError (ELOOP) for a symlink loop."""
    if not path.is_symlink():
        return path
    with contextlib.suppress(FileNotFoundError):
        os.stat(path)  # ELOOP for a loop
    return Path(os.path.realpath(path))


def _current_umask() -> int:
    """The process umask (reading it means setting it; the CLI is single-threaded when it writes)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
