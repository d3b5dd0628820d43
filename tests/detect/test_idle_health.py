"""The idle health check (perf.idle.N) on the scenario fakes: each figure, n/a where the driver cannot say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fakes.hardware import RTX_4090, SCENARIOS, install
from kcuda_validate.checks import Check, Status
from kcuda_validate.detect import NODE_HEALTH, DetectOptions, run_detect


def idle_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **gpu: object) -> Check:
    scenario = dataclasses.replace(SCENARIOS["healthy_one_gpu"], gpus=(dataclasses.replace(RTX_4090, **gpu),))
    install(scenario, monkeypatch, tmp_path)
    (check,) = run_detect(DetectOptions(), only=["perf.idle"]).checks
    return check


def test_healthy_idle_gpu_passes_without_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check = idle_check(monkeypatch, tmp_path)
    assert (check.id, check.status, check.summary, check.fix) == (
        "perf.idle.0",
        Status.PASS,
        "power limit 450 W = default; no slowdown; row remap n/a",
        None,
    )
    assert check.evidence["clocks_event_reasons"] == ("GPU idle",)


def test_sw_power_cap_at_idle_is_not_a_fault(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check = idle_check(monkeypatch, tmp_path, clocks_event_reasons=0x4)
    assert (check.status, check.summary) == (Status.PASS, "power limit 450 W = default; no slowdown; row remap n/a")


def test_a_default_limit_the_driver_cannot_give_is_na(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check = idle_check(
        monkeypatch,
        tmp_path,
        unsupported=frozenset({"nvmlDeviceGetPowerManagementDefaultLimit", "nvmlDeviceGetMigMode"}),
    )
    assert (check.status, check.summary) == (
        Status.PASS,
        "power limit 450 W (default n/a); no slowdown; row remap n/a",
    )


def test_power_brake_points_at_power_delivery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check = idle_check(monkeypatch, tmp_path, clocks_event_reasons=0x1 | 0x80)
    assert (check.status, check.summary) == (
        Status.WARN,
        "clocks held back at idle by HW power brake slowdown at 38 °C",
    )
    assert check.fix == (
        "Check the board's power cables and the power supply (the board asserts HW slowdown / power brake);"
        " `nvidia-smi -q -d PERFORMANCE` shows the cause."
    )


def test_a_failed_row_remap_warns_to_replace_the_board(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check = idle_check(monkeypatch, tmp_path, remapped_rows=(2, 1, 0, 1))
    assert (check.status, check.summary, check.fix) == (
        Status.WARN,
        "row remapping failed (2 correctable, 1 uncorrectable)",
        "Row remapping failed: this GPU's memory can no longer be repaired; have the board replaced.",
    )


def test_every_problem_at_once_lists_each_with_its_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check = idle_check(
        monkeypatch,
        tmp_path,
        power_limit_mw=300_000,
        power_default_mw=450_000,
        clocks_event_reasons=0x20,
        temperature_c=88,
        remapped_rows=(0, 1, 1, 0),
    )
    assert check.summary == (
        "power limit 300 W, default 450 W; clocks held back at idle by SW thermal slowdown at 88 °C;"
        " row remap pending (0 correctable, 1 uncorrectable)"
    )
    assert check.fix == (
        "`sudo nvidia-smi -i 0 -pl 450` (and remove whatever lowers it at boot). Improve cooling: clean the fans"
        " and heatsink, check the case airflow and the fan curve; `nvidia-smi -q -d PERFORMANCE,TEMPERATURE` shows"
        " the cause. Reset the GPU with no process on it (`sudo nvidia-smi -r -i 0`) or reboot to apply the remap."
    )


def test_idle_health_is_part_of_node_health() -> None:
    assert "perf.idle" in NODE_HEALTH
