"""The synthetic model generator: sizes, caching, crash safety, and real llama.cpp loading what we write."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kcuda_validate.errors import DiskFullError, UsageError
from kcuda_validate.model import synthetic, synthetic_spec
from kcuda_validate.model.gguf_file import read_gguf
from kcuda_validate.model.synthetic import ensure_synthetic, write_synthetic
from kcuda_validate.model.synthetic_spec import GIB, MIB, SYNTHETIC_TYPES, SyntheticSpec, parse_size, plan

SMALL = 4 * MIB


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Everything in the cache dir: temp files, partial models and lock files must never remain."""
    return sorted(p.name for p in directory.iterdir())


# -- parse_size -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1GiB", 1 << 30),
        ("512MiB", 512 << 20),
        ("300MB", 300_000_000),
        ("1.5G", 1536 << 20),
        ("64M", 64 << 20),
        ("8MiB", 8 << 20),
        ("8mib", 8 << 20),
        (" 2 GB ", 2_000_000_000),
        ("1048576", 1 << 20),
        ("5000000B", 5_000_000),
        ("64GiB", 64 << 30),
    ],
)
def test_parse_size_accepts_human_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.5 parsecs", "-1GiB", "1e9", "GiB", "1,5G", "0x100000"])
def test_parse_size_rejects_garbage_naming_input_and_forms(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_size(text)
    shown = text if text and " " not in text else repr(text)
    assert err.value.message == (
        f"--synthetic {shown}: not a size: expected a number with an optional unit "
        "(e.g. 1GiB, 512MiB, 300MB, 1.5G, 64M or a plain number of bytes)"
    )
    assert "\n" not in err.value.message


@pytest.mark.parametrize(("text", "n"), [("512KiB", 512 << 10), ("0", 0), ("65GiB", 65 << 30), ("1TB", 10**12)])
def test_parse_size_enforces_range(text: str, n: int) -> None:
    with pytest.raises(UsageError) as err:
        parse_size(text)
    assert err.value.message == (
        f"--synthetic {text}: {n} bytes is out of range: a synthetic model must be between 1MiB and 64GiB"
    )
    assert err.value.exit_code == 2


# -- plan -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", SYNTHETIC_TYPES)
@pytest.mark.parametrize("size", [1 * MIB, 8 * MIB, 64 * MIB, 300_000_000, 1 * GIB, 8 * GIB, 64 * GIB])
def test_plan_lands_close_to_the_requested_size_with_llama_proportions(size: int, qtype: str) -> None:
    spec = plan(size, qtype)
    assert abs(spec.tensor_bytes - size) / size < 0.02
    assert spec.head_dim in (64, 128)
    assert spec.n_head * spec.head_dim == spec.n_embd
    assert spec.n_head % spec.n_head_kv == 0
    assert spec.n_ff % 256 == 0 and 1.9 <= spec.n_ff / spec.n_embd <= 3.0
    assert spec.n_vocab % 64 == 0 and spec.n_vocab >= synthetic_spec.N_SILENT_TOKENS + 128
    assert spec.n_layer >= 2 if size >= 4 * MIB else spec.n_layer >= 1
    # The closed form used for planning matches the tensors actually written.
    listed = sum(
        synthetic_spec._padded(synthetic_spec._nbytes(ne, t)) for _, ne, t in synthetic_spec._tensor_list(spec)
    )
    assert spec.tensor_bytes == listed


def test_plan_is_deterministic_and_scales_width_and_depth() -> None:
    assert plan(GIB, "Q8_0") == plan(GIB, "Q8_0")
    small, big = plan(64 * MIB), plan(8 * GIB)
    assert big.n_embd > small.n_embd and big.n_layer > small.n_layer
    assert big.n_vocab >= 16000  # a realistic vocabulary once the model is big enough to afford one
    assert big.head_dim == 128 and big.n_head_kv < big.n_head  # grouped-query attention, as in real llamas


def test_plan_rejects_unknown_type_and_bad_seed() -> None:
    with pytest.raises(UsageError, match=r"^--synthetic-type Q5_K: not supported \(choose one of F16"):
        plan(8 * MIB, "Q5_K")
    with pytest.raises(UsageError, match="seed -1 must be"):
        plan(8 * MIB, "Q8_0", seed=-1)
    with pytest.raises(UsageError, match=r"^--synthetic 100 bytes is out of range"):
        plan(100, "Q8_0")


def test_file_name_encodes_arch_size_type_and_seed() -> None:
    assert plan(GIB, "Q8_0", 0).file_name == "synthetic-llama-1GiB-Q8_0-s0.gguf"
    assert plan(parse_size("1.5G"), "F16", 7).file_name == "synthetic-llama-1536MiB-F16-s7.gguf"
    assert plan(300_000_000, "Q4_0", 1).file_name == "synthetic-llama-300000000B-Q4_0-s1.gguf"


# -- the file -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", SYNTHETIC_TYPES)
def test_file_is_labelled_synthetic_and_consistent(tmp_path: Path, qtype: str) -> None:
    path = ensure_synthetic(SMALL, qtype, seed=3, cache_dir=tmp_path)
    spec = plan(SMALL, qtype, 3)
    info = read_gguf(path)  # also checks every tensor lies inside the file and is aligned
    assert info.is_synthetic and info.get("kcuda.synthetic") is True
    assert info.get("kcuda.synthetic.seed") == 3
    assert info.get("kcuda.synthetic.requested_size") == SMALL
    assert info.name == f"kcuda synthetic llama 4MiB {qtype}"
    assert info.quantization == qtype
    assert info.file_type == {"F16": 1, "Q8_0": 7, "Q4_0": 2}[qtype]
    assert info.architecture == "llama"
    assert (info.context_length, info.block_count, info.embedding_length) == (4096, spec.n_layer, spec.n_embd)
    assert (info.head_count, info.head_count_kv) == (spec.n_head, spec.n_head_kv)
    assert info.arch_key("feed_forward_length") == spec.n_ff
    assert info.arch_key("rope.dimension_count") == spec.head_dim
    assert info.arch_key("attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert info.vocab_size == spec.n_vocab and info.tokenizer_model == "llama" and info.has_chat_template
    assert info.alignment == 32
    assert info.tensor_bytes <= spec.tensor_bytes  # per-tensor padding is the only difference
    assert info.file_size == info.data_offset + spec.tensor_bytes == spec.file_size
    assert abs(info.file_size - SMALL) / SMALL < 0.03
    assert {t.type_name for t in info.tensors} == {qtype, "F32"}


def test_bytes_are_deterministic_per_seed(tmp_path: Path) -> None:
    a = ensure_synthetic(SMALL, "Q8_0", seed=0, cache_dir=tmp_path / "a")
    b = ensure_synthetic(SMALL, "Q8_0", seed=0, cache_dir=tmp_path / "b")
    c = ensure_synthetic(SMALL, "Q8_0", seed=1, cache_dir=tmp_path / "c")
    assert sha256(a) == sha256(b)
    assert sha256(a) != sha256(c)
    assert a.stat().st_size == c.stat().st_size  # the seed changes the weights, never the shape


def test_vocabulary_has_no_duplicates() -> None:
    tokens, scores, types = synthetic_spec._vocab(synthetic_spec.MAX_VOCAB)
    assert len(set(tokens)) == len(tokens) == len(scores) == len(types)
    assert tokens[5] == b"<0x00>" and tokens[260] == b"<0xFF>" and set(types[5:261]) == {6}


def test_small_model_generates_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    ensure_synthetic(SMALL, "Q8_0", seed=5, cache_dir=tmp_path)
    assert time.perf_counter() - start < 2.0  # typically 0.05-0.1 s; generous for busy CI runners


# -- cache, atomicity, locking, disk full ---------------------------------------------------------------


def test_cache_is_reused_without_rewriting(tmp_path: Path) -> None:
    first = ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path)
    before = first.stat()
    second = ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path)
    after = second.stat()
    assert second == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_corrupt_or_short_cache_file_is_regenerated(tmp_path: Path) -> None:
    path = ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path)
    good = sha256(path)
    with open(path, "r+b") as fh:  # same size, damaged header: e.g. from an older generator
        fh.seek(100)
        fh.write(b"XXXX")
    assert ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path) == path and sha256(path) == good
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 1)
    assert ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path) == path and sha256(path) == good


def test_default_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KCUDA_CACHE_DIR", str(tmp_path / "k"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert synthetic.default_cache_dir() == tmp_path / "k" / "synthetic"
    monkeypatch.delenv("KCUDA_CACHE_DIR")
    assert synthetic.default_cache_dir() == tmp_path / "x" / "kcuda-validate" / "synthetic"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert synthetic.default_cache_dir() == tmp_path / "h" / ".cache" / "kcuda-validate" / "synthetic"
    path = ensure_synthetic(1 * MIB, "F16")
    assert path == tmp_path / "h" / ".cache" / "kcuda-validate" / "synthetic" / "synthetic-llama-1MiB-F16-s0.gguf"


def _fail_after(monkeypatch: pytest.MonkeyPatch, n: int, exc: BaseException) -> list[int]:
    """Make the module's chunk writer raise `exc` after `n` successful chunks."""
    real = synthetic._write_chunk
    calls: list[int] = []

    def flaky(fd: int, data: bytes | memoryview) -> None:
        if len(calls) >= n:
            raise exc
        calls.append(len(data))
        real(fd, data)

    monkeypatch.setattr(synthetic, "_write_chunk", flaky)
    return calls


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")])
def test_interrupted_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    calls = _fail_after(monkeypatch, 5, exc)
    with pytest.raises(type(exc)):
        ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path)
    assert len(calls) == 5 and sum(calls) > 0  # it really was part-way through
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    path = ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path)  # and the next run just works
    assert leftovers(tmp_path) == [path.name]


def test_disk_full_mid_write_raises_disk_full_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_after(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(DiskFullError) as err:
        ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path)
    needed = plan(SMALL, "Q8_0").file_size
    assert str(tmp_path) in err.value.message and f"needs {needed} bytes" in err.value.message
    assert err.value.exit_code == 13
    assert leftovers(tmp_path) == []


def test_disk_full_is_detected_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic.shutil, "disk_usage", lambda _path: SimpleNamespace(total=100, used=90, free=10))
    message = r"no space left in .*: the synthetic model needs \d+ bytes .*, 10 bytes free"
    with pytest.raises(DiskFullError, match=message):
        ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path)
    assert leftovers(tmp_path) == []


def test_a_refused_model_takes_back_the_cache_folders_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk (found before writing) or an interrupt mid-write: not even an empty cache folder is left."""
    monkeypatch.setattr(synthetic.shutil, "disk_usage", lambda _path: SimpleNamespace(total=100, used=90, free=10))
    with pytest.raises(DiskFullError):
        ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path / "cache" / "synthetic")
    monkeypatch.undo()
    _fail_after(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path / "cache" / "synthetic")
    assert list(tmp_path.iterdir()) == []


def test_a_cache_folder_that_cannot_be_made_is_no_room_for_the_model(tmp_path: Path) -> None:
    """Exit 13, as for a full disk (same remedy: put the cache elsewhere), not 1 (a failed check)."""
    (tmp_path / "file").write_text("")
    with pytest.raises(DiskFullError) as err:
        ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path / "file" / "synthetic")
    assert (err.value.message, err.value.fix, int(err.value.exit_code)) == (
        f"cannot write the synthetic model in {tmp_path / 'file' / 'synthetic'}: Not a directory",
        "Point KCUDA_CACHE_DIR at a writable directory.",
        13,
    )


def test_stale_temp_file_from_a_killed_run_is_removed(tmp_path: Path) -> None:
    name = plan(SMALL, "Q8_0").file_name
    stale = tmp_path / f".{name}.999999.tmp"
    stale.write_bytes(b"half a model")
    path = ensure_synthetic(SMALL, "Q8_0", cache_dir=tmp_path)
    assert leftovers(tmp_path) == [path.name]


def test_concurrent_generator_waits_for_the_lock_then_reuses_the_file(tmp_path: Path) -> None:
    """A second process asking for the same model while the first writes it must wait, then reuse it."""
    spec: SyntheticSpec = plan(SMALL, "Q8_0")
    path = tmp_path / spec.file_name
    lock_fd = os.open(tmp_path / f".{spec.file_name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # we are "the first process", mid-generation
    code = (
        "import sys; from pathlib import Path; from kcuda_validate.model.synthetic import ensure_synthetic;"
        f"print(ensure_synthetic({SMALL}, 'Q8_0', cache_dir=Path(sys.argv[1])))"
    )
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert other.poll() is None, "the second generator did not wait for the lock"
        write_synthetic(spec, path)
        inode = path.stat().st_ino
    finally:
        os.close(lock_fd)
    out, _ = other.communicate(timeout=30)
    assert other.returncode == 0 and out.strip() == str(path)
    assert path.stat().st_ino == inode  # reused, not regenerated
    assert leftovers(tmp_path) == [path.name]


def test_a_waiter_whose_lock_file_was_removed_starts_again_on_the_current_one(tmp_path: Path) -> None:
    """The holder removes the lock file when done; a process that was waiting on it must not carry on holding a
    lock on the orphan (then a third run could generate at the same time): it locks the file there now."""
    spec: SyntheticSpec = plan(SMALL, "Q8_0")
    path = tmp_path / spec.file_name
    lock = tmp_path / f".{spec.file_name}.lock"
    code = (
        "import sys; from pathlib import Path; from kcuda_validate.model.synthetic import ensure_synthetic;"
        f"print(ensure_synthetic({SMALL}, 'Q8_0', cache_dir=Path(sys.argv[1])))"
    )
    with synthetic._exclusive(lock, tmp_path, spec.file_size):
        other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert other.poll() is None, "the second generator did not wait for the lock"
        write_synthetic(spec, path)
        inode = path.stat().st_ino
    assert not lock.exists()  # removed on release, while the other process still waits on it
    out, _ = other.communicate(timeout=30)
    assert other.returncode == 0 and out.strip() == str(path)
    assert path.stat().st_ino == inode
    assert leftovers(tmp_path) == [path.name]


def _cli(*args: str, cache: Path) -> Any:
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    return CliRunner().invoke(cli, list(args), env={"KCUDA_CACHE_DIR": str(cache)})


@pytest.mark.parametrize(
    ("size", "line"),
    [
        ("512KiB", "Error: --synthetic 512KiB: 524288 bytes is out of range: a synthetic model must be between 1MiB"),
        ("1.5 parsecs", "Error: --synthetic '1.5 parsecs': not a size: expected a number with an optional unit"),
        ("", "Error: --synthetic '': not a size: expected a number with an optional unit"),
    ],
)
def test_cli_size_errors_name_the_option_and_leave_no_cache_files(tmp_path: Path, size: str, line: str) -> None:
    result = _cli("load", "--device", "cpu", "--synthetic", size, cache=tmp_path / "cache")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[0].startswith(line), result.stderr
    synthetic_dir = tmp_path / "cache" / "synthetic"
    assert not synthetic_dir.exists() or leftovers(synthetic_dir) == []


def test_cli_size_refused_for_disk_space_leaves_no_lock_file(tmp_path: Path) -> None:
    """Seen: refused sizes left 0-byte .lock files in the cache, one per size asked for. A real refusal: 64GiB on a
    disk with less free."""
    cache = tmp_path / "cache"
    needed = plan(64 * GIB, "Q8_0").file_size
    cache.mkdir()
    if synthetic.shutil.disk_usage(cache).free >= needed:
        pytest.skip("this disk has room for a 64GiB model: no real refusal to test")
    result = _cli("load", "--device", "cpu", "--synthetic", "64GiB", cache=cache)
    assert result.exit_code == 13, result.output
    assert result.stderr.splitlines()[0].startswith(f"Error: no space left in {cache / 'synthetic'}: ")
    assert leftovers(cache) == []  # no lock file, nor the synthetic/ folder this run made


# -- real llama.cpp -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic(SMALL, "Q8_0", seed=0, cache_dir=tmp_path_factory.mktemp("synthetic"))


def _llama(path: Path) -> Any:
    import llama_cpp

    return llama_cpp.Llama(str(path), n_gpu_layers=0, n_ctx=256, n_threads=2, logits_all=True, verbose=False)


def test_llama_cpp_loads_tokenizes_and_detokenizes(tiny: Path) -> None:
    start = time.perf_counter()
    llm = _llama(tiny)
    assert time.perf_counter() - start < 2.0  # typically 0.05-0.1 s; generous for busy CI runners
    text = b"Hello, world! \xc3\xa9"
    tokens = llm.tokenize(text)
    assert tokens[0] == 1  # <s>
    assert llm.detokenize(tokens) == text
    # Anything valid UTF-8 round-trips via the byte tokens: controls, tabs, newlines, emoji, CJK.
    # (Invalid UTF-8 does not, in llama.cpp's SPM tokenizer, for real llama models too.)
    odd = "\x00\x1b[31m tabs\tand\nnewlines € 😀 漢字 ".encode()
    assert llm.detokenize(llm.tokenize(odd)) == odd
    # ChatML markers are single control tokens, so chat-formatted prompts tokenize like a real chat model's.
    assert llm.tokenize(b"<|im_start|>user\nhi<|im_end|>", add_bos=False, special=True)[0] == 3
    assert llm.metadata["kcuda.synthetic"] == "true"


def test_llama_cpp_generates_deterministically_with_finite_logits(tiny: Path) -> None:
    import numpy as np

    llm = _llama(tiny)
    runs = []
    for _ in range(2):
        llm.reset()
        out = llm.create_completion("Once upon a time", max_tokens=16, temperature=0.0, seed=42)
        assert out["usage"]["completion_tokens"] == 16  # never stops early at EOS
        runs.append(out["choices"][0]["text"])
    assert runs[0] == runs[1] and runs[0]
    assert runs[0].isprintable()  # raw bytes and control tokens are never generated
    logits = np.asarray(llm.scores[: llm.n_tokens])
    assert logits.shape[0] > 8 and np.isfinite(logits).all() and logits.std() > 0.01


@pytest.mark.parametrize("qtype", ["F16", "Q4_0"])
def test_llama_cpp_runs_every_weight_type(tmp_path: Path, qtype: str) -> None:
    import numpy as np

    llm = _llama(ensure_synthetic(SMALL, qtype, cache_dir=tmp_path))
    out = llm.create_completion("abc", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 8
    assert np.isfinite(np.asarray(llm.scores[: llm.n_tokens])).all()


def test_chat_template_is_applied(tiny: Path) -> None:
    llm = _llama(tiny)
    reply = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0)
    assert reply["choices"][0]["finish_reason"] == "length"
    assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]


def test_progress_reports_every_byte(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    path = ensure_synthetic(SMALL, "Q4_0", cache_dir=tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_cli_names_an_unwritable_cache_as_no_room_for_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("KCUDA_CACHE_DIR", str(tmp_path / "file" / "cache"))
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "--synthetic", "1MiB"])
    assert result.exit_code == 13
    assert "FAILED at model: no room for the model (exit 13)" in result.output.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "logs"]  # the log is the tests' own
