"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd on localhost.

Everything lives in one temporary directory: a generated munge key, a generated slurm.conf (this machine's
hostname as the one node, free ports, no cgroups), the state and spool directories and the logs. The daemons
run in the foreground as children of the test process, each with a parent-death signal, so they go when the
test run goes, even when it is killed; `stop()` ends them and anything they started (job steps carry the
cluster's marker in their environment) and removes the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from procs import alive, wait_for, with_marker

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "scontrol", "srun")
PACKAGES = "slurm-wlm munge"
START_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1


def missing_programs() -> list[str]:
    """The Slurm and munge programs this machine lacks (empty: the cluster can run here)."""
    return [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]


def _program(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(name)
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process exits, however it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(frozen=True)
class NodeState:
    """What `scontrol show node` says about the node: its state flags and the reason an admin or a tool gave."""

    state: str
    reason: str | None

    @property
    def drained(self) -> bool:
        return "DRAIN" in self.state


class SlurmCluster:
    """Start with `start()`, stop with `stop()` (idempotent); `env` is what clients need (SLURM_CONF)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kcuda-slurm-"))
        self.node = socket.gethostname().split(".")[0]
        self.marker = f"KCUDA_SLURM_TEST={uuid.uuid4().hex}"
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        # The program slurmd runs as HealthCheckProgram; a no-op until a test puts a real check there.
        self.health_check_program = self.root / "healthcheck"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        key, value = self.marker.split("=", 1)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), key: value}
        self.env["PATH"] = self.env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        try:
            self._write_files()
            self._spawn("munged", [_program("munged"), "-F", "--force", *self._munge_args()])
            if not wait_for(self.munge_socket.exists, 10.0, 0.05):
                raise RuntimeError("munged did not create its socket in 10 s" + self._logs())
            self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._spawn("slurmd", [_program("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
            if not wait_for(lambda: self.sinfo_state() == "idle", timeout_s, 0.25):
                raise RuntimeError(
                    f"node {self.node} not idle in {timeout_s:g} s (sinfo says {self.sinfo_state()!r})" + self._logs()
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the daemons (slurmd first) and every process with the marker, SIGKILL what is left."""
        for name in reversed(DAEMONS):
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in with_marker(self.marker):
                if pid != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            if wait_for(lambda: not [p for p in with_marker(self.marker) if p != os.getpid()], 5.0, 0.1):
                break
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def alive_daemons(self) -> list[str]:
        return [name for name, p in self._procs.items() if alive(p.pid)]

    # -- clients -------------------------------------------------------------------------------------
    def run(
        self, *cmd: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A client command (sinfo, scontrol, srun...) against this cluster; never raises on a non-zero exit."""
        return subprocess.run(
            list(cmd), env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def sinfo_state(self) -> str:
        done = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", timeout_s=10)
        return done.stdout.strip() if done.returncode == 0 else f"sinfo failed: {done.stderr.strip()}"

    def node_state(self) -> NodeState:
        """State flags and reason of the node, from `sinfo` (the reason is the whole text, spaces and all)."""
        done = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T|%E", timeout_s=10)
        if done.returncode != 0:
            raise RuntimeError(f"sinfo failed: {done.stderr}")
        state, _, reason = done.stdout.strip().partition("|")
        return NodeState(state=state.upper(), reason=None if reason in ("", "none") else reason)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run("scontrol", *args, timeout_s=30)
        if done.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def drain(self, reason: str) -> None:
        self.scontrol("update", f"NodeName={self.node}", "State=DRAIN", f"Reason={reason}")

    def resume(self) -> None:
        """Back to service, whoever drained it (test set-up and clean-up only)."""
        if self.node_state().drained:
            self.scontrol("update", f"NodeName={self.node}", "State=RESUME")
        if not wait_for(lambda: not self.node_state().drained, 10.0, 0.2):
            raise RuntimeError(f"node {self.node} still drained: {self.node_state()}")

    def set_health_check(self, script: str | None) -> None:
        """What slurmd runs as HealthCheckProgram from now on (None: the no-op)."""
        tmp = self.health_check_program.with_suffix(".tmp")
        tmp.write_text(script if script is not None else "#!/bin/sh\nexit 0\n")
        tmp.chmod(0o755)
        tmp.replace(self.health_check_program)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- files -----------------------------------------------------------------------------------------
    def _munge_args(self) -> Sequence[str]:
        m = self.root / "munge"
        return [
            f"--socket={self.munge_socket}",
            f"--key-file={m / 'munge.key'}",
            f"--log-file={self.root / 'munged.log'}",
            f"--pid-file={m / 'munged.pid'}",
            f"--seed-file={m / 'munged.seed'}",
        ]

    def _write_files(self) -> None:
        m = self.root / "munge"
        m.mkdir(mode=0o700)
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for d in ("ctld", "spool"):
            (self.root / d).mkdir(mode=0o755)
        self.set_health_check(None)
        ctld_port, slurmd_port, srun_port = _free_port(), _free_port(), _free_port()
        cpus = os.cpu_count() or 1
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=kcudatest",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={slurmd_port}",
                    f"SrunPortRange={srun_port}-{srun_port + 20}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={r / 'ctld'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SchedulerType=sched/backfill",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    "InactiveLimit=0",
                    "KillWait=5",
                    "MinJobAge=5",
                    f"HealthCheckProgram={self.health_check_program}",
                    "HealthCheckInterval=2",
                    "HealthCheckNodeState=ANY",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
                    f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = (self.root / f"{name}.out").open("wb")
        try:
            self._procs[name] = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only prctl, before exec
            )
        finally:
            out.close()
        time.sleep(0.05)
        if self._procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited at once (status {self._procs[name].returncode})" + self._logs())

    def _logs(self) -> str:
        parts = []
        for name in DAEMONS:
            for suffix in (".out", ".log"):
                path = self.root / f"{name}{suffix}"
                if path.exists():
                    text = path.read_text(errors="replace").strip()
                    if text:
                        parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-15:]))
        return ("\n" + "\n".join(parts)) if parts else ""
