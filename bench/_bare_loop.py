"""A minimal bare llama-cpp-python decode loop in its own process: the baseline for bench_overhead.py.

Usage: python bench/_bare_loop.py MODEL TOKENS THREADS RUNS GPU_LAYERS  (prints a JSON list of gen tok/s)
bench_overhead.py also imports `bare_loop` from here, so both baselines run the same loop.
"""

from __future__ import annotations

import json
import sys
import time

import llama_cpp as lc

PROMPT = b"Write a short story about a GPU that learned to dream."


def bare_loop(ctx: object, tokens: list[int], n: int) -> float:
    """The minimum: clear, decode the prompt, then greedy decode n-1 tokens. Returns generation tok/s."""
    lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
    smpl = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(smpl, lc.llama_sampler_init_greedy())
    arr = (lc.llama_token * len(tokens))(*tokens)
    lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(tokens)))
    tok = lc.llama_sampler_sample(smpl, ctx, -1)
    t_first = time.perf_counter()
    for _ in range(n - 1):
        one = (lc.llama_token * 1)(tok)
        lc.llama_decode(ctx, lc.llama_batch_get_one(one, 1))
        tok = lc.llama_sampler_sample(smpl, ctx, -1)
    t_end = time.perf_counter()
    lc.llama_sampler_free(smpl)
    return (n - 1) / (t_end - t_first)


def main() -> None:
    model = sys.argv[1]
    tokens, threads, runs, ngl = (int(x) for x in sys.argv[2:6])
    llm = lc.Llama(
        model, n_ctx=1024, n_batch=1024, n_threads=threads, n_threads_batch=threads, n_gpu_layers=ngl, verbose=False
    )
    prompt = llm.tokenize(PROMPT, add_bos=True)
    results = [bare_loop(llm.ctx, prompt, tokens) for _ in range(runs + 1)]
    print(json.dumps(results[1:]))  # the first run is the warm-up


if __name__ == "__main__":
    main()
