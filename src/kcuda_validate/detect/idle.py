"""What an idle GPU can already tell about its speed: power limit, clocks held back, memory rows to remap.

PCIe width is judged in the GPU check (stack.check_gpus); the PCIe generation is not judged at idle, since an
idle link downshifts on its own. Every figure the driver cannot give is named n/a in the summary, never dropped.
"""

from __future__ import annotations

from typing import Any

from kcuda_validate.checks import Check, Status
from kcuda_validate.detect.facts import Facts, detect_check
from kcuda_validate.gpu.nvml import SLOWDOWN_REASONS, THERMAL_REASONS, GpuInfo, clocks_event_names

FIX_POWER_LIMIT = "`sudo nvidia-smi -i {index} -pl {default:.0f}` (and remove whatever lowers it at boot)."
FIX_THERMAL = (
    "Improve cooling: clean the fans and heatsink, check the case airflow and the fan curve;"
    " `nvidia-smi -q -d PERFORMANCE,TEMPERATURE` shows the cause."
)
FIX_HW_SLOWDOWN = (
    "Check the board's power cables and the power supply (the board asserts HW slowdown / power brake);"
    " `nvidia-smi -q -d PERFORMANCE` shows the cause."
)
FIX_REMAP_PENDING = (
    "Reset the GPU with no process on it (`sudo nvidia-smi -r -i {index}`) or reboot to apply the remap."
)
FIX_REMAP_FAILED = "Row remapping failed: this GPU's memory can no longer be repaired; have the board replaced."

_TOLERANCE_W = 1.0  # NVML reports mW; a limit within 1 W of the default is the default


def _power(g: GpuInfo) -> tuple[str, tuple[str, str] | None]:
    limit, default = g.power_limit_w, g.power_limit_default_w
    if limit is None:
        return "power limit n/a", None
    if default is None:
        return f"power limit {limit:.0f} W (default n/a)", None
    if limit < default - _TOLERANCE_W:
        what = f"power limit {limit:.0f} W, default {default:.0f} W"
        return what, (what, FIX_POWER_LIMIT.format(index=g.index, default=default))
    return f"power limit {limit:.0f} W = default", None


def _clocks(g: GpuInfo) -> tuple[str, tuple[str, str] | None]:
    bits = g.clocks_event_reasons
    if bits is None:
        return "slowdown n/a", None
    if not bits & SLOWDOWN_REASONS:
        return "no slowdown", None
    names = ", ".join(clocks_event_names(bits & SLOWDOWN_REASONS))
    temp = f" at {g.temperature_c} °C" if g.temperature_c is not None else ""
    what = f"clocks held back at idle by {names}{temp}"
    return what, (what, FIX_THERMAL if bits & THERMAL_REASONS else FIX_HW_SLOWDOWN)


def _remap(g: GpuInfo) -> tuple[str, tuple[str, str] | None]:
    if g.remapped_rows is None:
        return "row remap n/a", None
    corr, unc = g.remapped_rows
    rows = f"{corr} correctable, {unc} uncorrectable"
    if g.remap_failed:
        what = f"row remapping failed ({rows})"
        return what, (what, FIX_REMAP_FAILED)
    if g.remap_pending:
        what = f"row remap pending ({rows})"
        return what, (what, FIX_REMAP_PENDING.format(index=g.index))
    return "no row remap pending", None


def _idle_check(g: GpuInfo) -> Check:
    cid, title = f"perf.idle.{g.index}", f"Idle health of GPU {g.index}"
    ev: dict[str, Any] = {
        "power_limit_w": g.power_limit_w,
        "power_limit_default_w": g.power_limit_default_w,
        "clocks_event_reasons": None if g.clocks_event_reasons is None else clocks_event_names(g.clocks_event_reasons),
        "temperature_c": g.temperature_c,
        "remapped_rows": None if g.remapped_rows is None else list(g.remapped_rows),
        "remap_pending": g.remap_pending,
        "remap_failed": g.remap_failed,
    }
    if g.lost or g.error is not None:
        return detect_check(cid, title, Status.SKIP, "GPU not readable (see its GPU check)", **ev)
    parts = [_power(g), _clocks(g), _remap(g)]
    problems = [p for _, p in parts if p is not None]
    if problems:
        what = "; ".join(w for w, _ in problems)
        return detect_check(cid, title, Status.WARN, what, " ".join(f for _, f in problems), **ev)
    if all(s.endswith(" n/a") for s, _ in parts):
        return detect_check(cid, title, Status.SKIP, "power limit, slowdown, row remap: n/a on this driver", **ev)
    summary = "; ".join(s for s, _ in parts)
    return detect_check(cid, title, Status.PASS, summary, **ev)


def check_idle_health(facts: Facts) -> tuple[Check, ...]:
    """One check per selected GPU: what NVML says at idle about power limit, slowdown and row remapping."""
    return tuple(_idle_check(g) for g in facts.selected)
