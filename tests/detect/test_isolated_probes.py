"""The PyTorch and llama.cpp build probes run in child processes: a crash there is a diagnosis, not the end."""

from __future__ import annotations

from pathlib import Path

import pytest

import kcuda_validate.gpu.torchprobe as torchprobe
from fakes.hardware import Installed
from kcuda_validate.detect import DetectOptions, run_detect
from kcuda_validate.errors import ExitCode
from machine import driver_present


@pytest.mark.slow
def test_real_isolated_probe_on_this_machine() -> None:
    info = torchprobe.probe_torch()
    assert info.installed
    assert info.cuda_build  # plain torch from PyPI is a CUDA build
    if not driver_present():
        assert info.problem == "no_driver"  # torch says so, in its own words
        assert "Found no NVIDIA driver" in (info.message or "")
    else:  # a GPU box: the child initialised CUDA and ran its kernel
        assert info.problem is None, info.message
        assert info.cuda_available and info.device_count >= 1
        assert all(d.kernel_ok for d in info.devices)


def test_crash_in_the_child_becomes_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KCUDA_TEST_FAULT", "segv:torch")
    info = torchprobe.probe_torch()
    assert info.problem == "crashed"
    assert "SIGSEGV" in (info.message or "")


@pytest.mark.parametrize("scenario", ["healthy_one_gpu"], indirect=True)
def test_detect_survives_a_torch_crash(scenario: Installed, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real torch seam (so the probe runs isolated) with a GPU present according to NVML.
    monkeypatch.setattr(torchprobe, "import_torch", torchprobe._REAL_IMPORT_TORCH)
    monkeypatch.setenv("KCUDA_TEST_FAULT", "segv:torch")
    report = run_detect(DetectOptions())
    torch_check = next(c for c in report.checks if c.id == "torch.cuda")
    assert torch_check.exit_code == ExitCode.GPU_UNUSABLE
    assert torch_check.summary.startswith("PyTorch's CUDA check died: PyTorch crashed initialising CUDA (SIGSEGV)")
    assert report.exit_code == ExitCode.GPU_UNUSABLE


def test_llama_build_probe_survives_a_crash_in_libllama(monkeypatch: pytest.MonkeyPatch) -> None:
    from kcuda_validate.llm.build import probe_llama_build

    monkeypatch.setenv("KCUDA_TEST_FAULT", "segv:llama")
    info = probe_llama_build()
    assert info.error is not None
    assert info.error.startswith("libllama crashed while loading (SIGSEGV)")


def test_real_isolated_llama_probe_on_this_machine() -> None:
    from kcuda_validate.llm.build import probe_llama_build

    isolated, here = probe_llama_build(), probe_llama_build(isolated=False)
    assert isolated == here  # the child reports exactly what an in-process probe sees
    if driver_present() and cuda_build():  # a GPU box with a CUDA build
        assert isolated.backends == ("CUDA", "CPU")
        assert isolated.supports_gpu_offload is True
    else:
        assert isolated.backends == ("CPU",)
        assert isolated.supports_gpu_offload is False


def cuda_build() -> bool:
    import llama_cpp

    return any((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cuda*"))


def _new_children(before: set[int]) -> list[int]:
    tasks = Path("/proc/self/task").iterdir()
    return [int(p) for t in tasks for p in (t / "children").read_text().split() if int(p) not in before]


@pytest.mark.parametrize("probe", ["llama.build", "torch"])
def test_a_probe_lost_to_a_signal_while_starting_ends_itself(probe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline or Ctrl-C that lands after the fork but before the caller holds the process (health with a
    1 ms timeout hit this) left a child nobody would stop: a wedged libllama or CUDA init would hang there for
    ever. Here the exception lands exactly there; the llama.cpp probe is one that never answers."""
    import subprocess

    import kcuda_validate.lifeline as lifeline
    import kcuda_validate.llm.build as build
    from procs import alive, wait_for

    monkeypatch.setenv("KCUDA_TEST_FAULT", "hang:llama")
    started: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    def popen_then_interrupted(*args: object, **kwargs: object) -> subprocess.Popen[str]:
        started.append(real_popen(*args, **kwargs))  # type: ignore[call-overload]
        raise KeyboardInterrupt

    monkeypatch.setattr(lifeline.subprocess, "Popen", popen_then_interrupted)
    start = torchprobe.probe_torch if probe == "torch" else build.LlamaBuildProbe().start
    before = set(_new_children(set()))
    with pytest.raises(KeyboardInterrupt):
        start()
    (child,) = _new_children(before)
    try:
        assert wait_for(lambda: started[0].poll() is not None, 10), "the lost probe is still running"
        assert started[0].returncode == 1 and not alive(child)
    finally:
        started[0].kill()
        started[0].communicate()
