"""`whisper-export transcribe`: files in, transcripts out (cli.py registers `transcribe` as a command).

Exit codes: 0 all files transcribed; 1 a file failed (the others are still written) or the bundle/model
could not be loaded; 2 invalid options (caught before any audio is read).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from whisper_export.runtime.writers import FORMATS, expand_formats


def _error(message: str) -> None:
    # one line per error: easy to grep, never a traceback for a user mistake
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)


class _Progress:
    """Overall progress over files and their windows, on stderr: a redrawn line on a terminal, a line per
    finished file otherwise (logs stay readable)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.done = [0] * len(paths)
        self.total = [0] * len(paths)
        self.finished: set[int] = set()
        self.tty = sys.stderr.isatty()

    def __call__(self, index: int, done: int, total: int) -> None:
        self.done[index], self.total[index] = done, total
        if done >= total and total and index not in self.finished:
            self.finished.add(index)
            if not self.tty:
                typer.echo(f"[transcribe] {len(self.finished)}/{len(self.paths)} {self.paths[index]}", err=True)
        if self.tty:
            pct = 100.0 * sum(self.done) / max(sum(self.total), 1)
            sys.stderr.write(f"\r[transcribe] {len(self.finished)}/{len(self.paths)} files, {pct:5.1f}% of audio")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _stems(paths: list[Path]) -> list[str]:
    """Output names: the file stems, made unique when two inputs share one (a/x.wav, b/x.wav)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        out.append(p.stem if n == 0 else f"{p.stem}-{n + 1}")
    return out


def transcribe(
    audio: Annotated[list[Path], typer.Argument(help="audio files (wav/flac/ogg/mp3; others via ffmpeg)", show_default=False)],
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="exported bundle directory")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="checkpoint (name or path) when no --bundle: exported once into ~/.cache/whisper-export, or run by --backend torch; default tiny.en")] = None,
    backend: Annotated[str, typer.Option(help="onnxruntime, tensorrt (a bundle with engines) or torch (a checkpoint)")] = "onnxruntime",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    beam_size: Annotated[int, typer.Option("--beam-size", help="beams at temperature 0; 1 = greedy")] = 5,
    language: Annotated[Optional[str], typer.Option(help="language code such as en, de; default: detect")] = None,
    task: Annotated[str, typer.Option(help="transcribe or translate")] = "transcribe",
    output_format: Annotated[str, typer.Option("--output-format", "-f", help="txt, json, srt, vtt or all")] = "txt",
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="write files here instead of printing text")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="one fixed temperature; default: the fallback schedule 0.0..1.0")] = None,
    without_timestamps: Annotated[bool, typer.Option("--without-timestamps", help="text only: one segment per 30 s window")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: physical cores)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="files decoded together")] = 8,
) -> None:
    """Transcribe audio files with an exported bundle (or the torch reference)."""
    from whisper_export.runtime.options import split_options

    # -- options: everything checkable before loading a model or reading audio --------------------------
    options: dict = {"task": task, "language": language, "without_timestamps": without_timestamps, "batch_size": batch_size}
    try:
        if beam_size < 1:
            raise ValueError(f"--beam-size: received {beam_size}, expected an int >= 1 (1 = greedy)")
        if beam_size > 1:
            options["beam_size"] = beam_size
        if temperature is not None:
            options["temperature"] = temperature
        if threads is not None and threads < 1:
            raise ValueError(f"--threads: received {threads}, expected an int >= 1")
        if backend not in ("onnxruntime", "tensorrt", "torch"):
            raise ValueError(f"--backend: received {backend!r}, expected onnxruntime, tensorrt or torch")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"--device: received {device!r}, expected cpu or cuda")
        formats = expand_formats(output_format)
        split_options(options)
    except (ValueError, TypeError) as e:
        _error(str(e))
        raise typer.Exit(2)
    if output_format != "txt" and output_dir is None:
        _error(f"--output-format {output_format}: received no --output-dir, expected one (only txt goes to stdout)")
        raise typer.Exit(2)
    if bundle is not None and model is not None:
        _error(f"received both --bundle {bundle} and --model {model}, expected one of them")
        raise typer.Exit(2)
    if backend == "tensorrt" and bundle is None:
        _error("--backend tensorrt: received no --bundle, expected one built by 'whisper-export build --out DIR'")
        raise typer.Exit(2)

    # -- model ---------------------------------------------------------------------------------------------
    from whisper_export.bundle import BundleError
    from whisper_export.runtime.api import WhisperRuntime

    try:
        runtime = WhisperRuntime.load(bundle, model=model, backend=backend, device=device, threads=threads)
    except (BundleError, ValueError, OSError, RuntimeError) as e:  # CheckpointError and BackendError included
        _error(str(e))
        raise typer.Exit(1)

    # -- files: one failure never stops the others -----------------------------------------------------
    progress = _Progress(audio)
    with runtime:
        try:
            # language errors surface here (a code this model lacks): they concern every file alike
            results = runtime.transcribe_batch([str(p) for p in audio], progress=progress, **options)
        except (ValueError, TypeError) as e:
            progress.close()
            _error(str(e))
            raise typer.Exit(2)
    progress.close()
    failed = 0
    for path, stem, item in zip(audio, _stems(audio), results):
        if not item.ok:
            failed += 1
            _error(f"{path}: {item.error}")
            continue
        result = item.unwrap()
        if output_dir is None:
            typer.echo(result.text)
        else:
            from whisper_export.runtime.writers import write_result

            try:
                write_result(result, output_dir, stem, formats)
            except OSError as e:
                failed += 1
                _error(f"{path}: cannot write output ({e})")
    if failed:
        typer.echo(f"[transcribe] {failed} of {len(audio)} file(s) failed", err=True)
        raise typer.Exit(1)


__all__ = ["transcribe", "FORMATS"]
