"""A real single-node Slurm cluster (munged, slurmctld, slurmd on localhost; see slurmcluster.py): srun runs the
tool, and the shipped HealthCheckProgram (examples/slurm/kcuda-healthcheck.sh), run by slurmd itself, drains
the node when the check fails (there is no GPU here) and resumes only its own drain."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurmcluster import PACKAGES, NodeState, SlurmCluster, missing_programs

from procs import alive, wait_for, with_marker

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
WRAPPER = REPO / "examples" / "slurm" / "kcuda-healthcheck.sh"
TOOL = Path(sys.executable).with_name("kcuda-validate")
MISSING = missing_programs()
if MISSING:
    pytest.skip(
        f"Slurm/munge not installed ({', '.join(MISSING)} missing): `apt-get install -y {PACKAGES}` (.ci/run does)",
        allow_module_level=True,
    )

# What health says on a machine without an NVIDIA driver, and so the reason the wrapper drains with.
NO_DRIVER_LINE = "FAIL driver.nvml: No NVIDIA driver: libnvidia-ml.so.1 was not found"
OUR_REASON = "kcuda-validate: " + NO_DRIVER_LINE
ADMIN_REASON = "PSU swap, do not resume"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    c = SlurmCluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()
        assert c.alive_daemons() == []
        assert not c.root.exists()


@pytest.fixture
def node(cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The cluster with its node back in service and the no-op health check, before and after each test."""
    cluster.set_health_check(None)
    cluster.resume()
    yield cluster
    cluster.set_health_check(None)
    cluster.resume()


def _install_check(c: SlurmCluster, *args: str) -> Path:
    """slurmd's HealthCheckProgram from now on: the shipped wrapper, given the environment slurmd does not
    give it (this cluster's slurm.conf, where the tool is). Each run appends its exit status to the file
    returned, so a test can wait for runs instead of sleeping."""
    runs = c.root / f"runs-{len(list(c.root.glob('runs-*')))}"
    key, value = c.marker.split("=", 1)
    c.set_health_check(
        "#!/bin/sh\n"
        f"export SLURM_CONF={c.conf} KCUDA_VALIDATE={TOOL} KCUDA_LOG_DIR={c.root / 'logs'} {key}={value}\n"
        f"{WRAPPER} {' '.join(args)} >>{c.root / 'healthcheck.out'} 2>&1\n"
        f"echo $? >>{runs}\n"
    )
    return runs


def _runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_state(c: SlurmCluster, want: NodeState, timeout_s: float = 30.0) -> None:
    if not wait_for(lambda: c.node_state() == want, timeout_s, 0.25):
        raise AssertionError(
            f"node is {c.node_state()}, not {want}\n--- healthcheck.out\n{c.log_tail('healthcheck', 10)}"
            f"\n--- slurmd.log\n{c.log_tail('slurmd', 10)}"
        )


def test_srun_runs_health_on_the_node(cluster: SlurmCluster) -> None:
    done = cluster.run("srun", "-N1", "-n1", str(TOOL), "health", env={"KCUDA_LOG_DIR": str(cluster.root / "logs")})
    assert (done.returncode, done.stdout) == (1, NO_DRIVER_LINE + "\n"), done.stderr


def test_srun_runs_health_json_with_the_nodes_hostname(cluster: SlurmCluster) -> None:
    done = cluster.run(
        "srun", "-N1", "-n1", str(TOOL), "health", "--json", env={"KCUDA_LOG_DIR": str(cluster.root / "logs")}
    )
    doc = json.loads(done.stdout)
    assert (doc["command"], doc["exit_code"], doc["sections"]["health"]["line"]) == ("health", 1, NO_DRIVER_LINE)
    assert doc["host"]["hostname"].split(".")[0] == cluster.node


def test_failing_check_drains_the_node_with_its_reason(node: SlurmCluster) -> None:
    runs = _install_check(node)
    _wait_state(node, NodeState("DRAINED", OUR_REASON))
    # The wrapper drains before it exits, so its status is written just after the node shows DRAINED.
    assert wait_for(lambda: bool(_runs(runs)), 10.0, 0.1), "the health check's exit status was never written"
    assert _runs(runs)[0] == "1"
    listed = node.run("sinfo", "-R", "-h", "-o", "%E|%N").stdout.strip()
    assert listed == f"{OUR_REASON}|{node.node}"
    shown = node.scontrol("show", "node", node.node).stdout
    assert f"Reason={OUR_REASON} [root@" in shown


def test_passing_check_resumes_its_own_drain(node: SlurmCluster) -> None:
    node.drain(OUR_REASON)
    # The real tool, with a subset of its checks that passes on this machine (the OS check): healthy.
    runs = _install_check(node, "--check", "platform.os")
    _wait_state(node, NodeState("IDLE", None))
    assert wait_for(lambda: "0" in _runs(runs), 10.0, 0.1), _runs(runs)
    assert "slurm: node " + node.node + " resumed: OK: 1 check passed" in (node.root / "healthcheck.out").read_text()


def test_passing_check_leaves_an_admin_drain(node: SlurmCluster) -> None:
    node.drain(ADMIN_REASON)
    runs = _install_check(node, "--check", "platform.os")
    assert wait_for(lambda: len(_runs(runs)) >= 2, 30.0, 0.25), "the health check did not run twice"
    assert _runs(runs)[:2] == ["0", "0"]
    assert node.node_state() == NodeState("DRAINED", ADMIN_REASON)


def test_failing_check_leaves_an_admin_drain_and_its_reason(node: SlurmCluster) -> None:
    node.drain(ADMIN_REASON)
    runs = _install_check(node)
    assert wait_for(lambda: len(_runs(runs)) >= 2, 30.0, 0.25), "the health check did not run twice"
    assert _runs(runs)[:2] == ["1", "1"]
    assert node.node_state() == NodeState("DRAINED", ADMIN_REASON)


def test_cluster_leaves_nothing_running() -> None:
    c = SlurmCluster()
    c.start()
    pids = [p.pid for p in c._procs.values()]
    assert len(pids) == 3 and all(alive(pid) for pid in pids)
    c.stop()
    assert [pid for pid in pids if alive(pid)] == []
    assert with_marker(c.marker) == []
    assert not c.root.exists()


def test_unknown_node_is_one_error_after_the_verdict(cluster: SlurmCluster) -> None:
    done = cluster.run(str(TOOL), "health", "--slurm", "--node", "nosuchnode", env={"KCUDA_LOG_DIR": str(cluster.root)})
    assert (done.returncode, done.stdout) == (1, NO_DRIVER_LINE + "\n")
    first, fix = done.stderr.splitlines()[:2]
    assert first == "Error: scontrol show node nosuchnode: Node nosuchnode not found"
    assert fix == "Fix: Check that slurmctld answers (`scontrol ping`) and that this runs as root or SlurmUser."
