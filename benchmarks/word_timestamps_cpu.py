"""The cost of word timestamps on CPU transcription: WhisperRuntime with and without word_timestamps, in alternating
rounds in one process (the baseline measured in the same run), greedy and beam 5, on the bundled English clips (one
batch) and on dense speech (the clips three times over, 0.5 s apart: 30 s windows full of words), plus the time the
word step itself takes (word_windows.time_words: Backend.align_matrices or Backend.align and the numpy alignment
matrices, the DTW, the rules), measured
in the same runs: on a shared machine the ratio of two totals moves with the load, the step's own time less.

    python benchmarks/word_timestamps_cpu.py [--bundle DIR] [--rounds 5] [--threads N]

Prints one table: wall and process CPU seconds (medians over the rounds) without and with word timestamps and their
ratio; per transcription with words, the seconds in the word step and in Backend.align, and the word step's share
of the wall time without words; `host/win`: the word step without Backend.align (the numpy: alignment matrix, DTW,
words and rules) in milliseconds per window timed, the part that does not move to the accelerator."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _audios():
    from whisper_export.runtime.audio import SAMPLE_RATE, load_audio

    clips = [load_audio(p) for p in sorted((REPO / "tests" / "data").glob("en_*.wav"))]
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    dense = np.concatenate([part for _ in range(3) for clip in clips for part in (clip, gap)])
    return {"5 clips (batch)": clips, f"dense speech {len(dense) / SAMPLE_RATE:.0f} s": [dense]}


class _Timed:
    """Seconds spent in a function while installed (summed over calls)."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.seconds, self.windows = owner, name, 0.0, 0
        self.original = getattr(owner, name)

        def timed(*args, **kwargs):
            if name == "time_words":  # (backend, tokenizer, cross, windows)
                self.windows += len(args[3])
            t0 = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(owner, name, timed)

    def remove(self) -> None:
        setattr(self.owner, self.name, self.original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="an exported tiny.en bundle (default: exported on demand)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU figure (<= 10%%)")
    args = parser.parse_args()

    from whisper_export.runtime import transcribe
    from whisper_export.runtime.api import WhisperRuntime

    runtime = WhisperRuntime.load(args.bundle, threads=args.threads, device=args.device)
    print(f"{runtime!r}, {args.rounds} alternating rounds")
    print(f"{'audio':<22} {'decoding':<8} {'wall off':>9} {'wall on':>8} {'ratio':>6} {'cpu off':>8} {'cpu on':>7} "
          f"{'ratio':>6} {'words':>6} {'align':>6} {'share':>6} {'host/win':>8}")
    for name, audios in _audios().items():
        for mode, options in (("greedy", {}), ("beam 5", {"beam_size": 5})):
            options = dict(options, temperature=0.0)
            runtime.transcribe_batch(audios, word_timestamps=True, **options)  # warm: sessions, caches
            times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            aligns = [_Timed(runtime.backend, name) for name in ("align", "align_matrices")  # whichever runs
                      if hasattr(runtime.backend, name)]
            step = _Timed(transcribe, "time_words")
            for _ in range(args.rounds):
                for words in (False, True):
                    wall, cpu = time.perf_counter(), time.process_time()
                    runtime.transcribe_batch(audios, word_timestamps=words, **options)
                    times[words].append((time.perf_counter() - wall, time.process_time() - cpu))
            for timed in aligns:
                timed.remove()
            step.remove()
            align_seconds = sum(timed.seconds for timed in aligns)
            off, on = ([statistics.median(t[k] for t in times[w]) for k in (0, 1)] for w in (False, True))
            print(f"{name:<22} {mode:<8} {off[0]:>9.3f} {on[0]:>8.3f} {on[0] / off[0]:>6.3f} {off[1]:>8.3f} "
                  f"{on[1]:>7.3f} {on[1] / off[1]:>6.3f} {step.seconds / args.rounds:>6.3f} "
                  f"{align_seconds / args.rounds:>6.3f} {step.seconds / args.rounds / off[0]:>6.1%} "
                  f"{(step.seconds - align_seconds) / max(step.windows, 1) * 1e3:>8.1f}")
    runtime.close()


if __name__ == "__main__":
    main()
