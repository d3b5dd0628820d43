"""Where kcuda-validate keeps what it can rebuild (engine wheels, synthetic models): one rule for all of them.

Light on purpose (os and pathlib only): the engine planner and the synthetic-model writer both import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def kcuda_cache_dir(kind: str, environ: Mapping[str, str] | None = None) -> Path:
    """$KCUDA_CACHE_DIR/<kind>, else $XDG_CACHE_HOME (or ~/.cache)/kcuda-validate/<kind>: rebuildable, so cache."""
    env = os.environ if environ is None else environ
    if env.get("KCUDA_CACHE_DIR"):
        return Path(env["KCUDA_CACHE_DIR"]) / kind
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kcuda-validate" / kind
