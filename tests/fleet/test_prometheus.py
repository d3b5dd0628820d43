"""--prometheus: every textfile a real run writes passes a real `promtool check metrics` (Debian's prometheus)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from kcuda_validate.cli import cli
from kcuda_validate.prometheus import metric_name

pytestmark = pytest.mark.fleet

PROMTOOL = shutil.which("promtool")


def promtool_check(path: Path) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus); the textfile is not checked")
    proc = subprocess.run([PROMTOOL, "check", "metrics"], stdin=path.open("rb"), capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), path.read_text()


def test_cpu_validate_all_textfile_passes_promtool_and_carries_every_figure(tiny_model: Path, tmp_path: Path) -> None:
    prom, report = tmp_path / "prom" / "kcuda.prom", tmp_path / "r.json"
    args = ["validate-all", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "8", "--repeat", "2"]
    result = CliRunner().invoke(cli, [*args, "--prometheus", str(prom), "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    promtool_check(prom)
    assert sorted(p.name for p in prom.parent.iterdir()) == ["kcuda.prom"]  # no temporary file left behind
    doc, text = json.loads(report.read_text()), prom.read_text()
    labels = f'UUID="",command="validate-all",device_mode="cpu",gpu="",model="{tiny_model.name}"'
    assert f"kcuda_passed{{{labels}}} 1\n" in text
    assert f"kcuda_gpu_validated{{{labels}}} 0\n" in text
    for check in doc["checks"]:
        line = f'kcuda_check_status{{UUID="",check="{check["id"]}",command="validate-all",device_mode="cpu",gpu=""'
        assert f'{line},model="{tiny_model.name}",stage="{check["stage"]}",status="{check["status"]}"}} 1\n' in text
    for name, metric in doc["metrics"].items():
        named = metric_name(name, metric["unit"])
        assert named is not None, name
        sample = f"{named[0]}{{{labels}}} "
        if metric["value"] is None:
            assert sample not in text, name  # n/a: no sample, never a 0
        else:
            value = float(text.split(sample, 1)[1].split("\n", 1)[0])
            assert value == pytest.approx(metric["value"] * named[2]), name


def test_failing_run_without_a_gpu_writes_a_valid_textfile(tiny_model: Path, tmp_path: Path) -> None:
    from fakes.hardware import install

    monkeypatch = pytest.MonkeyPatch()
    try:
        install("no_driver", monkeypatch, tmp_path)
        prom = tmp_path / "fail.prom"
        result = CliRunner().invoke(cli, ["load", "--model-path", str(tiny_model), "--prometheus", str(prom)])
    finally:
        monkeypatch.undo()
    assert result.exit_code == 3, result.stderr
    promtool_check(prom)
    text = prom.read_text()
    assert 'kcuda_exit_code{UUID="",command="load",device_mode="gpu",gpu="",model=""' in text
    assert "kcuda_gen_tokens_per_second" not in text


def _lines(text: str, family: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(family + "{")]


def test_multi_gpu_detect_labels_each_gpu_check_with_its_own_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Seen: every series of a two-GPU detect carried the first usable GPU's labels, gpu.0's check included."""
    from fakes.hardware import install

    installed = install("two_gpus_one_hidden", monkeypatch, tmp_path)
    prom = tmp_path / "detect.prom"
    result = CliRunner().invoke(cli, ["detect", "--prometheus", str(prom)])
    assert result.exit_code == 0, result.stderr
    promtool_check(prom)
    text = prom.read_text()
    uuid = {str(i): g.uuid for i, g in enumerate(installed.scenario.gpus)}
    run_wide = 'UUID="",command="detect",device_mode="gpu",gpu="",model=""'
    assert _lines(text, "kcuda_passed") == [f"kcuda_passed{{{run_wide}}} 1"]
    for check in ("gpu", "perf.idle", "min", "llama.archs"):
        for index in ("0", "1"):
            line = f'kcuda_check_status{{UUID="{uuid[index]}",check="{check}.{index}",command="detect"'
            if check in ("min", "llama.archs") and index == "0":  # GPU 0 is hidden: not judged
                assert line not in text
            else:
                assert line in text, (check, index)
    assert 'kcuda_check_status{UUID="",check="driver.nvml",command="detect",device_mode="gpu",gpu=""' in text
    # torch numbers only the visible GPU, NVML's 1, as cuda:0: its checks carry GPU 1's labels, not GPU 0's
    for check in ("torch.kernel.0", "torch.bandwidth.0"):
        labels = f'UUID="{uuid["1"]}",check="{check}",command="detect",device_mode="gpu",gpu="1",model=""'
        assert f'kcuda_check_status{{{labels},stage="detect",status="pass"}} 1' in text, check
        assert f'UUID="{uuid["0"]}",check="{check}"' not in text


def test_one_gpu_detect_labels_the_run_with_that_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fakes.hardware import install

    installed = install("healthy_one_gpu", monkeypatch, tmp_path)
    prom = tmp_path / "detect.prom"
    assert CliRunner().invoke(cli, ["detect", "--prometheus", str(prom)]).exit_code == 0
    promtool_check(prom)
    labels = f'UUID="{installed.scenario.gpus[0].uuid}",command="detect",device_mode="gpu",gpu="0",model=""'
    assert _lines(prom.read_text(), "kcuda_passed") == [f"kcuda_passed{{{labels}}} 1"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["health"], 1),  # no driver here: one failed check
        (["setup", "--dry-run", "--arch", "90"], 0),
        (["infer", "--device", "cpu", "--model-path", "<model>", "--max-tokens", "4", "--repeat", "1"], 0),
    ],
    ids=["health", "setup", "infer"],
)
def test_every_command_writes_a_valid_textfile(args: list[str], code: int, tiny_model: Path, tmp_path: Path) -> None:
    prom = tmp_path / "run.prom"
    argv = [str(tiny_model) if a == "<model>" else a for a in args]
    result = CliRunner().invoke(cli, [*argv, "--prometheus", str(prom)])
    assert result.exit_code == code, (result.stdout, result.stderr)
    promtool_check(prom)
    text = prom.read_text()
    assert _lines(text, "kcuda_exit_code")[0].endswith(f" {code}")
    assert f'command="{args[0]}"' in _lines(text, "kcuda_info")[0]
    if args[0] == "infer":
        assert _lines(text, "kcuda_gen_tokens_per_second")  # a measured figure, written


def test_a_torch_device_nvml_cannot_match_carries_no_gpu_labels_rather_than_another_gpus() -> None:
    """torch's cuda:0 whose name NVML's visible GPU 0 does not share (nvml_index null): labelled with no GPU."""
    from kcuda_validate.prometheus import textfile

    gpus = [{"index": 0, "uuid": "GPU-a", "name": "A"}, {"index": 1, "uuid": "GPU-b", "name": "B"}]
    check = {"id": "torch.kernel.0", "stage": "detect", "status": "pass", "evidence": {"nvml_index": None}}
    doc = {"command": "detect", "device_mode": "gpu", "sections": {"detect": {"gpus": gpus}}, "checks": [check]}
    labels = 'UUID="",check="torch.kernel.0",command="detect",device_mode="gpu",gpu="",model="",stage="detect"'
    assert f'kcuda_check_status{{{labels},status="pass"}} 1\n' in textfile(doc)
    check["evidence"] = {"nvml_index": 1}
    assert 'kcuda_check_status{UUID="GPU-b",check="torch.kernel.0",command="detect",device_mode="gpu",gpu="1"' in (
        textfile(doc)
    )


def test_the_model_label_is_the_whole_linux_file_name_and_the_textfile_stays_valid(tmp_path: Path) -> None:
    """A backslash is an ordinary character in a Linux file name; quote, newline and ESC are escaped by the writer."""
    from kcuda_validate.prometheus import model_label, textfile

    name = 'we"ird\\na\nme\x1b[1m.gguf'
    doc = {"command": "load", "device_mode": "cpu", "sections": {"model": {"path": f"/models/{name}"}}, "checks": []}
    assert model_label(doc) == name
    out = tmp_path / "m.prom"
    out.write_text(textfile(doc))
    promtool_check(out)
