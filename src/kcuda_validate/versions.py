"""Installed package versions without importlib.metadata (whose import alone costs ~25 ms at start-up).

A wheel installs `<name>-<version>.dist-info`; the directory name is the version. Falls back to
importlib.metadata when the layout is unusual (eggs, odd names).
"""

from __future__ import annotations

import os
import re
import sys
from functools import cache


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@cache
def _dist_infos() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info") and "-" in n:
                dist, _, version = n[: -len(".dist-info")].rpartition("-")
                found.setdefault(_normalise(dist), version)
    return found


def dist_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    version = _dist_infos().get(_normalise(name))
    if version is not None:
        return version
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
