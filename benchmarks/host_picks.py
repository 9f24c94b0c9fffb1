"""Host work of a window that beam search or best_of decodes, on the CPU (issue 14's per-window host cost).

    python benchmarks/host_picks.py --bundle B [--root OTHER_CHECKOUT] [--threads 2] [--long AUDIO]

1. take_prompt of one window (the G = 5 rows of its prompt logits): beam 5 with timestamps, and best_of 5 at
   temperature 0.4; one sampling step of 5 rows at temperature 0.4; one beam-search update of 5 beams (best of
   5 repeats).
2. the CPU backend's prompt step of a 5-row group at 4, 60 and 150 tokens: the 5 rows holding one prompt (run once
   and copied, ort_cpu._decode_shared) against 5 different prompts of the same width (every row computed).
3. with --long: that audio transcribed with the CLI's decoding (beam 5, timestamps, fallback; seed 0), twice.

--root runs the same measurements on another checkout's code (e.g. `git worktree add /tmp/old HEAD~2`), for an
A/B in one session; item 2's "different prompts" row is the in-run baseline of the shared prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import timeit
from pathlib import Path


def _best_ms(fn, number: int = 50) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long", default=None)
    args = parser.parse_args()
    sys.path.insert(0, args.root)

    import numpy as np

    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.backends.step import StepRequest
    from whisper_export.bundle import Bundle
    from whisper_export.runtime.decoding import WindowDecode
    from whisper_export.runtime.options import DecodingOptions
    from whisper_export.runtime.sampling import BeamSearchDecoder, GreedyDecoder

    bundle = Bundle.open(args.bundle)
    tokenizer, dims = bundle.tokenizer(), bundle.dims
    rng = np.random.default_rng(0)
    prompt_logits = np.repeat((rng.standard_normal((1, 2, dims.n_vocab)) * 3).astype(np.float32), 5, axis=0)
    print(f"code: {args.root}")
    for name, options in (("beam 5", DecodingOptions(beam_size=5)),
                          ("best_of 5, T 0.4", DecodingOptions(temperature=0.4, best_of=5))):
        def take(o=options):
            WindowDecode(tokenizer, dims, o, "en").take_prompt(prompt_logits)
        print(f"take_prompt, {name}: {_best_ms(take):.3f} ms")
    decoder = GreedyDecoder(0.4, tokenizer.special.eot, np.random.default_rng(1))
    logits = (rng.standard_normal((5, dims.n_vocab)) * 3).astype(np.float32)
    tokens, sums = np.zeros((5, 10), np.int64), np.zeros(5)
    print(f"sampling step, 5 rows, T 0.4: {_best_ms(lambda: decoder.update(tokens, logits, sums)):.3f} ms")
    beams = rng.integers(200, 20000, (5, 60))  # 5 different beams of 60 tokens
    top = rng.integers(200, 20000, (5, 6))
    top_logprobs = -np.sort(rng.random((5, 6)) * 3, axis=1)

    def beam_update():
        BeamSearchDecoder(5, tokenizer.special.eot).update_top(beams, top, top_logprobs, np.zeros(5))
    print(f"beam update, 5 beams of 60 tokens (update_top): {_best_ms(beam_update, 500) * 1e3:.1f} us")

    backend = OnnxRuntimeBackend(bundle, threads=args.threads)
    cross = backend.encode(np.zeros((1, dims.n_mels, 3000), np.float32))
    for width in (4, 60, 150):
        cache = backend.new_cache(5, dims.n_text_ctx)
        same = np.repeat(rng.integers(0, 50000, (1, width)), 5, axis=0)
        different = rng.integers(0, 50000, (5, width))
        times = []
        for tokens_in in (same, different):
            request = StepRequest(tokens_in, np.zeros(5, np.int64), 0, 5, positions=np.asarray([0, width - 1]))
            times.append(_best_ms(lambda r=request: backend.step(r, cache, cross), number=3))
        print(f"prompt of 5 rows x {width} tokens: one prompt {times[0]:.1f} ms, 5 prompts {times[1]:.1f} ms")

    if args.long:
        from whisper_export.runtime.api import WhisperRuntime

        runtime = WhisperRuntime.load(args.bundle, device="cpu", threads=args.threads)
        for _ in range(2):
            start = time.perf_counter()
            result = runtime.transcribe_batch([args.long], beam_size=5, seed=0)[0].result
            digest = hashlib.md5(result.text.encode()).hexdigest()[:10]
            print(f"long-form, beam 5: {time.perf_counter() - start:.2f} s, {len(result.segments)} segments, "
                  f"text md5 {digest}")


if __name__ == "__main__":
    main()
