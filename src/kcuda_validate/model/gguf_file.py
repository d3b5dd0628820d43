"""Read what a GGUF file says about itself, fast, and catch truncation before llama.cpp does.

The gguf package's reader maps every tensor into numpy and takes seconds on a
250 MB file; here we parse only the header, metadata and tensor table
(tens of milliseconds) and check that every tensor's data lies inside the file.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcuda_validate.errors import ModelInvalidError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ggml_type -> (name, block size in elements, bytes per block); mirrors ggml.h / gguf.constants.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}

# llama_ftype (general.file_type) -> the name users know from file names.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
}

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
# Arrays longer than this are summarised (length only), never materialised.
_MAX_ARRAY_KEEP = 64
_MAX_HEADER_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the data section
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"type{self.ggml_type}", 1, 1))[0]

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array (e.g. the vocabulary): its element type and length only."""

    element_type: int
    length: int


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    file_size: int
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...] = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name")

    @property
    def file_type(self) -> int | None:
        return self.metadata.get("general.file_type")

    @property
    def quantization(self) -> str:
        """general.file_type's name, else the dominant tensor type (never the file name)."""
        ft = self.file_type
        if ft is not None and ft in FILE_TYPES:
            return FILE_TYPES[ft]
        counts: Counter[str] = Counter()
        for t in self.tensors:
            counts[t.type_name] += t.nbytes
        return counts.most_common(1)[0][0] if counts else "unknown"

    @property
    def tensor_types(self) -> dict[str, int]:
        counts: Counter[str] = Counter(t.type_name for t in self.tensors)
        return dict(counts.most_common())

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def context_length(self) -> int | None:
        return self.arch_key("context_length")

    @property
    def block_count(self) -> int | None:
        return self.arch_key("block_count")

    @property
    def embedding_length(self) -> int | None:
        return self.arch_key("embedding_length")

    @property
    def head_count(self) -> int | None:
        return _first(self.arch_key("attention.head_count"))

    @property
    def head_count_kv(self) -> int | None:
        return _first(self.arch_key("attention.head_count_kv")) or self.head_count

    @property
    def key_length(self) -> int | None:
        k = self.arch_key("attention.key_length")
        if k is None and self.embedding_length and self.head_count:
            return self.embedding_length // self.head_count
        return k

    @property
    def value_length(self) -> int | None:
        v = self.arch_key("attention.value_length")
        return v if v is not None else self.key_length

    @property
    def tokenizer_model(self) -> str | None:
        return self.metadata.get("tokenizer.ggml.model")

    @property
    def vocab_size(self) -> int | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArraySummary):
            return tokens.length
        if isinstance(tokens, list):
            return len(tokens)
        return self.arch_key("vocab_size")

    @property
    def has_chat_template(self) -> bool:
        return bool(self.metadata.get("tokenizer.chat_template"))

    @property
    def is_synthetic(self) -> bool:
        return bool(self.metadata.get("kcuda.synthetic"))

    def summary(self) -> dict[str, Any]:
        """The facts `load` reports, all read from the file itself."""
        return {
            "path": str(self.path),
            "file_size_bytes": self.file_size,
            "gguf_version": self.version,
            "architecture": self.architecture,
            "name": self.name,
            "parameter_count": self.parameter_count,
            "quantization": self.quantization,
            "file_type": self.file_type,
            "tensor_count": len(self.tensors),
            "tensor_types": self.tensor_types,
            "context_length": self.context_length,
            "block_count": self.block_count,
            "embedding_length": self.embedding_length,
            "head_count": self.head_count,
            "head_count_kv": self.head_count_kv,
            "key_length": self.key_length,
            "value_length": self.value_length,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer_model,
            "chat_template": self.has_chat_template,
            "synthetic": self.is_synthetic,
        }


def _first(value: Any) -> Any:
    """Per-layer arrays (e.g. head_count_kv on some models) -> the first entry."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


class _Truncated(Exception):
    pass


class _Cursor:
    __slots__ = ("buf", "off", "size")

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf = buf
        self.off = 0
        self.size = len(buf)

    def need(self, n: int) -> None:
        if self.off + n > self.size:
            raise _Truncated

    def u32(self) -> int:
        self.need(4)
        (v,) = _U32.unpack_from(self.buf, self.off)
        self.off += 4
        return v

    def u64(self) -> int:
        self.need(8)
        (v,) = _U64.unpack_from(self.buf, self.off)
        self.off += 8
        return v

    def string(self) -> str:
        n = self.u64()
        self.need(n)
        s = self.buf[self.off : self.off + n].decode("utf-8", errors="replace")
        self.off += n
        return s

    def skip_strings(self, count: int) -> None:
        # The vocabulary can hold 250k strings; this loop is the reader's hot path.
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
        except struct.error:
            raise _Truncated from None
        if off > self.size:
            raise _Truncated
        self.off = off

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            s = _SCALARS[vtype]
            self.need(s.size)
            (v,) = s.unpack_from(self.buf, self.off)
            self.off += s.size
            return v
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.u32()
            count = self.u64()
            if count <= _MAX_ARRAY_KEEP:
                return [self.value(etype) for _ in range(count)]
            if etype == _STRING:
                self.skip_strings(count)
            elif etype in _SCALARS:
                n = count * _SCALARS[etype].size
                self.need(n)
                self.off += n
            else:
                for _ in range(count):
                    self.value(etype)
            return ArraySummary(etype, count)
        raise ValueError(f"unknown metadata value type {vtype}")


def read_gguf(path: Path | str) -> GgufInfo:
    """Parse header, metadata and tensor table; raise ModelInvalidError naming the file and the fault."""
    path = Path(path)
    fix_redownload = "Re-download or regenerate the file."
    try:
        file_size = os.stat(path).st_size
        with open(path, "rb") as fh:
            magic = fh.read(4)
            if magic != GGUF_MAGIC:
                raise ModelInvalidError(
                    f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')",
                    fix="Pass a .gguf model file (convert other formats with llama.cpp's convert_hf_to_gguf.py).",
                )
            # Map the file instead of reading it: the vocabulary alone can be several MB, and copying it
            # costs more than walking it. Pages are only touched where the header actually is.
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                try:
                    return _parse(path, mm, file_size)
                except _Truncated:
                    raise ModelInvalidError(
                        f"{path}: GGUF header is truncated ({file_size} bytes)", fix=fix_redownload
                    ) from None
    except FileNotFoundError:
        raise ModelInvalidError(f"{path}: no such file", fix="Check the path passed to --model-path.") from None
    except IsADirectoryError:
        raise ModelInvalidError(f"{path}: is a directory, not a GGUF file", fix="Pass the .gguf file itself.") from None
    except PermissionError:
        raise ModelInvalidError(f"{path}: permission denied", fix=f"Make it readable: `chmod u+r {path}`.") from None
    except ValueError as exc:
        raise ModelInvalidError(f"{path}: corrupt GGUF metadata ({exc})", fix=fix_redownload) from None


def _parse(path: Path, buf: bytes | mmap.mmap, file_size: int) -> GgufInfo:
    cur = _Cursor(buf)
    cur.off = 4
    version = cur.u32()
    if version not in (2, 3):
        raise ModelInvalidError(
            f"{path}: unsupported GGUF version {version} (supported: 2, 3)",
            fix="Re-convert the model with a current llama.cpp.",
        )
    n_tensors = cur.u64()
    n_kv = cur.u64()
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ValueError(f"implausible counts: {n_tensors} tensors, {n_kv} keys")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.u32()
        metadata[key] = cur.value(vtype)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"bad general.alignment {alignment!r}")
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.u32()
        if n_dims > 8:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(cur.u64() for _ in range(n_dims))
        ggml_type = cur.u32()
        offset = cur.u64()
        if ggml_type not in GGML_TYPES:
            raise ValueError(f"tensor {name!r} has unknown ggml type {ggml_type}")
        _, block, type_size = GGML_TYPES[ggml_type]
        n = 1
        for d in shape:
            n *= d
        if n % block:
            raise ValueError(f"tensor {name!r}: {n} elements is not a multiple of block size {block}")
        tensors.append(TensorInfo(name, shape, ggml_type, offset, n // block * type_size))
    data_offset = (cur.off + alignment - 1) // alignment * alignment
    info = GgufInfo(path, file_size, version, alignment, data_offset, metadata, tuple(tensors))
    _check_data_fits(info)
    return info


def _check_data_fits(info: GgufInfo) -> None:
    """Every tensor must lie inside the file: the signature of a truncated download."""
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
