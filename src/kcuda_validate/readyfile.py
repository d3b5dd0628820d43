"""`validate-all --ready-file FILE`: the NVIDIA GPU operator's gate, for a node's inference pods.

The file exists only while the node's latest `validate-all` passed on the GPU. It is removed first thing,
so a failing, interrupted or killed run (SIGKILL included) can never leave the gate open from an older
pass; it is written (atomically, like the operator's `cuda-ready`) only once the report says
`gpu_validated`. A CPU run never validates the GPU, so asking it for a ready file is a usage error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kcuda_validate.errors import UsageError

OPTION = "--ready-file"
FIX = "Pass a file path in a directory this user can write to (e.g. a hostPath like /run/kcuda-validate/validations)."


def clear(path: Path) -> None:
    """Remove a ready file left by an earlier run, before this run can fail; refuse a path that cannot be one.

    The caller has already refused what is no regular file and checked that its directory is writable
    (cli._output.check_writable), or found it a regular file."""
    path = Path(path)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        why = exc.strerror or exc
        raise UsageError(f"{OPTION} {path}: the old ready file cannot be removed ({why})", fix=FIX) from exc


def refuse_cpu_run(device: object) -> None:
    if device == "cpu":
        raise UsageError(
            f"{OPTION}: a CPU run (--device cpu) never validates the GPU, so it cannot mark the node ready",
            fix=f"Drop --device cpu to validate the GPU, or drop {OPTION}.",
        )


def contents(doc: dict[str, Any]) -> str:
    """What a waiting pod or an operator can read back: when, where, on which GPU, with which stack."""
    gpu = doc.get("gpu") or {}
    versions = doc.get("versions") or {}
    summary = {
        "gpu_validated": True,
        "command": doc.get("command"),
        "finished_at": doc.get("finished_at"),
        "hostname": (doc.get("host") or {}).get("hostname"),
        "gpu": {key: gpu.get(key) for key in ("index", "name", "uuid") if key in gpu},
        "versions": {
            key: versions.get(key)
            for key in ("kcuda-validate", "llama-cpp-python", "nvidia_driver", "cuda_driver")
            if key in versions
        },
    }
    return json.dumps(summary, indent=2) + "\n"


def settle(path: Path, doc: dict[str, Any], *, others_written: bool = True) -> list[str]:
    """At the end: write the file when the report is a GPU pass and every other requested file was written
    (else the run exits non-zero, and a gate must not open on a failing exit), otherwise make sure it is gone.

    Returns the failure as a clause naming the option and path ([] when done), like the report files."""
    from kcuda_validate.report import write_atomic

    path = Path(path)
    ready = doc.get("gpu_validated") is True and others_written
    try:
        if ready:
            write_atomic(path, contents(doc))
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        done = "written" if ready else "removed"
        return [f"{OPTION} {path}: the ready file could not be {done} ({exc.strerror or exc})"]
    return []
