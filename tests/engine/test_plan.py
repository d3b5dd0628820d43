"""`setup`'s plan for each hardware scenario: the GPUs and driver come through the fake NVML seam, the rest of
the machine (toolkits, compiler, disk, memory, cache) is set per test, and `make_plan` decides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fakes.hardware import (
    A100_80GB,
    H100_80GB,
    QUADRO_K620,
    RTX_4090,
    RTX_5090,
    TESLA_P100,
    LlamaSpec,
    Scenario,
    install,
)
from kcuda_validate.engine.facts import MachineFacts, gather_facts
from kcuda_validate.engine.plan import GIB, SetupOptions, cache_key, make_plan
from kcuda_validate.engine.toolkit import HostCompiler, SystemToolkit
from kcuda_validate.errors import ExitCode

GCC12 = HostCompiler("/usr/bin/g++", "gcc", "12.2.0", 12)
GCC14 = HostCompiler("/usr/bin/g++", "gcc", "14.2.0", 14)
SYSTEM_13_0 = SystemToolkit(Path("/usr/local/cuda-13.0"), "13.0", "/usr/local/cuda", has_cublas=True, has_cudart=True)
SYSTEM_12_4 = SystemToolkit(Path("/usr/local/cuda-12.4"), "12.4", "PATH", has_cublas=True, has_cudart=True)

CPU_ONLY = LlamaSpec(archs=None)
RTX4090_DRIVER_560 = Scenario(
    "rtx4090_driver_560",
    "RTX 4090 on driver 560 (CUDA 12.6) with the locked CPU-only llama-cpp-python",
    exit_code=ExitCode.GPU_UNUSABLE,
    gpus=(RTX_4090,),
    driver_version="560.35.03",
    cuda_driver_version=12060,
    llama=CPU_ONLY,
)
H100_A100 = Scenario(
    "h100_a100",
    "An H100 and an A100 on driver 580 (CUDA 13.0)",
    exit_code=ExitCode.GPU_UNUSABLE,
    gpus=(H100_80GB, A100_80GB),
    driver_version="580.159.04",
    cuda_driver_version=13000,
    llama=CPU_ONLY,
)


def facts_for(
    scenario: Scenario | str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    **machine: object,
) -> MachineFacts:
    """The machine as `gather_facts` reads it through the fake hardware, then this test's non-GPU facts."""
    install(scenario, monkeypatch, tmp_path)
    monkeypatch.setenv("KCUDA_CACHE_DIR", str(tmp_path / "cache"))
    base = gather_facts()
    defaults: dict[str, object] = {
        "system_toolkits": (),
        "compiler": GCC12,
        "env_cuda_runtime": "13.2",
        "env_cublas_majors": (13,),
        "cached": (),
        "disk_free": 200 * GIB,
        "cpus": 16,
        "mem_available": 64 * GIB,
        "uv": ("/usr/bin/uv",),
    }
    return dataclasses.replace(base, **{**defaults, **machine})


def test_rtx4090_on_driver_560_gets_a_cuda_12_6_toolkit_for_sm_89(monkeypatch, tmp_path):
    facts = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path)
    plan = make_plan(facts, SetupOptions())
    assert (plan.action, plan.archs, plan.cuda, plan.toolkit_source) == ("build", (89,), (12, 6), "pypi")
    assert plan.packages == (
        "nvidia-cuda-nvcc-cu12>=12.6,<12.7",
        "nvidia-cuda-cccl-cu12>=12.6,<12.7",
        "nvidia-cuda-runtime-cu12>=12.6,<12.7",
        "nvidia-cublas-cu12>=12.6,<12.7",
    )
    assert plan.runtime_packages == ("nvidia-cuda-runtime-cu12>=12.6,<12.7", "nvidia-cublas-cu12>=12.6,<12.7")
    assert plan.key == "llama-cpp-python-0.3.36-cuda12.6-sm89"
    assert "-DCMAKE_CUDA_ARCHITECTURES=89" in plan.cmake_args
    assert (
        "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath,\\$ORIGIN/../../nvidia/cuda_runtime/lib:\\$ORIGIN/../../nvidia/cublas/lib"
        in plan.cmake_args
    )
    assert facts.driver_cuda == "12.6" and facts.installed.has_cuda is False


def test_a_system_toolkit_newer_than_the_driver_is_passed_over_for_a_packaged_one(monkeypatch, tmp_path):
    facts = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, system_toolkits=(SYSTEM_13_0,))
    plan = make_plan(facts, SetupOptions())
    assert (plan.action, plan.cuda, plan.toolkit_source) == ("build", (12, 6), "pypi")
    assert plan.rejected == (
        "system CUDA 13.0 (/usr/local/cuda-13.0): newer than the driver's CUDA 12.6, so the engine would fail with "
        "'CUDA driver version is insufficient'",
    )


def test_toolkit_system_refuses_a_toolkit_newer_than_the_driver(monkeypatch, tmp_path):
    facts = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, system_toolkits=(SYSTEM_13_0,))
    plan = make_plan(facts, SetupOptions(toolkit="system"))
    assert plan.action == "refused"
    (problem,) = plan.problems
    assert problem.exit_code == ExitCode.GPU_UNUSABLE
    assert problem.message.startswith("--toolkit system: system CUDA 13.0 (/usr/local/cuda-13.0): newer than")
    assert problem.fix == "Use the packaged toolkit (`--toolkit pypi`, the default when no system one fits)."


def test_a_fitting_system_toolkit_is_preferred_and_pypi_forces_the_package(monkeypatch, tmp_path):
    facts = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, system_toolkits=(SYSTEM_12_4,))
    plan = make_plan(facts, SetupOptions())
    assert (plan.toolkit_source, plan.cuda, plan.packages, plan.toolkit) == ("system", (12, 4), (), SYSTEM_12_4)
    forced = make_plan(facts, SetupOptions(toolkit="pypi"))
    assert (forced.toolkit_source, forced.cuda) == ("pypi", (12, 6))
    assert "system CUDA 12.4 (/usr/local/cuda-12.4): passed over for --toolkit pypi" in forced.rejected


def test_h100_and_a100_build_for_sm_80_and_sm_90_on_the_system_toolkit(monkeypatch, tmp_path):
    facts = facts_for(H100_A100, monkeypatch, tmp_path, system_toolkits=(SYSTEM_13_0,))
    plan = make_plan(facts, SetupOptions())
    assert (plan.action, plan.archs, plan.cuda, plan.toolkit_source) == ("build", (80, 90), (13, 0), "system")
    assert "-DCMAKE_CUDA_ARCHITECTURES=80-real;90" in plan.cmake_args
    assert plan.key == "llama-cpp-python-0.3.36-cuda13.0-sm80-sm90"
    assert plan.runtime_packages == ()  # a CUDA-13 engine uses the environment's (PyTorch's) libcudart.so.13


def test_no_toolkit_on_a_cuda_13_driver_uses_the_packaged_13_0_and_the_environments_cublas(monkeypatch, tmp_path):
    facts = facts_for(H100_A100, monkeypatch, tmp_path)
    plan = make_plan(facts, SetupOptions())
    assert (plan.cuda, plan.toolkit_source) == ((13, 0), "pypi")
    assert plan.packages == (
        "nvidia-cuda-nvcc>=13.0,<13.1",
        "nvidia-cuda-crt>=13.0,<13.1",
        "nvidia-nvvm>=13.0,<13.1",
        "nvidia-cuda-cccl>=13.0,<13.1",
        "nvidia-cuda-runtime>=13.0,<13.1",
    )


def test_wsl2_plans_like_linux_and_says_where_the_driver_comes_from(monkeypatch, tmp_path):
    wsl = dataclasses.replace(_scenario("wsl2_unsupported_fields"), llama=CPU_ONLY)
    plan = make_plan(facts_for(wsl, monkeypatch, tmp_path), SetupOptions())
    assert (plan.action, plan.archs, plan.cuda) == ("build", (86,), (12, 6))
    assert "WSL2: the engine uses the Windows driver's libcuda from /usr/lib/wsl/lib at run time." in plan.notes


def test_no_cpp_compiler_is_refused_with_the_install_command(monkeypatch, tmp_path):
    plan = make_plan(facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, compiler=None), SetupOptions())
    assert plan.action == "refused"
    assert [(p.id, p.exit_code) for p in plan.problems] == [("setup.compiler", ExitCode.GPU_UNUSABLE)]
    assert "`sudo apt install g++`" in plan.problems[0].fix


def test_not_enough_disk_is_refused_as_disk_full(monkeypatch, tmp_path):
    plan = make_plan(facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, disk_free=GIB // 2), SetupOptions())
    assert plan.action == "refused"
    (problem,) = plan.problems
    assert problem.exit_code == ExitCode.DISK_FULL
    assert problem.message == (
        f"the build needs about {plan.disk_needed / GIB:.1f} GiB in {tmp_path / 'cache' / 'engine'}, only 0.5 GiB free"
    )


def test_a_matching_installed_build_means_nothing_to_do(monkeypatch, tmp_path):
    plan = make_plan(facts_for("healthy_one_gpu", monkeypatch, tmp_path), SetupOptions())
    assert (plan.action, plan.reason) == ("nothing", "llama-cpp-python 0.3.36 is already a CUDA build for sm_89")
    forced = make_plan(facts_for("healthy_one_gpu", monkeypatch, tmp_path), SetupOptions(force=True))
    assert forced.action == "build"


def test_a_build_for_another_gpu_is_not_a_match(monkeypatch, tmp_path):
    plan = make_plan(facts_for("arch_mismatch", monkeypatch, tmp_path), SetupOptions())
    assert (plan.action, plan.archs) == ("build", (86,))


def test_a_cached_wheel_whose_cuda_fits_is_installed_without_a_toolkit(monkeypatch, tmp_path):
    cached = (
        cache_key("0.3.36", (12, 4), (89,)),
        cache_key("0.3.36", (13, 0), (89,)),
        cache_key("0.3.30", (12, 4), (89,)),
    )
    facts = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, cached=cached, compiler=None)
    plan = make_plan(facts, SetupOptions())
    assert (plan.action, plan.key, plan.cuda) == ("install_cached", "llama-cpp-python-0.3.36-cuda12.4-sm89", (12, 4))


def test_no_gpu_is_no_gpu_and_arch_builds_for_another_machine(monkeypatch, tmp_path):
    plan = make_plan(facts_for("no_driver", monkeypatch, tmp_path), SetupOptions())
    assert plan.action == "refused"
    (problem,) = plan.problems
    assert problem.exit_code == ExitCode.NO_GPU
    assert problem.message.startswith("no NVIDIA GPU visible (library not found: ")
    image = make_plan(
        facts_for("no_driver", monkeypatch, tmp_path), SetupOptions(archs=(75, 80, 86, 89, 90), cuda="12.8")
    )
    assert (image.action, image.archs, image.cuda, image.toolkit_source) == (
        "build_only",
        (75, 80, 86, 89, 90),
        (12, 8),
        "pypi",
    )
    assert "-DCMAKE_CUDA_ARCHITECTURES=75-real;80-real;86-real;89-real;90" in image.cmake_args


def test_a_blackwell_gpu_on_an_old_driver_asks_for_a_driver_update(monkeypatch, tmp_path):
    old = Scenario(
        "rtx5090_driver_550", "RTX 5090 on driver 550", ExitCode.GPU_UNUSABLE, gpus=(RTX_5090,), llama=CPU_ONLY
    )
    plan = make_plan(facts_for(old, monkeypatch, tmp_path), SetupOptions())
    assert plan.action == "refused"
    (problem,) = plan.problems
    assert problem.message == "sm_120 needs CUDA ≥ 12.8, but the driver's CUDA 12.4 is the newest usable here"
    assert problem.exit_code == ExitCode.GPU_UNUSABLE


def test_pre_turing_gpus_stay_on_cuda_12_which_still_targets_them(monkeypatch, tmp_path):
    p100 = Scenario("p100_driver_580", "P100 on 580", ExitCode.OK, gpus=(TESLA_P100,), cuda_driver_version=13000,
                    llama=CPU_ONLY)  # fmt: skip
    plan = make_plan(facts_for(p100, monkeypatch, tmp_path), SetupOptions())
    assert (plan.archs, plan.cuda) == ((60,), (12, 9))
    k620 = Scenario("k620", "K620 on 535", ExitCode.OK, gpus=(QUADRO_K620,), cuda_driver_version=12020, llama=CPU_ONLY)
    plan = make_plan(facts_for(k620, monkeypatch, tmp_path), SetupOptions())
    assert (plan.archs, plan.cuda) == ((50,), (12, 2))


def test_a_host_compiler_too_new_for_every_fitting_cuda_is_refused(monkeypatch, tmp_path):
    plan = make_plan(facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, compiler=GCC14), SetupOptions())
    assert plan.action == "refused"
    (problem,) = plan.problems
    assert problem.message == "no packaged CUDA toolkit fits (CUDA 12.0–12.6) for sm_89"
    assert "CUDAHOSTCXX" in problem.fix


def test_jobs_are_capped_by_memory_not_only_cores(monkeypatch, tmp_path):
    facts = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, cpus=16, mem_available=5 * GIB)
    assert make_plan(facts, SetupOptions()).jobs == 5
    assert make_plan(facts, SetupOptions(jobs=1)).jobs == 1


def test_more_jobs_than_cores_take_turns_in_the_estimate_and_the_plan_says_so(monkeypatch, tmp_path):
    """2170 core-seconds measured (docs/benchmarks.md §7): 16 cores share them however many jobs are asked for."""
    from kcuda_validate.cli._setup_step import plan_lines

    facts = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, cpus=16, mem_available=64 * GIB)
    default, many = make_plan(facts, SetupOptions()), make_plan(facts, SetupOptions(jobs=100000))
    assert (default.jobs, many.jobs) == (16, 100000)
    assert many.estimate_s == default.estimate_s == (420.0 + 1750.0) / 16
    assert "Jobs: 16; time: about 2 min (estimate from a measured build)" in plan_lines(default)
    lines = plan_lines(many)
    assert (
        "Jobs: 100000 (at most 16 compile at once: 16 cores); time: about 2 min (estimate from a measured build)"
        in (lines)
    )
    assert (
        "Note: --jobs 100000: memory here holds about 64 compilers at once (up to 1 GiB each, 64.0 GiB available); "
        "more may run out of memory. Without --jobs setup runs 16 jobs."
    ) in lines
    assert not [n for n in default.notes if n.startswith("--jobs")]
    big = facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, cpus=192, mem_available=512 * GIB)
    assert "Jobs: 192; time: about 1 min (estimate from a measured build)" in plan_lines(make_plan(big, SetupOptions()))


def test_a_cuda_too_old_for_the_archs_is_refused_naming_cuda_not_the_driver(monkeypatch, tmp_path):
    fix = (
        "Pass --cuda 12.0 or newer, the newest CUDA the target driver supports (`nvidia-smi` on that machine shows "
        "it); a driver older than CUDA 12.0 needs an update first."
    )
    for machine in ("no_driver", RTX4090_DRIVER_560):  # no driver here, and a driver here that allows more
        plan = make_plan(facts_for(machine, monkeypatch, tmp_path), SetupOptions(archs=(89,), cuda="11.8"))
        assert (plan.action, plan.cuda_range) == ("refused", ((12, 0), (11, 8)))
        (problem,) = plan.problems
        assert (problem.id, problem.exit_code, problem.fix) == ("setup.cuda", ExitCode.GPU_UNUSABLE, fix)
        assert problem.message == "--cuda 11.8: no toolkit fits; the oldest CUDA setup supports for sm_89 is 12.0"
    # --cuda no lower than the driver's: the driver is what must change.
    plan = make_plan(facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path), SetupOptions(archs=(120,), cuda="12.6"))
    (problem,) = plan.problems
    assert problem.message == "sm_120 needs CUDA ≥ 12.8, but the driver's CUDA 12.6 is the newest usable here"
    assert problem.fix.startswith("Update the NVIDIA driver to one that supports CUDA 12.8 or later")


def test_architectures_without_a_common_cuda_are_refused_naming_them_not_the_driver(monkeypatch, tmp_path):
    """CUDA 13 dropped Volta; compute capability 11.0 needs CUDA 13."""
    plan = make_plan(facts_for("no_driver", monkeypatch, tmp_path), SetupOptions(archs=(70, 110), cuda="13.0"))
    (problem,) = plan.problems
    assert (problem.id, problem.exit_code) == ("setup.cuda", ExitCode.GPU_UNUSABLE)
    assert problem.message == (
        "no CUDA version targets all of sm_70, sm_110: sm_110 needs CUDA ≥ 13.0, CUDA 12.9 is the newest that "
        "targets sm_70"
    )
    assert (
        problem.fix == "Build one engine per group of GPUs: pass --arch with architectures that share a CUDA version."
    )


@pytest.mark.parametrize("value", ["13.2.1", "12", ""])
def test_the_plan_itself_refuses_a_cuda_that_is_not_major_minor(monkeypatch, tmp_path, value):
    plan = make_plan(facts_for("no_driver", monkeypatch, tmp_path), SetupOptions(archs=(89,), cuda=value))
    assert plan.action == "refused"
    assert [(p.id, p.exit_code) for p in plan.problems] == [("setup.cuda", ExitCode.USAGE)]


def test_a_given_sdist_is_the_one_the_steps_build_and_nothing_is_fetched(monkeypatch, tmp_path):
    sdist = tmp_path / "src" / "llama_cpp_python-0.3.36.tar.gz"
    plan = make_plan(facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path), SetupOptions(sdist=sdist))
    assert plan.action == "build"
    assert f"use the given sdist {sdist} (--sdist: nothing is downloaded; its sha256 is not checked)" in plan.steps
    assert f"uv build --wheel {sdist}   (CMAKE_ARGS as listed, CMAKE_BUILD_PARALLEL_LEVEL=jobs)" in plan.steps
    assert not [s for s in plan.steps if s.startswith("fetch")]
    fetched = make_plan(facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path), SetupOptions())
    assert "fetch the llama-cpp-python 0.3.36 sdist (sha256 from uv.lock or PyPI)" in fetched.steps
    unused = make_plan(facts_for("healthy_one_gpu", monkeypatch, tmp_path), SetupOptions(sdist=sdist))
    assert unused.action == "nothing"
    assert f"--sdist {sdist}: not used, nothing is built (--force builds it)." in unused.notes


def test_torch_newer_than_the_driver_names_the_matching_build(monkeypatch, tmp_path):
    plan = make_plan(facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path), SetupOptions())
    (note,) = [n for n in plan.notes if n.startswith("PyTorch")]
    assert "newer than the driver's 12.6" in note
    assert "--index-url https://download.pytorch.org/whl/cu126" in note
    assert "The engine does not need PyTorch." in note


@pytest.mark.parametrize(
    ("driver_cuda", "tag"),
    [
        ("11.4", None),
        ("11.8", "cu118"),
        ("12.0", "cu118"),
        ("12.2", "cu121"),
        ("12.4", "cu124"),  # setup's own list once said no build matched, where detect named cu124
        ("12.5", "cu124"),
        ("12.8", "cu128"),
        ("13.0", "cu130"),
        ("13.1", "cu130"),
    ],
)
def test_detect_and_setup_name_the_same_torch_wheel_for_a_driver(driver_cuda, tag, monkeypatch, tmp_path):
    """One list of PyTorch's CUDA indexes: the newest not above the driver's CUDA, or none (update the driver)."""
    from kcuda_validate.detect.software import torch_cuda_index, torch_install_fix
    from kcuda_validate.engine.plan import torch_note

    assert torch_cuda_index(driver_cuda) == tag
    note = torch_note(facts_for("healthy_one_gpu", monkeypatch, tmp_path, driver_cuda=driver_cuda))
    fix = torch_install_fix(driver_cuda)  # what detect's torch.cuda fix says
    assert note is not None, "the environment's torch (CUDA 13.2) is newer than every driver here"
    if tag is None:
        assert "no PyTorch build matches this driver: update the NVIDIA driver" in note
        assert fix.startswith("update the NVIDIA driver: PyTorch publishes no CUDA build")
        assert "download.pytorch.org" not in note + fix
    else:
        wheel = f"--index-url https://download.pytorch.org/whl/{tag}`"
        assert wheel in note and wheel in fix
        assert note.count("download.pytorch.org/whl/") == fix.count("download.pytorch.org/whl/") == 1


def test_no_uv_is_refused_with_an_installer_that_works_without_pip(monkeypatch, tmp_path):
    """Stock Debian 12 and Ubuntu 24.04 ship no pip and refuse system-wide pip installs (PEP 668)."""
    plan = make_plan(facts_for(RTX4090_DRIVER_560, monkeypatch, tmp_path, uv=None), SetupOptions())
    assert plan.action == "refused"
    (problem,) = plan.problems
    assert problem.id == "setup.uv"
    assert "`./run kcuda-validate setup`" in problem.fix and "https://astral.sh/uv/install.sh" in problem.fix
    assert "pip install uv" not in problem.fix


def test_torch_cuda_index_reads_only_a_cuda_version() -> None:
    from kcuda_validate.detect.software import TORCH_CUDA_INDEXES, torch_cuda_index

    assert tuple(sorted(TORCH_CUDA_INDEXES)) == TORCH_CUDA_INDEXES
    assert [torch_cuda_index(v) for v in (None, "", "n/a", "13", "13.2.1", "99.9")] == [
        None,
        None,
        None,
        "cu130",
        "cu132",
        "cu132",
    ]


def test_a_gpu_without_a_reported_compute_capability_needs_arch(monkeypatch, tmp_path):
    plan = make_plan(facts_for("nvml_fields_unavailable", monkeypatch, tmp_path), SetupOptions())
    assert plan.action == "refused"
    assert plan.problems[0].fix.startswith("Pass it with --arch")
    assert make_plan(facts_for("nvml_fields_unavailable", monkeypatch, tmp_path), SetupOptions(archs=(75,))).archs == (
        75,
    )


def _scenario(name: str) -> Scenario:
    from fakes.hardware import SCENARIOS

    return SCENARIOS[name]
