"""The dev machine's CPU tokens for the 5 English clips, which benchmarks/gpu_bench.py compares the GPU's with.

    python benchmarks/cpu_tokens.py   # rewrites benchmarks/data/cpu_tokens_tiny_en.json

tiny.en exported as fp32 (attention=onnx) and fp16 (attention=onnx, matmul and onnxruntime), onnxruntime on the CPU; greedy,
beam 5 and greedy with timestamps, the clips decoded as one batch (what gpu_bench decodes).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reference_model import load_checkpoint  # noqa: E402
from whisper_export.runtime.audio import load_audio, log_mel_batch  # noqa: E402
from whisper_export.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from whisper_export.bundle import Bundle  # noqa: E402
from whisper_export.runtime.decoding import decode  # noqa: E402
from whisper_export.export.exporter import ExportOptions, export_bundle  # noqa: E402
from whisper_export.runtime.options import DecodingOptions  # noqa: E402

OPTIONS = {"greedy": DecodingOptions(without_timestamps=True),
           "beam5": DecodingOptions(beam_size=5, without_timestamps=True),
           "greedy_ts": DecodingOptions()}
VARIANTS = (("fp32", "onnx"), ("fp16", "onnx"), ("fp16", "matmul"), ("fp16", "onnxruntime"))


def main() -> None:
    clips = sorted((REPO / "tests" / "data").glob("en_*.wav"))
    mel = log_mel_batch([load_audio(p) for p in clips])
    ckpt = load_checkpoint()
    out: dict = {"files": [p.name for p in clips]}
    with tempfile.TemporaryDirectory() as tmp:
        for precision, attention in VARIANTS:
            path = export_bundle(ckpt, Path(tmp) / f"{precision}-{attention}",
                                 ExportOptions(precision=precision, attention=attention), progress=lambda _: None)
            bundle = Bundle.open(path)
            with OnnxRuntimeBackend(bundle) as backend:
                for key, options in OPTIONS.items():
                    out[f"{precision}-{attention}-{key}"] = [r.tokens for r in decode(backend, bundle.tokenizer(), mel, options)]
    target = REPO / "benchmarks" / "data" / "cpu_tokens_tiny_en.json"
    target.write_text(json.dumps(out) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
