"""Checks of what runs on the driver: PyTorch, the llama-cpp-python build, and the environment variables
that decide what they see. Each is a function of the facts that returns its checks.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from kcuda_validate.checks import Check, Status, bandwidth_text
from kcuda_validate.detect.facts import Facts, detect_check
from kcuda_validate.errors import ExitCode
from kcuda_validate.gpu.nvml import GpuInfo
from kcuda_validate.llm.build import arch_compatibility, setup_fix
from kcuda_validate.model.hub_errors import OFFLINE_FIX
from kcuda_validate.versions import dist_version

log = logging.getLogger("kcuda_validate.detect")

# Reinstalling the locked dependencies: `uv sync --inexact` keeps what setup added beside them (a plain, exact
# `uv sync` removes the CUDA 12 runtime wheels of a CUDA 12 engine); ./run is `uv run`, which syncs inexactly.
FIX_RESYNC = (
    "`uv sync --inexact` in the checkout, which keeps what setup added (a plain `uv sync` removes it), or run "
    "through `./run kcuda-validate ...`, which syncs"
)
# TorchInfo.problem -> (summary, fix), formatted with version, cuda_build, drv_cuda, install and message;
# `install` is torch_install_fix's sentence.
TORCH_PROBLEMS: dict[str, tuple[str, str]] = {
    "not_installed": ("PyTorch is not installed", f"Reinstall the tool's locked dependencies: {FIX_RESYNC}."),
    "cpu_build": ("torch {version} is a CPU-only build (Torch not compiled with CUDA enabled)", "{install}"),
    "no_driver": (
        "PyTorch found no NVIDIA driver",
        "PyTorch cannot open the driver NVML sees; check LD_LIBRARY_PATH for a stray libcuda and reboot.",
    ),
    "driver_too_old": (
        "torch is built for CUDA {cuda_build} but the driver supports only CUDA {drv_cuda}",
        "Update the NVIDIA driver to one supporting CUDA {cuda_build}; or {install}",
    ),
    "no_device": ("PyTorch sees no CUDA device", "Check CUDA_VISIBLE_DEVICES and container GPU access."),
    "crashed": (
        "PyTorch's CUDA check died: {message}",
        "Usually a driver/library mismatch or a broken CUDA install: reboot, then reinstall the driver; "
        "check `sudo dmesg | grep -i xid` for Xid errors.",
    ),
    "kernel_failed": (
        "a CUDA kernel failed: {message}",
        "Check `sudo dmesg | grep -i xid` for Xid errors; make sure torch's CUDA build supports this GPU's "
        "compute capability.",
    ),
}
# llama.cpp does not need PyTorch: every torch failure says how to validate the inference path without it.
FIX_TORCH_SUFFIX = " (If you only need llama.cpp inference, rerun with --skip-torch.)"
FIX_TORCH_NEWER = "Update the NVIDIA driver to avoid PTX JIT failures in newer kernels."

# PyTorch publishes wheels for only some CUDA versions (download.pytorch.org/whl/cuXYZ). detect's torch fixes and
# setup's plan (engine.plan.torch_note) both name the wheel torch_cuda_index picks from this one list.
TORCH_CUDA_INDEXES = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0), (13, 2))

FIX_HIDES_ALL = "Unset it (`unset CUDA_VISIBLE_DEVICES`) or list a GPU index."
FIX_HIDES_SOME = "Unset CUDA_VISIBLE_DEVICES if you meant to use every GPU."
FIX_CUDA_ORDER = (
    "Set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA's indices are nvidia-smi's, or name GPUs by UUID "
    "(`nvidia-smi -L`): CUDA_VISIBLE_DEVICES=GPU-<uuid>."
)
FIX_OFFLINE = OFFLINE_FIX
FIX_HUB_UNKNOWN = "Check the network, any proxy (HTTPS_PROXY) and HF_ENDPOINT, or pass --model-path / --synthetic."


def _version_gt(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return tuple(int(x) for x in a.split(".")[:2]) > tuple(int(x) for x in b.split(".")[:2])
    except ValueError:
        return False


def torch_cuda_index(driver_cuda: str | None) -> str | None:
    """The download.pytorch.org index for a driver's CUDA version: the newest one PyTorch publishes that is not
    newer than the driver's, e.g. "12.5" -> "cu124". None when the driver's CUDA is unknown or older than all."""
    major, _, minor = (driver_cuda or "").partition(".")
    try:
        want = (int(major), int(minor.partition(".")[0] or 0))
    except ValueError:
        return None
    best = max((p for p in TORCH_CUDA_INDEXES if p <= want), default=None)
    return None if best is None else f"cu{best[0]}{best[1]}"


def torch_install_command(tag: str, python: str | None = None) -> str:
    """The command that replaces the environment's torch with the build from PyTorch's `tag` index."""
    target = f" --python {python}" if python else ""
    return f"`uv pip install{target} --reinstall torch --index-url https://download.pytorch.org/whl/{tag}`"


def _no_torch_build(driver_cuda: str) -> str:
    oldest = ".".join(map(str, TORCH_CUDA_INDEXES[0]))
    return f"PyTorch publishes no CUDA build for CUDA {driver_cuda} or older (its oldest is CUDA {oldest})"


def torch_install_fix(driver_cuda: str | None) -> str:
    """How to get a torch this driver runs, or why there is none (a driver older than every PyTorch CUDA build)."""
    tag = torch_cuda_index(driver_cuda)
    if tag is not None:
        return (
            f"install the CUDA build for this driver (CUDA {driver_cuda}): {torch_install_command(tag)}, "
            "then run with `uv run --no-sync ...` so uv keeps it."
        )
    if driver_cuda:
        return f"update the NVIDIA driver: {_no_torch_build(driver_cuda)}."
    return (
        f"install the CUDA build for the driver's CUDA (`nvidia-smi` shows it): {torch_install_command('cuXYZ')} "
        "for the newest cuXYZ not above it, then run with `uv run --no-sync ...` so uv keeps it."
    )


# -- PyTorch -----------------------------------------------------------------------------------------------


def _torch_not_probed(facts: Facts) -> Check | None:
    """Why torch is not asked at all (--skip-torch, no driver, a CPU run), or None when it is."""
    opts, title = facts.options, "PyTorch CUDA"
    if opts.skip_torch:
        return detect_check("torch.cuda", title, Status.SKIP, "skipped (--skip-torch)")
    if opts.cpu_mode:
        # A CPU run needs nothing from torch; its version comes from metadata without the import cost.
        version = dist_version("torch")
        summary = f"torch {version or 'not installed'}; CPU run, not required"
        return detect_check("torch.cuda", title, Status.SKIP, summary, version=version)
    if facts.nvml.driver is None:
        return detect_check("torch.cuda", title, Status.SKIP, "skipped: no NVIDIA driver")
    return None


def check_torch(facts: Facts) -> tuple[Check, ...]:
    not_probed = _torch_not_probed(facts)
    if not_probed is not None:
        return (not_probed,)
    info, title = facts.torch, "PyTorch CUDA"
    ev = info.to_json()
    driver = facts.nvml.driver
    drv_cuda = driver.cuda_version if driver else None
    newer = _version_gt(info.cuda_build, drv_cuda)
    if info.problem is not None:
        problem = "driver_too_old" if info.problem == "no_device" and newer else info.problem
        summary, fix = TORCH_PROBLEMS[problem]
        install = torch_install_fix(drv_cuda)
        fields = {
            "version": info.version,
            "cuda_build": info.cuda_build,
            "drv_cuda": drv_cuda or "?",
            "install": install[0].upper() + install[1:] if problem == "cpu_build" else install,
            "message": info.message,
        }
        if problem == "driver_too_old" and torch_cuda_index(drv_cuda) is None:
            fix = f"Update the NVIDIA driver to one supporting CUDA {{cuda_build}}: {_no_torch_build(drv_cuda or '?')}."
        return (
            detect_check(
                "torch.cuda",
                title,
                Status.FAIL,
                summary.format(**fields),
                fix.format(**fields) + FIX_TORCH_SUFFIX,
                ExitCode.GPU_UNUSABLE,
                **ev,
            ),
        )
    visible = facts.visible
    if visible and info.device_count != len(visible):
        log.info("torch sees %d devices, NVML %d visible", info.device_count, len(visible))
    summary = f"torch {info.version}, CUDA {info.cuda_build}, sees {info.device_count} GPU(s)"
    if newer:
        summary += f"; built for CUDA {info.cuda_build} > driver's {drv_cuda} (minor-version compat)"
        return (detect_check("torch.cuda", title, Status.WARN, summary, FIX_TORCH_NEWER, **ev),)
    return (detect_check("torch.cuda", title, Status.PASS, summary, **ev),)


def _nvml_gpu(facts: Facts, index: int, name: str | None) -> GpuInfo | None:
    """The NVML GPU behind torch's cuda:`index`, or None.

    torch numbers the GPUs left visible in CUDA's order; trust NVML's facts only for the same card."""
    visible = facts.visible
    return visible[index] if index < len(visible) and visible[index].name == name else None


def check_torch_kernels(facts: Facts) -> tuple[Check, ...]:
    """One check per device torch ran its matmul on. A failed kernel is torch.cuda's failure (kernel_failed)."""
    if _torch_not_probed(facts) is not None or facts.torch.problem is not None:
        return ()
    return tuple(
        detect_check(
            f"torch.kernel.{dev.index}",
            f"PyTorch kernel on cuda:{dev.index}",
            Status.PASS,
            f"512×512 matmul on {dev.name} matches CPU ({dev.kernel_ms:.1f} ms)",
            **dev.__dict__,
            nvml_index=gpu.index if (gpu := _nvml_gpu(facts, dev.index, dev.name)) else None,
        )
        for dev in facts.torch.devices
        if dev.kernel_ok and dev.kernel_ms is not None
    )


# PCIe bytes/s per lane after line encoding, by generation: the link's theoretical rate, said beside the probe.
PCIE_LANE_BYTES_S = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}


def check_torch_bandwidth(facts: Facts) -> tuple[Check, ...]:
    """Per GPU torch ran its kernel on: what its memory and its host link deliver, measured with timed copies,
    beside NVML's peak and the link's theoretical rate. Reported, not judged: n/a (skip) with its reason
    when the probe could not run."""
    if _torch_not_probed(facts) is not None or facts.torch.problem is not None:
        return ()
    out: list[Check] = []
    for dev in facts.torch.devices:
        if not dev.kernel_ok:
            continue
        cid, title = f"torch.bandwidth.{dev.index}", f"Memory bandwidth of cuda:{dev.index}"
        ev = {k: getattr(dev, k) for k in ("index", "name", "mem_bw_bytes_s", "h2d_bytes_s", "bandwidth_error")}
        if dev.mem_bw_bytes_s is None or dev.h2d_bytes_s is None:
            summary = f"n/a: {dev.bandwidth_error or 'the probe did not run'}"
            out.append(detect_check(cid, title, Status.SKIP, summary, **ev))
            continue
        gpu = _nvml_gpu(facts, dev.index, dev.name)
        peak = gpu.peak_bandwidth_bytes_s if gpu else None
        mem = f"memory {bandwidth_text(dev.mem_bw_bytes_s)}"
        if peak:
            mem += f", {dev.mem_bw_bytes_s / peak * 100:.0f} % of {bandwidth_text(peak)} peak"
        link = f"host→GPU {bandwidth_text(dev.h2d_bytes_s)}"
        if gpu and gpu.pcie_gen_max in PCIE_LANE_BYTES_S and gpu.pcie_width_max:
            theory = PCIE_LANE_BYTES_S[gpu.pcie_gen_max] * gpu.pcie_width_max
            link += f" (gen{gpu.pcie_gen_max} x{gpu.pcie_width_max}: {bandwidth_text(theory)} max)"
        ev |= {"peak_bandwidth_bytes_per_s": peak, "nvml_index": gpu.index if gpu else None}
        out.append(detect_check(cid, title, Status.PASS, f"{mem}; {link}", **ev))
    return tuple(out)


# -- llama-cpp-python --------------------------------------------------------------------------------------


# A CUDA library the engine links that the loader cannot find: for a CUDA 12 engine these come from the
# nvidia-*-cu12 wheels setup adds, which a plain (exact) `uv sync` removes as extraneous.
_MISSING_CUDA_LIB = re.compile(r"\b(lib(?:cudart|cublasLt|cublas)\.so\.\d+): cannot open shared object file")


def load_error_fix(invocation: str, error: str) -> str:
    """The fix for an engine that does not load: a missing CUDA library has a cause setup or `uv sync` repairs."""
    missing = _MISSING_CUDA_LIB.search(error)
    if missing and missing.group(1).endswith(".so.12"):
        return (
            f"Run `{invocation} setup`: it puts back the CUDA 12 runtime libraries this build loads "
            f"({missing.group(1)}; a plain `uv sync` removes the ones setup added, `uv run` and "
            "`uv sync --inexact` keep them), from its cache in seconds, or rebuilds."
        )
    if missing:
        return (
            f"Run `uv sync --inexact`: it restores the environment's NVIDIA runtime wheels, which hold "
            f"{missing.group(1)}, and keeps what setup added; then `{invocation} setup` if this check still fails."
        )
    return setup_fix(invocation, "installs a llama-cpp-python build that loads here")


def check_llama_build(facts: Facts) -> tuple[Check, ...]:
    llama, title = facts.llama, "llama-cpp-python GPU offload"
    ev = llama.to_json()
    if not llama.installed or llama.error:
        fix = (
            load_error_fix(facts.invocation, llama.error or "")
            if llama.installed
            else f"Reinstall the tool's locked dependencies: {FIX_RESYNC}; then run `{facts.invocation} setup`."
        )
        summary = llama.error or "llama-cpp-python is not installed"
        return (detect_check("llama.build", title, Status.FAIL, summary, fix, ExitCode.GPU_UNUSABLE, **ev),)
    backends = "+".join(llama.backends) or "no backend"
    if facts.options.cpu_mode:
        summary = f"llama-cpp-python {llama.version} ({backends}); CPU run, offload not required"
        return (detect_check("llama.build", title, Status.SKIP, summary, **ev),)
    if not llama.supports_gpu_offload:
        visible = bool(facts.visible)
        summary = f"llama-cpp-python {llama.version} is a CPU-only build ({backends})"
        return (
            detect_check(
                "llama.build",
                title,
                Status.FAIL if visible else Status.SKIP,
                summary + ("" if visible else "; no GPU to offload to"),
                setup_fix(facts.invocation) if visible else None,
                ExitCode.GPU_UNUSABLE,
                **ev,
            ),
        )
    summary = f"llama-cpp-python {llama.version}, backends {backends}"
    return (detect_check("llama.build", title, Status.PASS, summary, **ev),)


def check_llama_archs(facts: Facts) -> tuple[Check, ...]:
    """Per visible GPU: whether the CUDA build carries code (SASS, or at least PTX) for its compute capability."""
    llama = facts.llama
    usable_build = llama.installed and not llama.error and llama.supports_gpu_offload and llama.has_cuda
    if not usable_build or facts.options.cpu_mode:
        return ()
    ev = llama.to_json()
    out: list[Check] = []
    for g in facts.visible:
        if g.compute_capability is None:
            continue
        verdict, why = arch_compatibility(llama.cuda_archs, g.compute_capability)
        cid, title = f"llama.archs.{g.index}", f"CUDA archs for GPU {g.index}"
        if verdict == "ok":
            out.append(detect_check(cid, title, Status.PASS, why, **ev))
            continue
        sm = f"sm_{g.compute_capability[0]}{g.compute_capability[1]}"
        fix = setup_fix(facts.invocation, f"rebuilds llama-cpp-python for {sm}")
        if verdict == "ptx":
            out.append(detect_check(cid, title, Status.WARN, why, fix, **ev))
        else:
            out.append(detect_check(cid, title, Status.FAIL, why, fix, ExitCode.GPU_UNUSABLE, **ev))
    return tuple(out)


# -- environment -------------------------------------------------------------------------------------------


def check_cuda_visible_devices(facts: Facts) -> tuple[Check, ...]:
    """Which GPUs CUDA_VISIBLE_DEVICES hides, over every GPU NVML sees (not only --device's)."""
    cvd, gpus = facts.env.get("CUDA_VISIBLE_DEVICES"), facts.nvml.gpus
    if cvd is None or not gpus:
        return ()
    hidden, cpu, title = facts.hidden, facts.options.cpu_mode, "CUDA_VISIBLE_DEVICES"
    names = [f"{g.index} ({g.name})" for g in gpus if g.index in hidden]
    ev: dict[str, Any] = {"CUDA_VISIBLE_DEVICES": cvd, "hidden": [g.index for g in gpus if g.index in hidden]}
    cid = "env.cuda_visible_devices"
    if len(hidden) == len(gpus):
        summary = f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU: " + ", ".join(names)
        status = Status.SKIP if cpu else Status.FAIL
        return (detect_check(cid, title, status, summary, None if cpu else FIX_HIDES_ALL, ExitCode.GPU_UNUSABLE, **ev),)
    if hidden and facts.visibility.how == "cuda":
        summary = f"CUDA_VISIBLE_DEVICES={cvd!r} hides GPU " + ", ".join(names) + " (as CUDA itself numbers them)"
        return (detect_check(cid, title, Status.WARN, summary, FIX_HIDES_SOME, cuda_said=True, **ev),)
    if hidden and facts.visibility.how == "unsure":
        summary = (
            f"CUDA_VISIBLE_DEVICES={cvd!r} hides {len(hidden)} of {len(gpus)} GPUs, GPU "
            + ", ".join(names)
            + " if its indices are nvidia-smi's; but CUDA numbers these mixed GPUs fastest first, so it may hide others"
        )
        return (detect_check(cid, title, Status.WARN, summary, FIX_CUDA_ORDER, order_uncertain=True, **ev),)
    if hidden:
        summary = f"CUDA_VISIBLE_DEVICES={cvd!r} hides GPU " + ", ".join(names)
        return (detect_check(cid, title, Status.WARN, summary, FIX_HIDES_SOME, **ev),)
    return (detect_check(cid, title, Status.PASS, f"CUDA_VISIBLE_DEVICES={cvd!r} shows every GPU", **ev),)


def check_hub_access(facts: Facts) -> tuple[Check, ...]:
    """Whether `load` can get its default model now: cached, or the Hub answered for it (one HEAD, 4 s at most).

    A warning, never a failure: --model-path and --synthetic need no Hub, and neither does the GPU stack.
    """
    probe, title, cid = facts.hub, "Hugging Face Hub access", "env.hub"
    token = "set" if facts.env.get("HF_TOKEN") else "not set"
    if probe is None:
        origin = facts.options.model_origin
        what = "a local file (--model-path)" if origin == "local" else "generated here (--synthetic)"
        return (detect_check(cid, title, Status.SKIP, f"the model is {what}: this run needs no Hub", token=token),)
    ev: dict[str, Any] = {"token": token, **probe.to_json()}
    name = "the default model" if probe.default else ev["model"]  # in full in the evidence
    parts = f" ({probe.parts} parts)" if probe.parts > 1 else ""
    if probe.cached:
        name += parts
        mode = " (HF_HUB_OFFLINE=on)" if probe.offline else ""
        summary = f"{name} is in the cache: load and validate-all need no network{mode}"
        return (detect_check(cid, title, Status.PASS, summary, **ev),)
    if probe.offline:
        summary = f"HF_HUB_OFFLINE=on and {name}{parts} is not in the cache: only cached models can be loaded"
        return (detect_check(cid, title, Status.WARN, summary, FIX_OFFLINE, **ev),)
    if probe.error is not None:
        return (detect_check(cid, title, Status.WARN, probe.error, probe.fix or FIX_HUB_UNKNOWN, **ev),)
    mb = None if probe.size_bytes is None else probe.size_bytes / 1e6
    size = "" if mb is None else f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"
    if probe.parts > 1:  # the one HEAD was the first part's
        size = f" ({probe.parts} parts{f'; the first is {size}' if size else ''})"
    elif size:
        size = f" ({size})"
    ms = round(probe.answer_ms or 0.0, 1)  # the figure the evidence carries, so the two never read apart
    summary = f"{probe.host} answered in {ms:.0f} ms: {name}{size} can be downloaded, HF_TOKEN {token}"
    return (detect_check(cid, title, Status.PASS, summary, **ev),)
