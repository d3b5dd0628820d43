"""Measurement overhead: the tool's decode loop vs a minimal bare llama-cpp-python loop, alternated A B A B.

Same model, prompt, build, context, thread count and token count; one warm-up each, then 5 pairs.
Also checks the tool's own timing against an outside observer (timestamps taken in the streaming
callback and around the call).

Run: python3 -m uv run python bench/bench_overhead.py [--model PATH] [--tokens 64] [--gpu-layers 0]
Goals: tool gen tok/s ≥ 0.97 × bare; tool figures within 2% of the outside wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _bare_loop import bare_loop
from _util import VENV_BIN, bench_env, machine, real_model, table

PROMPT = "Write a short story about a GPU that learned to dream."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    model = args.model or real_model()

    from kcuda_validate.llm.inference import Inferencer
    from kcuda_validate.llm.loader import LoadOptions, ModelLoader, default_threads
    from kcuda_validate.llm.measures import InferOptions

    threads = args.threads or default_threads()
    cpu = args.gpu_layers == 0
    loaded = ModelLoader(LoadOptions(n_ctx=1024, cpu_mode=cpu, gpu_layers=args.gpu_layers, n_threads=threads)).load(
        model
    )
    inf = Inferencer(loaded)
    opts = InferOptions(prompt=PROMPT, max_tokens=args.tokens, repeat=1, warmup=False, ignore_eos=True, chat=False)
    tokens = inf.tokenize(PROMPT)

    def tool() -> dict[str, float]:
        stamps: list[float] = []
        before = time.perf_counter()
        run = inf.generate(tokens, opts, on_text=lambda _t: stamps.append(time.perf_counter()))
        after = time.perf_counter()
        outside_gen = (run.generated_tokens - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
        return {
            "wall": run.gen_tps_wall,
            "perf": run.gen_tps_perf,
            "outside_gen": outside_gen,
            "total_ratio": run.total_s / (after - before),
        }

    bare = lambda: bare_loop(inf.ctx, tokens, args.tokens)  # noqa: E731
    tool()
    bare()  # warm-up
    tool_runs, bare_runs = [], []
    for _ in range(args.pairs):
        tool_runs.append(tool())
        bare_runs.append(bare())
    loaded.close()

    med = lambda xs: statistics.median(xs)  # noqa: E731
    tool_wall = med([r["wall"] for r in tool_runs])
    tool_perf = med([r["perf"] for r in tool_runs])
    bare_wall = med(bare_runs)
    outside = med([r["outside_gen"] for r in tool_runs])
    total_ratio = med([r["total_ratio"] for r in tool_runs])

    # The whole CLI path (worker child process, JSON report) against a bare loop in its own process,
    # alternated, so both pay the same process start-up and run under the same machine conditions.
    exe = str(VENV_BIN / "kcuda-validate")
    cli_cmd = [exe, "infer", "--json", "--raw", "--prompt", PROMPT, "--max-tokens", str(args.tokens)]
    cli_cmd += ["--model-path", str(model), "--repeat", "5", "--n-ctx", "1024", "--threads", str(threads)]
    cli_cmd += ["--device", "cpu"] if cpu else ["--gpu-layers", str(args.gpu_layers)]
    bare_cmd = [sys.executable, str(Path(__file__).parent / "_bare_loop.py"), str(model), str(args.tokens)]
    bare_cmd += [str(threads), "5", str(args.gpu_layers)]
    cli_means, bare_proc_means = [], []
    for _ in range(3):
        proc = subprocess.run(cli_cmd, capture_output=True, text=True, env=bench_env())
        runs = json.loads(proc.stdout)["sections"]["inference"]["runs"]
        cli_means.append(statistics.fmean(r["gen_tps_wall"] for r in runs))
        proc = subprocess.run(bare_cmd, capture_output=True, text=True, env=bench_env())
        bare_proc_means.append(statistics.fmean(json.loads(proc.stdout)))
    cli_wall = med(cli_means)
    bare_proc = med(bare_proc_means)

    rows = [
        ["bare llama-cpp-python loop (wall)", f"{bare_wall:.2f}", "1.000"],
        ["tool decode loop, wall clock", f"{tool_wall:.2f}", f"{tool_wall / bare_wall:.3f}"],
        ["tool decode loop, llama perf counters", f"{tool_perf:.2f}", f"{tool_perf / bare_wall:.3f}"],
        ["outside observer (stream callbacks)", f"{outside:.2f}", f"{outside / bare_wall:.3f}"],
    ]
    proc_rows = [
        ["bare loop, own process (wall)", f"{bare_proc:.2f}", "1.000"],
        ["kcuda-validate infer (CLI + worker), wall", f"{cli_wall:.2f}", f"{cli_wall / bare_proc:.3f}"],
    ]
    print(f"Machine: {machine()}")
    print(f"Model: {model.name}, {args.tokens} tokens, {threads} threads, gpu_layers={args.gpu_layers}, ")
    print(f"{args.pairs} alternated pairs after a warm-up; medians\n")
    print("In one process, alternated per run:")
    print(table(["path", "gen tok/s", "ratio to bare"], rows))
    print("\nWhole commands, each in its own process, alternated (3 pairs × 5 runs):")
    print(table(["path", "gen tok/s", "ratio to bare"], proc_rows))
    print(f"\ntool wall vs outside observer: {abs(tool_wall / outside - 1) * 100:.2f}% apart (goal ≤ 2%)")
    print(f"tool total_s vs outside timing around the call: {abs(total_ratio - 1) * 100:.2f}% apart (goal ≤ 2%)")
    print(f"tool / bare: {tool_wall / bare_wall:.3f} in-process, {cli_wall / bare_proc:.3f} as commands (goal ≥ 0.97)")


if __name__ == "__main__":
    main()
