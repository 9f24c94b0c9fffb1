"""`whisper-export batch`: an archive of audio files transcribed into Parquet, one row per input, in this process
or on a Ray cluster (cli.py registers `batch` as a command).

The decoding options are transcribe's, made from the same dataclass fields with the same defaults
(field_options.py) and checked by the same code, so a file's text is the text `whisper-export transcribe` gives it
with the same options. Rows go to part files under --out as they are done; a rerun with the same --out transcribes
only the inputs no part holds yet.

Exit codes: 0 every input has its row (a file that could not be read or decoded is a row with its `error`); 1 the
runtime could not be loaded, or the Ray job failed (the parts written are kept); 2 invalid options or INPUTS
(before anything is loaded); 130 interrupted (the parts written are kept: rerun to resume).
"""

from __future__ import annotations

import inspect
import signal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from whisper_export.commands.field_options import FieldOption, command_signature, field_options
from whisper_export.commands.transcribe import IncrementOption, TemperatureOption, _as_flag, _checked_options, _number
from whisper_export.commands.transcribe_output import error
from whisper_export.runtime.options import DEFAULT_TEMPERATURE_INCREMENT, DecodingOptions, TranscribeOptions

OPTIONS: list[FieldOption] = [*field_options(DecodingOptions), *field_options(TranscribeOptions)]


def _explicit(
    inputs: Annotated[Path, typer.Argument(help="a directory (its audio files, recursively), a text file of paths (one a line) or JSONL with a 'path' field", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory of the Parquet part files; rerun with the same one to resume", show_default=False)],
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS|local", help="run on a Ray cluster: its address (host:port, auto) or local (start one here); default: in this process, without Ray")] = None,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="exported bundle directory (on every node, same path, with --ray)")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="checkpoint (name or path) when no --bundle: exported once into each node's ~/.cache/whisper-export; default tiny.en")] = None,
    backend: Annotated[str, typer.Option(help="onnxruntime, tensorrt (a bundle with engines) or torch (a checkpoint)")] = "onnxruntime",
    device: Annotated[str, typer.Option(help="cpu or cuda (with --ray: one actor per GPU)")] = "cpu",
    threads: Annotated[Optional[str], typer.Option(metavar="INT", help="CPU threads of the runtime (with --ray and --device cpu: --cpus-per-actor)")] = None,
    actors: Annotated[Optional[str], typer.Option(metavar="INT", help="with --ray: runtimes in the pool (default: one per GPU with --device cuda, else the cluster's CPUs less one over --cpus-per-actor)")] = None,
    cpus_per_actor: Annotated[str, typer.Option("--cpus-per-actor", metavar="INT", help="with --ray and --device cpu: CPUs (and threads) of each runtime")] = "4",
    files_per_batch: Annotated[str, typer.Option("--files-per-batch", metavar="INT", help="files handed to a runtime at once (their windows are decoded together)")] = "16",
    rows_per_part: Annotated[str, typer.Option("--rows-per-part", metavar="INT", help="rows per Parquet part file at most (a part is also written every minute)")] = "256",
    temperature: TemperatureOption = "0.0",
    temperature_increment_on_fallback: IncrementOption = str(DEFAULT_TEMPERATURE_INCREMENT),
) -> None:
    """Only the signature is used: the options of `batch` that are not options-dataclass fields."""


def batch(**params: Any) -> None:
    """Transcribe a directory, list or JSONL of audio files into Parquet (path, text, language, duration, segments,
    words, error), in this process or on a Ray cluster (--ray); rerun with the same --out to resume."""
    try:
        job, paths = _checked(params)
    except ImportError as e:
        error(f"batch needs the ray extra ({e.name} is missing): pip install 'whisper-export[ray]'")
        raise typer.Exit(2)
    except (ValueError, TypeError) as e:
        error(_flag(str(e)))
        raise typer.Exit(2)
    from whisper_export.batch.job import run_batch
    from whisper_export.bundle import BundleError

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run_batch(paths, job, on_start=_announce)
    except KeyboardInterrupt:
        error(f"interrupted: the part files under {job.out} are kept; rerun the same command to resume")
        raise typer.Exit(130)
    except _Terminated:
        error(f"terminated (SIGTERM): the part files under {job.out} are kept; rerun the same command to resume")
        raise typer.Exit(128 + signal.SIGTERM)
    except (BundleError, OSError, RuntimeError) as e:
        error(str(e))
        raise typer.Exit(1)
    except ValueError as e:  # an option every file shares (a language this model lacks), a checkpoint, the output
        error(str(e))
        raise typer.Exit(2)
    except Exception as e:  # noqa: BLE001 - Ray's errors (a job that failed on the cluster) are many classes
        error(f"the batch job failed ({type(e).__name__}: {' '.join(str(e).split())[:500]}); the part files "
              f"under {job.out} are kept: rerun to resume")
        raise typer.Exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo(f"[batch] {summary.written} row(s) written to {job.out} ({summary.errors} with an error), "
               f"{summary.skipped} already there", err=True)


class _Terminated(BaseException):
    """SIGTERM while the batch runs: like Ctrl-C, it unwinds through run_batch (which keeps the parts written)."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


batch.__signature__ = command_signature(inspect.signature(_explicit, eval_str=True), OPTIONS)  # type: ignore[attr-defined]


def _checked(params: dict[str, Any]):
    """(BatchJob, input paths) from the command line; ValueError naming the option otherwise."""
    from whisper_export.batch.inputs import AUDIO_EXTENSIONS, list_inputs
    from whisper_export.batch.job import BatchJob

    options, _ = _checked_options(params, OPTIONS)  # _checked_model's checks included
    words = bool(options["word_timestamps"])
    if params["ray"] is None and params["actors"] is not None:
        raise ValueError(f"--actors: received {params['actors']}, expected it only with --ray")
    job = BatchJob(
        out=params["out"], options=options, words=words, ray=params["ray"],
        load={"bundle_dir": params["bundle"], "model": params["model"], "backend": params["backend"],
              "device": params["device"], "threads": params["threads"]},
        actors=_number("--actors", params["actors"], int),
        cpus_per_actor=_number("--cpus-per-actor", params["cpus_per_actor"], int),
        files_per_batch=_number("--files-per-batch", params["files_per_batch"], int),
        rows_per_part=_number("--rows-per-part", params["rows_per_part"], int),
    )
    if job.ray is not None:
        import ray  # noqa: F401 - only to say at once that the extra is missing

    paths = list_inputs(params["inputs"])
    if not paths:
        raise ValueError(f"INPUTS {params['inputs']}: received no audio files, expected at least one (extensions: "
                         f"{' '.join(sorted(AUDIO_EXTENSIONS))})")
    return job, paths


def _flag(message: str) -> str:
    """A message about a BatchJob field or an options field names the option typed (--files-per-batch)."""
    name, colon, rest = message.partition(":")
    if colon and name in {"files_per_batch", "rows_per_part", "actors", "cpus_per_actor", "ray"}:
        return f"--{name.replace('_', '-')}:{rest}"
    return _as_flag(message)


def _announce(summary: Any) -> None:
    if summary.skipped:
        error_free = summary.total - summary.skipped
        typer.echo(f"[batch] resuming: {summary.skipped} of {summary.total} input(s) already written, "
                   f"{error_free} to go", err=True)


__all__ = ["batch", "OPTIONS"]
