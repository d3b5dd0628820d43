"""Where kcuda-validate keeps what it can rebuild (engine wheels, synthetic models): one rule for all of them;
and where the Hugging Face Hub cache is, the one resolution the tool uses for it.

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


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache directory, resolved as huggingface_hub does (HF_HUB_CACHE, else HF_HOME/hub,
    else $XDG_CACHE_HOME or ~/.cache, then huggingface/hub), without importing it: detect reads it too."""
    cache = os.environ.get("HF_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"
