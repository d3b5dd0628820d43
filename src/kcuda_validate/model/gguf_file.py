"""Read what a GGUF file says about itself, fast, and catch truncation before llama.cpp does.

The gguf package's reader maps every tensor into numpy and takes seconds on a
250 MB file; here we parse only the header, metadata and tensor table
(tens of milliseconds) and check that every tensor's data lies inside the file.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import re
import stat
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

from kcuda_validate.errors import ModelInvalidError
from kcuda_validate.model.gguf_info import (
    GGML_TYPES,
    MAX_LAYERS,
    ArraySummary,
    GgufHeaderError,
    GgufInfo,
    StringSummary,
    TensorInfo,
    header_error,
)

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types.
_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_STRING, _ARRAY = 8, 9
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_TYPE_NAMES = {
    0: "uint8",
    1: "int8",
    2: "uint16",
    3: "int16",
    4: "uint32",
    5: "int32",
    6: "float32",
    7: "bool",
    8: "string",
    9: "array",
    10: "uint64",
    11: "int64",
    12: "float64",
}

# What a header may claim. A header is untrusted input (models come from the Hub), and every loop and every
# kept value below is bounded by these, so reading any file costs well under a second and a few tens of MB.
# Where llama.cpp has a limit of its own (ggml/src/gguf.cpp, src/llama-hparams.h) we use it, so a file it would
# refuse (or abort on) is refused here first, with the field named.
MAX_TENSORS = 1 << 16  # real models have hundreds to a few thousand (experts are merged into 3-D tensors)
MAX_KEYS = 1 << 16  # real models have tens
MAX_KEY_BYTES = 256  # real keys are under 100 bytes
MAX_STRING_BYTES = 64 << 20  # the largest real strings (an embedded tokenizer.json) are tens of MB
MAX_ARRAY_ELEMENTS = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS in gguf.cpp
MAX_ARRAY_STRINGS = 1 << 21  # strings in all arrays together: the largest vocab + merges is ~550k
# Numbers in all arrays together: the largest real ones are a vocabulary's scores and token types (2 x ~262k).
# llama.cpp itself takes up to GGUF_MAX_ARRAY_ELEMENTS (2^30) per array, but it turns every array into text while
# loading: a 2^28-element array cost 14 s and 1.9 GB in the worker before it failed.
MAX_ARRAY_NUMBERS = 1 << 24
# A chat template (`tokenizer.chat_template`, or a named `tokenizer.chat_template.<name>`): real ones are 1-30 KB.
# llama-cpp-python compiles every one with Jinja2 while it loads the model, even unused, in time and memory that
# grow with its length (a 3.5 MB template: 24 s, 1.9 GB).
MAX_TEMPLATE_BYTES = 256 << 10
MAX_HEADER_BYTES = 512 << 20  # metadata + tensor table; real ones are a few MB to tens of MB
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME (64) including the terminating NUL
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_DIM = 1 << 24  # widths, head counts, head sizes, vocabulary: the largest real ones are ~1e5-1e6
U32_MAX = (1 << 32) - 1
_I64_LIMIT = 1 << 63  # tensor dimensions and element counts are int64 in ggml

# Kept in memory: short arrays (per-layer hyperparameters, tags) and short strings, up to a budget for the whole
# header; anything else is summarised (type and length) after a bounded skip, never materialised.
_MAX_ARRAY_KEEP = MAX_LAYERS
_MAX_STRING_ARRAY_KEEP = 64
_MAX_STRING_KEEP = 1 << 20
_KEEP_ELEMENTS = 1 << 18
_KEEP_STRING_BYTES = 16 << 20
# The smallest a key-value pair (8-byte key length, 1-byte key, 4-byte type, 1-byte value) and a tensor entry
# (8-byte name length, 4-byte n_dims, 4-byte type, 8-byte offset) can be: counts are checked against the file.
_MIN_KV_BYTES = 14
_MIN_TENSOR_BYTES = 24


class _Reader:
    """Bounds-checked reads from the mapped file; every failure names the file and the field."""

    __slots__ = ("buf", "keep_bytes", "keep_elements", "numbers_left", "off", "path", "size", "strings_left")

    def __init__(self, path: Path, buf: bytes | mmap.mmap) -> None:
        self.buf = buf
        self.off = 0
        self.size = len(buf)
        self.path = path
        self.strings_left = MAX_ARRAY_STRINGS
        self.numbers_left = MAX_ARRAY_NUMBERS
        self.keep_elements = _KEEP_ELEMENTS
        self.keep_bytes = _KEEP_STRING_BYTES

    def bad(self, field_name: str, problem: str) -> GgufHeaderError:
        return header_error(self.path, field_name, problem)

    def need(self, n: int, field_name: str) -> None:
        if n > self.size - self.off:
            raise GgufHeaderError(
                f"{self.path}: GGUF header is truncated ({self.size} bytes): {field_name} runs past the end of the "
                "file",
                fix="Re-download or regenerate the file.",
                field=field_name,
            )

    def u32(self, field_name: str) -> int:
        self.need(4, field_name)
        (v,) = _U32.unpack_from(self.buf, self.off)
        self.off += 4
        return int(v)

    def u64(self, field_name: str) -> int:
        self.need(8, field_name)
        (v,) = _U64.unpack_from(self.buf, self.off)
        self.off += 8
        return int(v)

    def _span(self, field_name: str, limit: int) -> tuple[int, int]:
        """A string's (start, length), checked against `limit` and the file before anything is copied."""
        n = self.u64(field_name)
        if n > limit:
            raise self.bad(field_name, f"a string of {n} bytes (at most {limit} expected)")
        self.need(n, field_name)
        start = self.off
        self.off += n
        return start, n

    def string(self, field_name: str) -> str | StringSummary:
        """A metadata string: kept while the header's budget lasts, else only its length."""
        start, n = self._span(field_name, MAX_STRING_BYTES)
        if n > _MAX_STRING_KEEP or n > self.keep_bytes:
            return StringSummary(n)
        self.keep_bytes -= n
        return self.buf[start : start + n].decode("utf-8", errors="backslashreplace")

    def text(self, field_name: str, limit: int) -> str:
        """A string that is always kept (a key, a tensor name): `limit` keeps it short."""
        start, n = self._span(field_name, limit)
        return self.buf[start : start + n].decode("utf-8", errors="backslashreplace")

    def value(self, key: str, vtype: int) -> Any:
        if vtype in _SCALARS:
            s = _SCALARS[vtype]
            self.need(s.size, key)
            (v,) = s.unpack_from(self.buf, self.off)
            self.off += s.size
            return v
        if vtype == _STRING:
            return self.string(key)
        if vtype == _ARRAY:
            return self.array(key)
        raise self.bad(key, f"unknown value type {vtype}")

    def array(self, key: str) -> list[Any] | ArraySummary:
        etype = self.u32(key)
        count = self.u64(key)
        if etype == _ARRAY:
            raise self.bad(key, "an array of arrays (GGUF readers, llama.cpp's included, take no nested arrays)")
        if etype != _STRING and etype not in _SCALARS:
            raise self.bad(key, f"an array of unknown value type {etype}")
        if count > MAX_ARRAY_ELEMENTS:
            raise self.bad(key, f"an array of {count} elements (at most {MAX_ARRAY_ELEMENTS} expected)")
        if etype == _STRING:
            self.strings_left -= count
            if self.strings_left < 0:
                raise self.bad(
                    key, f"{count} strings take the header past {MAX_ARRAY_STRINGS} strings in arrays (implausible)"
                )
            self.need(8 * count, key)  # each string has at least its 8-byte length
            if count <= _MAX_STRING_ARRAY_KEEP and count <= self.keep_elements:
                self.keep_elements -= count
                return [self.string(f"{key}[{i}]") for i in range(count)]
            self.skip_strings(key, count)
            return ArraySummary(etype, count)
        self.numbers_left -= count
        if self.numbers_left < 0:
            raise self.bad(
                key, f"{count} numbers take the header past {MAX_ARRAY_NUMBERS} numbers in arrays (implausible)"
            )
        s = _SCALARS[etype]
        self.need(s.size * count, key)
        start = self.off
        self.off += s.size * count
        if count <= _MAX_ARRAY_KEEP and count <= self.keep_elements:
            self.keep_elements -= count
            return list(struct.unpack_from(f"<{count}{s.format[-1]}", self.buf, start))
        return ArraySummary(etype, count)

    def skip_strings(self, key: str, count: int) -> None:
        """Step over `count` strings without decoding them: the vocabulary (250k strings) is the hot path."""
        buf, off, unpack = self.buf, self.off, _U64.unpack_from
        try:
            for _ in itertools.repeat(None, count >> 3):  # unrolled: loop overhead is most of the cost
                off += 8 + unpack(buf, off)[0]
                off += 8 + unpack(buf, off)[0]
                off += 8 + unpack(buf, off)[0]
                off += 8 + unpack(buf, off)[0]
                off += 8 + unpack(buf, off)[0]
                off += 8 + unpack(buf, off)[0]
                off += 8 + unpack(buf, off)[0]
                off += 8 + unpack(buf, off)[0]
            for _ in itertools.repeat(None, count & 7):
                off += 8 + unpack(buf, off)[0]
        except (struct.error, OverflowError):  # a length ran past the end (or past what an offset can be)
            off = self.size + 1
        if off > self.size:
            self._locate_bad_string(key, count)
        self.off = off

    def _locate_bad_string(self, key: str, count: int) -> None:
        """The fast skip overran: walk again, checking each string, to name the one that is wrong."""
        for i in range(count):
            n = self.u64(f"{key}[{i}]")
            if n > MAX_STRING_BYTES:
                raise self.bad(f"{key}[{i}]", f"a string of {n} bytes (at most {MAX_STRING_BYTES} expected)")
            self.need(n, f"{key}[{i}]")
            self.off += n
        raise AssertionError("unreachable: the fast skip and the checked walk disagree")  # pragma: no cover


def read_gguf(path: Path | str) -> GgufInfo:
    """Parse header, metadata and tensor table; raise ModelInvalidError naming the file and the fault.

    A split model (gguf-split: `split.count` > 1) is read whole from its first part, as llama.cpp loads it: the
    other parts by llama.cpp's own naming beside it, each checked like a file of its own, and the info covers
    them all (sizes, tensors, the fit estimate). Any other part, a missing part or a renamed first part is
    refused here, before the load, naming what to pass."""
    info = _read_file(Path(path))
    count = _split_key(info, "split.count")
    if count > 1:
        info = _read_parts(info, count)
    _check_hyperparameters(info)
    return info


# gguf-split's names, as llama.cpp's llama_split_path writes them and llama_split_prefix reads them back.
SPLIT_NAME = "{prefix}-{no:05d}-of-{count:05d}.gguf"
SPLIT_PATTERN = re.compile(r"(.*)-(\d{5})-of-(\d{5})\.gguf")  # the Hub's --filename is read by it too
_SHOWN_MISSING = 3  # parts a "missing" message names; a header may claim 65535


def _split_key(info: GgufInfo, key: str) -> int:
    value = info.metadata.get(key, 0)
    if not _is_uint(value) or value > 0xFFFF:
        raise header_error(info.path, key, f"{_show(value)} where a part number (0 to 65535) is expected")
    return int(value)


def _read_parts(first: GgufInfo, count: int) -> GgufInfo:
    path = first.path
    no = _split_key(first, "split.no")
    match = SPLIT_PATTERN.fullmatch(path.name)
    if no != 0:
        if match is not None:
            first_name = path.with_name(SPLIT_NAME.format(prefix=match.group(1), no=1, count=count))
            fix = f"Pass {first_name}, with the other parts in the same folder."
        else:
            fix = f"Pass the first part (<name>-00001-of-{count:05d}.gguf), with the other parts in the same folder."
        raise ModelInvalidError(
            f"{path}: part {no + 1} of {count} of a split model; llama.cpp loads a split model from its first part",
            fix=fix,
        )
    if match is None or (int(match.group(2)), int(match.group(3))) != (1, count):
        raise ModelInvalidError(
            f"{path}: the first of {count} parts of a split model, but not named "
            f"<name>-00001-of-{count:05d}.gguf, so llama.cpp cannot find the other parts",
            fix=f"Keep the names gguf-split gave the parts (<name>-00001-of-{count:05d}.gguf and so on), "
            "all in one folder.",
        )
    prefix = match.group(1)
    paths = [path.with_name(SPLIT_NAME.format(prefix=prefix, no=i, count=count)) for i in range(1, count + 1)]
    missing = [p for p in paths[1:] if not p.is_file()]  # is_file follows links, as llama.cpp's open does
    if missing:
        names = ", ".join(p.name for p in missing[:_SHOWN_MISSING])
        more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
        verb = "is" if len(missing) == 1 else "are"
        raise ModelInvalidError(
            f"{path}: {len(missing)} of the {count} parts of this split model {verb} missing from {path.parent}: "
            f"{names}{more}",
            fix=f"Put all {count} parts in the folder of the first (download the missing ones), then run again.",
        )
    infos = [first]
    for i, part in enumerate(paths[1:], start=1):
        info = _read_file(part)
        claims = (_split_key(info, "split.no"), _split_key(info, "split.count"))
        if claims != (i, count):
            raise header_error(
                part,
                "split.no, split.count",
                f"part {claims[0] + 1} of {claims[1]}, where part {i + 1} of {count} of {path.name} is expected "
                "(parts of different models?)",
            )
        infos.append(info)
    tensors = tuple(t for info in infos for t in info.tensors)
    seen: set[str] = set()
    for info in infos:
        for t in info.tensors:
            if t.name in seen:
                raise header_error(info.path, f"tensor '{t.name}'", "the name appears in two parts of the model")
            seen.add(t.name)
    declared = first.metadata.get("split.tensors.count")
    if declared is not None and declared != len(tensors):
        raise header_error(
            path, "split.tensors.count", f"{_show(declared)}, but the {count} parts hold {len(tensors)} tensors"
        )
    size = sum(info.file_size for info in infos)
    return replace(first, file_size=size, tensors=tensors, parts=tuple(paths))


def _read_file(path: Path) -> GgufInfo:
    """One file's header, metadata and tensor table, its tensors checked against that file's size."""
    try:
        # O_NONBLOCK: a FIFO swapped in after the caller's stat check must not block this open, and the
        # fstat below then refuses it; the size comes from the very file that is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ModelInvalidError(f"{path}: not a regular file", fix="Pass the .gguf file itself.")
        os.set_blocking(fd, True)
        file_size = st.st_size
        with open(fd, "rb") as fh:
            magic = fh.read(4)
            if magic != GGUF_MAGIC:
                raise ModelInvalidError(
                    f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')",
                    fix="Pass a .gguf model file (convert other formats with llama.cpp's convert_hf_to_gguf.py).",
                )
            # Map the file instead of reading it: the vocabulary alone can be several MB, and copying it
            # costs more than walking it. Pages are only touched where the header actually is.
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(path, mm, file_size)
    except FileNotFoundError:
        raise ModelInvalidError(f"{path}: no such file", fix="Check the path passed to --model-path.") from None
    except IsADirectoryError:
        raise ModelInvalidError(f"{path}: is a directory, not a GGUF file", fix="Pass the .gguf file itself.") from None
    except PermissionError:
        raise ModelInvalidError(f"{path}: permission denied", fix=f"Make it readable: `chmod u+r {path}`.") from None


def _parse(path: Path, buf: bytes | mmap.mmap, file_size: int) -> GgufInfo:
    cur = _Reader(path, buf)
    cur.off = 4
    version = cur.u32("version")
    if version not in (2, 3):
        raise ModelInvalidError(
            f"{path}: unsupported GGUF version {version} (supported: 2, 3)",
            fix="Re-convert the model with a current llama.cpp.",
        )
    n_tensors = cur.u64("tensor_count")
    n_kv = cur.u64("metadata_kv_count")
    _check_count(cur, "tensor_count", n_tensors, MAX_TENSORS)
    _check_count(cur, "metadata_kv_count", n_kv, MAX_KEYS)
    least = n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES
    if least > file_size - cur.off:
        raise cur.bad(
            "tensor_count, metadata_kv_count",
            f"{n_tensors} tensors and {n_kv} keys need at least {least} more bytes, but the file has {file_size} "
            "(truncated or corrupt)",
        )
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.text(f"metadata key #{i}", MAX_KEY_BYTES)
        if not key:
            raise cur.bad(f"metadata key #{i}", "an empty key")
        if key in metadata:
            raise cur.bad(key, "the key appears twice")
        metadata[key] = cur.value(key, cur.u32(key))
        if cur.off > MAX_HEADER_BYTES:
            raise cur.bad(key, f"the metadata runs past {MAX_HEADER_BYTES} bytes (implausible for a header)")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not _is_uint(alignment) or alignment == 0 or alignment & (alignment - 1) or alignment > 1 << 31:
        raise cur.bad("general.alignment", f"{_show(alignment)} where a power of two is expected")
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for i in range(n_tensors):
        t = _tensor(cur, i)
        if t.name in names:
            raise cur.bad(f"tensor '{t.name}'", "the name appears twice")
        names.add(t.name)
        tensors.append(t)
    data_offset = (cur.off + alignment - 1) // alignment * alignment
    info = GgufInfo(path, file_size, version, alignment, data_offset, metadata, tuple(tensors))
    _check_data_fits(info)
    return info


def _check_count(cur: _Reader, field_name: str, n: int, limit: int) -> None:
    if n > limit:
        raise cur.bad(field_name, f"{n} (at most {limit} expected)")


def _tensor(cur: _Reader, i: int) -> TensorInfo:
    name = cur.text(f"tensor #{i} name", MAX_TENSOR_NAME)  # GGML's limit
    what = f"tensor '{name}'"
    n_dims = cur.u32(what)
    if n_dims > MAX_DIMS:
        raise cur.bad(what, f"{n_dims} dimensions (GGML allows at most {MAX_DIMS})")
    cur.need(8 * n_dims, what)
    shape = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.off)
    cur.off += 8 * n_dims
    n = 1
    for j, d in enumerate(shape):
        if d >= _I64_LIMIT:
            raise cur.bad(what, f"dimension {j} is {d} (more than 2**63 - 1 elements)")
        n *= d
    if n >= _I64_LIMIT:
        raise cur.bad(what, f"shape {list(shape)} has {n} elements (more than 2**63 - 1)")
    ggml_type = cur.u32(what)
    offset = cur.u64(what)
    if ggml_type not in GGML_TYPES:
        raise cur.bad(what, f"unknown ggml type {ggml_type}")
    type_name, block, type_size = GGML_TYPES[ggml_type]
    row = shape[0] if shape else 1
    if row % block:
        raise cur.bad(what, f"rows of {row} elements are not a multiple of the {type_name} block size {block}")
    return TensorInfo(name, tuple(shape), ggml_type, offset, n // block * type_size)


def _check_data_fits(info: GgufInfo) -> None:
    """Every tensor must lie inside the file (a truncated download otherwise), aligned, and no two may overlap."""
    if not info.tensors:
        return
    last = max(info.tensors, key=lambda t: t.offset + t.nbytes)
    end = info.data_offset + last.offset + last.nbytes
    if end > info.file_size:
        missing = end - info.file_size
        raise ModelInvalidError(
            f"{info.path}: file is truncated: tensor '{last.name}' ends at byte {end} but the file has "
            f"{info.file_size} bytes ({missing / 1024**2:.1f} MiB missing)",
            fix="Re-download the file (an interrupted download leaves a short file).",
        )
    for t in info.tensors:
        if t.offset % info.alignment:
            raise ModelInvalidError(
                f"{info.path}: corrupt tensor table: tensor '{t.name}' offset {t.offset} is not aligned "
                f"to {info.alignment}",
                fix="Re-download or re-convert the file.",
            )
    # No overlaps: then the tensors' sizes, and so the parameter count, are bounded by the file size.
    ordered = sorted((t for t in info.tensors if t.nbytes), key=lambda t: t.offset)
    for a, b in itertools.pairwise(ordered):
        if b.offset < a.offset + a.nbytes:
            raise header_error(
                info.path,
                f"tensor '{b.name}'",
                f"its data (offset {b.offset}) overlaps tensor '{a.name}' (offset {a.offset}, {a.nbytes} bytes)",
            )


# -- hyperparameters --------------------------------------------------------------------------------------------
# Each metadata key that GgufInfo's accessors read, and so the fit estimate and the report, gets its type and range
# checked once here: a value stored as a string, a float or an absurd number becomes exit 5 naming the key, never
# a TypeError (exit 70) or an endless estimate later.


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _show(v: Any) -> str:
    """A metadata value as an error message shows it: its type, and the value when it is short."""
    if isinstance(v, ArraySummary):
        return f"an array of {v.length} {_TYPE_NAMES.get(v.element_type, '?')} values"
    if isinstance(v, StringSummary):
        return f"a string of {v.length} bytes"
    if isinstance(v, list):
        return f"an array of {len(v)} values"
    if isinstance(v, str):
        return f"the string {v[:40]!r}" + ("…" if len(v) > 40 else "")
    if isinstance(v, bool):
        return f"the boolean {v}"
    if isinstance(v, float):
        return f"the float {v!r}"
    return repr(v)


def _uint_key(info: GgufInfo, key: str, lo: int, hi: int) -> int | None:
    v = info.metadata.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise header_error(info.path, key, f"{_show(v)} where an unsigned integer is expected")
    if not lo <= v <= hi:
        raise header_error(info.path, key, f"{v} is out of range (expected {lo}..{hi})")
    return int(v)


def _per_layer_key(info: GgufInfo, key: str, n_layer: int | None) -> None:
    """An integer, or one per layer (llama.cpp's get_key_or_arr: the array has exactly block_count entries)."""
    v = info.metadata.get(key)
    if v is None or _is_uint(v):
        _uint_key(info, key, 0, MAX_DIM)
        return
    if isinstance(v, ArraySummary):
        raise header_error(info.path, key, f"{_show(v)} (one per layer expected, at most {MAX_LAYERS} layers)")
    if not isinstance(v, list) or not all(_is_uint(x) and x <= MAX_DIM for x in v):
        raise header_error(
            info.path, key, f"{_show(v)} where an unsigned integer (or one per layer, each up to {MAX_DIM}) is expected"
        )
    if n_layer is not None and len(v) != n_layer:
        raise header_error(info.path, key, f"{len(v)} per-layer values but block_count is {n_layer}")


def _text_key(info: GgufInfo, key: str, limit: int) -> None:
    v = info.metadata.get(key)
    if v is not None and not (isinstance(v, str) and len(v) <= limit):
        raise header_error(info.path, key, f"{_show(v)} where text of at most {limit} characters is expected")


TEMPLATE_FIX = (
    "Replace or drop the template with gguf's own editor, installed with this tool: gguf-new-metadata "
    "--remove-metadata {key} IN.gguf OUT.gguf (or --chat-template-file FILE.jinja), or use another file."
)


def _check_template(info: GgufInfo, key: str) -> None:
    """A chat template llama-cpp-python will compile at load: text, and short enough to compile in milliseconds."""
    v = info.metadata[key]
    if not isinstance(v, str | StringSummary):
        raise header_error(info.path, key, f"{_show(v)} where text is expected")
    n = v.length if isinstance(v, StringSummary) else len(v.encode("utf-8"))
    if n > MAX_TEMPLATE_BYTES:
        raise GgufHeaderError(
            f"{info.path}: invalid GGUF header: {key}: a chat template of {n:,} bytes (real ones are under "
            f"{MAX_TEMPLATE_BYTES >> 10} KiB; llama-cpp-python compiles it at load, in time and memory that grow "
            "with it)",
            fix=TEMPLATE_FIX.format(key=key),
            field=key,
        )


def _float_key(info: GgufInfo, key: str, *, positive: bool) -> None:
    """A float llama.cpp uses unchecked: ggml aborts the worker on a negative or NaN norm epsilon, and a rope
    base of 0 or NaN turns every logit into NaN."""
    v = info.metadata.get(key)
    if v is None:
        return
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        want = "a finite number above 0" if positive else "a finite number, 0 or more"
        raise header_error(info.path, key, f"{_show(v)} where {want} is expected")


_EPSILONS = ("attention.layer_norm_epsilon", "attention.layer_norm_rms_epsilon", "attention.group_norm_epsilon")


def _check_hyperparameters(info: GgufInfo) -> None:
    md, path = info.metadata, info.path
    _text_key(info, "general.architecture", 64)
    _text_key(info, "general.name", 1024)
    _text_key(info, "tokenizer.ggml.model", 64)
    _uint_key(info, "general.file_type", 0, U32_MAX)
    for key in [k for k in md if k == "tokenizer.chat_template" or k.startswith("tokenizer.chat_template.")]:
        _check_template(info, key)
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is not None and not (
        (isinstance(tokens, ArraySummary) and tokens.element_type == _STRING)
        or (isinstance(tokens, list) and all(isinstance(t, str | StringSummary) for t in tokens))
    ):
        raise header_error(path, "tokenizer.ggml.tokens", f"{_show(tokens)} where an array of strings is expected")
    synthetic = md.get("kcuda.synthetic")
    if synthetic is not None and not isinstance(synthetic, bool):
        raise header_error(path, "kcuda.synthetic", f"{_show(synthetic)} where a boolean is expected")
    arch = info.architecture
    if arch is None:
        n_layer = None
    else:
        a = f"{arch}."
        _uint_key(info, a + "context_length", 1, U32_MAX)
        n_layer = _uint_key(info, a + "block_count", 1, MAX_LAYERS)
        for suffix in ("embedding_length", "vocab_size", "attention.key_length", "attention.value_length"):
            _uint_key(info, a + suffix, 0, MAX_DIM)
        for suffix in ("feed_forward_length", "attention.head_count", "attention.head_count_kv"):
            _per_layer_key(info, a + suffix, n_layer)
        for suffix in _EPSILONS:
            _float_key(info, a + suffix, positive=False)
        for suffix in ("rope.freq_base", "rope.freq_base_swa"):
            _float_key(info, a + suffix, positive=True)
    _check_layers(info, n_layer)


def _check_layers(info: GgufInfo, n_layer: int | None) -> None:
    """Tensor names against the layer count: blk.<i>.… must name a layer that exists."""
    key = f"{info.architecture}.block_count"
    limit = n_layer if n_layer is not None else MAX_LAYERS
    for t in info.tensors:
        if not t.name.startswith("blk."):
            continue
        index = t.name.split(".", 2)[1]
        if not (index.isascii() and index.isdigit()):
            raise header_error(
                info.path, f"tensor '{t.name}'", f"layer index {index!r} is not a number (blk.<layer>.<name>)"
            )
        if int(index) >= limit:
            claim = f"{key} is {n_layer}" if n_layer is not None else f"llama.cpp supports {MAX_LAYERS} layers"
            raise header_error(info.path, f"tensor '{t.name}'", f"layer {int(index)} does not exist ({claim})")
    if n_layer is not None and info.tensors and n_layer > len(info.tensors):
        raise header_error(
            info.path,
            key,
            f"{n_layer} layers but the file has only {len(info.tensors)} tensors (at least one per layer)",
        )
