"""Node health: detect's fast subset as one line and one exit status, and the Slurm drain/resume it drives.

The conventions it answers to:

- node-problem-detector's custom plugins: exit 0 = OK, 1 = problem, anything else = unknown; stdout is the
  condition's message, cut to 80 characters; a 5 s default timeout.
- Slurm's `HealthCheckProgram` (run by slurmd as root with no arguments and no environment but
  `SLURMD_NODENAME`) drains a bad node itself; the reason carries a fixed prefix so that only a drain this
  tool set is ever resumed by it, never one an admin set.
- LBNL NHC's `check_cmd_status` (exit status only) and its 30 s timeout.

The answer is OK only when a selected check passed (or warned) and none failed. Checks that give no verdict
(nothing applied, or every one skipped) never read as OK: when NVML saw no usable GPU that is "unknown" with
the code the driver check would give (3 or 4), which node-problem-detector reads as unknown and Slurm drains
for; when nothing about the node explains it, the `--check` choice is a usage error (2).

`run_health` returns a frozen result; the Slurm part is a pure decision (`decide`) from the node's state and
that result, applied by `Slurm`, which is the only code here that starts a process.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from types import FrameType
from typing import Any

from kcuda_validate import defaults
from kcuda_validate.checks import Check, Status
from kcuda_validate.detect import CHECKS, NODE_HEALTH, DetectOptions, DetectReport, run_detect
from kcuda_validate.detect.stack import FIX_NO_DEVICE, nvml_failure
from kcuda_validate.errors import ExitCode, KcudaError, UsageError
from kcuda_validate.gpu.nvml import GpuInfo
from kcuda_validate.llm.build import invocation
from kcuda_validate.safetext import spelled_out

STAGE = "health"
MAX_LINE = 80  # node-problem-detector keeps the first 80 characters (bytes) of stdout
DEFAULT_TIMEOUT_S = 4.0  # answers before node-problem-detector's default 5 s kills it
SLURM_TIMEOUT_S = 30.0  # --slurm: slurmd waits for its HealthCheckProgram; NHC's default is 30 s too
MAX_TIMEOUT_S = defaults.HEALTH_MAX_TIMEOUT_S
DRAIN_PREFIX = "kcuda-validate:"
# slurmd runs HealthCheckProgram with no PATH; Debian and the upstream RPMs put scontrol in one of these.
SLURM_PATH = "/usr/bin:/usr/local/bin:/usr/sbin:/usr/local/sbin:/opt/slurm/bin:/bin"
SCONTROL_TIMEOUT_S = 20.0  # any one scontrol call, at most
# The scontrol calls share what is left of --timeout, but get at least this long in all (from when they start),
# so that a node whose checks used all of --timeout (a hung driver) can still be drained.
SLURM_FLOOR_S = 5.0

# Checks `health --check` accepts: the node-health subset and any other check that needs no child process.
ALLOWED: tuple[str, ...] = tuple(c.id for c in CHECKS if c.id in NODE_HEALTH or "fast" in c.tags)


class HealthTimeout(Exception):
    """The checks did not finish within --timeout."""


# The checks run_health adds itself when the selected checks give no verdict: their code is the exit status.
UNKNOWN_IDS = ("health.deadline", "health.verdict")
VERDICTS = (Status.PASS, Status.WARN, Status.FAIL)


@dataclass(frozen=True)
class HealthResult:
    """What the node-health run found: the detect report it judged, and the one line that says so."""

    report: DetectReport | None  # None: the checks did not finish in time
    checks: tuple[Check, ...]
    line: str
    timeout_s: float

    @property
    def unknown(self) -> Check | None:
        """The check that says why there is no verdict (did not finish, no usable GPU); None when there is one."""
        return next((c for c in self.checks if c.id in UNKNOWN_IDS), None)

    @property
    def healthy(self) -> bool:
        """A verdict, and a good one: a check passed or warned, none failed (nothing checked is never healthy)."""
        return (
            self.unknown is None
            and not any(c.status == Status.FAIL for c in self.checks)
            and any(c.status in (Status.PASS, Status.WARN) for c in self.checks)
        )

    @property
    def verdict(self) -> str:
        return "ok" if self.healthy else "unknown" if self.unknown is not None else "problem"

    @property
    def timed_out(self) -> bool:
        return self.report is None

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 a problem, else unknown (124 did not finish, 3/4 no usable GPU, 2 the checks asked for
        gave no verdict at all): node-problem-detector's three answers."""
        if (unknown := self.unknown) is not None:
            return int(unknown.exit_code)
        if self.healthy:
            return 0
        return 1 if any(c.status == Status.FAIL for c in self.checks) else int(ExitCode.USAGE)

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "verdict": self.verdict,
            "healthy": self.healthy,
            "timed_out": self.timed_out,
            "timeout_s": self.timeout_s,
            "exit_code": self.exit_code,
            "detect": None if self.report is None else self.report.to_json(),
        }


def select_checks(ids: Sequence[str]) -> tuple[str, ...]:
    """The registry IDs to run (all of NODE_HEALTH when none are given); a check not allowed is a usage error."""
    if not ids:
        return NODE_HEALTH
    bad = [i for i in ids if i not in ALLOWED]
    if bad:
        raise UsageError(
            f"--check {bad[0]}: not a node health check",
            fix="Use one of: " + ", ".join(ALLOWED) + f" (slower checks need `{invocation()} detect`).",
        )
    return tuple(dict.fromkeys(ids))


_ASCII = str.maketrans({"—": "-", "–": "-", "≤": "<=", "≥": ">=", "…": "...", "×": "x", "’": "'", "→": "->"})


def _ascii(text: str) -> str:
    """Plain ASCII on one line: node-problem-detector cuts bytes, not characters, and Slurm reasons are text."""
    flat = " ".join(text.translate(_ASCII).split())
    return flat.encode("ascii", "replace").decode("ascii")


def fit(text: str, limit: int = MAX_LINE) -> str:
    """`text` as one ASCII line of at most `limit` characters, ending in '...' when cut."""
    line = _ascii(text)
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def health_line(checks: Sequence[Check], report: DetectReport | None) -> str:
    """`OK: ...` naming the GPUs and driver (or counting the checks passed), `WARN <id>: ...`,
    `FAIL <id> (+N more): <summary>`, or `UNKNOWN: <why>` when a check in UNKNOWN_IDS says there is no verdict."""
    unknown = next((c for c in checks if c.id in UNKNOWN_IDS), None)
    if unknown is not None:
        return fit(f"UNKNOWN: {unknown.summary}")
    failed = [c for c in checks if c.status == Status.FAIL]
    warned = [c for c in checks if c.status == Status.WARN]
    for word, bad in (("FAIL", failed), ("WARN", warned)):
        if bad:
            more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
            return fit(f"{word} {bad[0].id}{more}: {bad[0].summary}")
    passed = sum(1 for c in checks if c.status == Status.PASS)
    if not passed:
        return fit("UNKNOWN: no check gave a verdict")
    gpus = () if report is None else report.usable_gpus
    if gpus and report is not None:
        names = sorted({g.name for g in gpus if g.name})
        what = _plural(len(gpus), "GPU") + (f" ({', '.join(names)})" if names else "")
        driver = f", driver {report.driver.driver_version}" if report.driver is not None else ""
        return fit(f"OK: {what}{driver}")
    skipped = sum(1 for c in checks if c.status == Status.SKIP)
    return fit(f"OK: {_plural(passed, 'check')} passed" + (f", {skipped} skipped" if skipped else ""))


def _gpu_problem(g: GpuInfo, hidden: Sequence[int]) -> str:
    if g.index in hidden:
        return f"GPU {g.index} hidden by CUDA_VISIBLE_DEVICES"
    return f"GPU {g.index} lost" if g.lost else f"GPU {g.index} cannot be opened"


def no_verdict(report: DetectReport, ids: Sequence[str]) -> Check | None:
    """When the checks in `report` gave no verdict (none passed, warned or failed) because NVML saw no usable
    GPU: a failed check saying so, with the code the driver check would give (3 or 4). None when they gave a
    verdict; a usage error when nothing about this node explains the silence (the checks do not apply here)."""
    if any(c.status in VERDICTS for c in report.checks):
        return None
    asked = ", ".join(ids)
    results = {c.id: c.status.value for c in report.checks}
    # driver.nvml fails in the first two cases below: had it been asked for, there would be a verdict.
    driver = (
        "" if "driver.nvml" in ids else " driver.nvml, which fails here, was not asked for: add --check driver.nvml."
    )
    evidence: dict[str, Any] = {"checks": list(ids), "results": results}
    if report.driver is None and report.nvml_error is not None:
        why, fix, code = nvml_failure(report.nvml_error, f"NVML did not start ({report.nvml_error})")
        summary = f"no GPU visible ({why})"
        evidence["nvml_error"] = report.nvml_error
    elif report.driver is not None and not report.gpus:
        summary = f"no GPU visible (driver {report.driver.driver_version} loaded but it sees no GPU)"
        fix, code = FIX_NO_DEVICE, ExitCode.NO_GPU
    elif report.driver is not None and not report.usable_gpus:
        summary = "no usable GPU (" + ", ".join(_gpu_problem(g, report.hidden) for g in report.gpus) + ")"
        fix = f"Run `{invocation()} detect` for each GPU's state; unset or fix CUDA_VISIBLE_DEVICES if it hides them."
        code, driver = ExitCode.GPU_UNUSABLE, ""
    else:
        what = "; ".join(f"{c.id} skipped: {c.summary}" for c in report.checks) or "nothing to check here"
        raise UsageError(
            f"--check {asked}: no verdict on this node ({what})",
            fix="Choose checks that apply to this node, or drop --check to run the node-health set.",
        )
    return Check(
        "health.verdict",
        STAGE,
        "A verdict from the checks asked for",
        Status.FAIL,
        summary,
        evidence,
        f"{asked}: no verdict without a usable GPU.{driver} {fix}",
        code,
    )


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """SIGALRM after `seconds` raises HealthTimeout in the main thread (elsewhere: no deadline)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: FrameType | None) -> None:
        raise HealthTimeout

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_health(
    only: Sequence[str] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    options: DetectOptions | None = None,
    environ: dict[str, str] | None = None,
) -> HealthResult:
    """Run the node-health checks (or `only`) within `timeout_s`; never PyTorch, never a model."""
    if not 0 < timeout_s <= MAX_TIMEOUT_S:  # also refuses nan
        raise UsageError(f"--timeout {timeout_s:g}: out of range", fix=f"Give 0.1 to {MAX_TIMEOUT_S:g} seconds.")
    ids = select_checks(only)
    opts = options or DetectOptions(skip_torch=True)
    started = time.perf_counter()
    try:
        with _deadline(timeout_s):
            report = run_detect(opts, only=ids, environ=environ)
    except HealthTimeout:
        took = time.perf_counter() - started
        check = Check(
            "health.deadline",
            STAGE,
            "Node health within its timeout",
            Status.FAIL,
            f"the checks did not finish in {timeout_s:g} s",
            {"timeout_s": timeout_s, "elapsed_s": round(took, 3), "checks": list(ids)},
            "Look for a hung driver (`nvidia-smi` hanging, Xid errors in `sudo dmesg | grep -i xid`); raise"
            " --timeout only if the node is merely slow.",
            ExitCode.TIMEOUT,
        )
        return HealthResult(
            None, (check,), fit(f"UNKNOWN: node health checks did not finish in {timeout_s:g} s"), timeout_s
        )
    unknown = no_verdict(report, ids)
    checks = report.checks if unknown is None else (*report.checks, unknown)
    return HealthResult(report, checks, health_line(checks, report), timeout_s)


# --------------------------------------------------------------------------------------------------
# Slurm: drain a failing node, resume only what this tool drained
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmNode:
    """A node as `scontrol show node` describes it: its state flags and the reason given for a drain."""

    name: str
    state: str  # e.g. IDLE, IDLE+DRAIN, MIXED+DRAIN, DOWN+DRAIN+NOT_RESPONDING
    reason: str | None

    @property
    def drained(self) -> bool:
        return "DRAIN" in self.state.upper().split("+")

    @property
    def ours(self) -> bool:
        """Drained with this tool's prefix (so this tool may resume it)."""
        return self.reason is not None and self.reason.startswith(DRAIN_PREFIX)


class Action(StrEnum):
    DRAIN = "drain"  # drain it, or update the reason of our own drain
    RESUME = "resume"  # our own drain, and the node is healthy again
    NONE = "none"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str | None  # the Reason= text for a drain
    why: str  # one line for the log

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason, "why": self.why}


def drain_reason(line: str) -> str:
    return f"{DRAIN_PREFIX} {line}"


def decide(node: SlurmNode, result: HealthResult) -> Decision:
    """What to do with `node` given the health result. Pure; never touches a drain an admin set."""
    # A check that cannot finish in its time (a hung driver, as a rule), or a GPU node whose NVML sees no usable
    # GPU, is a problem for a scheduler too: only a healthy answer ever resumes.
    if not result.healthy:
        reason = drain_reason(result.line)
        if not node.drained:
            return Decision(Action.DRAIN, reason, f"drained: {result.line}")
        if not node.ours:
            return Decision(Action.NONE, None, f"already drained by someone else ({node.reason}): left as it is")
        if node.reason != reason:
            return Decision(Action.DRAIN, reason, f"still failing, reason updated: {result.line}")
        return Decision(Action.NONE, None, f"still drained: {result.line}")
    if node.drained and node.ours:
        return Decision(Action.RESUME, None, f"resumed: {result.line}")
    if node.drained:
        return Decision(Action.NONE, None, f"healthy, but drained by someone else ({node.reason}): left drained")
    return Decision(Action.NONE, None, result.line)


_STATE = re.compile(r"(?:^|\s)State=(\S+)")
_REASON = re.compile(r"^\s*Reason=(.*?)(?:\s+\[[^\]\s]*@[^\]\s]*\])?\s*$")


def parse_node(name: str, text: str) -> SlurmNode:
    """The state and reason from `scontrol show node NAME` (one field per line group, Reason on its own line)."""
    state = next((m.group(1) for line in text.splitlines() if (m := _STATE.search(line))), None)
    if state is None:
        raise KcudaError(f"scontrol show node {name}: no State= in its answer", fix="Check that NAME is a node.")
    reason = next((spelled_out(m.group(1)) for line in text.splitlines() if (m := _REASON.match(line))), None)
    return SlurmNode(name, state, None if reason in (None, "", "(null)", "none") else reason)


def node_name(environ: Mapping[str, str]) -> str:
    """slurmd gives its HealthCheckProgram SLURMD_NODENAME; otherwise the short host name."""
    return environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def slurm_until(started: float, timeout_s: float, now: float | None = None) -> float:
    """When (time.monotonic) the scontrol calls must be done: what is left of `timeout_s` counted from `started`,
    but at least SLURM_FLOOR_S from `now`, so that a node whose checks ran out of time can still be drained."""
    now = time.monotonic() if now is None else now
    return max(started + timeout_s, now + SLURM_FLOOR_S)


def _decoded(raw: bytes | None) -> str:
    """scontrol's output as text whatever its bytes (an admin's Latin-1 reason): never raises."""
    return (raw or b"").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class SlurmOutcome:
    node: SlurmNode  # as it was before
    decision: Decision
    after: SlurmNode | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        def node(n: SlurmNode | None) -> dict[str, Any] | None:
            return None if n is None else {"name": n.name, "state": n.state, "reason": n.reason}

        return {"node": self.node.name, "before": node(self.node), "after": node(self.after)} | self.decision.to_json()


class Slurm:
    """`scontrol` for one node: read its state, drain it with a reason, resume it."""

    def __init__(self, node: str, environ: Mapping[str, str], until: float | None = None) -> None:
        self.node = node
        self.env = dict(environ)
        self.until = until  # time.monotonic() by which every call must be done (None: SCONTROL_TIMEOUT_S each)
        path = self.env.get("PATH") or SLURM_PATH
        found = shutil.which("scontrol", path=path + ":" + SLURM_PATH)
        if found is None:
            raise UsageError(
                "--slurm: scontrol not found (looked in PATH and " + SLURM_PATH + ")",
                fix="Run it on a Slurm node, or put scontrol on PATH in the HealthCheckProgram script.",
            )
        self.scontrol = found

    def _run(self, *args: str) -> str:
        argv = [self.scontrol, *args]
        limit = SCONTROL_TIMEOUT_S if self.until is None else min(SCONTROL_TIMEOUT_S, self.until - time.monotonic())
        what = f"scontrol {' '.join(args)}"
        late = (
            f"no answer in {SCONTROL_TIMEOUT_S:g} s"
            if limit == SCONTROL_TIMEOUT_S
            else f"no answer within --timeout (Slurm gets what is left of it, at least {SLURM_FLOOR_S:g} s)"
        )
        fix = "Check that slurmctld is up (`scontrol ping`)."
        if limit <= 0:
            raise KcudaError(f"{what}: not run, {late}", fix=fix)
        try:
            done = subprocess.run(argv, env=self.env, capture_output=True, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            raise KcudaError(f"{what}: {late}", fix=fix) from None
        if done.returncode != 0:
            said = " ".join(_decoded(done.stderr or done.stdout).split()) or f"exit {done.returncode}"
            raise KcudaError(
                f"{what}: {spelled_out(said)}",
                fix="Check that slurmctld answers (`scontrol ping`) and that this runs as root or SlurmUser.",
            )
        return _decoded(done.stdout)

    def read(self) -> SlurmNode:
        return parse_node(self.node, self._run("show", "node", self.node))

    def apply(self, decision: Decision) -> None:
        if decision.action == Action.DRAIN:
            self._run("update", f"NodeName={self.node}", "State=DRAIN", f"Reason={decision.reason}")
        elif decision.action == Action.RESUME:
            self._run("update", f"NodeName={self.node}", "State=RESUME")

    def act(self, result: HealthResult) -> SlurmOutcome:
        before = self.read()
        decision = decide(before, result)
        if decision.action == Action.NONE:
            return SlurmOutcome(before, decision, before)
        self.apply(decision)
        try:
            after = self.read()
        except KcudaError:  # done, only not confirmed (the time left ran out): the outcome says `after: null`
            after = None
        return SlurmOutcome(before, decision, after)
