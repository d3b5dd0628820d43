"""Re-record the real CPU-build logs in this folder (not a test; run by hand).

    .venv/bin/python tests/data/llama_logs/capture_cpu.py /path/to/gemma-3-270m-q4_k_m.gguf

Loads the model through the tool's own ModelLoader (n_ctx 512) with --gpu-layers -1 and 0, and writes every line
llama.cpp logged during the load as `<level>|<text>`; for -1 it also writes the raw callback chunks (JSON lines
`[level, text]`) so tests can replay them through LlamaLogCapture.feed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kcuda_validate.llm.llamalog import LlamaLogCapture
from kcuda_validate.llm.loader import LoadOptions, ModelLoader

HERE = Path(__file__).resolve().parent


class RecordingCapture(LlamaLogCapture):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[tuple[int, str]] = []

    def feed(self, level: int, text: str) -> None:
        self.chunks.append((level, text))
        super().feed(level, text)


def main(model: Path) -> None:
    for ngl in (-1, 0):
        capture = RecordingCapture()
        loader = ModelLoader(LoadOptions(gpu_layers=ngl, n_ctx=512, cpu_mode=False), capture=capture)
        with loader.load(model) as loaded:
            lines = capture.lines
            print(f"ngl={ngl}: {len(lines)} lines, {len(capture.chunks)} chunks: {loaded.result.offload.line}")
        stem = f"cpu_gemma3_270m_ngl{ngl}"
        (HERE / f"{stem}.log").write_text("".join(f"{ln.level}|{ln.text}\n" for ln in lines), encoding="utf-8")
        if ngl == -1:
            with open(HERE / f"{stem}.chunks.jsonl", "w", encoding="utf-8") as fh:
                for level, text in capture.chunks:
                    fh.write(json.dumps([level, text], ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
