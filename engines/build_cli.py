"""``whisper-export build``: export the ONNX bundle, then build its TensorRT engines.

Registered by cli.py as ``app.command("build")(build)``; the typer annotations live here.
"""

from __future__ import annotations

import re
import shutil
import sys
from enum import Enum
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, Optional

import typer

# exit codes (also in build()'s docstring and engines/README)
EXIT_OK = 0
EXIT_FAILED = 1  # the export or an engine build failed: parser errors, builder errors, attention not fused
EXIT_USAGE = 2  # invalid request, caught before any engine build: profile too small, unsupported target, ...
EXIT_NO_TENSORRT = 3  # no usable TensorRT module: the ONNX bundle was written, the engines were not


class TrtModuleChoice(str, Enum):
    tensorrt = "tensorrt"
    tensorrt_rtx = "tensorrt_rtx"


class HardwareCompat(str, Enum):
    none = "none"
    ampere_plus = "ampere_plus"
    same_compute_capability = "same_compute_capability"


def _err(message: str) -> None:
    """One line on stderr, whatever the message holds (TensorRT's and torch's run over several)."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _split_cc(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return tuple(dict.fromkeys(out))


def build(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="packaged name (tiny.en, base), CTranslate2/HF dir or OpenAI .pt; default tiny.en")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="bundle directory (default: ./bundle-<model>-<precision>)")] = None,
    fp16: Annotated[bool, typer.Option("--fp16/--fp32", help="graph precision; the engines take their types from the graph (strongly typed). fp16 is the default: TensorRT-RTX fuses attention in fp16 only")] = True,
    max_batch: Annotated[int, typer.Option(help="audios per call the engines accept")] = 16,
    max_beam: Annotated[int, typer.Option(help="beams (or best_of) per audio; decoder rows = max_batch x max_beam")] = 5,
    max_tokens: Annotated[Optional[int], typer.Option(help="new tokens per decoder call (prompt length); default n_text_ctx // 2 + 4")] = None,
    max_rows: Annotated[Optional[int], typer.Option(help="decoder rows in the profile; default max_batch x max_beam, never fewer")] = None,
    compute_capability: Annotated[Optional[list[str]], typer.Option("--compute-capability", help="build ahead of time for these GPUs without one here, e.g. 8.9 or 8.6,8.9 (TensorRT-RTX)")] = None,
    trt_module: Annotated[Optional[TrtModuleChoice], typer.Option("--trt-module", help="TensorRT flavour; default: tensorrt_rtx for --compute-capability, else whichever is installed (tensorrt first)")] = None,
    hardware_compatibility: Annotated[HardwareCompat, typer.Option(help="full TensorRT on a GPU: ampere_plus engines run on every sm_80+ GPU")] = HardwareCompat.none,
    timing_cache_dir: Annotated[Optional[Path], typer.Option(help="where timing caches persist across builds (default ~/.cache/whisper-export/tensorrt, or $WHISPER_EXPORT_CACHE_DIR/tensorrt)")] = None,
    engines_only: Annotated[bool, typer.Option("--engines-only", help="do not export: build the engines of the existing bundle --out")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
) -> None:
    """Export the ONNX bundle, then build encoder.engine and decoder.engine into it (progress on stderr).

    Exit codes: 0 the bundle and both engines are written; 1 the export or an engine build failed (ONNX
    parser errors by node, builder errors, attention not fused); 2 invalid request, detected before any
    engine is built (profile smaller than max_batch x max_beam, unsupported compute capability for the
    TensorRT module, no GPU for a native build, fp32 with TensorRT-RTX, existing output without
    --overwrite); 3 no usable TensorRT Python module: the ONNX bundle is written and works with the
    onnxruntime backend, the engines are not.
    """
    from engines.build import BuildOptions
    from whisper_export.backends.tensorrt.profiles import EngineLimits

    ccs = _split_cc(compute_capability)
    limits = EngineLimits(max_batch=max_batch, max_beam=max_beam, max_rows=max_rows, max_tokens=max_tokens)
    try:
        options = BuildOptions(trt_module=trt_module.value if trt_module else None, compute_capabilities=ccs,
                               hardware_compatibility=hardware_compatibility.value, limits=limits,
                               cache_dir=timing_cache_dir / "tensorrt" if timing_cache_dir else None)
    except ValueError as e:
        _err(str(e))
        raise typer.Exit(EXIT_USAGE) from None

    # 1. everything that can be refused without exporting: the model, the profiles, the target
    precision = "fp16" if fp16 else "fp32"
    if engines_only:
        out, dims, precision, ckpt = _open_existing_bundle(out)
    else:
        out, dims, ckpt = _load_model(model, out, overwrite, precision)
    unavailable = _check_profiles_and_target(options, limits, dims, ccs, precision)

    # 2. the ONNX bundle and its engines, built in a staging directory beside --out and swapped in when written
    assert out is not None
    _staged_build(out, ckpt, precision, options, unavailable, may_replace=overwrite or engines_only)
    typer.echo(str(out))


def _staged_build(out: Path, ckpt: Any, precision: str, options: Any, unavailable: str, may_replace: bool) -> None:
    """Export (or copy) into a staging directory, build the engines there, swap it in as --out; on a failure
    (typer.Exit with its code) the old --out stays, or a fresh --out gets the complete ONNX bundle."""
    replacing = out.exists()
    staging = _stage(out, ckpt, precision)
    try:
        if unavailable:
            raise _Failed(EXIT_NO_TENSORRT, f"{unavailable}; no TensorRT engines were built")
        _build_engines(staging, out, options)
    except _Failed as failure:
        keep = ckpt is not None and (not replacing or failure.code == EXIT_NO_TENSORRT)
        _settle(staging, out, keep_new=keep, may_replace=may_replace)
        _err(f"{failure}; {_state_after(out, keep)}")
        raise typer.Exit(failure.code) from None
    except BaseException:
        _settle(staging, out, keep_new=False, may_replace=may_replace)
        raise
    _settle(staging, out, keep_new=True, may_replace=may_replace)


class _Failed(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _stage(out: Path, ckpt: Any, precision: str) -> Path:
    """--engines-only: a staged copy of the bundle --out; else the model exported into a new staging directory."""
    from engines.staging import staged_copy, staging_target

    if ckpt is None:
        try:
            return staged_copy(out)
        except OSError as e:
            _err(f"output {str(out)!r}: cannot stage a copy beside it ({e})")
            raise typer.Exit(EXIT_FAILED) from None
    staging = staging_target(out)
    _export(ckpt, staging, precision, overwrite=False, shown=out)
    return staging


def _settle(staging: Path, out: Path, keep_new: bool, may_replace: bool) -> None:
    """The staged bundle swapped in as --out (--out checked again: it may have changed meanwhile), or removed."""
    from whisper_export.export.exporter import ExportError, check_destination
    from whisper_export.export.siblings import swap_in

    if not keep_new:
        shutil.rmtree(staging, ignore_errors=True)
        return
    try:
        check_destination(out, may_replace)
        swap_in(staging, out)
    except (ExportError, OSError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        _refuse_destination(e, out)


def _state_after(out: Path, kept_new: bool) -> str:
    if kept_new:
        return f"the ONNX bundle {out} is complete (use it with the onnxruntime backend), without these engines"
    return f"the bundle {out} is unchanged"


def _open_existing_bundle(out: Path | None) -> tuple[Path, Any, str, None]:
    """--engines-only: the bundle --out, refused unless its engines can be built; (out, dims, precision, None)."""
    from engines.build import TargetError, check_buildable
    from whisper_export.bundle import Bundle, BundleError

    if out is None:
        _err("--engines-only needs --out, the bundle to build engines for")
        raise typer.Exit(EXIT_USAGE)
    try:
        existing = Bundle.open(out)
        check_buildable(existing)
    except (BundleError, TargetError) as e:
        _err(str(e))
        raise typer.Exit(EXIT_USAGE) from None
    return out, existing.dims, existing.precision, None


def _load_model(model: str | None, out: Path | None, overwrite: bool, precision: str) -> tuple[Path, Any, Any]:
    """The checkpoint to export, after --out is known to be writable; (out, dims, checkpoint)."""
    from reference_model import load_checkpoint
    from whisper_export.export.exporter import ExportError, check_destination

    if out is not None:
        try:
            check_destination(out, overwrite)  # before loading the model
        except ExportError as e:
            _refuse_destination(e, out)
    try:
        _progress(f"[build] loading {model or 'tiny.en'}")
        ckpt = load_checkpoint(model)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        _err(str(e))
        raise typer.Exit(EXIT_USAGE) from None
    if out is None:
        out = Path(f"bundle-{re.sub(r'[^A-Za-z0-9._-]+', '_', ckpt.name)}-{precision}")
    return out, ckpt.dims, ckpt


def _refuse_destination(e: Exception, out: Path) -> NoReturn:
    hint = " (or --engines-only to build engines for the existing bundle)" if out.exists() else ""
    _err(f"{e}{hint}")
    raise typer.Exit(EXIT_USAGE) from None


def _check_profiles_and_target(options: Any, limits: Any, dims: Any, ccs: tuple[str, ...], precision: str) -> str:
    """Refuses (exit 2) profiles the model cannot take and targets the TensorRT module cannot build for.

    Returns why no TensorRT module is usable, or "": the export still goes ahead without one.
    """
    from engines.build import TargetError, check_precision, check_target
    from whisper_export.backends.tensorrt import trt_api
    from whisper_export.backends.tensorrt.cuda import probe_device
    from whisper_export.backends.tensorrt.profiles import ProfileError

    try:
        limits.resolved(dims)
    except ProfileError as e:
        _err(str(e))
        raise typer.Exit(EXIT_USAGE) from None
    module = options.trt_module or trt_api.preferred_module(ccs[0] if ccs else None)
    unavailable = ""
    try:
        info = trt_api.select(module)
        device, why = probe_device()
        check_target(options, info, device.compute_capability if device else None, why)
        check_precision(info, precision, options.require_fused_attention)
    except trt_api.TensorRTUnavailable as e:
        unavailable = str(e)
    except (TargetError, ValueError) as e:
        _err(str(e))
        raise typer.Exit(EXIT_USAGE) from None
    return unavailable


def _export(ckpt: Any, out: Path, precision: str, overwrite: bool, shown: Path | None = None) -> None:
    from whisper_export.export.exporter import ExportError, ExportOptions, export_bundle

    try:
        export_bundle(ckpt, out, ExportOptions(precision=precision, overwrite=overwrite),
                      progress=_shown_as(out, shown or out))
    except ExportError as e:
        _refuse_destination(e, shown or out)
    except Exception as e:
        _err(f"export failed: {e}")
        raise typer.Exit(EXIT_FAILED) from None


def _shown_as(staging: Path, out: Path) -> Callable[[str], None]:
    """Progress lines with the staging directory's path shown as --out's."""
    return lambda message: _progress(message.replace(str(staging.absolute()), str(out.absolute())))


def _build_engines(staging: Path, out: Path, options: Any) -> None:
    """Both engines into the staged bundle, each reported on stderr; _Failed with the exit code otherwise."""
    from engines.attention import FusedAttentionError
    from engines.build import TargetError, build_engines
    from engines.loaders import EngineBuildError, OnnxParseError
    from whisper_export.backends.tensorrt.profiles import ProfileError

    progress = _shown_as(staging, out)
    try:
        report = build_engines(staging, options, progress=progress)
    except (ProfileError, TargetError) as e:
        raise _Failed(EXIT_USAGE, str(e)) from None
    except (OnnxParseError, EngineBuildError, FusedAttentionError) as e:
        raise _Failed(EXIT_FAILED, str(e)) from None
    for engine in report.engines:
        progress(f"[build] {engine.path}: {engine.sidecar.engine_bytes / 1e6:.1f} MB, built in "
                 f"{engine.build_seconds:.1f} s for {', '.join(engine.sidecar.compute_capabilities) or 'this GPU'}")
