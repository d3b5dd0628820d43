"""examples/: every Kubernetes manifest passes a client-side schema validation (kubernetes-validate's bundled
schemas, strict: no unknown fields; there is no cluster here), the node-problem-detector config has the custom
plugin's shape, and every kcuda-validate command line the examples run parses with the real CLI."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kcuda_validate.cli import cli
from kcuda_validate.nodehealth import DEFAULT_TIMEOUT_S, MAX_LINE

pytestmark = pytest.mark.fleet

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MANIFESTS = sorted((EXAMPLES / "kubernetes").glob("*.yaml"))
TOOL = "/opt/kcuda-validate/bin/kcuda-validate"


def _parses(args: list[str]) -> None:
    """The command line parses with the real CLI (options exist, values valid); nothing runs."""
    command = cli.commands[args[0]]
    with command.make_context(args[0], list(args[1:])) as ctx:
        assert ctx.command is command


def test_there_are_manifests() -> None:
    assert [p.name for p in MANIFESTS] == ["gpu-validation-daemonset.yaml", "validate-job.yaml"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_an_unknown_field_is_caught() -> None:
    """The validation is not a formality: a typo in a pod spec fails it."""
    doc = yaml.safe_load((EXAMPLES / "kubernetes" / "validate-job.yaml").read_text())
    doc["spec"]["template"]["spec"]["nodeSelektor"] = {"nvidia.com/gpu.present": "true"}
    with pytest.raises(kubernetes_validate.ValidationError, match="nodeSelektor"):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_the_job_and_the_gate_run_validate_all() -> None:
    job = yaml.safe_load((EXAMPLES / "kubernetes" / "validate-job.yaml").read_text())
    gate, consumer = yaml.safe_load_all((EXAMPLES / "kubernetes" / "gpu-validation-daemonset.yaml").read_text())
    assert (job["kind"], gate["kind"], consumer["kind"]) == ("Job", "DaemonSet", "Deployment")
    (validate,) = _containers(job)
    assert validate["args"][0] == "validate-all"
    _parses(validate["args"])
    # --all-devices checks the GPUs the pod was given: more than one, or it would check one GPU per node.
    assert "--all-devices" in validate["args"] and validate["resources"]["limits"]["nvidia.com/gpu"] > 1
    init = gate["spec"]["template"]["spec"]["initContainers"][0]
    ready = init["args"][init["args"].index("--ready-file") + 1]
    assert init["args"][0] == "validate-all"
    # The consumer's init container waits for the very file the gate writes, on the same host path.
    wait = consumer["spec"]["template"]["spec"]["initContainers"][0]
    assert f"[ -f {ready} ]" in wait["command"][-1]
    host = {v["name"]: v["hostPath"]["path"] for v in gate["spec"]["template"]["spec"]["volumes"]}
    host_consumer = {v["name"]: v["hostPath"]["path"] for v in consumer["spec"]["template"]["spec"]["volumes"]}
    assert host["validations"] == host_consumer["validations"] == str(Path(ready).parent)


NPD_SCHEMA = {
    "type": "object",
    "required": ["plugin", "pluginConfig", "source", "conditions", "rules"],
    "additionalProperties": False,
    "properties": {
        "plugin": {"const": "custom"},
        "pluginConfig": {
            "type": "object",
            "required": ["invoke_interval", "timeout", "max_output_length"],
            "additionalProperties": False,
            "properties": {
                "invoke_interval": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                "timeout": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                "max_output_length": {"type": "integer", "minimum": 1},
                "concurrency": {"type": "integer", "minimum": 1},
                "enable_message_change_based_condition_update": {"type": "boolean"},
            },
        },
        "source": {"type": "string", "minLength": 1},
        "metricsReporting": {"type": "boolean"},
        "conditions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "reason", "message"],
                "additionalProperties": False,
                "properties": {"type": {"type": "string"}, "reason": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "rules": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "reason", "path", "timeout"],
                "additionalProperties": False,
                "properties": {
                    "type": {"enum": ["temporary", "permanent"]},
                    "condition": {"type": "string"},
                    "reason": {"type": "string"},
                    "path": {"type": "string", "pattern": "^/"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "timeout": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                },
            },
        },
    },
}


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)", text).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def test_npd_config_has_the_custom_plugin_shape_and_fits_health() -> None:
    config = json.loads((EXAMPLES / "kubernetes" / "npd-kcuda-health.json").read_text())
    jsonschema.validate(config, NPD_SCHEMA)
    assert config["pluginConfig"]["max_output_length"] == MAX_LINE
    conditions = {c["type"] for c in config["conditions"]}
    for rule in config["rules"]:
        assert rule["path"] == TOOL
        _parses(rule["args"])
        assert rule["args"][0] == "health"
        # health answers (exit 124 'unknown' at worst) before NPD would kill it.
        assert DEFAULT_TIMEOUT_S < _seconds(rule["timeout"]) <= _seconds(config["pluginConfig"]["timeout"])
        if rule["type"] == "permanent":
            assert rule["condition"] in conditions


def test_nhc_line_runs_health_inside_nhc_timeout() -> None:
    lines = [ln for ln in (EXAMPLES / "nhc" / "kcuda.conf").read_text().splitlines() if ln and not ln.startswith("#")]
    (line,) = lines
    target, _, check = (part.strip() for part in line.partition("||"))
    assert target == "gpu*"
    words = shlex.split(check)
    assert words[:5] == ["check_cmd_status", "-t", "25", "-r", "0"]
    assert words[5] == TOOL
    _parses(words[6:])
    assert float(words[words.index("--timeout") + 1]) < float(words[2]) < 30


def test_slurm_wrapper_is_valid_sh_and_runs_health_slurm() -> None:
    script = EXAMPLES / "slurm" / "kcuda-healthcheck.sh"
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    assert script.stat().st_mode & 0o111
    (exec_line,) = [ln for ln in script.read_text().splitlines() if ln.startswith("exec ")]
    assert shlex.split(exec_line)[2:] == ["health", "--slurm", "$@"]
    _parses(["health", "--slurm"])


def test_container_recipe_builds_the_engine_for_the_common_archs_with_setup() -> None:
    text = (EXAMPLES / "container" / "Dockerfile").read_text().replace("\\\n", " ")
    (setup,) = [ln for ln in text.splitlines() if ln.startswith("RUN") and "kcuda-validate setup" in ln]
    args = shlex.split(setup.split("kcuda-validate ", 1)[1].split("&&")[0])
    _parses(args)
    assert args[args.index("--arch") + 1] == "80,86,89,90"
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-devel-", text, re.M)


def test_github_actions_example_builds_the_engine_with_setup_and_parses() -> None:
    """The runner needs no CUDA toolkit: `validate-all --setup` builds the engine; no hand CMAKE_ARGS build."""
    workflow = yaml.safe_load((EXAMPLES / "github-actions-gpu.yml").read_text())
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    tool = [shlex.split(r.split("kcuda-validate ", 1)[1]) for r in runs if "kcuda-validate " in r]
    assert tool and all(args[0] == "validate-all" and "--setup" in args for args in tool)
    for args in tool:
        _parses(args)
    assert not any("CMAKE_ARGS" in r for r in runs)
