"""Where kcuda-validate keeps what it can rebuild (engine wheels, synthetic models): one rule for all of them;
and where the Hugging Face Hub cache is, the one resolution the tool uses for it.

Light on purpose (os and pathlib only): the engine planner and the synthetic-model writer both import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def home_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The user's home: $HOME when it is an absolute path, else the password database's; None when neither says
    (a container run as a uid with no passwd entry and no HOME: `Path.home()` raises RuntimeError there)."""
    env = os.environ if environ is None else environ
    home = env.get("HOME", "")
    if os.path.isabs(home):
        return Path(home)
    try:
        import pwd

        entry = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError, OSError):
        return None
    return Path(entry) if os.path.isabs(entry) else None


def xdg_dir(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """$`name` (XDG_CACHE_HOME, XDG_STATE_HOME) when set to an absolute path. The XDG Base Directory spec: a
    relative path in these variables is invalid and is ignored (it would scatter folders into the cwd)."""
    env = os.environ if environ is None else environ
    value = env.get(name, "")
    return Path(value) if os.path.isabs(value) else None


def kcuda_cache_dir(kind: str, environ: Mapping[str, str] | None = None) -> Path:
    """$KCUDA_CACHE_DIR/<kind>, else $XDG_CACHE_HOME (or ~/.cache)/kcuda-validate/<kind>: rebuildable, so cache.

    `~` in KCUDA_CACHE_DIR is expanded, as in KCUDA_LOG_DIR. No home and no setting to stand in for it is a
    usage error (exit 2) naming the variables that fix it, not an internal error."""
    env = os.environ if environ is None else environ
    if env.get("KCUDA_CACHE_DIR"):
        return _expand(env["KCUDA_CACHE_DIR"], env) / kind
    base = xdg_dir("XDG_CACHE_HOME", env)
    if base is None:
        home = home_dir(env)
        if home is None:
            from kcuda_validate.errors import UsageError

            raise UsageError(
                "no cache directory: HOME is not set and this user has no home directory",
                fix="Set KCUDA_CACHE_DIR (or XDG_CACHE_HOME, or HOME) to a writable directory.",
            )
        base = home / ".cache"
    return base / "kcuda-validate" / kind


def _expand(value: str, env: Mapping[str, str]) -> Path:
    """`value` with a leading `~` or `~/` made the home directory (left as it is when there is none)."""
    if value == "~" or value.startswith("~/"):
        home = home_dir(env)
        if home is not None:
            return home / value[2:] if value != "~" else home
    return Path(value)


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
