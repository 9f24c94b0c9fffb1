"""Peak memory of the long-form log-mel: MelSource (streamed) against long_form_mel (whole file), per duration.

    python benchmarks/mel_memory.py 5 180            # minutes of 16 kHz mono WAV; MelSource only
    python benchmarks/mel_memory.py 5 30 --whole     # also long_form_mel(path) on each

Each measurement runs in a fresh process (ru_maxrss is a process's peak): it walks every 30 s window as the
transcription loop does (seek += N_FRAMES), plus language_window() and frame_levels(). The WAV is synthesized
in blocks (a tone, a sweep and noise) into a temporary directory and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import numpy as np
from whisper_export.runtime.audio import N_FRAMES
from whisper_export.runtime.mel_source import MelSource
from whisper_export.runtime.transcribe import long_form_mel
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if sys.argv[2] == "stream":
    with MelSource(sys.argv[1], 80) as mel:
        mel.language_window(); mel.frame_levels()
        windows = sum(1 for seek in range(0, mel.content_frames, N_FRAMES) if mel.window(seek))
else:
    mel = long_form_mel(sys.argv[1], 80)
    windows = len(range(0, mel.shape[-1] - N_FRAMES, N_FRAMES))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"windows": windows, "seconds": time.perf_counter() - t0, "rss_before_mb": before / 1024,
                  "peak_rss_mb": peak / 1024}))
"""


def synthesize(path: Path, minutes: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rate, block = 16000, 16000 * 60
    total = int(minutes * 60 * rate)
    with soundfile.SoundFile(str(path), "w", rate, 1, subtype="PCM_16") as f:
        for start in range(0, total, block):
            t = np.arange(start, min(start + block, total)) / rate
            signal = 0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(t / 7)) * t) + 0.05 * rng.standard_normal(len(t))
            f.write(signal.astype(np.float32))


def measure(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), mode, str(REPO)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("minutes", nargs="+", type=float)
    parser.add_argument("--whole", action="store_true", help="also measure long_form_mel(path)")
    args = parser.parse_args()
    print(f"{'minutes':>8} {'mode':>7} {'windows':>8} {'seconds':>8} {'rss_before_MB':>14} {'peak_rss_MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = Path(tmp) / f"{minutes:g}min.wav"
            t0 = time.perf_counter()
            synthesize(path, minutes)
            print(f"# {path.name}: {path.stat().st_size / 1e6:.0f} MB written in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            for mode in ("stream", "whole") if args.whole else ("stream",):
                r = measure(path, mode)
                print(f"{minutes:>8g} {mode:>7} {r['windows']:>8} {r['seconds']:>8.1f} {r['rss_before_mb']:>14.0f} "
                      f"{r['peak_rss_mb']:>12.0f}", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
