"""specs/ is the contract: the code must match it, option for option and code for code."""

from __future__ import annotations

import re
from pathlib import Path

import click

from kcuda_validate.cli import cli
from kcuda_validate.cli.exit_codes import MEANING
from kcuda_validate.errors import SEVERITY, ExitCode

SPECS = Path(__file__).resolve().parent.parent / "specs"
REPO = SPECS.parent


def test_exit_code_table_matches_the_code() -> None:
    text = (SPECS / "exit-codes.md").read_text()
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(\w+)\s*\|\s*(.+?)\s*\|$", text, re.M)
    assert {int(code): name for code, name, _ in rows} == {int(c): c.reason for c in ExitCode}
    assert {int(code): meaning for code, _, meaning in rows} == {int(c): MEANING[c] for c in ExitCode}


def test_precedence_list_matches_the_code() -> None:
    text = (SPECS / "exit-codes.md").read_text()
    para = text.split("in this order of precedence:")[1].split("\n\n")[0]
    names = [n.strip().rstrip(".") for n in para.replace("\n", " ").split(",")]
    assert names == [c.reason for c in SEVERITY]


def _spec_sections() -> dict[str, str]:
    text = (SPECS / "cli.md").read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.split("\n", 1)[0].strip(): p for p in parts[1:]}


def _documented_options(section: str) -> set[str]:
    return set(re.findall(r"`(--[a-z0-9-]+|-[a-z])\b", section))


def _code_options(command: click.Command) -> set[str]:
    out: set[str] = set()
    for p in command.params:
        if isinstance(p, click.Option):
            out.update(o for o in p.opts + p.secondary_opts)
    return out


GLOBAL = {"--json", "-v", "--verbose", "-q", "--quiet", "--report", "--junit-xml", "--prometheus", "--debug"}


def test_every_command_is_specified() -> None:
    sections = _spec_sections()
    assert set(cli.commands) <= set(sections), set(cli.commands) - set(sections)


def test_global_options_match() -> None:
    documented = _documented_options(_spec_sections()["Global options"])
    assert documented == _code_options(cli) | {"-h", "--help"}


def test_command_options_match_the_spec() -> None:
    sections = _spec_sections()
    inherited = {
        "infer": sections["load"],
        "validate-all": sections["load"] + sections["infer"] + sections["detect"],
    }
    for name, command in cli.commands.items():
        documented = _documented_options(sections[name] + inherited.get(name, ""))
        code = _code_options(command) - {"--help", "-h"}
        if name != "exit-codes":
            documented |= GLOBAL
        missing_in_spec = code - documented
        assert not missing_in_spec, f"{name}: options not in specs/cli.md: {missing_in_spec}"
        # Every option the spec gives this command (not counting the ones inherited by reference) exists.
        own = _documented_options(sections[name]) - {"--version"}
        assert own <= code | {"--help"}, f"{name}: specified but missing in code: {own - code}"


def test_readme_first_lines_and_ci_agree() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    commands = [line.strip() for line in readme[1:6] if line.startswith("    ")]
    assert len(commands) == 2
    assert commands[0] == "./run kcuda-validate validate-all --setup"
    test_command = commands[1]
    assert test_command == "./run pytest"
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
    assert "ruff check" in ci and "ruff format --check" in ci
