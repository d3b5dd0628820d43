"""The entry point's early worker: a guess from argv, used only when it matches what the command decides."""

from __future__ import annotations

import pytest

from kcuda_validate.entry import _guess


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["validate-all"], (False, None)),
        (["--json", "infer", "hello", "--device", "cpu"], (True, None)),
        (["load", "--device=1"], (False, 1)),
        (["load", "--device", "CPU"], (True, None)),
        (["detect"], None),
        (["exit-codes"], None),
        (["validate-all", "--help"], None),
        (["--version"], None),
        (["load", "--all-devices"], None),
        (["load", "--device", "gpu0"], None),  # click will reject it; no worker for a usage error
        ([], None),
    ],
)
def test_guess(argv: list[str], expected: tuple[bool, int | None] | None) -> None:
    assert _guess(argv) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), (" 12 ", 12), ("cpu", "cpu"), (" CPU", "cpu"), ("gpu0", None), ("-1", None), ("", None)],
)
def test_one_device_parser_for_the_guess_and_the_option(text: str, expected: int | str | None) -> None:
    """The entry point's guess and click's --device type read the value with the same function."""
    from click.testing import CliRunner

    from kcuda_validate.cli import cli
    from kcuda_validate.prestart import parse_device

    assert parse_device(text) == expected
    if expected is None:
        result = CliRunner().invoke(cli, ["detect", "--device", text])
        assert result.exit_code == 2
        assert f"{text!r} is not a GPU index or 'cpu'" in result.stderr
