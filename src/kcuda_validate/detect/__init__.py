"""The GPU detector: every layer of the CUDA stack, checked with evidence and fixes.

Layers: platform -> driver/NVML -> each GPU -> CUDA driver API -> PyTorch -> llama-cpp-python ->
minimums -> environment. Each check is a function of lazily gathered hardware facts (detect.facts)
that returns its `Check`s; the registry (detect.registry) orders them, and `run_detect` runs all of
them or the IDs asked for. The report's exit code is the most specific failure.
"""

from kcuda_validate.detect.facts import (
    DEFAULT_MIN_COMPUTE,
    DEFAULT_MIN_VRAM_GB,
    DetectOptions,
    DetectReport,
)
from kcuda_validate.detect.registry import CHECK_IDS, CHECKS, NODE_HEALTH, DetectCheck, run_detect
from kcuda_validate.gpu.nvml import parse_visible_devices

__all__ = [
    "CHECKS",
    "CHECK_IDS",
    "DEFAULT_MIN_COMPUTE",
    "DEFAULT_MIN_VRAM_GB",
    "NODE_HEALTH",
    "DetectCheck",
    "DetectOptions",
    "DetectReport",
    "parse_visible_devices",
    "run_detect",
]
