"""The rotating log: per-user location, env overrides, and safety when several runs write at once."""

from __future__ import annotations

import logging
import multiprocessing
import re
from pathlib import Path

import pytest

from kcuda_validate import logs


def test_location_and_level_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KCUDA_LOG_DIR", str(tmp_path / "x"))
    monkeypatch.setenv("KCUDA_LOG_LEVEL", "debug")
    path = logs.setup_logging()
    assert path == tmp_path / "x" / "kcuda-validate.log"
    logging.getLogger("kcuda_validate.test").debug("hello %s", "there")
    assert "DEBUG kcuda_validate.test: hello there" in path.read_text()


def test_default_location_is_per_user_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KCUDA_LOG_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert logs.default_log_dir() == tmp_path / "state" / "kcuda-validate"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert logs.default_log_dir() == Path.home() / ".local" / "state" / "kcuda-validate"


def test_unwritable_log_dir_does_not_break_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("KCUDA_LOG_DIR", str(blocker / "logs"))
    assert logs.setup_logging() is None
    assert logs.log_path() is None
    logging.getLogger("kcuda_validate").info("still fine")
    logging.getLogger("kcuda_validate").warning("not printed raw by logging's last resort either")
    assert capsys.readouterr().err == (
        f"Warning: cannot write the log in {blocker / 'logs'} (Not a directory); this run continues without a log"
        " (set KCUDA_LOG_DIR to change where)\n"
    )


def test_any_bytes_and_no_secret_reach_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """argv and paths carry undecodable bytes as surrogates; URLs may carry credentials; neither breaks or leaks."""
    monkeypatch.setenv("KCUDA_LOG_DIR", str(tmp_path))
    path = logs.setup_logging()
    assert path is not None
    log = logging.getLogger("kcuda_validate.test")
    log.info("start: kcuda-validate infer %s", "\udcff\udcfe")
    try:
        raise ConnectionError("GET http://user:pw-secret@127.0.0.1:9/x?token=tok-secret failed")
    except ConnectionError:
        log.exception("request to %s", "http://user:pw-secret@127.0.0.1:9")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].endswith(" INFO kcuda_validate.test: start: kcuda-validate infer \\xff\\xfe")
    assert lines[1].endswith(" ERROR kcuda_validate.test: request to http://***@127.0.0.1:9")
    assert lines[-1] == "ConnectionError: GET http://***@127.0.0.1:9/x?token=*** failed"
    assert "pw-secret" not in "\n".join(lines) and "tok-secret" not in "\n".join(lines)


def _writer(directory: str, worker: int, n: int) -> None:
    handler = logs.LockedRotatingFileHandler(Path(directory) / "kcuda-validate.log", max_bytes=20_000, backup_count=50)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"concurrent.{worker}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for i in range(n):
        logger.info("worker=%d line=%05d payload=%s end", worker, i, "x" * 40)
    handler.close()


def test_concurrent_writers_never_interleave_or_lose_lines(tmp_path: Path) -> None:
    """Four processes hammer one file through many rotations: every line arrives whole, exactly once."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 1500)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = sorted(tmp_path.glob("kcuda-validate.log*"))
    files = [f for f in files if not f.name.endswith(".lock")]
    assert len(files) > 5, "the test must force several rotations"
    pattern = re.compile(r"^worker=(\d) line=(\d{5}) payload=x{40} end$")
    seen: set[tuple[int, int]] = set()
    for f in files:
        for line in f.read_text().splitlines():
            m = pattern.match(line)
            assert m, f"corrupt line in {f.name}: {line!r}"
            key = (int(m.group(1)), int(m.group(2)))
            assert key not in seen, f"duplicate {key}"
            seen.add(key)
    assert len(seen) == 4 * 1500


def test_the_log_records_every_verdict_and_figure_of_a_run(tiny_model: Path, isolated_env: Path) -> None:
    """A run can be read back from the log alone: each check, each measured figure and the exit code."""
    import json

    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    result = CliRunner().invoke(
        cli, ["--json", "infer", "--device", "cpu", "--model-path", str(tiny_model), "--max-tokens", "6"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    text = (isolated_env / "logs" / "kcuda-validate.log").read_text()
    for check in doc["checks"]:
        assert f"check {check['status'].upper()} {check['id']}: {check['summary']}" in text
    gen = doc["metrics"]["gen_tps"]
    assert f"metric gen_tps = {gen['value']:.6g} ± {gen['stddev']:.4g} tokens/s (llama_perf_context" in text
    assert "result: infer exit 0 (ok), device_mode cpu, stopped_at None" in text


def test_a_failing_check_is_logged_with_its_fix(tmp_path: Path, isolated_env: Path) -> None:
    from click.testing import CliRunner

    from kcuda_validate.cli import cli

    bad = tmp_path / "model.gguf"
    bad.write_text("<html>404</html>")
    result = CliRunner().invoke(cli, ["load", "--device", "cpu", "--model-path", str(bad)])
    assert result.exit_code == 5
    text = (isolated_env / "logs" / "kcuda-validate.log").read_text()
    assert re.search(r"check FAIL model\.gguf: .*not a GGUF file.* \| fix: Pass a \.gguf model file", text), text
    assert "result: load exit 5 (model_invalid), device_mode cpu, stopped_at model" in text
