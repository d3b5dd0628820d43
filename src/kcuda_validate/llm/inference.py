"""The inferencer: a real decode loop, measured the way llama-bench measures.

Every run starts from an empty KV cache with reset perf counters, so prefix
reuse cannot flatter later runs. Time to first token is taken when the first
sampled token exists; token counts come from the tokenizer and the decode
loop, never from splitting text; prompt/generation speeds are reported both
from llama.cpp's perf counters and from the wall clock.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

from kcuda_validate.errors import UsageError
from kcuda_validate.llm.loader import LoadedModel
from kcuda_validate.llm.measures import InferenceResult, InferOptions, RunMeasure
from kcuda_validate.model.fit import context_fix, ctx_label, synthetic_prompt_overflow

log = logging.getLogger(__name__)

FILLER = (
    "The quick brown fox jumps over the lazy dog while the GPU multiplies matrices, "
    "streams weights from memory and writes the next token. "
)


class TextStream:
    """Token pieces in, valid UTF-8 text out: a character split across tokens is held until complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def close(self) -> str:
        """Flush; an incomplete trailing sequence becomes U+FFFD rather than vanishing."""
        return self._decoder.decode(b"", final=True)


class Inferencer:
    """Runs measured generations on a loaded model."""

    def __init__(self, model: LoadedModel) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.model = model
        self.llm = model.llm
        self.ctx = self.llm.ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ctx))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.llm.model))
        self.n_batch = int(self.llm.n_batch)
        self._graph_changed = False  # a backend sampler was detached: the next decode would re-reserve the graph

    @property
    def _asked_ctx(self) -> int:
        return int(self.model.result.options.n_ctx)

    # -- prompt handling -------------------------------------------------------------------------------
    def chat_template(self) -> bytes | None:
        template: bytes | None = self._lc.llama_model_chat_template(self.llm.model, None)
        return template

    def format_prompt(self, prompt: str, chat: bool) -> tuple[str, bool]:
        """Apply the GGUF's chat template via llama.cpp's built-in formatter; raw text when there is none."""
        tmpl = self.chat_template() if chat else None
        if not tmpl:
            return prompt, False
        lc = self._lc
        msgs = (lc.llama_chat_message * 1)(lc.llama_chat_message(b"user", prompt.encode()))
        size = max(256, len(prompt.encode()) * 2 + 512)
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_chat_apply_template(tmpl, msgs, 1, True, buf, size)
            if n < 0:
                log.info("chat template not supported by llama.cpp's formatter; using the raw prompt")
                return prompt, False
            if n <= size:
                return buf.raw[:n].decode("utf-8", errors="replace"), True
            size = n + 1
        return prompt, False

    def tokenize(self, text: str) -> list[int]:
        """Tokenize with the model's tokenizer; BOS added unless the formatted text already starts with it."""
        lc = self._lc
        raw = text.encode("utf-8")
        add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        bos_piece = self.piece(lc.llama_vocab_bos(self.vocab), special=True) if add_bos else b""
        if add_bos and bos_piece and raw.startswith(bos_piece):
            add_bos = False
        n_max = len(raw) + 16
        tokens = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), tokens, n_max, add_bos, True)
        if n < 0:
            n_max = -n
            tokens = (lc.llama_token * n_max)()
            n = lc.llama_tokenize(self.vocab, raw, len(raw), tokens, n_max, add_bos, True)
        return list(tokens[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def synthetic_prompt(self, n_tokens: int) -> list[int]:
        """Exactly `n_tokens` prompt tokens (for prompt-processing benchmarks).

        The filler doubles until it is long enough, so tokenizing costs about twice the final text, not the square
        of it (adding one filler at a time took 17 s for 100k tokens)."""
        text = FILLER
        tokens = self.tokenize(text)
        while len(tokens) < n_tokens:
            text += text
            tokens = self.tokenize(text)
        return tokens[:n_tokens]

    # -- the decode loop -------------------------------------------------------------------------------
    def _sampler(self, opts: InferOptions) -> Any:
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if opts.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(opts.top_k))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(opts.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(opts.temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(opts.seed))
        return chain

    def _prime(self) -> None:
        """One untimed single-token decode, so the graph re-reserve that attaching or detaching a backend
        sampler schedules happens here, not in the measured prompt: llama.cpp starts its prompt timer before that
        reserve, whose synchronize then books the prompt at ~0 ms and leaves its compute uncounted."""
        lc = self._lc
        arr = (lc.llama_token * 1)(lc.llama_vocab_bos(self.vocab))
        rc = lc.llama_decode(self.ctx, lc.llama_batch_get_one(arr, 1))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        lc.llama_synchronize(self.ctx)
        self._graph_changed = False

    def _reset(self) -> None:
        lc = self._lc
        mem = lc.llama_get_memory(self.ctx)
        if mem is not None:
            lc.llama_memory_clear(mem, True)
        lc.llama_perf_context_reset(self.ctx)

    def _decode(self, tokens: list[int]) -> None:
        lc = self._lc
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i : i + self.n_batch]
            arr = (lc.llama_token * len(chunk))(*chunk)
            rc = lc.llama_decode(self.ctx, lc.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        # A GPU decode returns once queued; waiting here keeps the prompt time honest (llama.cpp's own
        # counter also stops at this synchronisation).
        lc.llama_synchronize(self.ctx)

    def backend_sampling(self, opts: InferOptions) -> bool:
        """Whether greedy sampling runs inside the decode graph (llama_set_sampler: llama.cpp's backend sampling,
        llama-server's default): `auto` on a GPU run, `backend` on any, when this build and context accept it.

        Not `auto` on a CPU run: there the in-graph argmax costs more than it saves (docs/benchmarks.md)."""
        wanted = opts.sampling == "backend" or (opts.sampling == "auto" and not self.model.result.options.cpu_mode)
        if not wanted or opts.temperature > 0 or not hasattr(self._lc, "llama_set_sampler"):
            return False
        sampler = self._sampler(opts)
        try:
            attached = bool(self._lc.llama_set_sampler(self.ctx, 0, sampler))
        finally:
            self._lc.llama_set_sampler(self.ctx, 0, None)
            self._lc.llama_sampler_free(sampler)
        if not attached:
            log.info("this llama.cpp build cannot sample on the backend; sampling on the CPU")
        return attached

    def generate(
        self,
        tokens: list[int],
        opts: InferOptions,
        on_text: Callable[[str], None] | None = None,
        backend: bool = False,
    ) -> RunMeasure:
        """One measured generation from an empty cache; `backend`: greedy sampling inside the decode graph."""
        lc = self._lc
        sampler = self._sampler(opts)
        if backend and not lc.llama_set_sampler(self.ctx, 0, sampler):
            lc.llama_sampler_free(sampler)
            raise RuntimeError("llama_set_sampler refused the greedy sampler it accepted before")
        if backend or self._graph_changed:
            self._prime()
        self._reset()
        stream = TextStream()
        out_ids: list[int] = []
        pieces: list[str] = []
        stop = "length"
        try:
            t0 = time.perf_counter()
            self._decode(tokens)
            t_prompt = time.perf_counter()
            tok = lc.llama_sampler_sample(sampler, self.ctx, -1)
            t_first = time.perf_counter()
            t_last = t_first
            decode_s = sample_s = 0.0
            decode_calls = 0
            while True:
                if lc.llama_vocab_is_eog(self.vocab, tok) and not opts.ignore_eos:
                    stop = "eos"
                    break
                out_ids.append(tok)
                text = stream.push(self.piece(tok))
                if text:
                    pieces.append(text)
                    if on_text is not None:
                        on_text(text)
                t_last = time.perf_counter()
                if len(out_ids) >= opts.max_tokens:
                    break
                arr = (lc.llama_token * 1)(tok)
                t_d = time.perf_counter()
                rc = lc.llama_decode(self.ctx, lc.llama_batch_get_one(arr, 1))
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")
                # The same window llama.cpp's t_eval covers: from the decode call to the end of the GPU work.
                lc.llama_synchronize(self.ctx)
                t_s = time.perf_counter()
                tok = lc.llama_sampler_sample(sampler, self.ctx, -1)
                t_e = time.perf_counter()
                decode_s += t_s - t_d
                sample_s += t_e - t_s
                decode_calls += 1
            t_end = time.perf_counter()
            tail = stream.close()
            if tail:
                pieces.append(tail)
                if on_text is not None:
                    on_text(tail)
            perf = lc.llama_perf_context(self.ctx)
        finally:
            if backend:
                lc.llama_set_sampler(self.ctx, 0, None)  # detached before it is freed
                self._graph_changed = True
            lc.llama_sampler_free(sampler)
        return RunMeasure(
            prompt_tokens=len(tokens),
            generated_tokens=len(out_ids),
            ttft_s=t_first - t0,
            prompt_s=t_prompt - t0,
            gen_s=t_last - t_first,
            total_s=t_end - t0,
            decode_s=decode_s,
            sample_s=sample_s,
            decode_calls=decode_calls,
            perf_prompt_ms=float(perf.t_p_eval_ms),
            perf_prompt_n=int(perf.n_p_eval),
            perf_gen_ms=float(perf.t_eval_ms),
            perf_gen_n=int(perf.n_eval),
            stop_reason=stop,
            token_ids=tuple(out_ids),
            text="".join(pieces),
        )

    def run(self, opts: InferOptions, on_text: Callable[[str], None] | None = None) -> InferenceResult:
        """Warm-up (streamed to the user), then `repeat` measured runs on the same tokens."""
        if opts.prompt_tokens:
            overflow = synthetic_prompt_overflow(
                opts.prompt_tokens, opts.max_tokens, self._asked_ctx, self.n_ctx, self.n_ctx_train
            )
            if overflow is not None:  # refused before a token is made
                raise overflow
            tokens = self.synthetic_prompt(opts.prompt_tokens)
            formatted, applied = "", False
            prompt = f"<{opts.prompt_tokens} synthetic tokens>"
        else:
            if not opts.prompt.strip():
                raise UsageError("prompt: empty prompt", fix="Pass a non-empty prompt (argument or --prompt).")
            formatted, applied = self.format_prompt(opts.prompt, opts.chat)
            tokens = self.tokenize(formatted)
            prompt = opts.prompt
        needed = len(tokens) + opts.max_tokens
        if needed > self.n_ctx:
            raise UsageError(
                f"--max-tokens {opts.max_tokens}: prompt ({len(tokens)} tokens) + max tokens = {needed} exceeds "
                f"{ctx_label(self._asked_ctx, self.n_ctx)}",
                fix=context_fix(len(tokens), opts.max_tokens, self.n_ctx, self.n_ctx_train),
            )
        backend = self.backend_sampling(opts)
        warm = self.generate(tokens, opts, on_text, backend) if opts.warmup else None
        runs: list[RunMeasure] = []
        cpu_runs: list[RunMeasure] = []
        for i in range(max(1, opts.repeat)):
            streamed = on_text if (warm is None and i == 0) else None
            runs.append(self.generate(tokens, opts, streamed, backend))
            if backend:  # alternated, so drift (clocks, heat) hits both figures alike
                cpu_runs.append(self.generate(tokens, opts))
        all_runs = ([warm] if warm else []) + runs + cpu_runs  # greedy on either side: the same tokens
        ref = all_runs[0].token_ids
        divergence = None
        for r in all_runs[1:]:
            if r.token_ids != ref:
                divergence = next(
                    (i for i, (a, b) in enumerate(zip(ref, r.token_ids, strict=False)) if a != b),
                    min(len(ref), len(r.token_ids)),
                )
                break
        deterministic = None if len(all_runs) < 2 else divergence is None
        return InferenceResult(
            prompt=prompt,
            formatted_prompt=formatted,
            chat_template_applied=applied,
            text=all_runs[0].text,
            runs=tuple(runs),
            warmup=warm,
            deterministic=deterministic,
            divergence=divergence,
            options=opts,
            sampling="backend" if backend else "cpu",
            cpu_sampled_runs=tuple(cpu_runs),
        )
