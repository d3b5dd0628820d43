"""Rich renderers: a compact checks table, the failures with their fixes, and the inference panel.

Numbers shown here come from the report's metrics; a metric without a value
prints as n/a, never as a guess.

Text that came from outside (paths, prompts, server answers, the environment) is put in as rich `Text`, never
as a markup string (a path like `/tmp/[/x].gguf` would otherwise be parsed as markup and crash the render),
and through `safetext.safe` before the layout wraps it, so a credential folded across two lines is still
masked and bytes that are not UTF-8 are spelled out.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kcuda_validate.checks import Check, Metric, MetricName, Status, bandwidth_text
from kcuda_validate.errors import ExitCode
from kcuda_validate.report import Report
from kcuda_validate.safetext import safe, safe_json, spelled_out

STYLE = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.SKIP: "dim"}
LABEL = {Status.PASS: "PASS", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "SKIP"}
EXIT_TEXT = {
    ExitCode.OK: "all checks passed",
    ExitCode.CHECK_FAILED: "a check failed",
    ExitCode.USAGE: "usage error",
    ExitCode.NO_GPU: "no NVIDIA driver or GPU",
    ExitCode.GPU_UNUSABLE: "GPU present but the stack cannot use it",
    ExitCode.MODEL_INVALID: "model file invalid",
    ExitCode.BELOW_THRESHOLD: "below a threshold",
    ExitCode.CRASHED: "the model worker crashed",
    ExitCode.MODEL_NOT_FOUND: "model not found",
    ExitCode.HUB_UNREACHABLE: "Hugging Face Hub unreachable",
    ExitCode.HUB_AUTH: "Hub authentication/authorisation needed",
    ExitCode.DISK_FULL: "no room for the model",
    ExitCode.INTERNAL: "internal error",
    ExitCode.TIMEOUT: "timed out",
    ExitCode.INTERRUPTED: "interrupted",
    ExitCode.TERMINATED: "terminated",
}


def na(value: Any, fmt: str = "{}", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return fmt.format(value) + unit


def fmt_metric(m: Metric | None, fmt: str | None = None, spread: bool = True, unit: str = "") -> str:
    """Value (± spread) and unit; a bare "n/a" when not measured. Rates in the thousands lose the decimal."""
    if m is None or m.value is None or not math.isfinite(m.value):
        return "n/a"
    if fmt is None:
        fmt = "{:,.0f}" if abs(m.value) >= 1000 else "{:.1f}"
    text = fmt.format(m.value)
    if spread and m.stddev is not None and len(m.samples) > 1:
        text += " ± " + fmt.format(m.stddev)
    return text + unit


def checks_table(checks: list[Check], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("", no_wrap=True)
    table.add_column("Check", no_wrap=True)
    table.add_column("Result", overflow="fold")
    for c in checks:
        table.add_row(Text(LABEL[c.status], style=STYLE[c.status]), _text(c.title), _text(c.summary))
    return table


def _text(value: Any, style: str = "") -> Text:
    """Outside text as it may be shown: printable, without credentials, on its own line (a newline or an ESC
    in a path is spelled out, never obeyed), never read as markup."""
    return Text(spelled_out(safe(str(value))), style=style)


def fixes(checks: list[Check]) -> list[Text]:
    """Each failure and warning with its fix, for copying into a shell.

    A warning whose fix a failure gives too is left to the table: detect's forecast (the Hub cannot be
    reached) and the stage that then failed on it are one cause, so the list says it once."""
    failing = {c.fix for c in checks if c.status == Status.FAIL and c.fix}
    out: list[Text] = []
    for c in checks:
        if c.status == Status.WARN and c.fix in failing:
            continue
        if c.status in (Status.FAIL, Status.WARN) and c.fix:
            line = Text()
            line.append(f"{LABEL[c.status]} ", style=STYLE[c.status])
            line.append(spelled_out(safe(f"{c.title}: ")), style="bold")
            line.append(spelled_out(safe(c.summary)))
            out.append(line)
            out.append(_text(f"     fix: {c.fix}"))
    return out


def _m(report: Report, name: MetricName) -> Metric | None:
    return report.metric(name)


def inference_panel(report: Report) -> Panel | None:
    if _m(report, MetricName.GEN_TPS) is None and _m(report, MetricName.GEN_TPS_WALL) is None:
        return None
    rows = Table.grid(padding=(0, 2))
    rows.add_column(style="bold", no_wrap=True)
    rows.add_column()
    offload = next((c for c in report.checks if c.id == "load.offload"), None)
    if offload is not None:
        rows.add_row("Offload", _text(offload.summary, style=STYLE[offload.status]))
    n_runs = len((_m(report, MetricName.GEN_TPS) or Metric("", None, "", "")).samples)
    rows.add_row(
        "Generation",
        f"{fmt_metric(_m(report, MetricName.GEN_TPS), unit=' tok/s')} (llama.cpp perf counters) · "
        f"{fmt_metric(_m(report, MetricName.GEN_TPS_WALL), unit=' tok/s')} (wall clock)",
    )
    dec, smp, oth = (
        _m(report, n)
        for n in (MetricName.DECODE_MS_PER_TOKEN, MetricName.SAMPLE_MS_PER_TOKEN, MetricName.OTHER_MS_PER_TOKEN)
    )
    if dec is not None and dec.value is not None:
        rows.add_row(
            "Per token",
            f"decode {fmt_metric(dec, '{:.2f}', False, ' ms')} · sampling {fmt_metric(smp, '{:.2f}', False, ' ms')}"
            f" · other {fmt_metric(oth, '{:.2f}', False, ' ms')}",
        )
    cpu_sampled = _m(report, MetricName.GEN_TPS_WALL_CPU_SAMPLING)
    if cpu_sampled is not None:  # --sampling backend (auto on a GPU run): the CPU-sampled runs beside it
        cpu_sample_ms = _m(report, MetricName.SAMPLE_MS_PER_TOKEN_CPU_SAMPLING)
        rows.add_row(
            "Sampling",
            f"in the decode graph · CPU-sampled {fmt_metric(cpu_sampled, unit=' tok/s')} (wall),"
            f" sampling {fmt_metric(cpu_sample_ms, '{:.2f}', False, ' ms')}",
        )
    rows.add_row(
        "Prompt",
        f"{fmt_metric(_m(report, MetricName.PROMPT_TPS), unit=' tok/s')} (perf) · "
        f"{fmt_metric(_m(report, MetricName.PROMPT_TPS_WALL), unit=' tok/s')} (wall)",
    )
    rows.add_row(
        "TTFT",
        f"cold {fmt_metric(_m(report, MetricName.TTFT_COLD_MS), unit=' ms')} · "
        f"warm {fmt_metric(_m(report, MetricName.TTFT_WARM_MS), unit=' ms')}",
    )
    pt, gt = _m(report, MetricName.PROMPT_TOKENS), _m(report, MetricName.GENERATED_TOKENS)
    rows.add_row(
        "Tokens",
        f"{na(pt.value if pt else None)} prompt → {na(gt.value if gt else None, '{:.0f}')} generated "
        f"({n_runs} measured run{'s' if n_runs != 1 else ''}, tokenizer counts)",
    )
    if report.device_mode == "gpu":
        health = next((c for c in report.checks if c.id == "gpu.performance"), None)
        if health is not None:  # the clocks, power, thermal and PCIe verdict under load, beside the speeds it explains
            rows.add_row("Under load", _text(health.summary, style=STYLE[health.status]))
        vram = _m(report, MetricName.VRAM_PEAK)
        peak = na(vram.value / 1024**2 if vram and vram.value else None, "{:,.0f}", " MiB")
        rows.add_row("VRAM peak", peak + (" (whole GPU, every process on it)" if peak != "n/a" else ""))
        rows.add_row(
            "GPU util",
            f"mean {fmt_metric(_m(report, MetricName.GPU_UTIL_MEAN), '{:.0f}', False, ' %')} · "
            f"max {fmt_metric(_m(report, MetricName.GPU_UTIL_MAX), '{:.0f}', False, ' %')}",
        )
        rows.add_row(
            "Power",
            f"mean {fmt_metric(_m(report, MetricName.POWER_MEAN), '{:.0f}', False, ' W')} · "
            f"energy {fmt_metric(_m(report, MetricName.ENERGY_PER_TOKEN), '{:.3f}', False, ' J/token')}",
        )
        bw = _m(report, MetricName.BANDWIDTH_PCT_OF_PEAK)
        bw_abs = _m(report, MetricName.BANDWIDTH_ACHIEVED)
        achieved = na(bw_abs.value / 1e9 if bw_abs and bw_abs.value else None, "{:.0f}", " GB/s")
        probed = _m(report, MetricName.BANDWIDTH_PCT_OF_PROBED)
        probed_abs = _m(report, MetricName.BANDWIDTH_PROBED)
        beside = ""
        if probed is not None and probed.value is not None and probed_abs is not None and probed_abs.value:
            pct = fmt_metric(probed, "{:.0f}", False, " %")
            beside = f", {pct} of the {bandwidth_text(probed_abs.value)} a copy reached"
        if bw is not None and bw.value is not None:
            pct = fmt_metric(bw, "{:.0f}", False, " %")
            rows.add_row("Bandwidth", f"{achieved} = {pct} of peak{beside} (estimate)")
        else:
            rows.add_row("Bandwidth", f"{achieved} (estimate; the GPU's peak is n/a)")
    speed = _m(report, MetricName.SPEEDUP_VS_CPU)
    if speed is not None:
        rows.add_row("vs CPU", f"{fmt_metric(speed, '{:.1f}', False, '×')} faster generation")
    title = "Inference (CPU run)" if report.device_mode == "cpu" else "Inference"
    return Panel(rows, title=title, title_align="left", expand=False)


def runs_table(report: Report) -> Table | None:
    """Every run, for -v: the spread behind the means."""
    inf = report.sections.get("inference")
    if not inf:
        return None
    table = Table(title="Runs", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in (
        "run",
        "prompt tok",
        "gen tok",
        "TTFT ms",
        "prompt tok/s (perf)",
        "gen tok/s (perf)",
        "gen tok/s (wall)",
    ):
        table.add_column(col, justify="right" if col != "run" else "left")
    runs = ([("warm-up", inf["warmup"])] if inf.get("warmup") else []) + [
        (str(i + 1), r) for i, r in enumerate(inf.get("runs", []))
    ]
    for name, r in runs:
        table.add_row(
            name,
            str(r["prompt_tokens"]),
            str(r["generated_tokens"]),
            na(r["ttft_s"] * 1000 if r.get("ttft_s") is not None else None, "{:.1f}"),
            na(r.get("prompt_tps_perf"), "{:.1f}"),
            na(r.get("gen_tps_perf"), "{:.1f}"),
            na(r.get("gen_tps_wall"), "{:.1f}"),
        )
    return table


def gpu_table(report: Report) -> Table | None:
    """-v on detect: every NVML field per GPU; n/a where the driver would not say (common on WSL2)."""
    gpus = (report.sections.get("detect") or {}).get("gpus") or []
    if not gpus:
        return None
    gib = 1024**3
    table = Table(title="GPUs", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("")
    for g in gpus:
        table.add_column(f"GPU {g['index']}" + (" (hidden)" if g.get("hidden") else ""), overflow="fold")

    def row(label: str, fn: Any) -> None:
        table.add_row(label, *[_text(fn(g)) for g in gpus])

    def both(a: Any, b: Any, fmt: str = "{}") -> str:
        return f"{na(a, fmt)} / {na(b, fmt)}"

    row("name", lambda g: na(g["name"]))
    row("UUID", lambda g: na(g["uuid"]))
    row("PCI bus", lambda g: na(g["pci_bus_id"]))
    row("compute capability", lambda g: na(g["compute_capability"]))
    row(
        "VRAM total / free",
        lambda g: both(
            g["memory_total_bytes"] / gib if g["memory_total_bytes"] is not None else None,
            g["memory_free_bytes"] / gib if g["memory_free_bytes"] is not None else None,
            "{:.1f} GiB",
        ),
    )
    row("temperature", lambda g: na(g["temperature_c"], "{} °C"))
    row("power / limit", lambda g: both(g["power_w"], g["power_limit_w"], "{:.0f} W"))
    row("persistence mode", lambda g: na(g["persistence_mode"]))
    row("PCIe gen now / max", lambda g: both(g["pcie_gen_current"], g["pcie_gen_max"]))
    row("PCIe width now / max", lambda g: both(g["pcie_width_current"], g["pcie_width_max"], "x{}"))
    row("ECC / retired pages", lambda g: both(g["ecc_enabled"], g["retired_pages"]))
    row("MIG", lambda g: na(g["mig_enabled"]))
    row(
        "peak bandwidth",
        lambda g: na(g["peak_bandwidth_bytes_per_s"] / 1e9 if g["peak_bandwidth_bytes_per_s"] else None, "{:.0f} GB/s"),
    )
    row("status", lambda g: "LOST (fell off the bus)" if g["lost"] else (g["error"] or "ok"))
    return table


def evidence_lines(report: Report) -> list[Text]:
    """-vv: the evidence behind every check that did not pass."""
    import json

    out: list[Text] = []
    for c in report.checks:
        if c.status == Status.PASS or not c.evidence:
            continue
        out.append(Text(f"{c.id} evidence:", style="bold"))
        out.append(Text(json.dumps(safe_json(dict(c.evidence)), indent=2, sort_keys=True)))
    return out


def verdict_line(report: Report) -> Text:
    code = report.exit_code
    if code == ExitCode.OK:
        if report.device_mode == "cpu":
            return Text("PASSED (CPU run): the pipeline works on the CPU; no GPU was validated.", style="bold yellow")
        if report.command == "detect":
            only = report.sections.get("detect", {}).get("only")
            if only is not None:  # --check: a subset says nothing about the rest
                ran = safe(", ".join(only))
                text = f"PASSED: nothing failed in {ran}; the rest of the stack was not checked."
                return Text(text, style="bold green")
            return Text("PASSED: this machine's GPU stack is ready.", style="bold green")
        if report.command == "setup":
            outcome = report.sections.get("setup", {}).get("outcome")
            if outcome == "dry_run":
                return Text("DRY RUN: nothing was changed.", style="bold")
            if outcome == "built":
                return Text("PASSED: the engine was built and cached (not installed: no GPU here).", style="bold green")
            return Text("PASSED: the CUDA engine is installed and loads.", style="bold green")
        return Text(f"PASSED: {report.command} ran on the GPU.", style="bold green")
    where = safe(f" at {report.stopped_at}") if report.stopped_at else ""
    text = EXIT_TEXT.get(code, code.reason)
    if report.command == "setup" and code == ExitCode.GPU_UNUSABLE:  # setup says so with or without a GPU here
        text = "no CUDA engine could be made"  # the FAIL line above says why
    return Text(f"FAILED{where}: {text} (exit {int(code)})", style="bold red")


def render_report(report: Report, console: Console, verbose: int = 0, quiet: bool = False) -> None:
    if quiet:
        console.print(verdict_line(report))
        return
    header = f"kcuda-validate {report.command}"
    if report.device_mode == "cpu":
        header += " — CPU RUN (not a GPU validation)"
    parts: list[Any] = [Text(header, style="bold"), checks_table(report.checks)]
    panel = inference_panel(report)
    if panel is not None:
        parts.append(panel)
    if verbose:
        for extra in (gpu_table(report), runs_table(report)):
            if extra is not None:
                parts.append(extra)
    console.print(Group(*parts))
    if verbose >= 2:
        for line in evidence_lines(report):
            console.print(line, soft_wrap=True)
    fx = fixes(report.checks)
    if fx:
        console.print()
        for line in fx:
            # soft_wrap: a fix is often a command to copy into a shell, so it must not be cut or re-wrapped.
            console.print(line, soft_wrap=True)
    crash = report.sections.get("crash")
    if crash and crash.get("log_tail"):  # no heading over nothing when llama.cpp printed nothing
        console.print(Text(f"Last llama.cpp output before the {crash.get('signal') or 'exit'}:", style="bold"))
        for line in crash.get("log_tail", [])[-10:]:
            console.print(_text("  " + line), soft_wrap=True)
    console.print(verdict_line(report))
    if report.exit_code == ExitCode.NO_GPU and report.command in ("load", "infer", "validate-all"):
        from kcuda_validate.llm.build import invocation  # `./run kcuda-validate` in a checkout

        console.print(
            Text(
                "Without a GPU you can still check the rest of the pipeline, labelled as a CPU run: "
                f"{invocation()} {report.command} --device cpu --synthetic 64MiB",
                style="dim",
            ),
            soft_wrap=True,
        )
