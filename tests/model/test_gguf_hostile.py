"""A GGUF header is untrusted input (models come from the Hub): crafted headers that claim anything.

Every file here is real bytes written to tmp_path and parsed by the real reader (and, for a few, by the real CLI).
Each claim that is implausible, ill-typed or contradicts the file or the rest of the header must be exit 5 naming
the file and the field, at once and in bounded memory: never a RecursionError, OverflowError, TypeError (exit 70),
an endless fit estimate, or memory in proportion to the header.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from kcuda_validate.checks import Status
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode, ModelInvalidError
from kcuda_validate.llm.loader import LoadOptions
from kcuda_validate.model import fit
from kcuda_validate.model.gguf_file import (
    MAX_ARRAY_NUMBERS,
    MAX_ARRAY_STRINGS,
    MAX_LAYERS,
    MAX_TEMPLATE_BYTES,
    read_gguf,
)
from kcuda_validate.model.gguf_info import GgufHeaderError, GgufInfo, TensorInfo

# GGUF metadata value types and ggml tensor types used below.
U8, U32, I32, F32, BOOL, STR, ARR, U64 = 0, 4, 5, 6, 7, 8, 9, 10
GGML_F32, GGML_Q8_0 = 0, 8
MIB = 1 << 20


# -- a tiny GGUF writer ------------------------------------------------------------------------------------------


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    """One metadata pair; `payload` is the value's bytes exactly as the file holds them."""
    return s(key) + struct.pack("<I", vtype) + payload


def u32(key: str, v: int) -> bytes:
    return kv(key, U32, struct.pack("<I", v))


def text(key: str, v: str) -> bytes:
    return kv(key, STR, s(v))


def arr(key: str, etype: int, items: list[int]) -> bytes:
    fmt = {U8: "B", U32: "I", I32: "i"}[etype]
    return kv(key, ARR, struct.pack("<IQ", etype, len(items)) + struct.pack(f"<{len(items)}{fmt}", *items))


def tensor(name: str | bytes, shape: tuple[int, ...], ggml_type: int = GGML_F32, offset: int = 0) -> bytes:
    return s(name) + struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape, ggml_type, offset)


BASE_KV = [
    text("general.architecture", "llama"),
    text("general.name", "crafted"),
    u32("llama.context_length", 4096),
    u32("llama.block_count", 1),
    u32("llama.embedding_length", 8),
    u32("llama.attention.head_count", 2),
]
# Two F32 tensors of 8 elements (32 bytes each), back to back in the data section.
BASE_TENSORS = [tensor("blk.0.attn_norm.weight", (8,), offset=0), tensor("output_norm.weight", (8,), offset=32)]


def gguf(
    kvs: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    *,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    data: int = 64,
) -> bytes:
    """Header, metadata, tensor table, padding to 32 and `data` zero bytes of tensor data."""
    kvs = BASE_KV if kvs is None else kvs
    tensors = BASE_TENSORS if tensors is None else tensors
    counts = struct.pack(
        "<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    head = b"GGUF" + counts + b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * ((-len(head)) % 32 + data)


def replace(kvs: list[bytes], key: str, new: bytes | None) -> list[bytes]:
    """BASE_KV with `key`'s pair swapped for `new` (or dropped)."""
    out = [b for b in kvs if not b.startswith(s(key))]
    return out + ([new] if new is not None else [])


@pytest.fixture
def write(tmp_path: Path) -> Callable[[bytes], Path]:
    def _write(content: bytes) -> Path:
        p = tmp_path / "crafted.gguf"
        p.write_bytes(content)
        return p

    return _write


def test_the_crafted_base_file_is_valid(write: Callable[[bytes], Path]) -> None:
    info = read_gguf(write(gguf()))
    assert (info.architecture, info.context_length, info.block_count, len(info.tensors)) == ("llama", 4096, 1, 2)


# -- every implausible or ill-typed claim: exit 5 naming the file and the field ---------------------------------

HUGE = 1 << 63
CASES: dict[str, tuple[bytes, str, str]] = {
    # Types of the hyperparameters the report and the fit estimate read.
    "context length as a string": (
        gguf(replace(BASE_KV, "llama.context_length", text("llama.context_length", "4096"))),
        "llama.context_length",
        "the string '4096' where an unsigned integer is expected",
    ),
    "head count as a float": (
        gguf(replace(BASE_KV, "llama.attention.head_count", kv("llama.attention.head_count", F32, b"\0\0\0@"))),
        "llama.attention.head_count",
        "the float 2.0 where an unsigned integer (or one per layer, each up to 16777216) is expected",
    ),
    "negative embedding length": (
        gguf(replace(BASE_KV, "llama.embedding_length", kv("llama.embedding_length", I32, struct.pack("<i", -8)))),
        "llama.embedding_length",
        "-8 is out of range (expected 0..16777216)",
    ),
    "alignment as a string": (
        gguf([*BASE_KV, text("general.alignment", "32")]),
        "general.alignment",
        "the string '32' where a power of two is expected",
    ),
    "architecture as a number": (
        gguf(replace(BASE_KV, "general.architecture", u32("general.architecture", 7))),
        "general.architecture",
        "7 where text of at most 64 characters is expected",
    ),
    "synthetic flag as a string": (
        gguf([*BASE_KV, text("kcuda.synthetic", "false")]),
        "kcuda.synthetic",
        "the string 'false' where a boolean is expected",
    ),
    "vocabulary of numbers": (
        gguf([*BASE_KV, arr("tokenizer.ggml.tokens", U32, [1, 2, 3])]),
        "tokenizer.ggml.tokens",
        "an array of 3 values where an array of strings is expected",
    ),
    # The layer count: llama.cpp aborts (GGML_ASSERT) past 512, and every layer needs a tensor.
    "huge block_count": (
        gguf(replace(BASE_KV, "llama.block_count", u32("llama.block_count", 0xFFFFFFFF))),
        "llama.block_count",
        f"4294967295 is out of range (expected 1..{MAX_LAYERS})",
    ),
    "more layers than tensors": (
        gguf(replace(BASE_KV, "llama.block_count", u32("llama.block_count", 500))),
        "llama.block_count",
        "500 layers but the file has only 2 tensors (at least one per layer)",
    ),
    "per-layer array of the wrong length": (
        gguf([*BASE_KV, arr("llama.attention.head_count_kv", U32, [1, 1, 1])]),
        "llama.attention.head_count_kv",
        "3 per-layer values but block_count is 1",
    ),
    "per-layer array longer than any model": (
        gguf([*BASE_KV, arr("llama.feed_forward_length", U32, [1] * 600)]),
        "llama.feed_forward_length",
        "an array of 600 uint32 values (one per layer expected, at most 512 layers)",
    ),
    # Tensor names against the layer count.
    "tensor named blk.x": (
        gguf(tensors=[tensor("blk.x.attn_norm.weight", (8,)), BASE_TENSORS[1]]),
        "tensor 'blk.x.attn_norm.weight'",
        "layer index 'x' is not a number (blk.<layer>.<name>)",
    ),
    "tensor in a layer that does not exist": (
        gguf(tensors=[tensor("blk.7.attn_norm.weight", (8,)), BASE_TENSORS[1]]),
        "tensor 'blk.7.attn_norm.weight'",
        "layer 7 does not exist (llama.block_count is 1)",
    ),
    # Strings and arrays: lengths, element types, nesting.
    "string length 2**63": (
        gguf(replace(BASE_KV, "general.name", kv("general.name", STR, struct.pack("<Q", HUGE) + b"x"))),
        "general.name",
        f"a string of {HUGE} bytes (at most 67108864 expected)",
    ),
    "string length 2**63 inside a long string array": (
        gguf(
            [
                *BASE_KV,
                kv(
                    "tokenizer.ggml.tokens",
                    ARR,
                    struct.pack("<IQ", STR, 100) + s("a") * 50 + struct.pack("<Q", HUGE) + s("b") * 49,
                ),
            ]
        ),
        "tokenizer.ggml.tokens[50]",
        f"a string of {HUGE} bytes (at most 67108864 expected)",
    ),
    "array of arrays": (
        gguf([*BASE_KV, kv("x.nested", ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", U8, 1) + b"\1")]),
        "x.nested",
        "an array of arrays (GGUF readers, llama.cpp's included, take no nested arrays)",
    ),
    "arrays nested 100000 deep": (
        gguf([*BASE_KV, kv("x.deep", ARR, struct.pack("<IQ", ARR, 1) * 100_000 + struct.pack("<IQ", U8, 0))]),
        "x.deep",
        "an array of arrays (GGUF readers, llama.cpp's included, take no nested arrays)",
    ),
    "unknown value type": (
        gguf([*BASE_KV, kv("x.odd", 13, b"\0" * 8)]),
        "x.odd",
        "unknown value type 13",
    ),
    "array of 2**40 bytes": (
        gguf([*BASE_KV, kv("x.big", ARR, struct.pack("<IQ", U8, 1 << 40))]),
        "x.big",
        "an array of 1099511627776 elements (at most 1073741824 expected)",
    ),
    "more strings than any vocabulary": (
        gguf([*BASE_KV, kv("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, MAX_ARRAY_STRINGS + 1))]),
        "tokenizer.ggml.tokens",
        f"{MAX_ARRAY_STRINGS + 1} strings take the header past {MAX_ARRAY_STRINGS} strings in arrays (implausible)",
    ),
    "more numbers than any vocabulary": (
        gguf([*BASE_KV, kv("x.numbers", ARR, struct.pack("<IQ", U8, MAX_ARRAY_NUMBERS + 1))]),
        "x.numbers",
        f"{MAX_ARRAY_NUMBERS + 1} numbers take the header past {MAX_ARRAY_NUMBERS} numbers in arrays (implausible)",
    ),
    # Floats llama.cpp uses unchecked: ggml aborts on a negative or NaN epsilon; a rope base of 0 makes NaN logits.
    "negative norm epsilon": (
        gguf([*BASE_KV, kv("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", -1.0))]),
        "llama.attention.layer_norm_rms_epsilon",
        "the float -1.0 where a finite number, 0 or more is expected",
    ),
    "NaN norm epsilon": (
        gguf([*BASE_KV, kv("llama.attention.layer_norm_epsilon", F32, struct.pack("<f", float("nan")))]),
        "llama.attention.layer_norm_epsilon",
        "the float nan where a finite number, 0 or more is expected",
    ),
    "rope base 0": (
        gguf([*BASE_KV, kv("llama.rope.freq_base", F32, struct.pack("<f", 0.0))]),
        "llama.rope.freq_base",
        "the float 0.0 where a finite number above 0 is expected",
    ),
    "rope base as a string": (
        gguf([*BASE_KV, text("llama.rope.freq_base_swa", "1e4")]),
        "llama.rope.freq_base_swa",
        "the string '1e4' where a finite number above 0 is expected",
    ),
    "duplicate key": (
        gguf([*BASE_KV, u32("llama.context_length", 8)]),
        "llama.context_length",
        "the key appears twice",
    ),
    "overlong key": (
        gguf([*BASE_KV, u32("k" * 300, 1)]),
        "metadata key #6",
        "a string of 300 bytes (at most 256 expected)",
    ),
    # Counts against the caps and against the file size.
    "2**40 tensors": (gguf(n_tensors=1 << 40), "tensor_count", "1099511627776 (at most 65536 expected)"),
    "2**20 keys": (gguf(n_kv=1 << 20), "metadata_kv_count", "1048576 (at most 65536 expected)"),
    "more tensors than the file can hold": (
        gguf(n_tensors=60_000),
        "tensor_count, metadata_kv_count",
        "60000 tensors and 6 keys need at least 1440084 more bytes, but the file has",
    ),
    # Tensor entries: names, dimensions, types, shapes, placement.
    "tensor name of 64 bytes": (
        gguf(tensors=[tensor("t" * 64, (8,)), BASE_TENSORS[1]]),
        "tensor #0 name",
        "a string of 64 bytes (at most 63 expected)",
    ),
    "duplicate tensor name": (
        gguf(tensors=[BASE_TENSORS[0], tensor("blk.0.attn_norm.weight", (8,), offset=32)]),
        "tensor 'blk.0.attn_norm.weight'",
        "the name appears twice",
    ),
    "five dimensions": (
        gguf(tensors=[tensor("blk.0.attn_norm.weight", (8, 1, 1, 1, 1)), BASE_TENSORS[1]]),
        "tensor 'blk.0.attn_norm.weight'",
        "5 dimensions (GGML allows at most 4)",
    ),
    "dimension of 2**63": (
        gguf(tensors=[tensor("blk.0.attn_norm.weight", (HUGE,)), BASE_TENSORS[1]]),
        "tensor 'blk.0.attn_norm.weight'",
        f"dimension 0 is {HUGE} (more than 2**63 - 1 elements)",
    ),
    "element count past int64": (
        gguf(tensors=[tensor("blk.0.attn_norm.weight", (1 << 32, 1 << 32)), BASE_TENSORS[1]]),
        "tensor 'blk.0.attn_norm.weight'",
        "shape [4294967296, 4294967296] has 18446744073709551616 elements (more than 2**63 - 1)",
    ),
    "unknown ggml type": (
        gguf(tensors=[tensor("blk.0.attn_norm.weight", (8,), ggml_type=99), BASE_TENSORS[1]]),
        "tensor 'blk.0.attn_norm.weight'",
        "unknown ggml type 99",
    ),
    "row not a multiple of the block": (
        gguf(tensors=[tensor("blk.0.attn_norm.weight", (8, 4), ggml_type=GGML_Q8_0), BASE_TENSORS[1]]),
        "tensor 'blk.0.attn_norm.weight'",
        "rows of 8 elements are not a multiple of the Q8_0 block size 32",
    ),
    "overlapping tensors": (
        gguf(tensors=[BASE_TENSORS[0], tensor("output_norm.weight", (8,), offset=0)]),
        "tensor 'output_norm.weight'",
        "its data (offset 0) overlaps tensor 'blk.0.attn_norm.weight' (offset 0, 32 bytes)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_implausible_or_ill_typed_header_names_the_file_and_the_field(
    case: str, write: Callable[[bytes], Path]
) -> None:
    content, field, problem = CASES[case]
    p = write(content)
    with pytest.raises(GgufHeaderError) as err:
        read_gguf(p)
    assert err.value.exit_code == ExitCode.MODEL_INVALID
    assert err.value.field == field
    assert err.value.message.startswith(f"{p}: invalid GGUF header: {field}: {problem}"), err.value.message
    assert err.value.fix and "Re-download or re-convert" in err.value.fix


@pytest.mark.parametrize(
    ("key", "size"),
    [("tokenizer.chat_template", MAX_TEMPLATE_BYTES + 1), ("tokenizer.chat_template.tool_use", 2 * MIB)],
)
def test_a_chat_template_too_long_to_compile_quickly_is_refused_with_the_editor_command(
    key: str, size: int, write: Callable[[bytes], Path]
) -> None:
    """llama-cpp-python compiles every header template with Jinja2 at load, used or not: a 3.5 MB one took 24 s and
    1.9 GB in the worker. The fix is gguf's own editor, which ships with this tool. (2 MiB is past what the reader
    keeps, so that one is judged by its length alone.)"""
    p = write(gguf([*BASE_KV, text(key, "{% if x %}a{% endif %}" * (size // 22) + "b" * (size % 22))]))
    with pytest.raises(GgufHeaderError) as err:
        read_gguf(p)
    assert (err.value.field, err.value.exit_code) == (key, ExitCode.MODEL_INVALID)
    assert err.value.message == (
        f"{p}: invalid GGUF header: {key}: a chat template of {size:,} bytes (real ones are under 256 KiB; "
        "llama-cpp-python compiles it at load, in time and memory that grow with it)"
    )
    assert err.value.fix == (
        "Replace or drop the template with gguf's own editor, installed with this tool: gguf-new-metadata "
        f"--remove-metadata {key} IN.gguf OUT.gguf (or --chat-template-file FILE.jinja), or use another file."
    )


def test_a_chat_template_of_the_largest_allowed_size_reads(write: Callable[[bytes], Path]) -> None:
    p = write(gguf([*BASE_KV, text("tokenizer.chat_template", "x" * MAX_TEMPLATE_BYTES)]))
    assert read_gguf(p).metadata["tokenizer.chat_template"] == "x" * MAX_TEMPLATE_BYTES


def test_a_claim_that_runs_past_the_end_is_truncation_naming_the_field(write: Callable[[bytes], Path]) -> None:
    # 1000 uint32 values promised, 8 bytes there: what a short download looks like in the middle of the metadata.
    content = gguf([*BASE_KV, kv("llama.rope.dimension_sections", ARR, struct.pack("<IQ", U32, 1000) + b"\0" * 8)])
    p = write(content[: len(content) - len(gguf([])) + 100])
    with pytest.raises(ModelInvalidError) as err:
        read_gguf(p)
    size = p.stat().st_size
    assert err.value.message == (
        f"{p}: GGUF header is truncated ({size} bytes): llama.rope.dimension_sections runs past the end of the file"
    )
    assert err.value.exit_code == ExitCode.MODEL_INVALID


# -- bounded work and memory whatever the header says -----------------------------------------------------------


# Reads one file in a fresh interpreter and prints what happened and the process's peak RSS: the figure the issue
# measured (871 MB for a 98 MB header), without tracemalloc, which slows this reader ~10x.
_READ_AND_MEASURE = """
import sys
from kcuda_validate.model.gguf_file import read_gguf
try:
    info = read_gguf(sys.argv[1])
    info.summary()
    outcome = f"ok {len(info.metadata)} keys"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(outcome)
with open("/proc/self/status") as fh:  # VmHWM: this interpreter's peak RSS (ru_maxrss keeps the forked parent's)
    print(next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmHWM:")))
"""


def _read_in_child(p: Path) -> tuple[str, int]:
    """(outcome, peak RSS in MiB) of reading `p`; the RSS includes the pages of the header the reader maps."""
    out = subprocess.run(
        [sys.executable, "-c", _READ_AND_MEASURE, str(p)], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    return out[0], int(out[1])


def test_a_98_mb_header_of_small_arrays_is_read_in_bounded_memory(write: Callable[[bytes], Path]) -> None:
    """Short arrays are kept only up to a budget for the whole header, the rest summarised after a bounded skip:
    memory does not follow the header's size (the reader before this kept every array of up to 64 values)."""
    strings = struct.pack("<IQ", STR, 32) + s("a-string-of-twenty-four-") * 32
    numbers = struct.pack("<IQ", U64, 256) + b"\1\0\0\0\0\0\0\0" * 256
    n_keys = 65_000
    pairs = [*BASE_KV] + [kv(f"x.a{i}", ARR, strings if i % 2 else numbers) for i in range(n_keys)]
    p = write(gguf(pairs))
    assert p.stat().st_size > 98_000_000
    outcome, peak_mib = _read_in_child(p)
    assert outcome == f"ok {n_keys + len(BASE_KV)} keys"
    assert peak_mib < 300, peak_mib  # ~100 MB of it is the mapped header itself


def test_a_98_mb_header_of_nested_arrays_is_refused_at_its_first_array(write: Callable[[bytes], Path]) -> None:
    """Seen: a 98 MB header of small nested arrays took 871 MB of RAM. GGUF readers (llama.cpp's included) take
    no arrays of arrays, so the first one is the answer: no recursion, nothing materialised."""
    inner = struct.pack("<IQ", U8, 64) + bytes(range(64))
    middle = struct.pack("<IQ", ARR, 64) + inner * 64
    outer = struct.pack("<IQ", ARR, 64) + middle * 64  # 64 x 64 x 64 values in ~300 KB
    pairs = [*BASE_KV] + [kv(f"x.n{i}", ARR, outer) for i in range(330)]
    p = write(gguf(pairs))
    assert p.stat().st_size > 98_000_000
    outcome, peak_mib = _read_in_child(p)
    assert outcome == (
        f"GgufHeaderError: {p}: invalid GGUF header: x.n0: an array of arrays (GGUF readers, llama.cpp's included, "
        "take no nested arrays)"
    )
    assert peak_mib < 300, peak_mib


def test_fit_estimate_is_bounded_whatever_the_layer_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen: a huge block_count looped the fit estimate. read_gguf caps it at 512 now, but the estimate must also
    stay bounded on its own: binary searches, and layer sums over the layers that have tensors."""
    info = GgufInfo(
        Path("x.gguf"),
        10 * MIB,
        3,
        32,
        1024,
        {
            "general.architecture": "llama",
            "llama.block_count": 1 << 40,
            "llama.context_length": 1 << 32,
            "llama.embedding_length": 4096,
            "llama.attention.head_count": 32,
        },
        (TensorInfo("blk.0.attn_q.weight", (4096, 4096), 0, 0, 64 * MIB), TensorInfo("blk.x.w", (8,), 0, 0, 32)),
    )
    calls = 0
    real = fit._estimate

    def counted(*args: object, **kw: object) -> fit.FitEstimate:
        nonlocal calls
        calls += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fit, "_estimate", counted)
    check = fit.estimate_fit(info, LoadOptions(n_ctx=4096), 1 << 30)
    assert check.status == Status.FAIL
    assert calls < 200, calls  # one per layer would be 2**40


# -- through the real CLI ---------------------------------------------------------------------------------------

CLI_CASES = {
    "context length as a string": ("llama.context_length", "the string '4096' where an unsigned integer is expected"),
    "tensor named blk.x": (
        "tensor 'blk.x.attn_norm.weight'",
        "layer index 'x' is not a number (blk.<layer>.<name>)",
    ),
    "huge block_count": ("llama.block_count", f"4294967295 is out of range (expected 1..{MAX_LAYERS})"),
    "string length 2**63": ("general.name", f"a string of {HUGE} bytes (at most 67108864 expected)"),
    "arrays nested 100000 deep": (
        "x.deep",
        "an array of arrays (GGUF readers, llama.cpp's included, take no nested arrays)",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_load_exits_5_with_one_line_naming_the_file_and_the_field(case: str, write: Callable[[bytes], Path]) -> None:
    p = write(CASES[case][0])
    field, problem = CLI_CASES[case]
    result = CliRunner().invoke(cli, ["--json", "load", "--device", "cpu", "--model-path", str(p)])
    assert result.exit_code == ExitCode.MODEL_INVALID, result.output
    assert result.stderr.splitlines()[0] == f"Error: {p}: invalid GGUF header: {field}: {problem}"
    assert "Traceback" not in result.stdout + result.stderr
