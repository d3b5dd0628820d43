"""What a synthetic model is: the shape a requested size asks for, and the exact bytes of its GGUF file.

An air-gapped CI runner cannot download a model, yet what we want to prove (the GPU loads N GB of
weights and runs the same matmul kernels at the same memory traffic as a real model) does not depend
on the weights meaning anything. So we choose a llama-architecture shape from the requested size,
fill it with small random weights that keep the forward pass finite, give it a byte-fallback
SentencePiece vocabulary that llama.cpp can tokenize any text with, and label it synthetic in its own
metadata so no report can mistake it for a real model.

Generation is I/O bound by design: random numbers are drawn once into a ~2 MiB pool per weight
type and tensors are streamed as rotations of it, so a 1 GiB model costs a fraction of a second
of CPU. Writing the stream to disk (cached, locked, atomic) is synthetic.py's job.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kcuda_validate.errors import UsageError

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
MIN_SIZE = 1 * MIB
MAX_SIZE = 64 * GIB

SYNTHETIC_TYPES = ("F16", "Q8_0", "Q4_0")

# Bump when the bytes a given (size, qtype, seed) produces change: old cache files then fail the header check.
GENERATOR_VERSION = 1

ARCH = "llama"
N_CTX_TRAIN = 4096
ALIGNMENT = 32
ROPE_FREQ_BASE = 10000.0
RMS_EPS = 1e-5

# ggml tensor type ids, llama_ftype (general.file_type) ids, and block geometry (elements, bytes).
_GGML_F32 = 0
_GGML_TYPE = {"F16": 1, "Q8_0": 8, "Q4_0": 2}
_FILE_TYPE = {"F16": 1, "Q8_0": 7, "Q4_0": 2}
_BLOCK = {"F16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18)}

# Vocabulary: the fixed part every synthetic model has, then generated pieces up to n_vocab.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_BYTE_TOKENS = 256
# Specials and raw bytes are never *generated*: their output rows are zero (see file_chunks), so greedy
# decoding never stops at EOS and never streams control bytes (terminal escapes) to the user's screen.
N_SILENT_TOKENS = len(SPECIAL_TOKENS) + N_BYTE_TOKENS
SPM_SPACE = "\u2581"  # SentencePiece's visible space
_PRINTABLE = tuple(chr(c) for c in range(0x21, 0x7F))
MIN_VOCAB = 512
NOMINAL_VOCAB = 32000
MAX_VOCAB = 49152
# llama token types (llama_token_type / gguf TokenType).
_TT_NORMAL, _TT_UNKNOWN, _TT_CONTROL, _TT_BYTE = 1, 2, 3, 6

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Random-number pool per weight type; tensors are block-aligned rotations of it.
_POOL_BYTES = 2 * MIB
# Weight standard deviation: the usual init scale, capped at 1/sqrt(n_embd) for wide models so each
# matmul keeps activations O(1) and the residual stream stays far from F16 overflow at any depth.
_WEIGHT_STD = 0.02
_CHUNK_BYTES = 4 * MIB

# GGUF metadata value types.
_T_U32, _T_I32, _T_F32, _T_BOOL, _T_STR, _T_ARR, _T_U64 = 4, 5, 6, 7, 8, 9, 10

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": KIB,
    "kib": KIB,
    "kb": 1000,
    "m": MIB,
    "mib": MIB,
    "mb": 1000**2,
    "g": GIB,
    "gib": GIB,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}
_SIZE_FORMS = "e.g. 1GiB, 512MiB, 300MB, 1.5G, 64M or a plain number of bytes"


def parse_size(text: str) -> int:
    """A human size for --synthetic in bytes; bare K/M/G are binary (like `dd`), KB/MB/GB decimal.

    Rejects sizes outside 1 MiB..64 GiB: smaller cannot hold a llama layer plus vocabulary, larger
    is almost certainly a typo that would fill the disk. Errors name the option, as every usage error does.
    """
    m = _SIZE_RE.match(str(text))
    if m is None or m.group(2).lower() not in _UNITS:
        raise UsageError(
            f"--synthetic {_shown(text)}: not a size: expected a number with an optional unit ({_SIZE_FORMS})",
            fix="Pass a size such as --synthetic 1GiB.",
        )
    n = round(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if not MIN_SIZE <= n <= MAX_SIZE:
        raise _out_of_range(f"--synthetic {_shown(text)}: {n} bytes")
    return n


def _shown(text: str) -> str:
    """The value as the user typed it; quoted when it is empty or has spaces, so the message is unambiguous."""
    text = str(text)
    return text if text and not any(c.isspace() for c in text) and text.isprintable() else repr(text)


def _out_of_range(what: str) -> UsageError:
    return UsageError(
        f"{what} is out of range: a synthetic model must be between 1MiB and 64GiB",
        fix="Pick a size between 1MiB and 64GiB, e.g. --synthetic 1GiB.",
    )


def format_size(n: int) -> str:
    """The shortest exact label for a byte count (1GiB, 1536MiB, 300000000B): used in file names."""
    for unit, mult in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic model's bytes: the request plus the shape derived from it."""

    size_bytes: int
    qtype: str
    seed: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int = N_CTX_TRAIN

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def size_label(self) -> str:
        return format_size(self.size_bytes)

    @property
    def name(self) -> str:
        """general.name: says "synthetic" wherever a tool shows the model's name."""
        return f"kcuda synthetic {ARCH} {self.size_label} {self.qtype}"

    @property
    def file_name(self) -> str:
        return f"synthetic-{ARCH}-{self.size_label}-{self.qtype}-s{self.seed}.gguf"

    @property
    def parameter_count(self) -> int:
        return sum(_n_elements(ne) for _, ne, _ in _tensor_list(self))

    @property
    def tensor_bytes(self) -> int:
        """Bytes of tensor data (with GGUF alignment padding); what `plan` aims at the requested size."""
        return self._vocab_bytes + self.n_layer * self._layer_bytes

    @property
    def _layer_bytes(self) -> int:
        # Closed form of _tensor_list's per-block tensors: plan() evaluates thousands of shapes.
        e, q, kv = self.n_embd, self.qtype, self.n_head_kv * self.head_dim
        mat = _padded(_nbytes((e, e), q)) * 2 + _padded(_nbytes((e, kv), q)) * 2
        return 2 * _padded(4 * e) + mat + 3 * _padded(_nbytes((e, self.n_ff), q))

    @property
    def _vocab_bytes(self) -> int:
        """token_embd + output + output_norm: the part that does not scale with depth."""
        return 2 * _padded(_nbytes((self.n_embd, self.n_vocab), self.qtype)) + _padded(4 * self.n_embd)

    @property
    def file_size(self) -> int:
        return len(header_bytes(self)) + self.tensor_bytes


# Candidate widths (n_embd): multiples of the head dim, from toy models up to 405B-class.
_NARROW = (128, 192, 256, 320, 384, 448, 512, 576, 640, 768, 896, 1024, 1280, 1536, 1792)
_WIDE = (2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384)
_WIDTHS = _NARROW + _WIDE


def plan(size_bytes: int, qtype: str = "Q8_0", seed: int = 0) -> SyntheticSpec:
    """Choose a realistic llama shape whose tensor data is as close as possible to `size_bytes`.

    Real llamas keep n_layer ≈ n_embd/128 (7B: 4096/32, 1B: 2048/16), head dim 64 (small) or 128,
    n_ff ≈ 2.69·n_embd and 4:1 grouped-query attention once there are enough heads. For each width we
    take the layer counts around the budget and let the vocabulary (±50% of nominal, multiples of 64)
    absorb the remainder, then keep the shape that is closest in size and then in proportions.
    """
    qtype = _check_qtype(qtype)
    _check_seed(seed)
    if not MIN_SIZE <= size_bytes <= MAX_SIZE:
        raise _out_of_range(f"--synthetic {size_bytes} bytes")
    best: tuple[tuple[bool, float, float], SyntheticSpec] | None = None
    for n_embd in _WIDTHS:
        head_dim = 64 if n_embd < 2048 else 128
        n_head = n_embd // head_dim
        n_head_kv = n_head // 4 if n_head >= 8 and n_head % 4 == 0 else n_head
        n_ff = max(256, int(n_embd * 2.6875 / 256 + 0.5) * 256)
        shape = dict(n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff)
        row = _nbytes((n_embd,), qtype)  # one vocabulary row, in token_embd and in output
        nominal = max(MIN_VOCAB, min(NOMINAL_VOCAB, size_bytes // 4 // (2 * row) // 64 * 64))
        lo, hi = max(MIN_VOCAB, nominal // 2 // 64 * 64), min(MAX_VOCAB, nominal * 3 // 2 // 64 * 64)
        probe = SyntheticSpec(size_bytes, qtype, seed, n_layer=1, n_vocab=nominal, **shape)
        per_layer = probe._layer_bytes
        ideal = (size_bytes - probe._vocab_bytes) / per_layer
        for n_layer in sorted({max(1, math.floor(ideal)), max(1, math.ceil(ideal))}):
            rest = size_bytes - per_layer * n_layer - _padded(4 * n_embd)
            n_vocab = min(hi, max(lo, int(rest / (2 * row) / 64 + 0.5) * 64))
            spec = SyntheticSpec(size_bytes, qtype, seed, n_layer=n_layer, n_vocab=n_vocab, **shape)
            error = abs(spec.tensor_bytes - size_bytes) / size_bytes
            aspect = abs(math.log(n_layer / max(2.0, n_embd / 128)))
            key = (error > 0.01, aspect, error)
            if best is None or key < best[0]:
                best = (key, spec)
    assert best is not None
    return best[1]


def _check_qtype(qtype: str) -> str:
    if qtype not in SYNTHETIC_TYPES:
        raise UsageError(
            f"--synthetic-type {_shown(qtype)}: not supported (choose one of {', '.join(SYNTHETIC_TYPES)})",
            fix="Pass --synthetic-type F16, Q8_0 or Q4_0.",
        )
    return qtype


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed < 1 << 63:
        raise UsageError(f"synthetic seed {seed!r} must be an integer from 0 to 2**63-1")


# -- tensors --------------------------------------------------------------------------------------------


def _tensor_list(spec: SyntheticSpec) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, ggml shape ne0-first, type) in file order: llama.cpp's LLM_ARCH_LLAMA tensor names."""
    e, q, kv, ff, v = spec.n_embd, spec.qtype, spec.n_head_kv * spec.head_dim, spec.n_ff, spec.n_vocab
    out: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (e, v), q)]
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (e,), "F32"),
            (b + "attn_q.weight", (e, e), q),
            (b + "attn_k.weight", (e, kv), q),
            (b + "attn_v.weight", (e, kv), q),
            (b + "attn_output.weight", (e, e), q),
            (b + "ffn_norm.weight", (e,), "F32"),
            (b + "ffn_gate.weight", (e, ff), q),
            (b + "ffn_up.weight", (e, ff), q),
            (b + "ffn_down.weight", (ff, e), q),
        ]
    out += [("output_norm.weight", (e,), "F32"), ("output.weight", (e, v), q)]
    return out


def _n_elements(ne: tuple[int, ...]) -> int:
    n = 1
    for d in ne:
        n *= d
    return n


def _nbytes(ne: tuple[int, ...], ttype: str) -> int:
    if ttype == "F32":
        return 4 * _n_elements(ne)
    elems, size = _BLOCK[ttype]
    return _n_elements(ne) // elems * size


def _padded(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


# -- vocabulary -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _vocab(n_vocab: int) -> tuple[tuple[bytes, ...], tuple[float, ...], tuple[int, ...]]:
    """A byte-fallback SentencePiece vocabulary: any UTF-8 text tokenizes, and generated text is readable.

    Layout (llama's): <unk> <s> </s>, the ChatML markers as control tokens, the 256 byte tokens
    <0x00>..<0xFF>, then "▁", the printable ASCII characters, and lowercase n-grams with and without a
    leading "▁" (every prefix of a piece is also a piece, so SPM's pairwise merges can reach it).
    """
    tokens: list[str] = list(SPECIAL_TOKENS)
    types = [_TT_UNKNOWN] + [_TT_CONTROL] * (len(SPECIAL_TOKENS) - 1)
    tokens += [f"<0x{b:02X}>" for b in range(N_BYTE_TOKENS)]
    types += [_TT_BYTE] * N_BYTE_TOKENS
    scores = [0.0] * len(tokens)

    def pieces() -> Iterator[str]:
        yield SPM_SPACE
        yield from _PRINTABLE
        letters = "abcdefghijklmnopqrstuvwxyz"
        yield from (SPM_SPACE + c for c in letters)
        for n in itertools.count(2):
            for combo in itertools.product(letters, repeat=n):
                yield "".join(combo)
            for combo in itertools.product(letters, repeat=n):
                yield SPM_SPACE + "".join(combo)

    for rank, piece in enumerate(itertools.islice(pieces(), n_vocab - len(tokens))):
        tokens.append(piece)
        types.append(_TT_NORMAL)
        scores.append(-float(rank))  # SPM merges the highest score first: shorter pieces are "more frequent"
    return tuple(t.encode() for t in tokens), tuple(scores), tuple(types)


# -- GGUF header ----------------------------------------------------------------------------------------


def _kv_bytes(key: str, vtype: int, value: Any) -> bytes:
    return _str(key) + struct.pack("<I", vtype) + _value(vtype, value)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


_SCALAR_FMT = {_T_U32: "<I", _T_I32: "<i", _T_F32: "<f", _T_BOOL: "<?", _T_U64: "<Q"}


def _value(vtype: int, value: Any) -> bytes:
    if vtype == _T_STR:
        return _str(value)
    if vtype == _T_ARR:
        etype, items = value
        head = struct.pack("<IQ", etype, len(items))
        if etype == _T_STR:
            return head + b"".join(_str(s) for s in items)
        return head + struct.pack(f"<{len(items)}{_SCALAR_FMT[etype][1]}", *items)
    return struct.pack(_SCALAR_FMT[vtype], value)


@functools.lru_cache(maxsize=16)
def header_bytes(spec: SyntheticSpec) -> bytes:
    """Magic, metadata and tensor table, zero-padded to the data section: deterministic for a spec."""
    tokens, scores, types = _vocab(spec.n_vocab)
    a = f"{ARCH}."
    kvs = [
        ("general.architecture", _T_STR, ARCH),
        ("general.name", _T_STR, spec.name),
        ("general.file_type", _T_U32, _FILE_TYPE[spec.qtype]),
        ("general.alignment", _T_U32, ALIGNMENT),
        ("general.description", _T_STR, "Random weights generated by kcuda-validate: text is meaningless."),
        ("kcuda.synthetic", _T_BOOL, True),
        ("kcuda.synthetic.seed", _T_U64, spec.seed),
        ("kcuda.synthetic.requested_size", _T_U64, spec.size_bytes),
        ("kcuda.synthetic.qtype", _T_STR, spec.qtype),
        ("kcuda.synthetic.generator_version", _T_U32, GENERATOR_VERSION),
        (a + "vocab_size", _T_U32, spec.n_vocab),
        (a + "context_length", _T_U32, spec.n_ctx_train),
        (a + "embedding_length", _T_U32, spec.n_embd),
        (a + "block_count", _T_U32, spec.n_layer),
        (a + "feed_forward_length", _T_U32, spec.n_ff),
        (a + "attention.head_count", _T_U32, spec.n_head),
        (a + "attention.head_count_kv", _T_U32, spec.n_head_kv),
        (a + "attention.layer_norm_rms_epsilon", _T_F32, RMS_EPS),
        (a + "rope.dimension_count", _T_U32, spec.head_dim),
        (a + "rope.freq_base", _T_F32, ROPE_FREQ_BASE),
        ("tokenizer.ggml.model", _T_STR, "llama"),
        ("tokenizer.ggml.tokens", _T_ARR, (_T_STR, tokens)),
        ("tokenizer.ggml.scores", _T_ARR, (_T_F32, scores)),
        ("tokenizer.ggml.token_type", _T_ARR, (_T_I32, types)),
        ("tokenizer.ggml.unknown_token_id", _T_U32, UNK_ID),
        ("tokenizer.ggml.bos_token_id", _T_U32, BOS_ID),
        ("tokenizer.ggml.eos_token_id", _T_U32, EOS_ID),
        ("tokenizer.ggml.add_bos_token", _T_BOOL, True),
        ("tokenizer.ggml.add_eos_token", _T_BOOL, False),
        ("tokenizer.chat_template", _T_STR, CHAT_TEMPLATE),
    ]
    tensors = _tensor_list(spec)
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    parts += [_kv_bytes(*kv) for kv in kvs]
    offset = 0
    for name, ne, ttype in tensors:
        gtype = _GGML_F32 if ttype == "F32" else _GGML_TYPE[ttype]
        parts.append(_str(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, gtype, offset))
        offset += _padded(_nbytes(ne, ttype))
    head = b"".join(parts)
    return head + b"\0" * (_padded(len(head)) - len(head))


# -- tensor data ----------------------------------------------------------------------------------------


def _pool(qtype: str, seed: int, std: float) -> bytes:
    """~2 MiB of valid, finite blocks of `qtype` with weight std ≈ `std`, deterministic from the seed."""
    import numpy as np

    rng = np.random.default_rng([seed, _GGML_TYPE[qtype], GENERATOR_VERSION])
    elems, size = _BLOCK[qtype]
    n_blocks = _POOL_BYTES // size
    if qtype == "F16":
        return (rng.standard_normal(n_blocks, dtype=np.float32) * std).astype("<f2").tobytes()
    # Real quantizers pick d = max|x| / qmax per block; we draw d near the value giving `std`.
    if qtype == "Q8_0":
        q_std = 40.0
        q = np.clip(np.rint(rng.standard_normal((n_blocks, elems), dtype=np.float32) * q_std), -127, 127)
        blocks = np.empty(n_blocks, dtype=[("d", "<f2"), ("qs", "i1", (elems,))])
        blocks["qs"] = q.astype(np.int8)
    else:  # Q4_0: x = (nibble - 8) * d; byte j holds element j (low nibble) and j + 16 (high nibble)
        q_std = 3.0
        q = np.clip(np.rint(rng.standard_normal((n_blocks, elems), dtype=np.float32) * q_std + 8), 0, 15)
        q = q.astype(np.uint8)
        blocks = np.empty(n_blocks, dtype=[("d", "<f2"), ("qs", "u1", (elems // 2,))])
        blocks["qs"] = q[:, : elems // 2] | (q[:, elems // 2 :] << 4)
    blocks["d"] = rng.uniform(0.75, 1.25, n_blocks).astype(np.float32) * (std / q_std)
    assert blocks.itemsize == size
    return blocks.tobytes()


def file_chunks(spec: SyntheticSpec) -> Iterator[bytes | memoryview]:
    """The whole file as a stream of buffers (header, then each tensor padded), none over _CHUNK_BYTES."""
    import numpy as np

    yield header_bytes(spec)
    pool = memoryview(_pool(spec.qtype, spec.seed, min(_WEIGHT_STD, spec.n_embd**-0.5)))
    block_bytes = _BLOCK[spec.qtype][1]
    n_pool_blocks = len(pool) // block_bytes
    zeros = memoryview(bytes(_CHUNK_BYTES))
    for index, (name, ne, ttype) in enumerate(_tensor_list(spec)):
        nbytes = _nbytes(ne, ttype)
        if ttype == "F32":  # RMS-norm weights: 1.0, as at initialisation
            yield np.ones(_n_elements(ne), dtype="<f4").tobytes()
        else:
            silent = 0
            if name == "output.weight":  # zero logits for specials and raw bytes (see N_SILENT_TOKENS)
                silent = N_SILENT_TOKENS * _nbytes((ne[0],), ttype)
                yield from _repeat(zeros, silent)
            # A different block-aligned rotation of the pool per tensor, so layers are not copies.
            start = (index * 2654435761) % n_pool_blocks * block_bytes
            yield from _repeat(pool, nbytes - silent, start)
        pad = _padded(nbytes) - nbytes
        if pad:
            yield zeros[:pad]


def _repeat(buf: memoryview, n: int, start: int = 0) -> Iterator[memoryview]:
    """n bytes of `buf` read cyclically from `start`, as zero-copy slices."""
    pos = start
    while n > 0:
        take = min(n, len(buf) - pos, _CHUNK_BYTES)
        yield buf[pos : pos + take]
        n -= take
        pos = (pos + take) % len(buf)
