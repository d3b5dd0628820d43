"""`detect -v`: every NVML field per GPU, n/a where the driver cannot say, a lost GPU named as such."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fakes.hardware import Installed
from kcuda_validate.cli import cli


@pytest.mark.parametrize("scenario", ["wsl2_unsupported_fields"], indirect=True)
def test_unsupported_fields_render_as_na(scenario: Installed) -> None:
    out = CliRunner().invoke(cli, ["detect", "-v"]).stdout
    lines = {line.split("  ")[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "n/a" in lines["temperature"]
    assert "n/a / n/a" in lines["power / limit"]
    assert "GiB" in lines["VRAM total / free"]
    assert "GB/s" in lines["peak bandwidth"]


@pytest.mark.parametrize("scenario", ["gpu_lost"], indirect=True)
def test_lost_gpu_is_named(scenario: Installed) -> None:
    out = CliRunner().invoke(cli, ["detect", "-v"]).stdout
    assert "LOST (fell off the bus)" in out


@pytest.mark.parametrize("scenario", ["two_gpus_one_hidden"], indirect=True)
def test_hidden_gpu_is_marked(scenario: Installed) -> None:
    out = CliRunner().invoke(cli, ["detect", "-v"]).stdout
    assert "GPU 0 (hidden)" in out
