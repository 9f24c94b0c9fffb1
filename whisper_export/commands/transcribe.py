"""`whisper-export transcribe`: files in, transcripts out (cli.py registers `transcribe` as a command).

Every field of DecodingOptions, TranscribeOptions and WriterOptions is an option of its own (field_options.py);
the options written out below are the ones that are not fields. Each file's outputs are written as soon as that
file is done, so an interrupted run keeps the files already finished.

Exit codes: 0 all files transcribed; 1 a file failed (the others are still written), or the bundle could not be
loaded; 2 invalid options, a bad --model, an output directory that cannot be written (all caught before any
audio is read); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import inspect
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from whisper_export.commands.field_options import FieldOption, command_signature, field_options
from whisper_export.commands.transcribe_output import Progress, Reporter, error, output_names
from whisper_export.runtime import writers
from whisper_export.runtime.options import (
    DEFAULT_TEMPERATURE_INCREMENT,
    DecodingOptions,
    TranscribeOptions,
    fallback_temperatures,
    split_options,
)
from whisper_export.runtime.writers import FORMATS, expand_formats

WriterOptions = getattr(writers, "WriterOptions", None)  # highlight_words, max_line_width, ... where they exist
OPTIONS: list[FieldOption] = [
    *field_options(DecodingOptions),
    *field_options(TranscribeOptions),
    *(field_options(WriterOptions) if WriterOptions is not None else []),
]
_WRITER_FIELDS = tuple(o.name for o in OPTIONS if o.owner == "WriterOptions")  # in field order


def _number(flag: str, value: str | None, kind: type = float, optional: bool = False):
    """The value of a hand-written option given as text (one-line error, as for the generated ones)."""
    if value is None or optional and value.strip().lower() == "none":
        return None
    try:
        return kind(value)
    except ValueError:
        expected = {int: "an int", float: "a number"}[kind] + (" or None" if optional else "")
        raise ValueError(f"{flag}: received {value!r}, expected {expected}") from None


# The fallback schedule's two options, shared by transcribe and batch (a float or "None", checked by _number).
TemperatureOption = Annotated[str, typer.Option(metavar="FLOAT", help="temperature of the first try; 0: greedy or beam search")]
IncrementOption = Annotated[Optional[str], typer.Option(
    "--temperature-increment-on-fallback", metavar="FLOAT|None", show_default=True,
    help="a window that fails the thresholds is tried again this much hotter, up to 1.0; None: no fallback",
)]


def _explicit(
    audio: Annotated[list[Path], typer.Argument(help="audio files (wav/flac/ogg/mp3; others via ffmpeg)", show_default=False)],
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="exported bundle directory")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="checkpoint (name or path) when no --bundle: exported once into ~/.cache/whisper-export, or run by --backend torch; default tiny.en")] = None,
    backend: Annotated[str, typer.Option(help="onnxruntime, tensorrt (a bundle with engines) or torch (a checkpoint)")] = "onnxruntime",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    output_format: Annotated[str, typer.Option("--output-format", "-f", help=f"{', '.join(FORMATS)} or all")] = "txt",
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="write files here instead of printing text; created if missing")] = None,
    threads: Annotated[Optional[str], typer.Option(metavar="INT", help="CPU threads, at most the logical CPUs (default: physical cores)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose/--no-verbose", help="print each segment with its times on stderr as it is decoded")] = False,
    temperature: TemperatureOption = "0.0",
    temperature_increment_on_fallback: IncrementOption = str(DEFAULT_TEMPERATURE_INCREMENT),
) -> None:
    """Only the signature is used: the options of `transcribe` that are not options-dataclass fields."""


def transcribe(**params: Any) -> None:
    """Transcribe audio files with an exported bundle (or the torch reference)."""
    audio: list[Path] = params.pop("audio")
    try:
        options, writer_options = _checked_options(params)
        formats = _checked_output(params["output_format"], params["output_dir"])
    except (ValueError, TypeError, OSError) as e:
        error(_as_flag(str(e)))
        raise typer.Exit(2)
    runtime = _load_runtime(params)
    reporter = Reporter(audio, output_names(audio), params["output_dir"], formats, _writer_kwargs(writer_options))
    progress = Progress(audio)
    with runtime:
        try:
            _run(runtime, audio, options, reporter, progress, params["verbose"])
        except KeyboardInterrupt:
            progress.close()
            error(f"interrupted: {reporter.delivered} of {len(audio)} file(s) finished and kept")
            raise typer.Exit(130)
    progress.close()
    if reporter.failed:
        typer.echo(f"[transcribe] {reporter.failed} of {len(audio)} file(s) failed", err=True)
        raise typer.Exit(1)


transcribe.__signature__ = command_signature(inspect.signature(_explicit, eval_str=True), OPTIONS)  # type: ignore[attr-defined]


def _run(runtime, audio: list[Path], options: dict, reporter: Reporter, progress: Progress, verbose: bool) -> None:
    """Each file's result to stdout or its output files as soon as it is done."""
    results = runtime.transcribe_iter([str(p) for p in audio], progress=progress,
                                      on_segment=reporter.segment if verbose else None, **options)
    try:
        first = next(results, None)
    except (ValueError, TypeError) as e:  # options that concern every file alike (a language this model lacks)
        progress.close()
        error(str(e))
        raise typer.Exit(2)
    if first is None:
        return
    reporter.deliver(*first)
    for index, item in results:
        reporter.deliver(index, item)


def _checked_options(params: dict[str, Any], options: list[FieldOption] = OPTIONS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(runtime keyword options, WriterOptions keywords), every value checked (ValueError otherwise); options:
    the command's field options (another command's may leave the writer's out)."""
    values = {o.name: o.parse(params.pop(o.name)) for o in options}
    if values.get("beam_size") == 1:
        values["beam_size"] = None  # one beam chooses as greedy decoding does; greedy is the faster path
    values["temperature"] = fallback_temperatures(
        _number("--temperature", params["temperature"]),
        _number("--temperature-increment-on-fallback", params["temperature_increment_on_fallback"], optional=True))
    _checked_model(params)
    writer_values = {k: values.pop(k) for k in _WRITER_FIELDS if k in values}
    # WriterOptions' _verify runs before any audio is read
    if WriterOptions is not None and WriterOptions(**writer_values).needs_words and not values.get("word_timestamps"):
        named = ", ".join(f"--{k.replace('_', '-')}" for k, v in writer_values.items() if v not in (None, False))
        raise ValueError(f"{named}: received without --word-timestamps, expected --word-timestamps (the cues are "
                         "cut from the words)")
    split_options(values)
    return values, writer_values


def _checked_model(params: dict[str, Any]) -> None:
    """--threads (made an int in params), --backend, --device, --bundle/--model checked (ValueError otherwise)."""
    threads = params["threads"] = _number("--threads", params["threads"], int)
    cpus = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cpus:
        raise ValueError(f"--threads: received {threads}, expected an int from 1 to {cpus} (this machine's logical CPUs)")
    if params["backend"] not in ("onnxruntime", "tensorrt", "torch"):
        raise ValueError(f"--backend: received {params['backend']!r}, expected onnxruntime, tensorrt or torch")
    if params["device"] not in ("cpu", "cuda"):
        raise ValueError(f"--device: received {params['device']!r}, expected cpu or cuda")
    if params["bundle"] is not None and params["model"] is not None:
        raise ValueError(f"received both --bundle {params['bundle']} and --model {params['model']}, expected one of them")
    if params["backend"] == "tensorrt" and params["bundle"] is None:
        raise ValueError("--backend tensorrt: received no --bundle, expected one built by 'whisper-export build --out DIR'")


def _as_flag(message: str) -> str:
    """A message about a field ("beam_size: received 16, ...") names the option the user typed (--beam-size)."""
    name, colon, rest = message.partition(":")
    known = {o.name for o in OPTIONS} | {"temperature", "temperature_increment_on_fallback"}
    return f"--{name.replace('_', '-')}:{rest}" if colon and name in known else message


def _checked_output(output_format: str, output_dir: Path | None) -> tuple[str, ...]:
    """The formats to write; output_dir created if missing and shown to be writable (OSError otherwise)."""
    formats = expand_formats(output_format)
    if output_dir is None:
        if output_format != "txt":
            raise ValueError(f"--output-format {output_format}: received no --output-dir, expected one (only txt goes to stdout)")
        return formats
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):  # what writing an output needs: a new file in it
            pass
    except OSError as e:
        raise OSError(f"--output-dir {output_dir}: cannot write there ({e.strerror or e}), expected a writable directory") from None
    return formats


def _writer_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """write_result's keyword for the WriterOptions, found by its annotation (none before WriterOptions exists)."""
    if WriterOptions is None:
        return {}
    for name, parameter in inspect.signature(writers.write_result).parameters.items():
        if "WriterOptions" in str(parameter.annotation):
            return {name: WriterOptions(**values)}
    raise TypeError("write_result takes no WriterOptions: the writer options would be ignored")


def _load_runtime(params: dict[str, Any]):
    """The runtime; exit 2 for a bad --model (as for every option), 1 for a bundle or backend that fails."""
    from whisper_export.bundle import BundleError
    from whisper_export.runtime.api import WhisperRuntime

    try:
        return WhisperRuntime.load(params["bundle"], model=params["model"], backend=params["backend"],
                                   device=params["device"], threads=params["threads"])
    except BundleError as e:
        error(str(e))
        raise typer.Exit(1)
    except ValueError as e:  # a checkpoint that cannot be loaded (CheckpointError), an extra that is missing
        error(str(e))
        exporter = sys.modules.get("whisper_export.export.exporter")  # imported only when a bundle was exported
        raise typer.Exit(1 if exporter is not None and isinstance(e, exporter.ExportError) else 2)
    except (OSError, RuntimeError) as e:  # BackendError included
        error(str(e))
        raise typer.Exit(1)


__all__ = ["transcribe", "FORMATS", "OPTIONS"]
