"""`setup` as a service: carry out a plan, return what happened; `setup_checks` judges it.

Nothing here prints. Steps and build progress reach the CLI through callbacks; the result is frozen.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kcuda_validate.checks import Check, Status
from kcuda_validate.engine import install as inst
from kcuda_validate.engine import toolkit as tk
from kcuda_validate.engine.build import BuildProgress, build_env, run_build
from kcuda_validate.engine.plan import Plan, Problem, SetupOptions, cache_key, parse_key
from kcuda_validate.engine.toolkit import cc_text
from kcuda_validate.errors import ExitCode, Interrupted, KcudaError, UsageError
from kcuda_validate.llm.build import invocation

log = logging.getLogger(__name__)
STAGE = "setup"


@dataclass(frozen=True)
class SetupResult:
    """outcome: nothing | installed | built (cached, not installed) | dry_run | refused | failed | interrupted."""

    plan: Plan
    outcome: str
    wheel: Path | None = None
    wheel_bytes: int | None = None
    build_seconds: float | None = None
    install_seconds: float | None = None
    verification: inst.Verification | None = None
    rolled_back: bool = False
    error: str | None = None
    fix: str | None = None
    exit_code: ExitCode = ExitCode.OK
    log_file: Path | None = None
    next_command: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "plan": self.plan.to_json(),
            "wheel": None if self.wheel is None else str(self.wheel),
            "wheel_bytes": self.wheel_bytes,
            "build_seconds": self.build_seconds,
            "install_seconds": self.install_seconds,
            "verification": None if self.verification is None else self.verification.to_json(),
            "rolled_back": self.rolled_back,
            "error": self.error,
            "fix": self.fix,
            "build_log": None if self.log_file is None else str(self.log_file),
            "next": self.next_command,
        }


def import_wheel(wheel: Path, cache: Path, llama_version: str, copy: bool = True) -> str:
    """A wheel `setup --wheel-dir` wrote on another machine, put in this cache under the key its stamp names, so
    the plan can install it like one built here. Returns the key; `copy=False` (a dry run) only reads it."""
    fix = f"Pass a wheel `{invocation()} setup --wheel-dir DIR` wrote (it names its CUDA and architectures inside)."
    if not wheel.name.endswith(".whl"):
        raise UsageError(f"--wheel {wheel}: not a wheel file (*.whl)", fix=fix)
    try:
        with zipfile.ZipFile(wheel) as z:
            stamp = json.loads(z.read(inst.STAMP))
    except KeyError:
        raise UsageError(f"--wheel {wheel}: not a wheel setup built (no {inst.STAMP})", fix=fix) from None
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise UsageError(f"--wheel {wheel}: not a readable wheel ({exc})", fix=fix) from None
    named = stamp.get("key") if isinstance(stamp, dict) else None
    key = named if isinstance(named, str) else ""
    parsed = parse_key(key)
    if parsed is None:
        raise UsageError(f"--wheel {wheel}: its {inst.STAMP} names no build", fix=fix)
    if parsed[0] != llama_version:
        raise UsageError(
            f"--wheel {wheel}: built from llama-cpp-python {parsed[0]}, this environment locks {llama_version}",
            fix=f"Build a wheel of {llama_version} (`{invocation()} setup --wheel-dir DIR` where uv.lock is the same).",
        )
    key = cache_key(*parsed)  # rebuilt from its parts: the stamp's text never becomes a path as it is
    if copy:
        dest = cache / "wheels" / key
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".{wheel.name}.tmp"
        shutil.copyfile(wheel, tmp)
        os.replace(tmp, dest / wheel.name)
    return key


def plan_for_wheel(plan: Plan, key: str) -> Plan:
    """`setup --wheel` installs that wheel or refuses saying why it does not fit this machine; it never builds."""
    parsed = parse_key(key)
    assert parsed is not None
    built = f"built for {', '.join(f'sm_{a}' for a in parsed[2])} with CUDA {tk.cuda_text(parsed[1])}"
    if plan.action == "refused" and [p.id for p in plan.problems] == ["setup.gpus"]:
        # The plan's own words are for a build ("nothing to build for", "pass --arch"); --wheel never builds.
        why = plan.facts.nvml_error if plan.facts is not None and plan.facts.nvml_error else "the driver lists no GPU"
        message = f"--wheel: {built}; no NVIDIA GPU is visible here ({why}) to install it for"
        fix = (
            f"Install the NVIDIA driver (`{invocation()} detect` says how); in an image build without a GPU, "
            "`uv pip install --no-deps` the wheel (setup checks it on a GPU)."
        )
        problem = Problem("setup.gpus", message, fix, ExitCode.NO_GPU)
        return replace(plan, reason="no NVIDIA GPU to install it for", problems=(problem,))
    if plan.action in ("nothing", "refused") or (plan.action == "install_cached" and plan.key == key):
        return plan
    need = ", ".join(f"sm_{a}" for a in plan.archs) or "no GPU"
    lo_hi = plan.cuda_range
    usable = f" and CUDA {tk.cuda_text(lo_hi[0])} to {tk.cuda_text(lo_hi[1])}" if lo_hi else ""
    if plan.action == "build_only":
        message = f"--wheel: {built}, and there is no GPU here it covers to install it for"
        fix = "Install it where its GPU is; in an image build, `uv pip install --no-deps` it (setup checks on a GPU)."
        code = ExitCode.NO_GPU
    else:
        message = f"--wheel: {built}; this machine needs {need}{usable}"
        fix = f"Build one here with `{invocation()} setup` (no --wheel), or bring a wheel built for these GPUs."
        code = ExitCode.GPU_UNUSABLE
    problem = Problem("wheel_mismatch", message, fix, code)
    return replace(plan, action="refused", reason=message, problems=(problem,))


StepFn = Callable[[str], None]
Verifier = Callable[[Path | None], inst.Verification]
ProgressFn = Callable[[BuildProgress], None]


def _nothing(_: Any) -> None:
    return None


def _build_log(key: str) -> Path:
    from kcuda_validate.engine.install import cache_dir
    from kcuda_validate.logs import default_log_dir

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # No home for the log directory: beside the engine cache, which setup needs (and names the fix for) anyway.
    base = default_log_dir() or cache_dir()
    return base / "builds" / f"{key}-{stamp}.log"


def _toolkit_layers(plan: Plan, cache: Path, uv: list[str], log_fh: Any, log_file: Path, step: StepFn) -> list[Path]:
    """The prefixes to merge: the system toolkit or the packaged one (installed once into the cache), then
    the environment's own CUDA libraries of the same major, which only fill what the first lacks (cuBLAS)."""
    assert plan.cuda is not None
    layers: list[Path] = []
    if plan.toolkit_source == "system":
        assert plan.toolkit is not None
        layers.append(plan.toolkit.prefix)
    else:
        target = cache / "toolkits" / f"cuda-{tk.cuda_text(plan.cuda)}"
        done = target / ".complete"
        if not done.exists() or done.read_text() != "\n".join(plan.packages):
            step(f"Installing the CUDA {tk.cuda_text(plan.cuda)} toolkit from the package index into the cache…")
            tmp = Path(tempfile.mkdtemp(prefix=".toolkit.", dir=cache / "tmp"))
            proc = inst.run_uv(uv, ["pip", "install", "--target", str(tmp), *plan.packages], log_fh)
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise inst.uv_failure(proc, f"installing the CUDA {tk.cuda_text(plan.cuda)} toolkit", log_file)
            (tmp / ".complete").write_text("\n".join(plan.packages))
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        layers.extend(tk.packaged_layers(target))
    env_layer = tk.env_cuda_layer(plan.cuda[0])
    if env_layer is not None:
        layers.append(env_layer)
    return layers


def run_setup(
    plan: Plan,
    opts: SetupOptions,
    on_step: StepFn = _nothing,
    on_progress: ProgressFn = _nothing,
    environ: Mapping[str, str] | None = None,
    python: str = sys.executable,
    site: Path | None = None,
    verify: Verifier | None = None,
) -> SetupResult:
    """Carry out `plan` for the environment of `python` (its `site`-packages). Its engine changes only after
    the new one was built and loaded. `verify(staged_dir_or_None)` judges a build in a fresh process; the
    default is detect's build probe against the plan's architectures and this machine's GPUs."""
    env = dict(os.environ if environ is None else environ)
    facts = plan.facts
    assert facts is not None
    nxt = f"{invocation(env)} validate-all"
    if plan.action == "refused":
        p = plan.problems[0]
        return SetupResult(plan, "refused", error=p.message, fix=p.fix, exit_code=p.exit_code)
    if plan.action == "nothing":
        return SetupResult(plan, "nothing", next_command=nxt)
    assert plan.key is not None and facts.uv is not None
    uv = list(facts.uv)
    cache = facts.cache_dir
    log_file = _build_log(plan.key)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    site = site or tk.site_packages()
    gpu_ccs = [g.cc for g in facts.gpus if g.cc is not None]
    if verify is None:

        def verify(staged: Path | None) -> inst.Verification:
            return inst.judge(inst.probe(python, staged), plan.archs, gpu_ccs)

    build_s: float | None = None
    t_install: float | None = None
    with inst.cache_lock(cache):
        (cache / "tmp").mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="setup.", dir=cache / "tmp"))
        old_term = signal.getsignal(signal.SIGTERM)
        try:
            with open(log_file, "a", encoding="utf-8", errors="replace") as log_fh:
                if plan.action == "install_cached":
                    wheel = inst.cached_wheel(cache, plan.key)
                    if wheel is None:
                        raise KcudaError(f"the cached wheel {plan.key} vanished", fix="Run setup again to rebuild it.")
                else:
                    layers = _toolkit_layers(plan, cache, uv, log_fh, log_file, on_step)
                    on_step("Assembling the toolkit…")
                    cxx = facts.compiler.path if facts.compiler else None
                    root = tk.assemble_root(scratch / "cuda", layers, cxx)
                    on_step(f"Fetching llama-cpp-python {facts.llama_version}…")
                    locked = inst.locked_llama()
                    sdist = inst.fetch_sdist(cache, locked, opts.sdist)
                    origin = inst.sdist_origin(sdist, locked)
                    log_fh.write(f"kcuda-validate: {inst.origin_line(origin)}\n")
                    on_step(
                        f"Building llama-cpp-python {facts.llama_version} for "
                        + ", ".join(f"sm_{a}" for a in plan.archs)
                        + f" with {plan.jobs} jobs…"
                    )
                    log_fh.flush()
                    out = scratch / "out"
                    out.mkdir()
                    result = run_build(
                        uv, sdist, out, build_env(root, plan.cmake_args, plan.jobs, cxx, env), log_file, on_progress
                    )
                    build_s = result.seconds
                    left_out = inst.add_stamp(
                        result.wheel,
                        {
                            "key": plan.key,
                            "llama_cpp_python": facts.llama_version,
                            "cuda": tk.cuda_text(plan.cuda) if plan.cuda else None,
                            "archs": list(plan.archs),
                            "toolkit": plan.toolkit_source,
                            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                            "build_seconds": round(result.seconds, 1),
                            "jobs": plan.jobs,
                            "sdist": origin,
                        },
                    )
                    log_fh.write(
                        f"kcuda-validate: {result.wheel.name}: {result.wheel.stat().st_size / 2**20:.0f} MiB kept,"
                        f" {left_out / 2**20:.0f} MiB of second copies of its libraries left out\n"
                    )
                    keep = cache / "wheels" / plan.key
                    tmp_keep = Path(tempfile.mkdtemp(prefix=f".{plan.key}.", dir=cache / "tmp"))
                    shutil.move(str(result.wheel), tmp_keep / result.wheel.name)
                    if keep.exists():
                        shutil.rmtree(keep)
                    keep.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp_keep, keep)
                    wheel = keep / result.wheel.name
                size = wheel.stat().st_size
                if plan.action != "build_only":
                    # Before the check: a CUDA-12 build loads libcudart.so.12 from the environment's nvidia/
                    # folder, which the scratch directory links to. Adding them leaves the old engine as it was.
                    inst.install_runtime(uv, python, plan.runtime_packages, log_fh, log_file)
                on_step("Verifying the new build in a scratch directory…")
                t0 = time.monotonic()
                staged = inst.stage(uv, python, wheel, scratch, site, log_fh, log_file)
                first = verify(staged)
                if plan.action == "build_only":
                    return SetupResult(plan, "built", wheel, size, build_s, verification=first, log_file=log_file)
                if not first.ok:
                    return SetupResult(
                        plan,
                        "failed",
                        wheel,
                        size,
                        build_s,
                        verification=first,
                        error=f"the new build does not work here: {first.summary}; the previous engine is unchanged",
                        fix=f"See {log_file}; `{invocation(env)} setup --force` rebuilds it.",
                        exit_code=ExitCode.GPU_UNUSABLE,
                        log_file=log_file,
                    )
                on_step("Installing…")
                backup = inst.repack_installed(site, scratch / "backup")
                rolled_back = False
                with inst.signals_deferred():
                    inst.swap_in(uv, python, wheel, site, log_fh, log_file)
                    final = verify(None)
                    if not final.ok and backup is not None:
                        inst.swap_in(uv, python, backup, site, log_fh, log_file)
                        rolled_back = True
                t_install = time.monotonic() - t0
                if not final.ok:
                    return SetupResult(
                        plan,
                        "failed",
                        wheel,
                        size,
                        build_s,
                        t_install,
                        final,
                        rolled_back,
                        error=f"the installed build failed its check: {final.summary}"
                        + ("; the previous engine was put back" if rolled_back else ""),
                        fix=f"See {log_file}.",
                        exit_code=ExitCode.GPU_UNUSABLE,
                        log_file=log_file,
                    )
                return SetupResult(
                    plan, "installed", wheel, size, build_s, t_install, final, log_file=log_file, next_command=nxt
                )
        except (KeyboardInterrupt, Interrupted) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
            return SetupResult(
                plan,
                "interrupted",
                build_seconds=build_s,
                error="setup interrupted: nothing was installed, the previous engine is in place",
                fix=f"Run `{invocation(env)} setup` again (a finished toolkit download is kept).",
                exit_code=code,
                log_file=log_file,
            )
        except KcudaError as exc:
            return SetupResult(
                plan,
                "failed",
                build_seconds=build_s,
                error=exc.message,
                fix=exc.fix,
                exit_code=exc.exit_code if exc.exit_code != ExitCode.CHECK_FAILED else ExitCode.GPU_UNUSABLE,
                log_file=log_file,
            )
        except OSError as exc:
            if exc.errno == 28:
                return SetupResult(
                    plan,
                    "failed",
                    error=f"disk full in {cache}: {exc}",
                    fix=inst.DISK_FIX,
                    exit_code=ExitCode.DISK_FULL,
                    log_file=log_file,
                )
            raise
        finally:
            signal.signal(signal.SIGTERM, old_term)
            shutil.rmtree(scratch, ignore_errors=True)


def _archs(plan: Plan) -> str:
    return ", ".join(f"sm_{a}" for a in plan.archs) or "none"


def setup_checks(result: SetupResult, no_gpu_is_skip: bool = False) -> list[Check]:
    """The result as one check (pure). `no_gpu_is_skip`: validate-all's step, where detect then says why."""
    plan = result.plan
    ev: dict[str, Any] = {"plan": plan.to_json()}
    title = "CUDA engine (llama-cpp-python)"
    if result.outcome == "refused":
        p = plan.problems[0]
        status = Status.SKIP if no_gpu_is_skip and p.exit_code == ExitCode.NO_GPU else Status.FAIL
        return [Check("setup.engine", STAGE, title, status, p.message, ev, p.fix, p.exit_code)]
    if result.outcome == "nothing":
        return [Check("setup.engine", STAGE, title, Status.PASS, plan.reason + "; nothing to do", ev)]
    if result.outcome == "dry_run":
        return [
            Check(
                "setup.engine",
                STAGE,
                title,
                Status.SKIP,
                f"dry run: would {plan.action.replace('_', ' ')} ({plan.reason})",
                ev,
            )
        ]
    ev |= result.to_json()
    if result.outcome in ("failed", "interrupted"):
        return [
            Check(
                "setup.engine",
                STAGE,
                title,
                Status.FAIL,
                result.error or "setup failed",
                ev,
                result.fix,
                result.exit_code,
            )
        ]
    v = result.verification
    cuda = tk.cuda_text(plan.cuda) if plan.cuda else "?"
    how = (
        f"built in {result.build_seconds:.0f} s with {plan.jobs} jobs"
        if result.build_seconds is not None
        else "from the cache"
    )
    if result.outcome == "built":
        summary = f"wheel for {_archs(plan)} (CUDA {cuda}) {how}, kept in the cache; not installed: no GPU here"
        if v is not None and not v.ok:
            summary += f" (loading it here: {v.summary})"
        return [Check("setup.engine", STAGE, title, Status.PASS, summary, ev)]
    assert v is not None
    secs = f"{result.install_seconds:.1f} s" if result.install_seconds is not None else "n/a"
    summary = f"CUDA {cuda} build for {_archs(plan)} installed ({how}; install and checks {secs}): {v.summary}"
    return [Check("setup.engine", STAGE, title, Status.PASS, summary, ev)]


def gpu_names(plan: Plan) -> str:
    facts = plan.facts
    if facts is None or not facts.gpus:
        return "none"
    return ", ".join(f"{g.index}: {g.name or '?'} (cc {cc_text(g.cc) if g.cc else 'n/a'})" for g in facts.gpus)
