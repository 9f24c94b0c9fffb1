"""int8 bundles against faster-whisper int8 and our fp32, on many real-length clips (issue 17).

    python benchmarks/int8_bench.py [--models tiny.en,base] [--clips 121] [--repeats 2] [--threads 2]
                                    [--device cpu|cuda] [--work DIR] [--out int8_bench.json]

Rerunnable: every step is cached in --work (default $WHISPER_EXPORT_CACHE_DIR or ~/.cache/whisper-export, then
int8-bench/) and redone only when missing:
1. clips: --clips English clips of 2-20 s synthesised with espeak-ng (several voices and speeds; sox to 16 kHz
   mono) from benchmarks/data/int8_sentences.txt (seeded), and refs.tsv (audio<TAB>text) beside them;
2. per model: our float and int8 bundles (CPU: fp32 and ``export --int8``; CUDA: fp16 and quantize="int8-nbits";
   all on onnxruntime's fused operators, export/on_demand.py's choice) and the same packaged weights as CTranslate2 models for faster-whisper
   (saved as a Hugging Face directory, then ctranslate2's converter: quantization="int8", and "float32" with
   --float-baseline);
3. whole-process runs, interleaved round-robin (--repeats rounds): ``whisper-export transcribe`` on the bundle
   (greedy, temperature 0, no timestamps, --threads, --batch-size) and faster-whisper (compute_type int8 on a CPU,
   int8_float16 on CUDA; float32 / float16 for the float baseline; cpu_threads, beam_size 1, temperature 0, no
   timestamps, no conditioning on previous text), each started by a launcher that reads its wall time and peak
   RSS from wait4;
4. WER of each system against the references (openai-whisper's English normaliser, runtime/normalizers.py),
   bundle sizes, and a table with the ratios against faster-whisper int8 of the same round.
Needs espeak-ng and sox (apt-get install -y espeak-ng sox), faster-whisper, ctranslate2, transformers, and for
base the base extra (pip install ".[base]").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SENTENCES = REPO / "benchmarks" / "data" / "int8_sentences.txt"
VOICES = ["en-us", "en", "en-us+f3", "en+m3", "en-029", "en-gb-scotland", "en-us+m5", "en+f2"]
MAX_SECONDS, MIN_SECONDS = 20.0, 2.0

FASTER_WHISPER_CHILD = r"""
import json, sys
import faster_whisper
args = json.loads(sys.argv[1])
model = faster_whisper.WhisperModel(args["model"], device=args["device"], compute_type=args["compute_type"],
                                    cpu_threads=args["threads"])
texts = []
for f in args["files"]:
    segments, _ = model.transcribe(f, beam_size=1, without_timestamps=True, condition_on_previous_text=False,
                                   temperature=0, language=args["language"])
    texts.append("".join(s.text for s in segments).strip())
print(json.dumps({"texts": texts}))
"""


def _log(message: str) -> None:
    print(f"[int8-bench] {message}", file=sys.stderr, flush=True)


def _seconds(path: Path) -> float:
    return float(subprocess.run(["soxi", "-D", str(path)], check=True, capture_output=True, text=True).stdout)


def _synthesise(text: str, voice: str, speed: int, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
        subprocess.run(["sox", "-G", "-D", str(raw), "-b", "16", "-c", "1", "-r", "16000", "-e", "signed-integer",
                        str(out)], check=True)


def _clip_text(rng: random.Random, sentences: list[str]) -> str:
    """A fragment of a sentence (a short clip), or one to four whole sentences."""
    if rng.random() < 0.15:
        words = rng.choice(sentences).rstrip(".?").split()
        return " ".join(words[: rng.randint(4, 7)])
    return " ".join(rng.sample(sentences, rng.randint(1, 4)))


def make_clips(work: Path, n: int, seed: int) -> Path:
    """refs.tsv of n espeak-ng clips of 2-20 s under work/clips (kept when already made with this seed)."""
    clips = work / f"clips-{n}-{seed}"
    refs = clips / "refs.tsv"
    if refs.is_file():
        return refs
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip() and not s.startswith("#")]
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix=".clips-", dir=work))
    lines = []
    for i in range(n):
        text, voice, speed = _clip_text(rng, sentences), rng.choice(VOICES), rng.randint(140, 170)
        path = tmp / f"clip{i:03d}.wav"
        _synthesise(text, voice, speed, path)
        while _seconds(path) > MAX_SECONDS:  # drop the last sentence until it fits
            text = text.rsplit(". ", 1)[0] + "."
            _synthesise(text, voice, speed, path)
        if _seconds(path) < MIN_SECONDS:
            text = text + " " + rng.choice(sentences)
            _synthesise(text, voice, speed, path)
        lines.append(f"{path.name}\t{text}")
    (tmp / "refs.tsv").write_text("\n".join(lines) + "\n")
    tmp.rename(clips)
    return refs


# our bundles per device: the float one that device runs fastest (export/on_demand.py's choice) and the int8 one
VARIANTS = {
    "cpu": {"fp32": {"attention": "onnxruntime"}, "int8": {"attention": "onnxruntime", "quantize": "int8"}},
    # onnxruntime's CUDA provider has no DynamicQuantizeLinear kernel; MatMulNBits runs there (export/quantize.py)
    "cuda": {"fp16": {"precision": "fp16", "attention": "onnxruntime"},
             "int8": {"precision": "fp16", "attention": "onnxruntime", "quantize": "int8-nbits"}},
}


def export_bundles(model: str, work: Path, device: str) -> dict[str, Path]:
    from reference_model import load_checkpoint
    from whisper_export.export.exporter import ExportOptions, export_bundle

    out = {}
    for variant, options in VARIANTS[device].items():
        attention = "" if options.get("attention", "onnx") == "onnx" else f"-{options['attention']}"
        target = work / f"bundle-{model}-{device}-{variant}{attention}"
        if not (target / "manifest.json").is_file():
            _log(f"exporting {model} {variant} for {device}")
            export_bundle(load_checkpoint(model), target, ExportOptions(**options, overwrite=True), progress=lambda _: None)
        out[variant] = target
    return out


def ctranslate2_model(model: str, work: Path, quantization: str) -> Path:
    """Our packaged weights as a CTranslate2 model of that quantization (what faster-whisper users convert)."""
    import ctranslate2

    from reference_model import load_checkpoint
    from reference_model.huggingface import save_huggingface

    target = work / f"ct2-{model}-{quantization}"
    if not (target / "model.bin").is_file():
        _log(f"converting {model} to CTranslate2 {quantization}")
        hf = work / f"hf-{model}"
        if not (hf / "config.json").is_file():
            save_huggingface(load_checkpoint(model), hf)
        ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(
            str(target), quantization=quantization, force=True)
    return target


def size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


def commands(bundles: dict[str, Path], ct2: dict[str, Path], files: list[str], threads: int, device: str,
             english_only: bool, batch_size: int) -> dict[str, list[str]]:
    """ct2: CTranslate2 models by compute type of faster-whisper ("int8", and "float32" for the float baseline)."""
    language = [] if english_only else ["--language", "en"]
    ours = {f"ours-{v}": [sys.executable, "-m", "cli", "transcribe", *files, "--bundle", str(b), "--beam-size", "1",
                          "--without-timestamps", "--temperature", "0", "--threads", str(threads), "--device", device,
                          "--batch-size", str(batch_size), *language] for v, b in bundles.items()}
    theirs = {}
    for compute_type, path in ct2.items():
        on_device = compute_type if device == "cpu" else {"int8": "int8_float16", "float32": "float16"}[compute_type]
        fw_args = {"model": str(path), "files": files, "threads": threads, "device": device,
                   "compute_type": on_device, "language": None if english_only else "en"}
        theirs[f"faster-whisper-{compute_type}"] = [sys.executable, "-c", FASTER_WHISPER_CHILD, json.dumps(fw_args)]
    return {**ours, **theirs}


def texts_of(name: str, stdout: str, files: list[str]) -> list[str]:
    """The texts in the order of files. Ours prints path<TAB>text per file as each finishes (several files)."""
    if name.startswith("ours"):
        by_path = dict(line.split("\t", 1) for line in stdout.splitlines() if "\t" in line)
        return [by_path.get(f, "") for f in files]
    return json.loads(stdout.strip().splitlines()[-1])["texts"]


def measure(model: str, refs_tsv: Path, work: Path, threads: int, device: str, repeats: int, batch_size: int,
            float_baseline: bool) -> dict:
    from whisper_export.bench.process import run_child_rusage
    from whisper_export.checks.wer import corpus_wer, read_references
    from whisper_export.runtime.normalizers import EnglishTextNormalizer

    refs = read_references(refs_tsv)
    files = [str(r.audio) for r in refs]
    bundles = export_bundles(model, work, device)
    ct2 = {q: ctranslate2_model(model, work, q) for q in ("int8", "float32")[:1 + float_baseline]}
    english_only = model.endswith(".en")
    argvs = commands(bundles, ct2, files, threads, device, english_only, batch_size)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    runs: dict[str, list[dict]] = {name: [] for name in argvs}
    for round_ in range(repeats):
        for name, argv in argvs.items():
            _log(f"{model} round {round_ + 1}/{repeats}: {name}")
            run = run_child_rusage(argv, env=env, cwd=str(REPO))
            if run["returncode"] != 0:
                raise RuntimeError(f"{name} failed ({run['returncode']}): {run['stderr'][-1500:]}")
            runs[name].append(run)
    normalize = EnglishTextNormalizer()
    truth = [normalize(r.text) for r in refs]
    result: dict = {"clips": len(files), "audio_seconds": sum(_seconds(Path(f)) for f in files), "systems": {}}
    for name, rs in runs.items():
        texts = texts_of(name, rs[-1]["stdout"], files)
        assert len(texts) == len(files), (name, len(texts))
        result["systems"][name] = {
            "walls": [r["wall"] for r in rs], "wall_s": statistics.median(r["wall"] for r in rs),
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "peak_rss_mib": max(r["maxrss_mib"] for r in rs), "wer": corpus_wer(truth, [normalize(t) for t in texts]),
            "texts": texts}
    result["sizes_mb"] = {**{f"ours-{v}": size_mb(b) for v, b in bundles.items()},
                          **{f"faster-whisper-{q}": size_mb(path) for q, path in ct2.items()}}
    return result


def table(results: dict) -> str:
    rows = ["| model | system | whole process (s) | faster-whisper int8 / this | CPU time (s) | faster-whisper int8 / this "
            "| WER | peak RSS (MiB) | size (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for model, r in results.items():
        fw, fw_cpu = (r["systems"]["faster-whisper-int8"][k] for k in ("wall_s", "cpu_s"))
        float_size = next(size for name, size in r["sizes_mb"].items() if name.startswith("ours-fp"))
        for name, s in r["systems"].items():
            size = r["sizes_mb"][name]
            share = f" ({size / float_size:.1%} of float)" if name == "ours-int8" else ""
            rows.append(f"| {model} | {name} | {s['wall_s']:.2f} | {fw / s['wall_s']:.2f}x | {s['cpu_s']:.1f} | "
                        f"{fw_cpu / s['cpu_s']:.2f}x | {s['wer']:.2%} | "
                        f"{s['peak_rss_mib']:.0f} | {size:.1f}{share} |")
    return "\n".join(rows)


def main() -> None:
    from whisper_export.hashing import cache_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny.en,base")
    p.add_argument("--clips", type=int, default=121)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("int8_bench.json"))
    p.add_argument("--batch-size", type=int, default=8, help="ours: files decoded together (the CLI's default)")
    p.add_argument("--float-baseline", action="store_true",
                   help="also faster-whisper on float32 weights (float16 on CUDA): issue 14's CPU comparison")
    args = p.parse_args()
    if args.clips < 1 or args.repeats < 1 or args.threads < 1:
        p.error(f"--clips {args.clips} / --repeats {args.repeats} / --threads {args.threads}: expected >= 1")
    work = args.work or cache_dir() / "int8-bench"
    work.mkdir(parents=True, exist_ok=True)
    refs = make_clips(work, args.clips, args.seed)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "device": args.device, "load_start": os.getloadavg(),
              "threads": args.threads, "batch_size": args.batch_size, "repeats": args.repeats, "refs": str(refs), "results": {}}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        report["results"][model] = measure(model, refs, work, args.threads, args.device, args.repeats,
                                           args.batch_size, args.float_baseline)
        args.out.write_text(json.dumps(report, indent=2))
    report["load_end"] = os.getloadavg()
    report["table"] = table(report["results"])
    args.out.write_text(json.dumps(report, indent=2))
    print(report["table"])
    print(f"\n{report['date']}, commit {commit}, {args.device}, {args.threads} threads, median of {args.repeats} "
          f"interleaved rounds; load average {report['load_start'][0]:.1f} at the start, {report['load_end'][0]:.1f} "
          f"at the end; clips: {refs}")


if __name__ == "__main__":
    main()
