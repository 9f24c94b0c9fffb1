"""Whole-process runs: each system started fresh by a launcher, its wall time and peak RSS from wait4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# -- whole-process runs ---------------------------------------------------------------------------------------

FASTER_WHISPER_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import faster_whisper
t1 = time.perf_counter()
args = json.loads(sys.argv[1])
model = faster_whisper.WhisperModel(args["model"], device="cpu", compute_type="float32", cpu_threads=args["threads"])
t2 = time.perf_counter()
tokens = []
for f in args["files"]:
    segments, _ = model.transcribe(f, beam_size=1, without_timestamps=True, condition_on_previous_text=False,
                                   temperature=0, language="en" if args.get("language") else None)
    tokens.append([t for s in segments for t in s.tokens])
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "transcribe": t3 - t2, "tokens": tokens}))
"""

TRANSFORMERS_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, soundfile, torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
t1 = time.perf_counter()
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
model = WhisperForConditionalGeneration.from_pretrained(args["model"]).eval()
fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
t2 = time.perf_counter()
tokens = []
eot = model.config.eos_token_id
for f in args["files"]:
    audio, rate = soundfile.read(f, dtype="float32")
    assert rate == 16000, rate
    # the window openai-whisper/faster-whisper/whisper-export decode: log-mel of audio + 30 s of zeros, cut to
    # the audio's frames, padded with 0.0
    full = fe(np.concatenate([audio, np.zeros(480000, np.float32)]), sampling_rate=16000, padding="longest",
              truncation=False, return_tensors="np").input_features[0]
    n = min(len(audio) // 160, 3000)
    window = np.zeros((full.shape[0], 3000), np.float32)
    window[:, :n] = full[:, :n]
    with torch.inference_mode():
        out = model.generate(torch.from_numpy(window[None]), num_beams=1, do_sample=False)
    tokens.append([t for t in out[0].tolist() if t < eot])
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "transcribe": t3 - t2, "tokens": tokens}))
"""


# A forked child's ru_maxrss starts at its parent's RSS (Linux keeps the high-water mark across exec), and this
# process is large (models loaded): so each whole-process run is started by a small launcher process and its
# wall time and peak RSS come from the launcher's wait4.
LAUNCHER = r"""
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(report, "w") as f:
    json.dump({"wall": wall, "returncode": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss,
               "cpu": usage.ru_utime + usage.ru_stime}, f)
"""


def run_child_rusage(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """Wall seconds, peak RSS (MiB) and output of one whole process (argv[0] an executable path)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        with open(os.path.join(tmp, "out"), "w+") as out, open(os.path.join(tmp, "err"), "w+") as err:
            launcher = subprocess.run([sys.executable, "-c", LAUNCHER, report, *argv], stdout=out, stderr=err,
                                      env=env, cwd=cwd)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        try:
            with open(report) as f:
                r = json.load(f)
        except (OSError, ValueError):
            r = {"wall": float("nan"), "returncode": launcher.returncode or 1, "maxrss_kib": 0}
    return {"wall": r["wall"], "returncode": r["returncode"], "maxrss_mib": r["maxrss_kib"] / 1024,
            "cpu_s": r.get("cpu", float("nan")), "stdout": stdout, "stderr": stderr[-2000:]}


def _parse_child_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return {}
