"""Golden files: compare rendered output with tests/golden/, or rewrite it with KCUDA_UPDATE_GOLDEN=1.

After an intended change to the output, regenerate and review the diff of tests/golden/ like code:

    KCUDA_UPDATE_GOLDEN=1 uv run pytest tests/detect/test_detect_cli.py tests/test_render.py
"""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("KCUDA_UPDATE_GOLDEN", "") not in ("", "0")


def assert_golden(path: Path, got: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run with KCUDA_UPDATE_GOLDEN=1 to create it"
    assert got == path.read_text(encoding="utf-8"), f"output differs from {path} (KCUDA_UPDATE_GOLDEN=1 updates it)"
