"""The command line and the services agree on every default: both read kcuda_validate.defaults, and this
pins that no option or dataclass grew its own copy again (the issue found them written three times)."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest

from kcuda_validate import defaults
from kcuda_validate.cli import cli
from kcuda_validate.detect import DetectOptions
from kcuda_validate.llm.loader import LoadOptions
from kcuda_validate.llm.measures import InferOptions
from kcuda_validate.model.source import ModelSpec
from kcuda_validate.pipeline import ModelRun


def option_default(command: str, name: str) -> Any:
    cmd = cli.commands[command]
    assert isinstance(cmd, click.Command)
    param = next(p for p in cmd.params if p.name == name)
    return param.default


def field_default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


SHARED = [  # (option name, commands that take it, the service field it becomes, the one default)
    ("min_vram_gb", ["detect", "validate-all"], (DetectOptions, "min_vram_gb"), defaults.MIN_VRAM_GB),
    ("min_compute", ["detect", "validate-all"], (DetectOptions, "min_compute"), defaults.MIN_COMPUTE),
    ("gpu_layers", ["load", "infer", "validate-all"], (LoadOptions, "gpu_layers"), defaults.GPU_LAYERS),
    ("n_ctx", ["load", "infer", "validate-all"], (LoadOptions, "n_ctx"), defaults.N_CTX),
    ("timeout", ["load", "infer", "validate-all"], (ModelRun, "timeout_s"), defaults.STAGE_TIMEOUT_S),
    ("synthetic_type", ["load", "infer", "validate-all"], (ModelSpec, "synthetic_type"), defaults.SYNTHETIC_TYPE),
    ("max_tokens", ["infer", "validate-all"], (InferOptions, "max_tokens"), defaults.MAX_TOKENS),
    ("temperature", ["infer", "validate-all"], (InferOptions, "temperature"), defaults.TEMPERATURE),
    ("seed", ["infer", "validate-all"], (InferOptions, "seed"), defaults.SEED),
    ("repeat", ["infer", "validate-all"], (InferOptions, "repeat"), defaults.REPEAT),
    ("sampling", ["infer", "validate-all"], (InferOptions, "sampling"), defaults.SAMPLING),
]


@pytest.mark.parametrize(("option", "commands", "field", "value"), SHARED, ids=[row[0] for row in SHARED])
def test_option_and_service_share_one_default(
    option: str, commands: list[str], field: tuple[type, str], value: object
) -> None:
    assert {command: option_default(command, option) for command in commands} == dict.fromkeys(commands, value)
    assert field_default(*field) == value
