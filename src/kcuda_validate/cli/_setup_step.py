"""The setup step as `setup` and `validate-all --setup` both run it: plan from the hardware, print the
plan a person should see before minutes of building, then build or reuse with progress on stderr.

Its own module so that the shared model-command glue (cli._common) can run it without importing a command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kcuda_validate.cli._output import Output

if TYPE_CHECKING:  # the engine package is imported only once setup runs
    from kcuda_validate.engine.plan import Plan, SetupOptions
    from kcuda_validate.engine.setup import SetupResult


def setup_options_from(kw: dict[str, Any]) -> SetupOptions:
    """The options as the plan takes them; a bad --cuda or --sdist is a usage error here, before the machine is
    read and the same for a dry run as for a real one. A given sdist travels as an absolute path."""
    from kcuda_validate.engine.plan import SetupOptions, cuda_option_problem
    from kcuda_validate.errors import UsageError

    cuda = kw.get("cuda")
    bad = None if cuda is None else cuda_option_problem(cuda)
    if bad is not None:
        raise UsageError(bad.message, fix=bad.fix)
    sdist = kw.get("sdist")
    if sdist is not None:
        from kcuda_validate.engine.install import check_sdist, locked_llama

        sdist = check_sdist(sdist, locked_llama().version)
    return SetupOptions(
        toolkit=kw.get("toolkit") or "auto",
        archs=kw.get("archs"),
        cuda=cuda,
        jobs=kw.get("jobs"),
        force=bool(kw.get("force")),
        sdist=sdist,
    )


def plan_lines(plan: Plan) -> list[str]:
    """The plan as a person reads it (and as --dry-run prints it)."""
    from kcuda_validate.engine import toolkit as tk
    from kcuda_validate.engine.plan import parallelism
    from kcuda_validate.engine.setup import gpu_names

    facts = plan.facts
    gib = 1024**3
    lines = [f"GPUs: {gpu_names(plan)}"]
    if facts is not None:
        drv = f"{facts.driver_version} (CUDA {facts.driver_cuda})" if facts.driver_version else "none"
        lines.append(f"Driver: {drv}")
    if plan.archs:
        lines.append("Architectures: " + ", ".join(f"sm_{a}" for a in plan.archs))
    if plan.cuda_range:
        lo, hi = plan.cuda_range
        lines.append(
            f"Usable CUDA: {tk.cuda_text(lo)} to {tk.cuda_text(hi)}"
            if lo <= hi
            else f"Usable CUDA: none (needs ≥ {tk.cuda_text(lo)}, at most {tk.cuda_text(hi)} allowed)"
        )
    lines.append(f"Action: {plan.action.replace('_', ' ')} ({plan.reason})")
    if plan.toolkit_source == "system" and plan.toolkit is not None:
        lines.append(f"Toolkit: system CUDA {plan.toolkit.version} at {plan.toolkit.prefix} ({plan.toolkit.found_by})")
    elif plan.toolkit_source == "pypi" and plan.cuda:
        lines.append(f"Toolkit: CUDA {tk.cuda_text(plan.cuda)} from the package index, into the tool's cache")
    for r in plan.rejected:
        lines.append(f"  not used: {r}")
    if plan.packages:
        lines.append("Packages: " + " ".join(plan.packages))
    if plan.runtime_packages:
        lines.append("Runtime packages (into this environment): " + " ".join(plan.runtime_packages))
    if plan.cmake_args:
        lines.append("CMAKE_ARGS: " + " ".join(plan.cmake_args))
    if plan.action in ("build", "build_only", "install_cached"):
        lines.append(f"Disk needed: about {plan.disk_needed / gib:.1f} GiB in {facts.cache_dir if facts else '?'}")
    if plan.action in ("build", "build_only"):
        jobs = f"Jobs: {plan.jobs}"
        if facts is not None and parallelism(plan.jobs, facts.cpus) < plan.jobs:
            jobs += f" (at most {facts.cpus} compile at once: {facts.cpus} cores)"
        est = plan.estimate_s
        # Whole minutes, never "about 0 min": the estimate is CPU time shared by cores, not measured here.
        lines.append(
            f"{jobs}; time: about {max(1, round(est / 60))} min (estimate from a measured build)" if est else jobs
        )
    if plan.steps:
        lines.append("Steps:")
        lines.extend(f"  {i}. {s}" for i, s in enumerate(plan.steps, 1))
    lines.extend(f"Note: {n}" for n in plan.notes)
    return lines


def run_setup_step(ui: Output, kw: dict[str, Any], dry_run: bool = False) -> SetupResult:
    """Plan, then (unless a dry run) carry it out with progress on stderr. Returns the SetupResult."""
    from kcuda_validate.engine.facts import gather_facts
    from kcuda_validate.engine.plan import make_plan
    from kcuda_validate.engine.setup import SetupResult, run_setup

    opts = setup_options_from(kw)
    ui.progress("Reading the GPUs, toolkits and the installed engine…")
    facts = gather_facts()
    wheel = kw.get("wheel")
    if wheel is None:
        plan = make_plan(facts, opts)
    else:  # a wheel built elsewhere: the only cached build the plan may use (a dry run leaves the cache alone)
        from dataclasses import replace

        from kcuda_validate.engine.setup import import_wheel, plan_for_wheel

        key = import_wheel(wheel, facts.cache_dir, facts.llama_version, copy=not dry_run)
        plan = plan_for_wheel(make_plan(replace(facts, cached=(key,)), opts), key)
    if dry_run:
        return SetupResult(
            plan,
            "dry_run" if plan.action != "refused" else "refused",
            error=plan.problems[0].message if plan.problems else None,
            fix=plan.problems[0].fix if plan.problems else None,
        )
    if plan.action in ("build", "build_only", "install_cached"):
        ui.note("\n".join(plan_lines(plan)))
    bar = ui.build_bar()
    try:
        return run_setup(plan, opts, on_step=ui.progress, on_progress=bar.update)
    finally:
        bar.close()
