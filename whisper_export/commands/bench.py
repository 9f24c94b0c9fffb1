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
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from whisper_export.bench.common import SYSTEMS, _log, machine_info
from whisper_export.bench.report import format_table, plot_batches, ratio_table
from whisper_export.commands.bench_stages import (
    BenchRun,
    bench_decode_loop,
    bench_faster_whisper,
    bench_in_process,
    bench_transformers,
    bench_whole_process,
    decode_windows,
    exported_bundle,
    load_ours_and_torch,
    same_tokens,
    whole_process_commands,
)

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


def run_bench(files: list[Path], bundle: Path | None, model_spec: str | None, device: str, threads: int | None,
              systems: list[str], repeats: int, batch_sizes: list[int], steps: int, e2e: bool,
              plot: Path | None) -> dict[str, Any]:
    from whisper_export.runtime.audio import load_audio
    from whisper_export.backends.cpu_info import physical_cores
    from whisper_export.hashing import cache_dir

    threads = threads or physical_cores()
    run = BenchRun(model_spec, device, threads, systems, repeats, batch_sizes, steps, cache_dir() / "bench",
                 {s: {} for s in SYSTEMS}, [])
    results, notes = run.results, run.notes
    report: dict[str, Any] = {"machine": machine_info(), "files": [str(f) for f in files], "device": device,
                              "threads": threads, "repeats": repeats, "results": results, "notes": notes}
    if bundle is None and "ours" in systems:
        bundle = exported_bundle(run)
    report["bundle"] = str(bundle) if bundle else None

    audios = [load_audio(f) for f in files]
    if any(len(a) > 480000 for a in audios):
        notes.append("clips over 30 s: the decode measurements use their first window only")
    runtime, backends, tokenizer = load_ours_and_torch(run, bundle)
    n_mels = next(iter(backends.values())).dims.n_mels if backends else run.checkpoint().dims.n_mels
    windows = decode_windows(audios, n_mels, tokenizer)
    curve = bench_decode_loop(run, backends, tokenizer, windows)
    hf_dir = bench_transformers(run, windows, curve) if "transformers" in systems else None
    ct2_model_path = bench_faster_whisper(run, windows) if "faster-whisper" in systems else None
    if e2e:
        _log("end to end: whole processes (interleaved) and in-process")
        file_args = [str(Path(f).resolve()) for f in files]  # the children run in the checkout's folder
        bench_whole_process(run, whole_process_commands(run, file_args, bundle, backends, hf_dir, ct2_model_path))
        bench_in_process(run, file_args, runtime, backends, tokenizer, windows, hf_dir, ct2_model_path)

    same = same_tokens(results)
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
