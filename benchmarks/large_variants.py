"""Whisper variants at their published sizes, with random weights: made, exported, checked, transcribed, timed.

CI keeps to small widths (tests/reference_model/test_variants.py, tests/whisper_export/export/test_variants_export.py);
this script runs the same steps at the exact dims of large-v3, large-v3-turbo, distil-large-v3 (any name in
reference_model/synthetic.VARIANTS), one step at a time, each a fresh ``whisper-export`` process whose wall time
and peak RSS are measured (whisper_export.bench.process), optionally under an address-space cap (prlimit --as).

    # 1. checkpoints: a Hugging Face dir by transformers (fp16, no tokenizer files), an OpenAI .pt, CTranslate2 dirs
    python benchmarks/large_variants.py make --work /work/scratch/variants --variants large-v3-turbo \
        --formats hf,openai,ct2-float16
    # 2. per format: export --fp16, check --quick, transcribe one clip (results appended to WORK/results.json)
    python benchmarks/large_variants.py verify --work /work/scratch/variants --variants large-v3-turbo \
        --formats hf,openai,ct2-float16 --max-memory-gb 12
    # 3. speed of a bundle or checkpoint on a device (the GPU figures: onnxruntime-gpu, no TensorRT needed)
    python benchmarks/large_variants.py speed --model WORK/large-v3/hf --device cuda --work /tmp/lv3 \
        --long-minutes 20 --transcribe-args "--beam-size 5"

``speed`` reports greedy ms/token at batch 1 and tokens/s at batch 16 (``whisper-export bench --systems ours``) and
the real-time factor of ``whisper-export transcribe`` on a long file made of the test clips and silences. A random
model never says <|endoftext|>: every window decodes to the token cap, so the real-time factor is a worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from whisper_export.bench.process import run_child_rusage  # noqa: E402

CLIP = REPO / "tests" / "data" / "en_fox.wav"
FORMATS = ("hf", "openai", "ct2-float16", "ct2-float32")


def checkpoint_path(work: Path, variant: str, fmt: str) -> Path:
    root = work / variant
    return {"hf": root / "hf", "openai": root / f"{variant}.pt"}.get(fmt, root / fmt)


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "cli", *map(str, args)]


TIME_V = "/usr/bin/time"
TIME_V_FIELDS = {"Maximum resident set size (kbytes)": "time_v_max_rss_kib",
                 "Elapsed (wall clock) time (h:mm:ss or m:ss)": "time_v_elapsed"}
TIME_V_ARGS: list[str] = []  # ["/usr/bin/time", "-v"] with --time-v


def _time_v_figures(stderr: str) -> dict:
    """GNU time -v's peak RSS and elapsed time from a step's stderr (its report is the last thing written)."""
    found = {}
    for line in stderr.splitlines():
        name, _, value = line.strip().rpartition(": ")
        if name in TIME_V_FIELDS:
            found[TIME_V_FIELDS[name]] = int(value) if value.isdigit() else value
    return found


def measured(argv: list[str], max_memory_gb: float | None, label: str) -> dict:
    """One whole process: wall s, peak RSS MiB, exit code; under an address-space cap when asked."""
    argv = [*TIME_V_ARGS, *argv]
    if max_memory_gb:
        argv = [shutil.which("prlimit") or "/usr/bin/prlimit", f"--as={int(max_memory_gb * 1e9)}", "--", *argv]
    print(f"[{label}] {shlex.join(argv)}", file=sys.stderr, flush=True)
    # the repository first, then the caller's path (where extra wheels such as onnxruntime-gpu may live)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    r = run_child_rusage(argv, env=env, cwd=str(REPO))
    print(f"[{label}] exit {r['returncode']}, {r['wall']:.1f} s, peak RSS {r['maxrss_mib'] / 1024:.2f} GiB",
          file=sys.stderr, flush=True)
    if r["returncode"] != 0:
        print(r["stderr"], file=sys.stderr)
    return {"step": label, "wall_s": round(r["wall"], 1), "peak_rss_gib": round(r["maxrss_mib"] / 1024, 2),
            "returncode": r["returncode"], **_time_v_figures(r["stderr"]), "stdout_tail": r["stdout"][-1500:],
            "stderr_tail": r["stderr"][-600:]}


# -- make ---------------------------------------------------------------------------------------------------------

MAKE_CHILD = r"""
import json, sys
from pathlib import Path
from reference_model import synthetic
args = json.loads(sys.argv[1])
dims = synthetic.VARIANTS[args["variant"]]
dims = synthetic.narrow(dims) if args["narrow"] else dims
out = Path(args["out"])
if args["format"] == "hf":
    synthetic.write_huggingface(dims, out, dtype="float16", seed=0)
elif args["format"] == "openai":
    synthetic.write_openai(Path(args["hf"]), out)
else:
    synthetic.write_ctranslate2(Path(args["hf"]), out, args["format"].split("-", 1)[1])
"""


def make(work: Path, variants: list[str], formats: list[str], max_memory_gb: float | None, narrow: bool,
         rows: list[dict]) -> list[dict]:
    for variant in variants:
        hf = checkpoint_path(work, variant, "hf")
        for fmt in ["hf", *[f for f in formats if f != "hf"]]:  # the others are made from the HF directory
            out = checkpoint_path(work, variant, fmt)
            if out.exists():
                print(f"[make] {out} exists; kept", file=sys.stderr)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            args = {"variant": variant, "format": fmt, "out": str(out), "hf": str(hf), "narrow": narrow}
            row = measured([sys.executable, "-c", MAKE_CHILD, json.dumps(args)], max_memory_gb, f"make {variant} {fmt}")
            rows.append({"variant": variant, "format": fmt, **row, "bytes": _size(out)})
    return rows


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# -- verify -------------------------------------------------------------------------------------------------------


def verify(work: Path, variants: list[str], formats: list[str], max_memory_gb: float | None, device: str,
           threads: int, keep_bundles: bool, reuse_bundles: bool, rows: list[dict]) -> list[dict]:
    """Per checkpoint: export --fp16, check --quick on the clip, transcribe the clip (greedy, one temperature)."""
    for variant in variants:
        for fmt in formats:
            model = checkpoint_path(work, variant, fmt)
            if not model.exists():
                print(f"[verify] {model} missing: run make first", file=sys.stderr)
                continue
            bundle = work / variant / f"bundle-{fmt}-fp16"
            reused = reuse_bundles and (bundle / "manifest.json").is_file()
            if reused:
                print(f"[verify] {bundle} exists; kept, not exported again", file=sys.stderr)
            steps = [
                *([] if reused else [("export", cli("export", "--model", model, "--out", bundle, "--fp16",
                                                    "--overwrite"))]),
                ("check", cli("check", "--bundle", bundle, "--quick", "--audio", CLIP, "--seed", 0)),
                ("transcribe", cli("transcribe", CLIP, "--bundle", bundle, "--device", device, "--language", "en",
                                   "--beam-size", 1, "--temperature", 0, "--threads", threads)),
            ]
            for step, argv in steps:
                row = measured(argv, max_memory_gb, f"{step} {variant} {fmt}")
                if step == "export":
                    row["bundle_bytes"] = _size(bundle)
                    row["files"] = sorted(p.name for p in bundle.iterdir()) if bundle.exists() else []
                if step == "check":
                    row["passed"] = row["returncode"] == 0 and row["stdout_tail"].strip().endswith("PASS")
                rows.append({"variant": variant, "format": fmt, "bundle_reused": reused, **row})
                if row["returncode"] != 0:
                    break
            if not keep_bundles:
                shutil.rmtree(bundle, ignore_errors=True)
    return rows


# -- speed --------------------------------------------------------------------------------------------------------


def long_audio(path: Path, minutes: float) -> float:
    """A long file: the test clips in turn with 0.5-3 s silences between them (what a VAD cuts), 16 kHz mono."""
    import numpy as np
    import soundfile as sf

    clips = [sf.read(p, dtype="float32")[0] for p in sorted((REPO / "tests" / "data").glob("*.wav"))]
    rng = np.random.default_rng(0)
    parts, total = [], 0
    while total < minutes * 60 * 16000:
        clip = clips[len(parts) // 2 % len(clips)]
        silence = np.zeros(int(rng.uniform(0.5, 3.0) * 16000), np.float32)
        parts += [clip, silence]
        total += len(clip) + len(silence)
    audio = np.concatenate(parts)[: int(minutes * 60 * 16000)]
    sf.write(path, audio, 16000)
    return len(audio) / 16000


def speed(work: Path, bundle: Path | None, model: Path | None, device: str, long_minutes: float,
          transcribe_args: str, threads: int, max_memory_gb: float | None, rows: list[dict]) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        bundle = work / f"bundle-{device}"
        attention = ["--attention", "onnxruntime"] if device == "cuda" else []  # the GPU's on-demand form; CPU runs here keep the standard operators, as measured before
        rows.append(measured(cli("export", "--model", model, "--out", bundle, "--fp16", "--overwrite", *attention),
                             max_memory_gb, "export"))
    report = work / f"bench-{device}.json"
    row = measured(cli("bench", CLIP, "--bundle", bundle, "--device", device, "--systems", "ours", "--batch-sizes",
                       "1,16", "--no-e2e", "--threads", threads, "--out", report), max_memory_gb, "bench")
    if report.is_file():
        table = {r["key"]: r["ours"] for r in json.loads(report.read_text())["table"]}
        row.update(ms_per_token_b1=table.get("greedy_b1_ms_per_token"),
                   tokens_per_s_b16=table.get("greedy_b16_tokens_per_s"), encoder_ms=table.get("encoder_ms"))
    rows.append(row)
    audio = work / f"long-{long_minutes:g}min.wav"
    seconds = long_audio(audio, long_minutes)
    row = measured(cli("transcribe", audio, "--bundle", bundle, "--device", device, "--language", "en",
                       "--threads", threads, "--output-format", "json", "--output-dir", work / "long-out",
                       *shlex.split(transcribe_args)), max_memory_gb, "transcribe long")
    row.update(audio_s=seconds, real_time_factor=round(row["wall_s"] / seconds, 4))
    out_json = work / "long-out" / f"{audio.stem}.json"
    if out_json.is_file():
        segments = json.loads(out_json.read_text())["segments"]
        row.update(segments=len(segments), tokens=sum(len(s.get("tokens", ())) for s in segments))
    rows.append(row)
    return rows


class RecordedRows(list):
    """Rows written to WORK/results.json as each is appended, so that an interrupted run keeps its finished steps."""

    def __init__(self, results: Path, entry: dict) -> None:
        super().__init__()
        self.results = results
        self.history = json.loads(results.read_text()) if results.is_file() else []
        self.history.append({**entry, "rows": self})
        self.save()

    def append(self, row: dict) -> None:
        super().append(row)
        self.save()

    def save(self) -> None:
        partial = self.results.with_suffix(".json.tmp")
        partial.write_text(json.dumps(self.history, indent=2))
        partial.rename(self.results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["make", "verify", "speed"])
    p.add_argument("--work", type=Path, required=True, help="where checkpoints, bundles and results go (not git)")
    p.add_argument("--variants", default="large-v3,large-v3-turbo,distil-large-v3")
    p.add_argument("--formats", default="hf,openai,ct2-float16", help=f"subset of {','.join(FORMATS)}")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-memory-gb", type=float, default=None, help="address-space cap of each step (prlimit --as)")
    p.add_argument("--narrow", action="store_true", help="make: the variants' structure at width 64 (a dry run)")
    p.add_argument("--time-v", action="store_true", help=f"run each step under {TIME_V} -v and record its figures")
    p.add_argument("--reuse-bundles", action="store_true",
                   help="verify: check and transcribe an already exported bundle instead of exporting it again")
    p.add_argument("--keep-bundles", action="store_true", help="verify: keep the exported bundles")
    p.add_argument("--bundle", type=Path, help="speed: an exported bundle")
    p.add_argument("--model", type=Path, help="speed: a checkpoint, exported --fp16 first (no --bundle)")
    p.add_argument("--long-minutes", type=float, default=20.0)
    p.add_argument("--transcribe-args", default="", help="speed: extra transcribe options, e.g. the VAD mode's")
    a = p.parse_args()
    variants, formats = a.variants.split(","), a.formats.split(",")
    from reference_model.synthetic import VARIANTS

    bad = [v for v in variants if v not in VARIANTS] + [f for f in formats if f not in FORMATS]
    if bad:
        p.error(f"received {bad}, expected variants from {sorted(VARIANTS)} and formats from {FORMATS}")
    if a.mode == "speed" and (a.bundle is None) == (a.model is None):
        p.error("speed: received neither or both of --bundle and --model, expected one")
    if a.time_v:
        TIME_V_ARGS[:] = [TIME_V, "-v"]
    a.work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows = RecordedRows(a.work / "results.json", {"mode": a.mode, "started": started, "argv": sys.argv[1:]})
    if a.mode == "make":
        make(a.work, variants, formats, a.max_memory_gb, a.narrow, rows)
    elif a.mode == "verify":
        verify(a.work, variants, formats, a.max_memory_gb, a.device, a.threads, a.keep_bundles or a.reuse_bundles,
               a.reuse_bundles, rows)
    else:
        speed(a.work, a.bundle, a.model, a.device, a.long_minutes, a.transcribe_args, a.threads, a.max_memory_gb,
              rows)
    for row in rows:
        keep = {k: v for k, v in row.items() if not k.endswith("_tail") and k != "files"}
        print(json.dumps(keep))
    if any(r["returncode"] != 0 for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
