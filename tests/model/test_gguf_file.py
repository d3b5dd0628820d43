"""The fast GGUF header reader, on real files: the real model, synthetic ones, and broken copies."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from kcuda_validate.errors import ModelInvalidError
from kcuda_validate.model.gguf_file import read_gguf
from kcuda_validate.model.gguf_info import FILE_TYPES, GGML_TYPES, ArraySummary


@pytest.mark.slow
def test_real_model_facts_come_from_the_file(real_model: Path) -> None:
    info = read_gguf(real_model)
    s = info.summary()
    assert s["architecture"] == "gemma3"
    assert s["name"] == "Gemma 3 270m"
    assert s["parameter_count"] == 268_098_176  # llama.cpp prints "model params = 268.10 M" for this file
    assert s["quantization"] == "Q4_K_M"
    assert s["context_length"] == 32768
    assert s["block_count"] == 18
    assert s["embedding_length"] == 640
    assert (s["head_count"], s["head_count_kv"]) == (4, 1)
    assert (s["key_length"], s["value_length"]) == (256, 256)
    assert s["vocab_size"] == 262_144
    assert s["tokenizer"] == "llama"
    assert s["chat_template"] is False  # this GGUF carries none: we report it, we do not guess
    assert s["tensor_types"] == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}
    assert s["file_size_bytes"] == real_model.stat().st_size
    assert isinstance(info.metadata["tokenizer.ggml.tokens"], ArraySummary)


def test_agrees_with_the_gguf_package(tiny_model: Path) -> None:
    """The reference reader (slow, maps every tensor) and ours see the same metadata and tensor table."""
    import gguf

    ref = gguf.GGUFReader(str(tiny_model))
    ours = read_gguf(tiny_model)
    assert len(ours.tensors) == len(ref.tensors)
    for mine, theirs in zip(ours.tensors, ref.tensors, strict=True):
        assert mine.name == theirs.name
        assert mine.ggml_type == int(theirs.tensor_type)
        assert mine.nbytes == int(theirs.n_bytes)
        assert mine.n_elements == int(theirs.n_elements)
        assert ours.data_offset + mine.offset == int(theirs.data_offset)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.metadata[key]
        if isinstance(value, ArraySummary):
            assert value.length == len(field.data)
        elif isinstance(value, str):
            assert value == bytes(field.parts[field.data[0]]).decode()
    assert ours.get("kcuda.synthetic") is True


def _truncate(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def test_truncated_data_is_caught_with_the_missing_amount(tiny_model: Path, tmp_path: Path) -> None:
    size = tiny_model.stat().st_size
    p = _truncate(tiny_model, tmp_path / "short.gguf", size - 1_000_000)
    with pytest.raises(ModelInvalidError) as err:
        read_gguf(p)
    msg = err.value.message
    assert msg.startswith(f"{p}: file is truncated: tensor '")
    assert f"but the file has {size - 1_000_000} bytes (1.0 MiB missing)" in msg
    assert "Re-download" in err.value.fix


def test_truncated_header_is_caught(tiny_model: Path, tmp_path: Path) -> None:
    p = _truncate(tiny_model, tmp_path / "head.gguf", 3000)
    with pytest.raises(ModelInvalidError, match=r"GGUF header is truncated \(3000 bytes\)"):
        read_gguf(p)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04zipzipzip", "not a GGUF file (starts with b'PK\\x03\\x04', expected b'GGUF')"),
        (b"GGUF" + struct.pack("<I", 7) + b"\0" * 16, "unsupported GGUF version 7 (supported: 2, 3)"),
        (
            b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0),
            "invalid GGUF header: tensor_count: 1099511627776 (at most 65536 expected)",
        ),
    ],
)
def test_not_gguf_or_corrupt(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    with pytest.raises(ModelInvalidError) as err:
        read_gguf(p)
    assert err.value.message.startswith(f"{p}: {message}")


def test_unaligned_tensor_offset_is_corruption(tmp_path: Path) -> None:
    """Built by hand: one F32 tensor whose offset breaks the 32-byte alignment."""
    name = b"t.weight"
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
    header += struct.pack("<Q", len(name)) + name + struct.pack("<I", 1) + struct.pack("<Q", 8)
    header += struct.pack("<I", 0) + struct.pack("<Q", 4)  # F32, offset 4
    pad = (-len(header)) % 32
    p = tmp_path / "bad.gguf"
    p.write_bytes(header + b"\0" * pad + b"\0" * 64)
    with pytest.raises(ModelInvalidError, match="offset 4 is not aligned to 32"):
        read_gguf(p)


def test_tables_match_the_gguf_package() -> None:
    from gguf.constants import GGML_QUANT_SIZES, LlamaFileType

    for t, (block, size) in GGML_QUANT_SIZES.items():
        assert GGML_TYPES[int(t)][1:] == (block, size), t.name
    for ft in LlamaFileType:
        if ft.name != "GUESSED":
            assert FILE_TYPES[int(ft)] == ft.name.replace("MOSTLY_", "").replace("ALL_", ""), ft.name


def test_a_fifo_reaching_the_reader_is_refused_without_blocking(tmp_path: Path) -> None:
    """The CLI's stat check refuses FIFOs first; this is the reader's own guard, should one be swapped in after."""
    fifo = tmp_path / "m.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ModelInvalidError) as exc:
        read_gguf(fifo)  # an open without O_NONBLOCK would wait here for a writer, forever
    assert str(exc.value) == f"{fifo}: not a regular file"
    assert exc.value.fix == "Pass the .gguf file itself."
