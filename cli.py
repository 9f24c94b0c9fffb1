"""``whisper-export``: info, export, build, check, transcribe, bench.

Heavy modules (torch, onnx, tensorrt) are imported inside commands so that ``transcribe`` from a bundle
starts fast and never imports torch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Export Whisper to ONNX/TensorRT and transcribe with a numpy decoding runtime.")

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="packaged name (tiny.en, base), CTranslate2/HF dir or OpenAI .pt; default tiny.en")]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the user's input: shown as one line, never as a traceback."""
    from whisper_export.runtime.audio import AudioError
    from whisper_export.bundle import BundleError

    errors: list[type[Exception]] = [AudioError, BundleError, ValueError, FileNotFoundError, PermissionError]
    return tuple(errors)


@app.command()
def info(model: ModelOpt = None) -> None:
    """Print the model's dims and where it was loaded from."""
    from reference_model import load_checkpoint

    try:
        ckpt = load_checkpoint(model)
    except _user_errors() as e:
        fail(str(e))
    typer.echo(json.dumps(ckpt.describe(), indent=2))


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle directory to create")],
    model: ModelOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="fp16 weights/activations; LayerNorm, softmax, logits in fp32")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 23 for the Attention operator)")] = 23,
    attention: Annotated[str, typer.Option(help="'onnx' (opset-23 Attention; TensorRT), 'matmul' (MatMul/Softmax fallback) or 'onnxruntime' (onnxruntime's fused contrib ops: fastest on onnxruntime-gpu, not buildable by TensorRT)")] = "onnx",
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
) -> None:
    """Export the encoder and decoder-with-past graphs into a self-describing bundle."""
    from reference_model import load_checkpoint
    from whisper_export.export.exporter import ExportOptions, export_bundle

    try:
        options = ExportOptions(precision="fp16" if fp16 else "fp32", attention=attention, opset=opset, overwrite=overwrite)
        typer.echo(f"[export] loading {model or 'tiny.en'}", err=True)
        export_bundle(load_checkpoint(model), out, options)
    except _user_errors() as e:
        fail(str(e))


@app.command()
def check(
    bundle: Annotated[Path, typer.Option(help="bundle directory")],
    audio: Annotated[Optional[list[Path]], typer.Option(help="speech file(s) for the greedy-token comparison")] = None,
    model: ModelOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of the random graph inputs (default: fresh)")] = None,
    backends: Annotated[Optional[str], typer.Option(help="compare across backends, e.g. torch,onnxruntime,tensorrt")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="bounded cost for large models: one encoder window, 4 decoder steps, 16 greedy tokens per clip")] = False,
    steps: Annotated[Optional[int], typer.Option(help="teacher-forced decoder steps compared (default 20, 4 with --quick)")] = None,
) -> None:
    """Compare every graph output with PyTorch (max abs, max rel, cosine) and greedy tokens; exit 1 if over tolerance."""
    from whisper_export.checks.check import CheckOptions, check_bundle

    try:
        options = CheckOptions.quick() if quick else CheckOptions()
        if steps is not None:
            options = replace(options, steps=steps)
        report = check_bundle(bundle, audio or [], model, seed, options)
    except _user_errors() as e:
        fail(str(e))
    typer.echo(report.table())
    ok = report.ok
    if backends:
        from whisper_export.checks.compare import compare_backends, format_table

        rows = compare_backends(bundle, [b.strip() for b in backends.split(",") if b.strip()], seed=report.seed)
        typer.echo(format_table(rows))
        ok = ok and all(r.ok for r in rows)
    if not ok:
        raise typer.Exit(1)


def _register_optional() -> None:
    """Commands whose modules other packages own; registered lazily so a missing optional part is a clear error."""
    from whisper_export.commands.transcribe import transcribe

    app.command("transcribe")(transcribe)
    try:
        from engines.build_cli import build
    except ImportError as e:  # engines is part of this distribution; this only guards partial checkouts
        typer.echo(f"warning: build command unavailable ({e})", err=True)
    else:
        app.command("build")(build)
    from whisper_export.commands.bench import bench

    app.command("bench")(bench)


_register_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
