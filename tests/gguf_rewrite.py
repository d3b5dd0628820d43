"""GGUF files rewritten with gguf-py's own writer from a real model: split as llama.cpp's gguf-split writes them,
or with some keys and tensors changed, for headers no converter here can produce."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# (tensor name, its raw rows) -> the rows to write; None to leave it out; or a list of (name, array) written in its
# place, each array of raw rows in the tensor's own type, or float32 (written as F32).
Rows = Callable[[str, Any], Any]


def split_model(
    src: Path, out_dir: Path, *, max_tensors: int, prefix: str = "model", small_first: bool = False
) -> list[Path]:
    """Every KV and tensor of `src` into `<prefix>-0000i-of-0000N.gguf` parts of at most `max_tensors` tensors each
    (`small_first`: a first part holding only the metadata, as convert_hf_to_gguf.py can write). Returns the parts."""
    from gguf import GGUFWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    _copy(
        src,
        lambda arch: GGUFWriter(
            out_dir / f"{prefix}.gguf", arch, split_max_tensors=max_tensors, small_first_shard=small_first
        ),
    )
    return sorted(out_dir.glob(f"{prefix}-*-of-*.gguf"))


def rewrite_model(
    src: Path,
    dst: Path,
    *,
    arch: str | None = None,
    fields: Mapping[str, Any] | None = None,
    rows: Rows | None = None,
) -> Path:
    """`src` as one file at `dst`: as architecture `arch` (its `<arch>.` keys renamed), each key in `fields` (named
    after any renaming) set to its value (a list is written as an array of the type `src`'s key has, or of
    integers), and each tensor's raw rows passed through `rows`."""
    from gguf import GGUFWriter

    _copy(src, lambda old: GGUFWriter(dst, arch or old), fields, rows, arch)
    return dst


def _copy(
    src: Path,
    make: Callable[[str], Any],
    fields: Mapping[str, Any] | None = None,
    rows: Rows | None = None,
    arch: str | None = None,
) -> None:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(src))
    old = reader.fields["general.architecture"].contents()
    writer = make(old)
    changed = dict(fields or {})
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        name = f"{arch}.{key.removeprefix(old + '.')}" if arch and key.startswith(old + ".") else key
        kind = field.types[0]
        if name in changed:
            value = changed.pop(name)
            if isinstance(value, list):
                sub = field.types[-1] if kind == GGUFValueType.ARRAY else kind
                writer.add_key_value(name, value, GGUFValueType.ARRAY, sub_type=sub)
            else:
                writer.add_key_value(name, value, kind if kind != GGUFValueType.ARRAY else GGUFValueType.UINT32)
            continue
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    for name, value in changed.items():  # keys `src` does not have
        if isinstance(value, list):
            writer.add_key_value(name, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT32)
        else:
            writer.add_key_value(name, value, GGUFValueType.UINT32)
    for t in reader.tensors:
        data = t.data if rows is None else rows(t.name, t.data)
        if data is None:
            continue
        for name, array in data if isinstance(data, list) else [(t.name, data)]:
            if array.dtype == "float32" and t.data.dtype != "float32":
                writer.add_tensor(name, array)
            else:
                writer.add_tensor(name, array, raw_shape=array.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
