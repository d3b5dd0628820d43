"""What `setup` will do on this machine, decided from the hardware before anything is changed.

`facts.gather_facts` reads the machine (NVML, toolkits, compiler, disk, memory, the installed build, the
cache); `make_plan` is a pure function of those facts and the options, so every hardware scenario is
tested by calling it with facts, and `--dry-run` prints exactly the plan a real run follows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcuda_validate.engine import toolkit as tk
from kcuda_validate.engine.facts import MachineFacts
from kcuda_validate.engine.toolkit import arch_of, cc_text, covers
from kcuda_validate.errors import ExitCode
from kcuda_validate.llm.build import invocation

GIB = 1024**3

# Measured on a real build of llama-cpp-python 0.3.36 for sm_90 with CUDA 13.0, 2 jobs, on a 2-core VM
# (docs/benchmarks.md §7): 2166 s of compiler CPU time in all, 0.7 GB for the largest compiler process,
# a 267 MB wheel as built (wheels cannot hold symlinks, so libggml-cuda was there three times; the wheel setup
# keeps has one: install.duplicate_libraries), so the disk figures are of the wheel as built. How the CPU time
# splits between the fixed part and each extra architecture is an estimate (the CPU-only build's share).
CORE_SECONDS_PER_ARCH = 1750.0
CORE_SECONDS_FIXED = 420.0  # the CPU part and the non-template CUDA files
PEAK_BYTES_PER_JOB = 1 * GIB  # 0.7 GB measured, with room for larger translation units
BUILD_TREE_BYTES = int(1.5 * GIB)
WHEEL_BYTES_PER_ARCH = 260 * 1024**2
SDIST_BYTES = 77 * 1024**2
PYPI_TOOLKIT_BYTES = {12: int(1.6 * GIB), 13: int(0.45 * GIB)}  # unpacked; CUDA 12 brings its own cuBLAS


@dataclass(frozen=True)
class SetupOptions:
    toolkit: str = "auto"  # auto | system | pypi
    archs: tuple[int, ...] | None = None  # compute capabilities as 89, 90...; None = this machine's GPUs
    cuda: str | None = None  # the newest CUDA the target driver supports, when there is no driver here
    jobs: int | None = None
    force: bool = False  # rebuild even when a cached or installed build matches
    sdist: Path | None = None


@dataclass(frozen=True)
class Problem:
    id: str
    message: str
    fix: str
    exit_code: ExitCode

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "message": self.message, "fix": self.fix, "exit_code": int(self.exit_code)}


@dataclass(frozen=True)
class Plan:
    """`action`: nothing | install_cached | build | build_only (no GPU here to install for) | refused."""

    action: str
    reason: str
    archs: tuple[int, ...] = ()
    cuda: tuple[int, int] | None = None
    cuda_range: tuple[tuple[int, int], tuple[int, int]] | None = None
    toolkit_source: str | None = None  # system | pypi
    toolkit: tk.SystemToolkit | None = None
    packages: tuple[str, ...] = ()  # toolkit wheels, into the cache
    runtime_packages: tuple[str, ...] = ()  # into the environment (CUDA 12 engines)
    key: str | None = None
    jobs: int = 1
    disk_needed: int = 0
    estimate_s: float | None = None
    cmake_args: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()  # why each other toolkit was not chosen
    notes: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    facts: MachineFacts | None = field(default=None, compare=False)

    @property
    def install(self) -> bool:
        return self.action in ("install_cached", "build")

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "archs": [cc_text((a // 10, a % 10)) for a in self.archs],
            "cuda": None if self.cuda is None else tk.cuda_text(self.cuda),
            "cuda_range": None if self.cuda_range is None else [tk.cuda_text(v) for v in self.cuda_range],
            "toolkit": {
                "source": self.toolkit_source,
                "prefix": None if self.toolkit is None else str(self.toolkit.prefix),
                "packages": list(self.packages),
            },
            "runtime_packages": list(self.runtime_packages),
            "key": self.key,
            "jobs": self.jobs,
            "disk_needed_bytes": self.disk_needed,
            "estimate_s": self.estimate_s,
            "cmake_args": list(self.cmake_args),
            "steps": list(self.steps),
            "rejected": list(self.rejected),
            "notes": list(self.notes),
            "problems": [p.to_json() for p in self.problems],
            "facts": None if self.facts is None else self.facts.to_json(),
        }


def cache_key(llama_version: str, cuda: tuple[int, int], archs: tuple[int, ...]) -> str:
    """One cached wheel per llama-cpp-python version, CUDA version and set of architectures."""
    return f"llama-cpp-python-{llama_version}-cuda{tk.cuda_text(cuda)}-sm{'-sm'.join(str(a) for a in archs)}"


def parse_key(key: str) -> tuple[str, tuple[int, int], tuple[int, ...]] | None:
    import re

    m = re.fullmatch(r"llama-cpp-python-(.+)-cuda(\d+)\.(\d+)-sm(\d+(?:-sm\d+)*)", key)
    if not m:
        return None
    return m.group(1), (int(m.group(2)), int(m.group(3))), tuple(int(a) for a in m.group(4).split("-sm"))


def cuda_option_problem(text: str) -> Problem | None:
    """`--cuda X.Y` is a driver's CUDA version as `nvidia-smi` shows it: MAJOR.MINOR exactly. Anything else
    (`12`, `13.2.1`, `cu128`) is a usage error, never read as something near it."""
    import re

    if re.fullmatch(r"\d+\.\d+", text.strip()):
        return None
    patch = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)+\s*", text)
    if patch:
        return Problem(
            "setup.cuda",
            f"--cuda {text}: not MAJOR.MINOR (a driver's CUDA version has no patch level)",
            f"Pass --cuda {int(patch.group(1))}.{int(patch.group(2))}.",
            ExitCode.USAGE,
        )
    return Problem(
        "setup.cuda",
        f"--cuda {text if text.strip() else repr(text)}: not a CUDA version as MAJOR.MINOR",
        "Pass the newest CUDA the target driver supports, e.g. --cuda 12.8 (`nvidia-smi` on that machine shows it).",
        ExitCode.USAGE,
    )


def _refuse(reason: str, problem: Problem, facts: MachineFacts, **kw: Any) -> Plan:
    return Plan(action="refused", reason=reason, problems=(problem,), facts=facts, **kw)


def parallelism(jobs: int, cpus: int) -> int:
    """How many compilers make progress at once: more jobs than cores only take turns."""
    return max(1, min(jobs, cpus))


def _estimate(n_archs: int, jobs: int, cpus: int) -> float:
    """Compiler CPU time over the compilers that run at once; the CUDA template files dominate."""
    return (CORE_SECONDS_FIXED + CORE_SECONDS_PER_ARCH * n_archs) / parallelism(jobs, cpus)


def choose_jobs(cpus: int, mem_available: int | None, requested: int | None) -> int:
    """All cores, but never more compilers than memory holds: one CUDA template file takes up to ~1 GiB."""
    if requested:
        return requested
    by_memory = cpus if mem_available is None else max(1, mem_available // PEAK_BYTES_PER_JOB)
    return max(1, min(cpus, by_memory))


def torch_note(facts: MachineFacts) -> str | None:
    """PyTorch built for a newer CUDA than the driver: say which build matches (llama.cpp does not need it)."""
    drv, env = tk.cuda_tuple(facts.driver_cuda), tk.cuda_tuple(facts.env_cuda_runtime)
    if drv is None or env is None or env <= drv:
        return None
    # detect names the same wheel from the same list (detect.software.TORCH_CUDA_INDEXES); imported here, where
    # it is needed, so a plan does not pay for importing the detector.
    from kcuda_validate.detect.software import torch_cuda_index, torch_install_command

    tag = torch_cuda_index(facts.driver_cuda)
    if tag is None:
        return (
            f"PyTorch here is built for CUDA {tk.cuda_text(env)}, newer than the driver's {facts.driver_cuda}, and "
            "no PyTorch build matches this driver: update the NVIDIA driver (the engine does not need PyTorch)."
        )
    return (
        f"PyTorch here is built for CUDA {tk.cuda_text(env)}, newer than the driver's {facts.driver_cuda}; the "
        f"matching build is PyTorch's {tag} wheel: {torch_install_command(tag, sys.executable)}, then run with "
        "`uv run --no-sync`. The engine does not need PyTorch."
    )


def make_plan(facts: MachineFacts, opts: SetupOptions) -> Plan:
    """The plan for these facts. Pure: no I/O, so each hardware scenario is a unit test."""
    notes = [n for n in (torch_note(facts),) if n]
    if facts.wsl2:
        notes.append("WSL2: the engine uses the Windows driver's libcuda from /usr/lib/wsl/lib at run time.")
    unknown = [g for g in facts.gpus if g.cc is None]
    if opts.archs:
        archs = tuple(sorted(set(opts.archs)))
    elif unknown and not opts.archs:
        return _refuse(
            "the driver does not report a compute capability",
            Problem(
                "setup.archs",
                f"GPU {unknown[0].index} ({unknown[0].name or 'unnamed'}): NVML reports no compute capability",
                "Pass it with --arch, e.g. --arch 89 for an RTX 4090 (see `nvidia-smi --query-gpu=compute_cap "
                "--format=csv`).",
                ExitCode.GPU_UNUSABLE,
            ),
            facts,
        )
    else:
        archs = tuple(sorted({arch_of(g.cc) for g in facts.gpus if g.cc is not None}))
    if not archs:
        why = facts.nvml_error or "the driver lists no GPU"
        return _refuse(
            "no NVIDIA GPU to build for",
            Problem(
                "setup.gpus",
                f"no NVIDIA GPU visible ({why}): nothing to build for",
                f"Install the NVIDIA driver (`{invocation()} detect` says how), or pass --arch (and --cuda) to build "
                "an engine for another machine.",
                ExitCode.NO_GPU,
            ),
            facts,
            notes=tuple(notes),
        )
    here = bool(facts.gpus)
    uncovered = [g for g in facts.gpus if g.cc is not None and not covers(archs, g.cc)]
    if here and uncovered and opts.archs:
        notes.append(
            "--arch "
            + ",".join(str(a) for a in archs)
            + " does not cover GPU "
            + ", ".join(f"{g.index} (sm_{arch_of(g.cc)})" for g in uncovered if g.cc)
            + ": the build is kept in the cache but not installed here."
        )
    install_here = here and not uncovered

    # The CUDA versions that both run on the driver and can target every architecture.
    ccs = [(a // 10, a % 10) for a in archs]
    lo = max(tk.min_cuda_for_arch(cc) for cc in ccs)
    lo = max(lo, (12, 0))  # the oldest toolkit the package index carries, and llama.cpp's practical floor
    ceilings = [c for c in (tk.max_cuda_for_arch(cc) for cc in ccs) if c is not None]
    driver = tk.cuda_tuple(facts.driver_cuda)
    bad_cuda = None if opts.cuda is None else cuda_option_problem(opts.cuda)
    if bad_cuda is not None:  # the CLI refuses it before planning; this keeps the plan itself honest
        return _refuse("bad --cuda", bad_cuda, facts)
    wanted = None if opts.cuda is None else tk.cuda_tuple(opts.cuda)
    if driver is not None:
        ceilings.append(driver)
    if wanted is not None:
        ceilings.append(wanted)
    if driver is None and wanted is None:
        fallback = [tk.cuda_tuple(t.version) for t in facts.system_toolkits] + [tk.cuda_tuple(facts.env_cuda_runtime)]
        ceilings.append(max((v for v in fallback if v), default=(13, 0)))
    hi = min(ceilings)
    names = ", ".join(f"sm_{a}" for a in archs)
    # What sets the newest usable CUDA, so that a refusal names the thing to change: --cuda when it is the
    # lowest ceiling (the driver here, if any, allows more), else the driver, else an architecture.
    capped_by = (
        "cuda"
        if wanted is not None and hi == wanted and (driver is None or wanted < driver)
        else "driver"
        if driver is not None and hi == driver
        else "arch"
        if any(c == hi for c in (tk.max_cuda_for_arch(cc) for cc in ccs))
        else "fallback"  # no driver here and no --cuda: the newest toolkit or runtime found here
    )
    if lo > hi:
        message = (
            f"{names} needs CUDA ≥ {tk.cuda_text(lo)}, but with no driver here and no --cuda the newest usable is "
            f"taken to be CUDA {tk.cuda_text(hi)}"
        )
        fix = f"Pass --cuda X.Y, the newest CUDA the target driver supports (≥ {tk.cuda_text(lo)} for {names})."
        if capped_by == "cuda":
            message = (
                f"--cuda {opts.cuda}: no toolkit fits; the oldest CUDA setup supports for {names} is {tk.cuda_text(lo)}"
            )
            fix = (
                f"Pass --cuda {tk.cuda_text(lo)} or newer, the newest CUDA the target driver supports (`nvidia-smi` "
                f"on that machine shows it); a driver older than CUDA {tk.cuda_text(lo)} needs an update first."
            )
        elif capped_by == "driver":
            message = (
                f"{names} needs CUDA ≥ {tk.cuda_text(lo)}, but the driver's CUDA {facts.driver_cuda} is the newest "
                "usable here"
            )
            fix = (
                f"Update the NVIDIA driver to one that supports CUDA {tk.cuda_text(lo)} or later (`nvidia-smi` shows "
                "the CUDA version it supports)."
            )
        elif capped_by == "arch":
            old = ", ".join(f"sm_{a}" for a, cc in zip(archs, ccs, strict=True) if tk.max_cuda_for_arch(cc) == hi)
            new = ", ".join(f"sm_{a}" for a, cc in zip(archs, ccs, strict=True) if tk.min_cuda_for_arch(cc) == lo)
            message = (
                f"no CUDA version targets all of {names}: {new or names} needs CUDA ≥ {tk.cuda_text(lo)}, "
                f"CUDA {tk.cuda_text(hi)} is the newest that targets {old}"
            )
            fix = "Build one engine per group of GPUs: pass --arch with architectures that share a CUDA version."
        return _refuse(
            "no CUDA version fits",
            Problem("setup.cuda", message, fix, ExitCode.GPU_UNUSABLE),
            facts,
            archs=archs,
            cuda_range=(lo, hi),
            notes=tuple(notes),
        )

    # --sdist with nothing to build: say so rather than leave it silently unused.
    unused_sdist = (
        () if opts.sdist is None else (f"--sdist {opts.sdist}: not used, nothing is built (--force builds it).",)
    )

    # Already there? A build of the same version that has CUDA and covers every GPU.
    inst = facts.installed
    inst_archs = tuple(a // 10 for a in inst.archs)
    if (
        not opts.force
        and install_here
        and inst.version == facts.llama_version
        and inst.has_cuda
        and inst.error is None
        and all(g.cc is not None and covers(inst_archs, g.cc) for g in facts.gpus)
    ):
        return Plan(
            action="nothing",
            reason=f"llama-cpp-python {inst.version} is already a CUDA build for "
            + ", ".join(f"sm_{a}" for a in inst_archs),
            archs=archs,
            cuda_range=(lo, hi),
            notes=(*notes, *unused_sdist),
            facts=facts,
        )

    jobs = choose_jobs(facts.cpus, facts.mem_available, opts.jobs)
    jobs_notes: list[str] = []  # for a build only
    held = None if facts.mem_available is None else max(1, facts.mem_available // PEAK_BYTES_PER_JOB)
    if opts.jobs is not None and held is not None and facts.mem_available is not None and jobs > held:
        jobs_notes.append(
            f"--jobs {jobs}: memory here holds about {held} compilers at once (up to 1 GiB each, "
            f"{facts.mem_available / GIB:.1f} GiB available); more may run out of memory. Without --jobs setup "
            f"runs {choose_jobs(facts.cpus, facts.mem_available, None)} jobs."
        )
    common: dict[str, Any] = {"archs": archs, "cuda_range": (lo, hi), "jobs": jobs, "facts": facts}

    # A cached wheel for these archs whose CUDA fits: installing it takes seconds and needs no toolkit.
    if not opts.force and install_here:
        fits = []
        for key in facts.cached:
            parsed = parse_key(key)
            if parsed and parsed[0] == facts.llama_version and parsed[2] == archs and lo <= parsed[1] <= hi:
                fits.append((parsed[1], key))
        if fits:
            cuda, key = max(fits)
            runtime = tk.runtime_requirements(cuda)
            return Plan(
                action="install_cached",
                reason=f"a wheel built earlier for {names} with CUDA {tk.cuda_text(cuda)} is in the cache",
                cuda=cuda,
                key=key,
                runtime_packages=runtime,
                disk_needed=WHEEL_BYTES_PER_ARCH * len(archs) * 2,
                estimate_s=5.0,
                steps=_steps("install_cached", key, runtime, (), None, facts),
                notes=(*notes, *unused_sdist),
                **common,
            )

    if facts.compiler is None:
        return _refuse(
            "no C++ compiler",
            Problem(
                "setup.compiler",
                "no C++ compiler found (tried $CUDAHOSTCXX, $CXX, c++, g++, clang++)",
                "Install one, e.g. `sudo apt install g++` on Debian/Ubuntu or `sudo dnf install gcc-c++` on Fedora, "
                "then run setup again.",
                ExitCode.GPU_UNUSABLE,
            ),
            facts,
            **{k: v for k, v in common.items() if k != "facts"},
            notes=tuple(notes),
        )
    cxx = facts.compiler

    def compiler_ok(v: tuple[int, int]) -> bool:
        top = tk.host_compiler_max(v, cxx.kind)
        return top is None or cxx.major <= top

    rejected: list[str] = []
    system: tk.SystemToolkit | None = None
    for t in facts.system_toolkits:
        v = tk.cuda_tuple(t.version)
        where = f"system CUDA {t.version} ({t.prefix})"
        if v is None:
            continue
        if v > hi:
            what = f"the driver's CUDA {facts.driver_cuda}" if driver is not None and hi == driver else "the limit"
            rejected.append(
                f"{where}: newer than {what}, so the engine would fail with 'CUDA driver version is insufficient'"
            )
        elif v < lo:
            rejected.append(f"{where}: too old for {names} (needs ≥ {tk.cuda_text(lo)})")
        elif not compiler_ok(v):
            rejected.append(
                f"{where}: nvcc {t.version} does not support {cxx.kind} {cxx.version} "
                f"(newest: {cxx.kind} {tk.host_compiler_max(v, cxx.kind)})"
            )
        elif not t.has_cudart:
            rejected.append(f"{where}: incomplete, no cuda_runtime.h/libcudart")
        elif not t.has_cublas and v[0] not in facts.env_cublas_majors:
            rejected.append(f"{where}: has no cuBLAS, and this environment has none for CUDA {v[0]}")
        elif system is None:
            system = t

    pypi: tuple[int, int] | None = None
    env_rt = tk.cuda_tuple(facts.env_cuda_runtime)
    for major in sorted(tk.PYPI_MINORS, reverse=True):
        top = hi
        if major >= 13 and env_rt is not None and env_rt[0] == major:
            top = min(top, env_rt)  # a CUDA-13 engine runs on the environment's libcudart.so.13: never newer
        options = [(major, m) for m in tk.PYPI_MINORS[major] if lo <= (major, m) <= top and compiler_ok((major, m))]
        if options:
            pypi = max(options)
            break

    choice = opts.toolkit
    if choice == "system" and system is None:
        found = "; ".join(rejected) or "no nvcc on PATH, in $CUDA_HOME or in /usr/local/cuda*"
        return _refuse(
            "no usable system toolkit",
            Problem(
                "setup.toolkit",
                f"--toolkit system: {found}",
                "Use the packaged toolkit (`--toolkit pypi`, the default when no system one fits).",
                ExitCode.GPU_UNUSABLE,
            ),
            facts,
            rejected=tuple(rejected),
            notes=tuple(notes),
            **{k: v for k, v in common.items() if k != "facts"},
        )
    source = "system" if (choice == "system" or (choice == "auto" and system is not None)) else "pypi"
    if source == "pypi" and pypi is None:
        why = f"CUDA {tk.cuda_text(lo)}–{tk.cuda_text(hi)}"
        if not any(compiler_ok((mj, mn)) for mj in tk.PYPI_MINORS for mn in tk.PYPI_MINORS[mj]):
            why += f" with {cxx.kind} {cxx.version}"
        return _refuse(
            "no packaged toolkit fits",
            Problem(
                "setup.toolkit",
                f"no packaged CUDA toolkit fits ({why}) for {names}",
                "Install a host compiler nvcc supports (e.g. g++-12) and set CUDAHOSTCXX to it"
                + {
                    "cuda": ", or pass a newer --cuda if the target driver supports one.",
                    "driver": ", or update the NVIDIA driver.",
                    "fallback": ", or pass --cuda X.Y, the newest CUDA the target driver supports.",
                }.get(capped_by, "."),
                ExitCode.GPU_UNUSABLE,
            ),
            facts,
            rejected=tuple(rejected),
            notes=tuple(notes),
            **{k: v for k, v in common.items() if k != "facts"},
        )
    if source == "system":
        assert system is not None
        system_cuda = tk.cuda_tuple(system.version)
        assert system_cuda is not None
        cuda = system_cuda
        packages: tuple[str, ...] = ()
        if pypi is not None and choice == "auto":
            rejected.append(f"packaged CUDA {tk.cuda_text(pypi)}: not needed, a system toolkit fits")
    else:
        assert pypi is not None
        cuda = pypi
        packages = tk.pypi_requirements(cuda, with_cublas=cuda[0] not in facts.env_cublas_majors)
        if system is not None:
            rejected.append(f"system CUDA {system.version} ({system.prefix}): passed over for --toolkit pypi")
    runtime = tk.runtime_requirements(cuda)
    key = cache_key(facts.llama_version, cuda, archs)
    cmake = cmake_args(archs, cuda)
    disk = SDIST_BYTES + BUILD_TREE_BYTES + WHEEL_BYTES_PER_ARCH * len(archs) * 3
    if source == "pypi":
        disk += PYPI_TOOLKIT_BYTES.get(cuda[0], PYPI_TOOLKIT_BYTES[13])
    action = "build" if install_here else "build_only"
    reason = (
        f"no CUDA build for {names} is installed or cached"
        if install_here
        else f"no GPU here that {names} covers: the wheel is built and cached, not installed"
    )
    if opts.force:
        reason = "--force: rebuild"
    plan = Plan(
        action=action,
        reason=reason,
        cuda=cuda,
        toolkit_source=source,
        toolkit=system if source == "system" else None,
        packages=packages,
        runtime_packages=runtime,
        key=key,
        disk_needed=disk,
        estimate_s=_estimate(len(archs), jobs, facts.cpus),
        cmake_args=cmake,
        steps=_steps(action, key, runtime, packages, system if source == "system" else None, facts, opts.sdist),
        rejected=tuple(rejected),
        notes=(*notes, *jobs_notes),
        **common,
    )
    if facts.disk_free is not None and facts.disk_free < disk:
        return _with_problem(
            plan,
            Problem(
                "setup.disk",
                f"the build needs about {disk / GIB:.1f} GiB in {facts.cache_dir}, "
                f"only {facts.disk_free / GIB:.1f} GiB free",
                "Free some space, or point KCUDA_CACHE_DIR at a disk with more room.",
                ExitCode.DISK_FULL,
            ),
        )
    if facts.uv is None:
        return _with_problem(
            plan,
            Problem(
                "setup.uv",
                "uv not found (setup installs and builds with it)",
                "Install it: run through `./run kcuda-validate setup` (it installs uv without root), or "
                "`curl -LsSf https://astral.sh/uv/install.sh | sh`, or `pipx install uv`.",
                ExitCode.GPU_UNUSABLE,
            ),
        )
    return plan


def _with_problem(plan: Plan, problem: Problem) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, action="refused", reason=problem.message, problems=(*plan.problems, problem))


def cmake_args(archs: tuple[int, ...], cuda: tuple[int, int]) -> tuple[str, ...]:
    """The engine's CMake options: portable CPU code, CUDA for exactly these archs, runtime libraries found
    inside the environment it is installed in (single quotes keep `$ORIGIN` through CMAKE_ARGS and ninja)."""
    rpath = ":".join(p.replace("$", "\\$") for p in tk.runtime_rpath(cuda[0]))
    return (
        "-DGGML_NATIVE=OFF",
        "-DGGML_CUDA=on",
        "-DCMAKE_CUDA_ARCHITECTURES="
        + ";".join(f"{a}-real" for a in archs[:-1])
        + (";" if len(archs) > 1 else "")
        + f"{archs[-1]}",
        f"-DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath,{rpath}",
    )


def _steps(
    action: str,
    key: str,
    runtime: tuple[str, ...],
    packages: tuple[str, ...],
    system: tk.SystemToolkit | None,
    facts: MachineFacts,
    sdist: Path | None = None,
) -> tuple[str, ...]:
    cache = facts.cache_dir
    py = sys.executable
    out: list[str] = []
    if runtime and action != "build_only":
        runtime_step = f"uv pip install --python {py} " + " ".join(f"'{r}'" for r in runtime) + "   (CUDA 12 runtime)"
    else:
        runtime_step = None
    if action == "install_cached":
        if runtime_step:
            out.append(runtime_step)
        out.append(f"verify {cache}/wheels/{key}/*.whl in a scratch directory (a fresh process loads it)")
        out.append(f"uv pip install --python {py} --no-deps --reinstall {cache}/wheels/{key}/*.whl")
        out.append("verify again in a fresh process; roll back to the previous build if it fails")
        return tuple(out)
    if packages:
        out.append(f"uv pip install --target {cache}/toolkits/<cuda> " + " ".join(f"'{p}'" for p in packages))
        where = f"{cache}/toolkits/<cuda>"
    else:
        assert system is not None
        where = str(system.prefix)
    out.append(f"assemble a toolkit root from {where} (+ this environment's cuBLAS where needed)")
    if sdist is None:
        out.append(f"fetch the llama-cpp-python {facts.llama_version} sdist (sha256 from uv.lock or PyPI)")
    else:
        out.append(f"use the given sdist {sdist} (--sdist: nothing is downloaded; its sha256 is not checked)")
    out.append(f"uv build --wheel {sdist or '<sdist>'}   (CMAKE_ARGS as listed, CMAKE_BUILD_PARALLEL_LEVEL=jobs)")
    out.append(f"keep the wheel in {cache}/wheels/{key}/")
    if runtime_step:
        out.append(runtime_step)
    if action == "build":
        out.append("verify in a scratch directory, install with uv (--no-deps --reinstall), verify again")
    return tuple(out)
