"""What the NVML telemetry sampler costs generation: runs with and without it, alternated.

In the tool the sampler runs in the parent process while the worker child generates, so it competes
only for CPU time. This bench is harsher: sampler thread and decode loop share one process (and its
GIL). Without a GPU, the sampler reads a stand-in NVML module whose calls return constants, so what is
measured is the sampler's own Python and thread cost, not the driver's. With --gpu, the model is offloaded
to GPU 0 and the sampler reads the real driver.

With --tool (GPU only), the arrangement the tool really uses is measured instead: whole
`kcuda-validate infer --json` commands, sampler in the parent and decode in the worker, alternated with
`--no-telemetry`; the figure compared is the tool's own gen tok/s (llama.cpp perf counters and wall clock).

Run: python3 -m uv run python bench/bench_telemetry.py [--model PATH] [--gpu | --tool]
Goal: < 1% of generation tokens/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(__file__))
from _util import bench_env, machine, real_model, table, tool_cmd


class StandInNvml:
    """Answers the calls Nvml.sample makes, like a healthy driver would (no GPU here)."""

    class NVMLError(Exception):
        value = 999

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=97, memory=80)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=24 << 30, free=20 << 30, used=4 << 30)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 350_000

    def nvmlDeviceGetTemperature(self, h: int, s: int) -> int:
        return 65

    def nvmlDeviceGetClockInfo(self, h: int, c: int) -> int:
        return 2520

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return 123456789


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=None, help="generated tokens per run (96; 1024 with --tool)")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--gpu", action="store_true", help="offload to GPU 0 and sample the real driver")
    ap.add_argument("--tool", action="store_true", help="whole infer commands with and without --no-telemetry")
    args = ap.parse_args()
    model = args.model or real_model()
    if args.tool:
        # ~1 s per measured run at ~900 tok/s on an H100: the same-process runs (0.2 s) were too short to
        # tell a 1% cost from noise.
        tool_mode(model, args.tokens or 1024, args.pairs)
        return
    args.tokens = args.tokens or 96

    from kcuda_validate.gpu.nvml import Nvml
    from kcuda_validate.llm.inference import Inferencer
    from kcuda_validate.llm.loader import LoadOptions, ModelLoader
    from kcuda_validate.llm.measures import InferOptions
    from kcuda_validate.telemetry import TelemetrySampler

    loaded = ModelLoader(LoadOptions(n_ctx=1024, cpu_mode=not args.gpu)).load(model)
    if args.gpu and loaded.result.offload.status.value != "pass":
        raise SystemExit(f"not offloaded: {loaded.result.offload.line}")
    inf = Inferencer(loaded)
    opts = InferOptions(prompt="Tell me a long story.", max_tokens=args.tokens, ignore_eos=True, chat=False)
    tokens = inf.tokenize(opts.prompt)
    nvml = Nvml.open() if args.gpu else Nvml.open(StandInNvml())

    def plain() -> float:
        return inf.generate(tokens, opts).gen_tps_wall

    samples_taken: list[int] = []

    def sampled() -> float:
        sampler = TelemetrySampler(nvml, 0).start()
        tps = inf.generate(tokens, opts).gen_tps_wall
        samples_taken.append(sampler.stop().samples)
        return tps

    plain()
    sampled()
    a, b = [], []
    for _ in range(args.pairs):
        a.append(plain())
        b.append(sampled())
    loaded.close()
    ma, mb = statistics.median(a), statistics.median(b)
    where = "GPU 0, real NVML" if args.gpu else "CPU, stand-in NVML"
    print(f"Machine: {machine()}\nModel: {model.name} ({where}), {args.tokens} tokens, {args.pairs} alternated pairs\n")
    print(
        table(
            ["run", "median gen tok/s (wall)", "samples/run"],
            [
                ["without sampler", f"{ma:.2f}", "0"],
                ["with 10 Hz sampler (same process)", f"{mb:.2f}", f"{statistics.median(samples_taken):.0f}"],
            ],
        )
    )
    print(f"\ncost: {(1 - mb / ma) * 100:+.2f}% of generation speed (goal < 1%)")


def tool_mode(model: Path, tokens: int, pairs: int) -> None:
    import json
    import subprocess

    def once(*extra: str) -> tuple[float, float, int]:
        cmd = [*tool_cmd(), "--json", "infer", "--model-path", str(model), "--raw", "--max-tokens", str(tokens)]
        proc = subprocess.run([*cmd, "--repeat", "3", *extra], capture_output=True, text=True, env=bench_env())
        doc = json.loads(proc.stdout)
        if doc["exit_code"] != 0 or doc["device_mode"] != "gpu":
            raise SystemExit(f"infer did not pass on a GPU (exit {doc['exit_code']}): --tool needs a GPU box")
        m = doc["metrics"]
        return m["gen_tps"]["value"], m["gen_tps_wall"]["value"], doc["sections"].get("telemetry", {}).get("samples", 0)

    once()
    off, on = [], []
    for _ in range(pairs):
        off.append(once("--no-telemetry"))
        on.append(once())
    med = lambda runs, i: statistics.median(r[i] for r in runs)  # noqa: E731
    print(f"Machine: {machine()}\nModel: {model.name}, {tokens} tokens x 3 runs per command, {pairs} pairs\n")
    rows = [
        ["infer --no-telemetry", f"{med(off, 0):.1f}", f"{med(off, 1):.1f}", "0"],
        ["infer (10 Hz sampler in the parent)", f"{med(on, 0):.1f}", f"{med(on, 1):.1f}", f"{med(on, 2):.0f}"],
    ]
    print(table(["command", "gen tok/s (perf)", "gen tok/s (wall)", "samples"], rows))
    for i, what in ((0, "perf counters"), (1, "wall clock")):
        print(f"cost ({what}): {(1 - med(on, i) / med(off, i)) * 100:+.2f}% of generation speed (goal < 1%)")


if __name__ == "__main__":
    main()
