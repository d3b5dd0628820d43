"""Split GGUF models as llama.cpp's gguf-split writes them, made with gguf-py's own writer from a real model."""

from __future__ import annotations

from pathlib import Path


def split_model(
    src: Path, out_dir: Path, *, max_tensors: int, prefix: str = "model", small_first: bool = False
) -> list[Path]:
    """Every KV and tensor of `src` into `<prefix>-0000i-of-0000N.gguf` parts of at most `max_tensors` tensors each
    (`small_first`: a first part holding only the metadata, as convert_hf_to_gguf.py can write). Returns the parts."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(out_dir / f"{prefix}.gguf", arch, split_max_tensors=max_tensors, small_first_shard=small_first)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(out_dir.glob(f"{prefix}-*-of-*.gguf"))
