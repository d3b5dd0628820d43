"""GPU numbers: speeds, TTFT, energy, bandwidth vs the roofline, speedup over the CPU.

Needs an NVIDIA GPU and a CUDA build of llama-cpp-python; exits 2 without one (never fakes a figure).
Run: python3 -m uv run python bench/bench_gpu.py [--sizes 1GiB 4GiB] [--repeat 5]
For each model: `kcuda-validate infer --json --compare-cpu` with a warm-up and --repeat measured runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _util import bench_env, machine, real_model, table, tool_cmd

SAVED: list[dict] = []


def run(source: list[str], repeat: int, tokens: int) -> dict:
    cmd = [*tool_cmd(), "infer", "--json", "--compare-cpu", "--repeat", str(repeat)]
    cmd += ["--max-tokens", str(tokens), "--raw", *source]
    if "--prompt-tokens" not in source:  # a synthetic prompt replaces the text prompt
        cmd += ["--prompt", "Describe the history of computing in detail."]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=bench_env())
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-800:]}") from None
    SAVED.append({"command": cmd[1:], "report": doc})
    return doc


def fmt(doc: dict, name: str, scale: float = 1.0, digits: int = 1) -> str:
    m = doc["metrics"].get(name)
    if not m or m["value"] is None:
        return "n/a"
    text = f"{m['value'] * scale:.{digits}f}"
    if m.get("stddev"):
        text += f" ± {m['stddev'] * scale:.{digits}f}"
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1GiB", "4GiB"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--save", type=Path, default=None, help="write every run's JSON report to this file")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from kcuda_validate.llm.build import probe_llama_build

    if not probe_llama_build().supports_gpu_offload:
        print("No CUDA build of llama-cpp-python here: GPU benchmarks not run.")
        raise SystemExit(2)
    models = [(f"synthetic {s} Q8_0", ["--synthetic", s]) for s in args.sizes]
    models.append(("Gemma-3-270M Q4_K_M", ["--model-path", str(real_model())]))
    rows = []
    for name, src in models:
        doc = run(src, args.repeat, args.tokens)
        if doc["exit_code"] != 0:
            rows.append([name, f"FAILED: {doc['exit_reason']} at {doc['stopped_at']}"] + [""] * 8)
            continue
        pp = run([*src, "--prompt-tokens", str(args.prompt_tokens)], args.repeat, 8)
        tps = doc["metrics"]["gen_tps"]["value"]
        bpt = doc["metrics"]["bytes_per_token"]["value"]
        peak = doc["metrics"].get("bandwidth_peak", {}).get("value")
        roofline = peak / bpt if peak and bpt else None
        rows.append(
            [
                name,
                fmt(doc, "gen_tps"),
                fmt(pp, "prompt_tps", digits=0),
                fmt(doc, "ttft_warm_ms"),
                fmt(doc, "energy_per_token", digits=3),
                fmt(doc, "bandwidth_pct_of_peak", digits=0),
                f"{roofline:.0f}" if roofline else "n/a",
                f"{tps / roofline:.2f}" if roofline else "n/a",
                fmt(doc, "speedup_vs_cpu"),
                doc["checks"][[c["id"] for c in doc["checks"]].index("load.offload")]["summary"],
            ]
        )
    print(f"Machine: {machine()}\n")
    headers = [
        "model",
        "gen tok/s",
        f"prompt tok/s ({args.prompt_tokens})",
        "TTFT warm ms",
        "J/token",
        "% peak BW",
        "roofline tok/s",
        "achieved/roofline",
        "× CPU",
        "offload",
    ]
    print(table(headers, rows))
    if args.save:
        args.save.write_text(json.dumps(SAVED, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
