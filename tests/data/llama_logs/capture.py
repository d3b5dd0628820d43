"""Record what llama.cpp logs while loading a model (not a test; run by hand on the build to record).

    .venv/bin/python tests/data/llama_logs/capture.py MODEL --name cpu_gemma3_270m --ngl -1 0
    python3 tests/data/llama_logs/capture.py MODEL --name cuda_h100_gemma3_270m --ngl -1 4 --out DIR

Loads the model through the tool's own ModelLoader (n_ctx 512) once per --ngl value and writes every line
llama.cpp logged during the load to `<name>_ngl<N>.log` as `<level>|<text>`; for the first value it also
writes the raw callback chunks (JSON lines `[level, text]`) so tests can replay them through LlamaLogCapture.feed.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--name", required=True, help="file stem, e.g. cuda_h100_gemma3_270m")
    ap.add_argument("--ngl", type=int, nargs="+", default=[-1, 0])
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    for i, ngl in enumerate(args.ngl):
        capture = RecordingCapture()
        loader = ModelLoader(LoadOptions(gpu_layers=ngl, n_ctx=512, cpu_mode=False), capture=capture)
        with loader.load(args.model) as loaded:
            lines = capture.lines
            print(f"ngl={ngl}: {len(lines)} lines, {len(capture.chunks)} chunks: {loaded.result.offload.line}")
        stem = f"{args.name}_ngl{ngl}"
        text = "".join(f"{ln.level}|{ln.text}\n" for ln in lines)
        (args.out / f"{stem}.log").write_text(text, encoding="utf-8")
        if i == 0:
            with open(args.out / f"{stem}.chunks.jsonl", "w", encoding="utf-8") as fh:
                for level, text in capture.chunks:
                    fh.write(json.dumps([level, text], ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
