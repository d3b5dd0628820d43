"""The worker dies with its parent, in any stage, within seconds: real processes, real SIGKILLs.

Seen before the fix: after a SIGKILL to the parent during prompt processing, the worker kept two cores busy
for about a minute. Two mechanisms stop it (kcuda_validate.lifeline.die_with_parent): a lifeline pipe whose EOF
a watchdog thread in the worker watches, and PR_SET_PDEATHSIG. The CLI tests run both together, as the tool
does; the mechanism tests start the worker through a stand-in parent that enables only one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from procs import alive, children_with_marker, cpu_ticks, wait_for, with_marker

GONE_WITHIN_S = 3.0  # the contract is "a second or two"; the margin is for a loaded CI machine


def _cli_env(marker: str, **extra: str) -> dict[str, str]:
    return os.environ | {"KCUDA_TEST_MARK": marker, **extra}


def _start_cli(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kcuda_validate", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "cli.stderr").open("wb"),
        env=env,
    )


def _the_worker(parent: subprocess.Popen[bytes], marker: str) -> int:
    found: list[int] = []

    def seen() -> bool:
        found[:] = children_with_marker(parent.pid, marker)
        return bool(found)

    assert wait_for(seen, 60), "the CLI started no worker"
    assert len(found) == 1, found
    return found[0]


def _kill_and_expect_the_worker_gone(parent: subprocess.Popen[bytes], worker: int, marker: str) -> None:
    assert alive(worker), "the worker ended before the parent was killed: the test proves nothing"
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    try:
        assert wait_for(lambda: not alive(worker), GONE_WITHIN_S), (
            f"the worker outlived its parent by {GONE_WITHIN_S} s"
        )
        assert with_marker(marker) == []
    finally:
        _cleanup(worker)


def _cleanup(worker: int) -> None:
    """A failed test must not leave a worker hanging for an hour (it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker, signal.SIGKILL)


@pytest.fixture
def marker() -> str:
    return f"kcuda-test-{uuid.uuid4().hex}"


def test_worker_dies_with_a_killed_parent_before_the_model_stages(
    tiny_model: Path, tmp_path: Path, marker: str
) -> None:
    """Killed as soon as the worker exists: it is still importing llama.cpp or waiting for its request."""
    env = _cli_env(marker, KCUDA_TEST_FAULT="hang:load")
    parent = _start_cli(["load", "--device", "cpu", "--model-path", str(tiny_model)], env, tmp_path)
    worker = _the_worker(parent, marker)
    _kill_and_expect_the_worker_gone(parent, worker, marker)


@pytest.mark.parametrize("stage", ["load", "infer"])
def test_worker_dies_with_a_killed_parent_in_a_stage(tiny_model: Path, tmp_path: Path, marker: str, stage: str) -> None:
    ready = tmp_path / "ready"
    env = _cli_env(marker, KCUDA_TEST_FAULT=f"hang:{stage}", KCUDA_TEST_FAULT_READY=str(ready))
    parent = _start_cli(
        ["validate-all", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "4", "--repeat", "1"],
        env,
        tmp_path,
    )
    worker = _the_worker(parent, marker)
    assert wait_for(ready.exists, 60), f"the worker never reached its {stage} stage"
    _kill_and_expect_the_worker_gone(parent, worker, marker)


@pytest.mark.slow
def test_worker_dies_with_a_killed_parent_during_prompt_processing(
    real_model: Path, tmp_path: Path, marker: str
) -> None:
    """The case seen: llama.cpp busy in C (a 2000-token prompt, ~20 s on two cores) when the parent dies."""
    ready = tmp_path / "ready"
    env = _cli_env(marker, KCUDA_TEST_FAULT="mark:infer", KCUDA_TEST_FAULT_READY=str(ready))
    args = ["infer", "--device", "cpu", "--model-path", str(real_model), "--prompt-tokens", "2000"]
    parent = _start_cli([*args, "--max-tokens", "1", "--repeat", "1", "--no-warmup"], env, tmp_path)
    worker = _the_worker(parent, marker)
    assert wait_for(ready.exists, 120), "the worker never reached its infer stage"
    _wait_until_computing(worker)
    _kill_and_expect_the_worker_gone(parent, worker, marker)


def _wait_until_computing(pid: int) -> None:
    start = cpu_ticks(pid)
    assert wait_for(lambda: cpu_ticks(pid) >= start + 20, 30), "the worker is not computing"


# A stand-in parent: starts the worker as Worker.start() does, with only one of the two mechanisms, prints its
# pid, and waits to be killed. The worker's stdin is a pipe the test holds open, so it never sees an EOF there.
STAND_IN = textwrap.dedent(
    """
    import os, subprocess, sys, time
    stdin_fd, held_lifeline, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    env = dict(os.environ, KCUDA_WORKER_PARENT=str(os.getpid()))
    if mode == "pdeathsig":  # the lifeline's write end stays with the test: only the kernel can stop the worker
        env |= {"KCUDA_WORKER_PDEATHSIG": "1", "KCUDA_WORKER_LIFELINE": str(held_lifeline)}
        lifeline = held_lifeline
    else:  # the lifeline's write end is this process's alone (os.pipe() fds are not inherited)
        lifeline, write_end = os.pipe()
        env["KCUDA_WORKER_LIFELINE"] = str(lifeline)
    worker = subprocess.Popen(
        [sys.executable, "-m", "kcuda_validate.worker"], stdin=stdin_fd, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=env, pass_fds=(lifeline,), start_new_session=True,
    )
    print(worker.pid, flush=True)
    time.sleep(3600)
    """
)


def _stand_in(mode: str, env: dict[str, str], request: str = "") -> tuple[subprocess.Popen[str], int, list[int]]:
    """(the stand-in parent, its worker's pid, the fds the test must keep open until the end)."""
    stdin_r, stdin_w = os.pipe()
    life_r, life_w = os.pipe()
    if request:
        os.write(stdin_w, request.encode())
    parent = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, str(stdin_r), str(life_r), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        pass_fds=(stdin_r, life_r),
    )
    os.close(stdin_r)
    os.close(life_r)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    return parent, worker, [stdin_w, life_w]


def _started(worker: int) -> bool:
    """die_with_parent has run: the lifeline thread exists (it is started last)."""
    try:
        return len(os.listdir(f"/proc/{worker}/task")) >= 2
    except OSError:
        return False


def _release(parent: subprocess.Popen[str], worker: int, held: list[int]) -> None:
    """Whatever the test's outcome: no fd, stand-in parent or worker left behind."""
    for fd in held:
        os.close(fd)
    parent.kill()
    parent.wait(timeout=10)
    _cleanup(worker)


@pytest.mark.parametrize("mode", ["lifeline", "pdeathsig"])
def test_each_mechanism_alone_stops_an_idle_worker(mode: str, marker: str) -> None:
    parent, worker, held = _stand_in(mode, _cli_env(marker))
    try:
        assert wait_for(lambda: _started(worker), 30), "the worker never started"
        parent.kill()
        parent.wait(timeout=10)
        assert wait_for(lambda: not alive(worker), GONE_WITHIN_S), f"{mode} alone did not stop the worker"
    finally:
        _release(parent, worker, held)


@pytest.mark.slow
def test_the_lifeline_alone_stops_llama_cpp_in_the_middle_of_compute(
    real_model: Path, tmp_path: Path, marker: str
) -> None:
    """The watchdog thread runs while llama.cpp computes in C (ctypes releases the GIL): no kernel help."""
    from kcuda_validate.llm.loader import LoadOptions
    from kcuda_validate.llm.measures import InferOptions

    ready = tmp_path / "ready"
    request = {
        "model_path": str(real_model),
        "n_layer": None,
        "load": asdict(LoadOptions(gpu_layers=0, cpu_mode=True)),
        "infer": asdict(InferOptions(prompt_tokens=2000, max_tokens=1, repeat=1, warmup=False)),
        "cuda_visible_devices": "",
    }
    env = _cli_env(marker, KCUDA_TEST_FAULT="mark:infer", KCUDA_TEST_FAULT_READY=str(ready), CUDA_VISIBLE_DEVICES="")
    parent, worker, held = _stand_in("lifeline", env, json.dumps(request) + "\ngo\n")
    try:
        assert wait_for(ready.exists, 120), "the worker never reached its infer stage"
        _wait_until_computing(worker)
        parent.kill()
        parent.wait(timeout=10)
        assert wait_for(lambda: not alive(worker), GONE_WITHIN_S), "the lifeline did not stop llama.cpp's compute"
    finally:
        _release(parent, worker, held)


def test_a_worker_whose_parent_died_before_it_started_stops_at_once(marker: str) -> None:
    """The race PR_SET_PDEATHSIG leaves open: the parent died before the prctl. The worker checks getppid()."""
    stdin_r, stdin_w = os.pipe()
    try:
        env = _cli_env(marker, KCUDA_WORKER_PARENT=str(os.getpid() + 1_000_000), KCUDA_WORKER_PDEATHSIG="1")
        worker = subprocess.Popen(
            [sys.executable, "-m", "kcuda_validate.worker"], stdin=stdin_r, env=env, start_new_session=True
        )
        assert worker.wait(timeout=30) == -signal.SIGKILL  # it killed its own process group
    finally:
        os.close(stdin_r)
        os.close(stdin_w)
