"""Split models (gguf-split): read whole from the first part, as llama.cpp loads them, or refused before the load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gguf_rewrite import split_model
from kcuda_validate.cli import cli
from kcuda_validate.errors import ExitCode, ModelInvalidError
from kcuda_validate.model.gguf_file import read_gguf
from kcuda_validate.model.gguf_info import HEADER_FIX


@pytest.fixture(scope="module")
def parts(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return split_model(tiny_model, tmp_path_factory.mktemp("split"), max_tensors=10)


def copy_parts(parts: list[Path], where: Path, *keep: int) -> list[Path]:
    """Parts `keep` (1-based) copied into `where`, names unchanged."""
    where.mkdir()
    return [Path(shutil.copy(parts[i - 1], where)) for i in keep]


def test_a_split_model_is_read_whole_from_its_first_part(tiny_model: Path, parts: list[Path]) -> None:
    whole, split = read_gguf(tiny_model), read_gguf(parts[0])

    assert len(parts) == 3
    assert (split.split_count, split.parts) == (3, tuple(parts))
    assert split.file_size == sum(p.stat().st_size for p in parts)
    assert [t.name for t in split.tensors] == [t.name for t in whole.tensors]
    assert (split.parameter_count, split.tensor_bytes) == (whole.parameter_count, whole.tensor_bytes)
    assert split.summary()["split_count"] == 3 and whole.summary()["split_count"] == 1
    assert split.architecture == whole.architecture and split.block_count == whole.block_count


def test_a_first_part_with_only_the_metadata_is_read_whole(tiny_model: Path, tmp_path: Path) -> None:
    """convert_hf_to_gguf.py --no-tensor-first-split: part 1 holds no tensor at all."""
    small = split_model(tiny_model, tmp_path, max_tensors=10, small_first=True)
    info = read_gguf(small[0])

    assert read_gguf(small[0]).split_count == len(small) == 4
    assert info.parameter_count == read_gguf(tiny_model).parameter_count


def test_real_llama_cpp_loads_the_split_model_and_the_fit_counts_every_part(
    tiny_model: Path, parts: list[Path]
) -> None:
    def load(path: Path) -> dict:
        result = CliRunner().invoke(cli, ["--json", "load", "--device", "cpu", "--model-path", str(path)])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    whole, split = load(tiny_model), load(parts[0])
    checks = {c["id"]: c for c in split["checks"]}
    assert checks["model.gguf"]["summary"].endswith(" MiB in 3 parts (synthetic)")
    assert checks["model.gguf"]["evidence"]["split_count"] == 3
    fit = {c["id"]: c for c in whole["checks"]}["model.fit"]["evidence"]
    assert checks["model.fit"]["evidence"]["weights_bytes"] == fit["weights_bytes"]
    assert checks["load.model"]["status"] == "pass"


def test_a_missing_part_is_refused_before_the_load(parts: list[Path], tmp_path: Path) -> None:
    first, _ = copy_parts(parts, tmp_path / "m", 1, 3)

    with pytest.raises(ModelInvalidError) as info:
        read_gguf(first)
    assert (info.value.message, info.value.fix, info.value.exit_code) == (
        f"{first}: 1 of the 3 parts of this split model is missing from {first.parent}: model-00002-of-00003.gguf",
        "Put all 3 parts in the folder of the first (download the missing ones), then run again.",
        ExitCode.MODEL_INVALID,
    )


def test_many_missing_parts_are_named_three_at_most(tiny_model: Path, tmp_path: Path) -> None:
    many = split_model(tiny_model, tmp_path / "all", max_tensors=3)
    (first,) = copy_parts(many, tmp_path / "m", 1)

    with pytest.raises(ModelInvalidError) as info:
        read_gguf(first)
    n = len(many)
    assert n >= 6
    assert info.value.message == (
        f"{first}: {n - 1} of the {n} parts of this split model are missing from {first.parent}: "
        f"model-00002-of-{n:05d}.gguf, model-00003-of-{n:05d}.gguf, model-00004-of-{n:05d}.gguf and {n - 4} more"
    )


def test_a_part_other_than_the_first_names_the_first(parts: list[Path]) -> None:
    with pytest.raises(ModelInvalidError) as info:
        read_gguf(parts[1])
    assert (info.value.message, info.value.fix) == (
        f"{parts[1]}: part 2 of 3 of a split model; llama.cpp loads a split model from its first part",
        f"Pass {parts[0]}, with the other parts in the same folder.",
    )


def test_a_renamed_first_part_is_refused_since_llama_cpp_could_not_find_the_rest(
    parts: list[Path], tmp_path: Path
) -> None:
    renamed = Path(shutil.copy(parts[0], tmp_path / "model.gguf"))

    with pytest.raises(ModelInvalidError) as info:
        read_gguf(renamed)
    assert (info.value.message, info.value.fix) == (
        f"{renamed}: the first of 3 parts of a split model, but not named <name>-00001-of-00003.gguf, "
        "so llama.cpp cannot find the other parts",
        "Keep the names gguf-split gave the parts (<name>-00001-of-00003.gguf and so on), all in one folder.",
    )


def test_a_part_of_another_split_is_refused_naming_it(tiny_model: Path, parts: list[Path], tmp_path: Path) -> None:
    other = split_model(tiny_model, tmp_path / "other", max_tensors=15)  # 2 parts
    first, _, third = copy_parts(parts, tmp_path / "m", 1, 2, 3)
    mixed = shutil.copy(other[1], first.parent / "model-00002-of-00003.gguf")

    with pytest.raises(ModelInvalidError) as info:
        read_gguf(first)
    assert (info.value.message, info.value.fix) == (
        f"{mixed}: invalid GGUF header: split.no, split.count: part 2 of 2, where part 2 of 3 of "
        "model-00001-of-00003.gguf is expected (parts of different models?)",
        HEADER_FIX,
    )
    assert third.is_file()


def test_a_split_count_that_is_not_a_number_is_a_header_error(tmp_path: Path) -> None:
    from gguf import GGUFValueType, GGUFWriter

    path = tmp_path / "bad-00001-of-00002.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_key_value("split.count", "two", GGUFValueType.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with pytest.raises(ModelInvalidError) as info:
        read_gguf(path)
    assert info.value.message == (
        f"{path}: invalid GGUF header: split.count: the string 'two' where a part number (0 to 65535) is expected"
    )
