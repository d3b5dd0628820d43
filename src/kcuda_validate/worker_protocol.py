"""The messages between the parent (isolation.py) and the worker child (worker.py), typed, with one codec.

One JSON request on the child's stdin, then the line `GO` once the parent is ready for the measured
inference; JSON-lines events back on the child's private event channel. Both sides import this module, so
a field renamed on one side cannot silently go missing on the other. Errors carry an `ErrorKind` and an
`ExitCode` from the one table (errors.py), never a class name to match on.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from kcuda_validate.errors import ExitCode, KcudaError, UsageError
from kcuda_validate.llm.loader import LoadOptions, LoadResult
from kcuda_validate.llm.measures import InferenceResult, InferOptions

# The parent's go-ahead for the measured inference, sent once it has read NVML after the load.
GO = "go"


class ErrorKind(StrEnum):
    """What the parent does with a worker's error."""

    USAGE = "usage"  # an option value only the model could refuse: the parent raises UsageError (exit 2)
    FAILED = "failed"  # a failure we understand (a KcudaError): a failed check with its exit code
    INTERNAL = "internal"  # a bug, or a worker started for another GPU: exit 70


@dataclass(frozen=True)
class WorkerError:
    kind: ErrorKind
    message: str
    fix: str | None = None
    exit_code: ExitCode = ExitCode.INTERNAL

    @classmethod
    def from_exception(cls, exc: BaseException) -> WorkerError:
        if isinstance(exc, UsageError):
            return cls(ErrorKind.USAGE, exc.message, exc.fix, exc.exit_code)
        if isinstance(exc, KcudaError):
            return cls(ErrorKind.FAILED, exc.message, exc.fix, exc.exit_code)
        return cls(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "message": self.message, "fix": self.fix, "exit_code": int(self.exit_code)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorkerError:
        return cls(ErrorKind(d["kind"]), d["message"], d.get("fix"), ExitCode(d["exit_code"]))


@dataclass(frozen=True)
class WorkerRequest:
    """`cuda_visible_devices`: the GPU the child must see ("" = none); None leaves the environment as it is."""

    model_path: Path
    load: LoadOptions
    infer: InferOptions | None = None
    cuda_visible_devices: str | None = None

    @property
    def cpu_only(self) -> bool:
        return self.load.cpu_mode or self.cuda_visible_devices == ""


@dataclass(frozen=True)
class StageStarted:
    stage: str  # "load" or "infer"


@dataclass(frozen=True)
class Loaded:
    result: LoadResult


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class Inferred:
    result: InferenceResult


@dataclass(frozen=True)
class Failed:
    error: WorkerError


@dataclass(frozen=True)
class Done:
    """Every result is sent; the child exits at once."""


WorkerEvent = StageStarted | Loaded | TextPiece | Inferred | Failed | Done


def encode_request(request: WorkerRequest) -> str:
    return json.dumps(
        {
            "model_path": str(request.model_path),
            "load": dataclasses.asdict(request.load),
            "infer": dataclasses.asdict(request.infer) if request.infer is not None else None,
            "cuda_visible_devices": request.cuda_visible_devices,
        }
    )


def decode_request(line: str) -> WorkerRequest:
    d = json.loads(line)
    return WorkerRequest(
        model_path=Path(d["model_path"]),
        load=LoadOptions(**d["load"]),
        infer=InferOptions(**d["infer"]) if d.get("infer") is not None else None,
        cuda_visible_devices=d.get("cuda_visible_devices"),
    )


def encode_event(event: WorkerEvent) -> str:
    payload: dict[str, Any]
    match event:
        case StageStarted(stage):
            payload = {"event": "stage", "stage": stage}
        case Loaded(result):
            payload = {"event": "loaded", "result": result.to_json()}
        case TextPiece(text):
            payload = {"event": "text", "text": text}
        case Inferred(result):
            payload = {"event": "inferred", "result": result.to_json()}
        case Failed(error):
            payload = {"event": "error", "error": error.to_json()}
        case Done():
            payload = {"event": "done"}
    return json.dumps(payload)


def decode_event(line: str) -> WorkerEvent:
    d = json.loads(line)
    kind = d["event"]
    if kind == "stage":
        return StageStarted(d["stage"])
    if kind == "loaded":
        return Loaded(LoadResult.from_json(d["result"]))
    if kind == "text":
        return TextPiece(d["text"])
    if kind == "inferred":
        return Inferred(InferenceResult.from_json(d["result"]))
    if kind == "error":
        return Failed(WorkerError.from_json(d["error"]))
    if kind == "done":
        return Done()
    raise ValueError(f"unknown worker event {kind!r}")
