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
