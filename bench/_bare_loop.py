"""A minimal bare llama-cpp-python decode loop in its own process: the baseline for bench_overhead.py.

Usage: python bench/_bare_loop.py MODEL TOKENS THREADS RUNS GPU_LAYERS  (prints a JSON list of gen tok/s)
"""

from __future__ import annotations

import json
import sys
import time

import llama_cpp as lc

PROMPT = b"Write a short story about a GPU that learned to dream."


def main() -> None:
    model, tokens, threads, runs, ngl = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    llm = lc.Llama(
        model, n_ctx=1024, n_batch=1024, n_threads=threads, n_threads_batch=threads, n_gpu_layers=ngl, verbose=False
    )
    prompt = llm.tokenize(PROMPT, add_bos=True)
    ctx = llm.ctx
    out = []
    for i in range(runs + 1):
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        smpl = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(smpl, lc.llama_sampler_init_greedy())
        arr = (lc.llama_token * len(prompt))(*prompt)
        lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(prompt)))
        tok = lc.llama_sampler_sample(smpl, ctx, -1)
        t_first = time.perf_counter()
        for _ in range(tokens - 1):
            one = (lc.llama_token * 1)(tok)
            lc.llama_decode(ctx, lc.llama_batch_get_one(one, 1))
            tok = lc.llama_sampler_sample(smpl, ctx, -1)
        tps = (tokens - 1) / (time.perf_counter() - t_first)
        lc.llama_sampler_free(smpl)
        if i:  # the first run is the warm-up
            out.append(tps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
