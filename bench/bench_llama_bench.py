"""The tool's generation speed against llama.cpp's own `llama-bench`, alternated in one run.

Both sides run the same engine binaries: llama-bench (built by bench/build_llama_bench.sh from the locked
llama-cpp-python sdist, i.e. the same vendored llama.cpp) is pointed at the installed llama-cpp-python's
libllama/libggml through LD_LIBRARY_PATH, and this script checks with ldd that those are the ones it loads.
Same model, threads, GPU layers, flash attention and token count. llama-bench's `tg` test decodes N single
tokens from one start token and never samples; the tool's decode loop runs on a one-token prompt with EOS
ignored, so it also generates exactly N. Two tool figures: decode-only (llama.cpp's perf counter, as
llama-bench counts) and end to end (wall clock, sampling and streaming included; sampling on the backend
on GPU runs, as `--sampling auto` does).

Run: python3 -m uv run python bench/bench_llama_bench.py --llama-bench DIR/llama-bench [--gpu-layers -1]
     [--tokens 64] [--pairs 5] [--reps 5] [--threads N] [--flash-attn off|on] [--model PATH] [--save FILE]
Goal (issue 14, on a GPU): the tool's generation tok/s ≥ 0.97 × llama-bench's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _util import machine, real_model, table


def engine_lib_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        sys.exit("llama-cpp-python is not installed in this environment")
    return Path(spec.origin).parent / "lib"


def bench_env(llama_bench: Path, lib: Path) -> dict[str, str]:
    """llama-bench loads the tool's engine libraries first, then its own helpers (libllama-common) beside it."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(lib), str(llama_bench.parent), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return env


def check_same_engine(llama_bench: Path, lib: Path, env: dict[str, str]) -> dict[str, str]:
    """Which file each engine library resolves to for llama-bench; exit if any is not the tool's."""
    out = subprocess.run(["ldd", str(llama_bench)], capture_output=True, text=True, env=env, check=True).stdout
    resolved = dict(re.findall(r"^\s*(lib(?:llama|ggml[\w-]*)\.so[.\d]*) => (\S+)", out, re.M))
    if "libllama.so.0" not in resolved and not any(k.startswith("libllama.so") for k in resolved):
        sys.exit(f"{llama_bench} does not link libllama:\n{out}")
    foreign = {k: v for k, v in resolved.items() if Path(v).resolve().parent != lib.resolve()}
    if foreign:
        sys.exit(f"llama-bench would not run the tool's engine ({lib}): {foreign}")
    return resolved


def run_llama_bench(
    llama_bench: Path, env: dict[str, str], model: Path, args: argparse.Namespace, threads: int
) -> float:
    cmd = [str(llama_bench), "-m", str(model), "-p", "0", "-n", str(args.tokens), "-t", str(threads)]
    cmd += ["-ngl", str(args.gpu_layers), "-fa", args.flash_attn, "-r", str(args.reps), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"llama-bench exited {proc.returncode}: {proc.stderr[-800:]}")
    (test,) = [t for t in json.loads(proc.stdout) if t["n_gen"] == args.tokens and t["n_prompt"] == 0]
    return float(test["avg_ts"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench", type=Path, default=os.environ.get("LLAMA_BENCH"), required=False)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5, help="runs per side in each pair (llama-bench -r)")
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--flash-attn", choices=("off", "on"), default="off", help="both sides (the tool's default: off)")
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args()
    if args.llama_bench is None or not Path(args.llama_bench).is_file():
        sys.exit("--llama-bench PATH (or $LLAMA_BENCH): build it with `bash bench/build_llama_bench.sh`")
    llama_bench = Path(args.llama_bench).resolve()
    model = (args.model or real_model()).resolve()
    lib = engine_lib_dir()
    env = bench_env(llama_bench, lib)
    resolved = check_same_engine(llama_bench, lib, env)

    from kcuda_validate.llm.inference import Inferencer
    from kcuda_validate.llm.loader import LoadOptions, ModelLoader, default_threads
    from kcuda_validate.llm.measures import InferOptions

    threads = args.threads or default_threads()
    cpu = args.gpu_layers == 0
    load = LoadOptions(
        n_ctx=2048, cpu_mode=cpu, gpu_layers=args.gpu_layers, n_threads=threads, flash_attn=args.flash_attn == "on"
    )
    loaded = ModelLoader(load).load(model)
    inf = Inferencer(loaded)
    opts = InferOptions(max_tokens=args.tokens, repeat=1, ignore_eos=True, chat=False, prompt_tokens=1)
    tokens = inf.synthetic_prompt(1)
    backend = inf.backend_sampling(opts)

    def tool() -> tuple[float, float]:
        runs = [inf.generate(tokens, opts, None, backend) for _ in range(args.reps)]
        assert all(r.generated_tokens == args.tokens for r in runs), [r.generated_tokens for r in runs]
        perf = statistics.fmean(r.gen_tps_perf for r in runs if r.gen_tps_perf is not None)
        wall = statistics.fmean(r.gen_tps_wall for r in runs if r.gen_tps_wall is not None)
        return perf, wall

    tool()  # warm-up; llama-bench does its own before each test
    pairs = []
    for _ in range(args.pairs):
        bench = run_llama_bench(llama_bench, env, model, args, threads)
        perf, wall = tool()
        pairs.append({"llama_bench": bench, "tool_decode": perf, "tool_wall": wall})
    loaded.close()

    med = lambda key: statistics.median(p[key] for p in pairs)  # noqa: E731
    per_pair_decode = [p["tool_decode"] / p["llama_bench"] for p in pairs]
    per_pair_wall = [p["tool_wall"] / p["llama_bench"] for p in pairs]
    rows = [
        ["llama-bench tg (decode only, no sampling)", f"{med('llama_bench'):.2f}", "1.000", ""],
        [
            "tool decode loop, llama perf counter (decode only)",
            f"{med('tool_decode'):.2f}",
            f"{statistics.median(per_pair_decode):.3f}",
            f"{min(per_pair_decode):.3f}–{max(per_pair_decode):.3f}",
        ],
        [
            f"tool decode loop, wall clock ({'backend' if backend else 'CPU'} sampling, streaming)",
            f"{med('tool_wall'):.2f}",
            f"{statistics.median(per_pair_wall):.3f}",
            f"{min(per_pair_wall):.3f}–{max(per_pair_wall):.3f}",
        ],
    ]
    print(f"Machine: {machine()}")
    print(f"Model: {model.name}; tg{args.tokens}, {threads} threads, gpu_layers={args.gpu_layers}, ")
    print(f"flash attention {args.flash_attn}; {args.pairs} alternated pairs of {args.reps} runs each; medians")
    print("Engine libraries llama-bench loads (the tool's): " + ", ".join(f"{k} => {v}" for k, v in resolved.items()))
    print()
    print(table(["path", "gen tok/s", "ratio to llama-bench", "per-pair range"], rows))
    print(
        f"\ntool / llama-bench: {statistics.median(per_pair_wall):.3f} end to end, "
        f"{statistics.median(per_pair_decode):.3f} decode only (goal ≥ 0.97)"
    )
    if args.save:
        doc = {
            "machine": machine(),
            "model": model.name,
            "tokens": args.tokens,
            "threads": threads,
            "gpu_layers": args.gpu_layers,
            "flash_attn": args.flash_attn,
            "backend_sampling": backend,
            "engine_libraries": resolved,
            "pairs": pairs,
        }
        args.save.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
