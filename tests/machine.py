"""What this machine really has. Tests about "this machine" branch on it instead of assuming no GPU."""

from __future__ import annotations

import ctypes


def driver_present() -> bool:
    """An NVIDIA driver whose NVML library loads."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def inprocess_llama_has_gpu() -> bool:
    """This process's llama.cpp can offload (a CUDA build on a GPU box): it then puts compute buffers on the
    GPU even with 0 GPU layers, so host-placement figures can only be checked on CPU-only machines (CI)."""
    from kcuda_validate.llm.build import probe_llama_build

    return probe_llama_build(isolated=False).supports_gpu_offload


HOST_ONLY = "this process's llama.cpp offloads to a GPU: host-only buffer placement is checked on CPU-only machines"
