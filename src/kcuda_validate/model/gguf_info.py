"""What a GGUF file says about itself, once read: the ggml type tables, the tensor table, the metadata facts.

Kept apart from the reader (gguf_file) so that code that only reasons about a model (the fit estimate, the
verdicts, the report) imports plain data, not the bounded parser.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcuda_validate.errors import ModelInvalidError

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


MAX_LAYERS = 512  # LLAMA_MAX_LAYERS: llama.cpp asserts (aborts) on a larger block_count


@dataclass(frozen=True, slots=True)
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
    parts: tuple[Path, ...] = ()  # a split model (gguf-split): every part, the first (`path`) included

    @property
    def split_count(self) -> int:
        return len(self.parts) or 1

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        arch = self.architecture
        return default if arch is None else self.metadata.get(f"{arch}.{suffix}", default)

    def arch_int(self, suffix: str) -> int | None:
        """An integer hyperparameter (the first entry of a per-layer array); None when absent or not an integer."""
        return _as_int(_first(self.arch_key(suffix)))

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
        return self.arch_int("context_length")

    @property
    def block_count(self) -> int | None:
        return self.arch_int("block_count")

    @property
    def embedding_length(self) -> int | None:
        return self.arch_int("embedding_length")

    @property
    def head_count(self) -> int | None:
        return self.arch_int("attention.head_count")

    @property
    def head_count_kv(self) -> int | None:
        """The most KV heads any layer has (a hybrid's first layers may have none)."""
        return max(self.kv_heads_per_layer, default=None) or self.head_count

    def per_layer(self, suffix: str) -> tuple[int, ...] | None:
        """A hyperparameter llama.cpp reads with get_key_or_arr, for each of block_count layers: the array as
        written (read_gguf checked its length) or the one value repeated; None when absent or not integers."""
        value = self.arch_key(suffix)
        if isinstance(value, list):
            return tuple(value) if value and all(_as_int(v) is not None for v in value) else None
        one = _as_int(value)
        return None if one is None else (one,) * min(self.block_count or 0, MAX_LAYERS)  # read_gguf refuses more

    @property
    def tied_output(self) -> bool:
        """No output.weight: llama.cpp uses the token embedding as the output matrix too."""
        return not any(t.name == "output.weight" for t in self.tensors)

    @property
    def kv_heads_per_layer(self) -> tuple[int, ...]:
        """KV heads of each layer, 0 where a layer keeps no KV cache (the recurrent layers of a hybrid such as
        Granite-4.0-H or Jamba, whose converters write one value per layer). As in llama.cpp, head_count where
        the file gives no KV count."""
        return self.per_layer("attention.head_count_kv") or self.per_layer("attention.head_count") or ()

    @property
    def key_length(self) -> int | None:
        k = self.arch_int("attention.key_length")
        if k is None and self.embedding_length and self.head_count:
            return self.embedding_length // self.head_count
        return k

    @property
    def value_length(self) -> int | None:
        v = self.arch_int("attention.value_length")
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
        return self.arch_int("vocab_size")

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
            "split_count": self.split_count,
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


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first(value: Any) -> Any:
    """Per-layer arrays (e.g. head_count_kv on some models) -> the first entry."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


class GgufHeaderError(ModelInvalidError):
    """A GGUF header that is truncated, implausible, ill-typed or contradicts itself or the file size (exit 5).

    `field` names what is wrong (a metadata key, `tensor_count`, `tensor 'blk.0.attn_q.weight'`) so the user, or a
    bug report, can point at the exact bytes. Built by `header_error`; the signature stays KcudaError's so the
    error pickles like any other."""

    def __init__(self, message: str, *, fix: str | None = None, field: str = "") -> None:
        super().__init__(message, fix=fix)
        self.field = field


HEADER_FIX = "Re-download or re-convert the file: its header is damaged or was not written by a GGUF writer."


def header_error(path: Path, field_name: str, problem: str) -> GgufHeaderError:
    """`<file>: invalid GGUF header: <field>: <problem>`, the one form every implausible claim is reported in."""
    return GgufHeaderError(f"{path}: invalid GGUF header: {field_name}: {problem}", fix=HEADER_FIX, field=field_name)


@dataclass(frozen=True)
class StringSummary:
    """A metadata string too long to keep (e.g. an embedded tokenizer.json): its length only."""

    length: int

    def __bool__(self) -> bool:
        return self.length > 0
