"""Export a checkpoint to a self-describing ONNX bundle, atomically (temp dir, then rename)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from whisper_export import __version__, graph_io
from whisper_export.bundle import BUNDLE_FORMAT, MANIFEST, is_bundle_directory, write_manifest
from whisper_export.export.siblings import remove_stale_siblings, sibling_directory, swap_in
from whisper_export.export.graphs import (
    cache_reorder_graph,
    decoder_graph,
    encoder_graph,
    greedy_select_graph,
    timestamp_rules_graph,
    timestamp_top_graph,
    top_select_graph,
)
from whisper_export.export.align_graph import align_graph
from whisper_export.export.graphs_ort import decoder_graph_ort
from whisper_export.export.onnx_builder import ATTENTIONS, WeightFile, streamed_weights
from whisper_export.export.quantize import QUANTIZE


def _decoder_graph(dims, state, dtype, attention: str, opset: int, metadata: dict) -> onnx.ModelProto:
    """The decoder of the chosen attention: onnxruntime's fused contrib operators, or the standard graph."""
    if attention == "onnxruntime":
        return decoder_graph_ort(dims, state, dtype, opset, metadata)
    return decoder_graph(dims, state, dtype, attention, opset, metadata)


MIN_OPSET = 20  # Gelu
ATTENTION_OPSET = 23  # the Attention operator
# a graph with more weight bytes keeps them in <graph>.onnx.data, as streamed there: protobuf cannot hold 2 GiB,
# and below that, inlining costs the exporter two more copies of the graph's weights (the proto and its
# serialisation; large-v3's fp16 graphs are 1.5 and 1.6 GB)
EXTERNAL_DATA_BYTES = 1_000_000_000


class ExportError(ValueError):
    """An export that cannot be done as asked; nothing is written."""


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"  # "fp32" | "fp16"
    # "onnx" (opset-23 Attention) | "matmul" (MatMul/Softmax for older runtimes) | "onnxruntime" (onnxruntime's
    # fused contrib operators: the fastest decoder step on onnxruntime-gpu, not buildable by TensorRT)
    attention: str = "onnx"
    opset: int = ATTENTION_OPSET
    overwrite: bool = False
    # "none" | "int8" | "int8-nbits": 8-bit MatMul/Gemm weights (export/quantize.py); activations, caches and
    # logits stay float, so the bundle's precision names their dtype and the runtime is unchanged
    quantize: str = "none"

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        if self.precision not in graph_io.PRECISIONS:
            raise ValueError(f"precision: received {self.precision!r}, expected one of {sorted(graph_io.PRECISIONS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention: received {self.attention!r}, expected one of {', '.join(ATTENTIONS)}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize: received {self.quantize!r}, expected one of {', '.join(QUANTIZE)}")
        weights = QUANTIZE[self.quantize]
        if weights is not None and weights.form == "matmul_integer" and self.precision != "fp32":
            raise ValueError(f"precision: received {self.precision!r} with quantize={self.quantize!r}, expected "
                             "'fp32' (its activations are quantized from float32)")
        max_opset = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= self.opset <= max_opset:
            raise ValueError(f"opset: received {self.opset}, expected {MIN_OPSET}..{max_opset} (installed onnx {onnx.__version__})")
        if self.attention == "onnx" and self.opset < ATTENTION_OPSET:
            raise ValueError(
                f"opset: received {self.opset} with attention='onnx', expected >= {ATTENTION_OPSET} "
                "(the Attention operator); use attention='matmul' for older opsets"
            )


def bundle_config(ckpt, options: ExportOptions) -> dict:
    from reference_model.alignment_heads import resolve_alignment_heads

    special = ckpt.tokenizer().special
    alignment_heads, heads_source = resolve_alignment_heads(ckpt)
    return {
        "graph_io_version": graph_io.GRAPH_IO_VERSION,
        "exporter": "whisper-export",
        "exporter_version": __version__,
        "model_name": ckpt.name,
        "model_source": ckpt.source,
        "model_spec": ckpt.spec,
        "model_format": ckpt.format,
        "dims": ckpt.dims.to_dict(),
        "n_mels": ckpt.dims.n_mels,
        "precision": options.precision,
        "attention": options.attention,
        "opset": options.opset,
        "quantize": QUANTIZE[options.quantize].to_dict() if QUANTIZE[options.quantize] else None,
        "special_tokens": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in special.__dict__.items()
        },
        "alignment_heads": alignment_heads,  # [[layer, head], ...]: align.onnx's heads, for word timestamps
        "alignment_heads_source": heads_source,  # "checkpoint", "known:<model>" or "last-half"
    }


def _save(model: onnx.ModelProto, path: Path, weights: WeightFile) -> None:
    """The graph beside its streamed weights when they are over protobuf's limit, else one self-contained file."""
    if weights.nbytes <= EXTERNAL_DATA_BYTES:
        onnx.load_external_data_for_model(model, str(path.parent))
        weights.path.unlink()
    onnx.save_model(model, path)


def _write_tokenizer(ckpt, path: Path) -> None:
    """The checkpoint's own tokenizer.json, else the built-in vocabulary written as one."""
    if ckpt.tokenizer_json is not None:
        shutil.copy(ckpt.tokenizer_json, path)
    else:
        path.write_text(ckpt.tokenizer().to_json_str(), encoding="utf-8")


def check_destination(out_dir: str | Path, overwrite: bool) -> None:
    """ExportError unless out_dir can be created, or (overwrite) replaced because it holds a bundle."""
    out_dir = Path(out_dir).absolute()
    parent = out_dir.parent
    if os.path.lexists(out_dir) and not overwrite:
        raise ExportError(f"output {str(out_dir)!r} already exists; pass --overwrite or choose a new directory")
    if out_dir.is_symlink():
        raise ExportError(f"output {str(out_dir)!r} is a symlink, expected a bundle directory to replace "
                          "(or a new name); --overwrite replaces only a directory holding a bundle")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output {str(out_dir)!r} is a file, expected a directory")
    if out_dir.exists() and not is_bundle_directory(out_dir):
        raise ExportError(
            f"output {str(out_dir)!r} is not a bundle (no {MANIFEST} with format {BUNDLE_FORMAT!r}); "
            "--overwrite replaces only a bundle directory: choose a new directory or remove it yourself"
        )
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise ExportError(f"output {str(out_dir)!r}: parent directory {str(parent)!r} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"output {str(out_dir)!r}: directory {str(parent)!r} is not writable")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def export_bundle(
    ckpt,
    out_dir: str | Path,
    options: ExportOptions = ExportOptions(),
    progress: Callable[[str], None] = _stderr,
) -> Path:
    """Write encoder.onnx, decoder.onnx, cache_reorder.onnx, greedy_select.onnx, top_select.onnx,
    timestamp_rules.onnx, timestamp_top.onnx, align.onnx, tokenizer.json and manifest.json into out_dir
    (atomically)."""
    out_dir = Path(out_dir).absolute()
    check_destination(out_dir, options.overwrite)
    config = bundle_config(ckpt, options)
    dtype = graph_io.PRECISIONS[options.precision]
    metadata = {graph_io.METADATA_KEY: json.dumps(config, sort_keys=True)}
    for stale in remove_stale_siblings(out_dir):
        progress(f"[export] removed {stale.name}, left beside the output by a run that was killed")
    try:
        tmp = sibling_directory(out_dir, "tmp")
    except OSError as e:
        raise ExportError(f"output {str(out_dir)!r}: cannot write in {str(out_dir.parent)!r} ({e.strerror})") from e
    try:
        for name, build in ((graph_io.ENCODER_FILE, encoder_graph), (graph_io.DECODER_FILE, _decoder_graph),
                            (graph_io.REORDER_FILE, cache_reorder_graph), (graph_io.SELECT_FILE, greedy_select_graph),
                            (graph_io.TOP_FILE, top_select_graph), (graph_io.LIMITED_FILE, timestamp_rules_graph),
                            (graph_io.TOP_LIMITED_FILE, timestamp_top_graph), (graph_io.ALIGN_FILE, align_graph)):
            t0 = time.perf_counter()
            weights_kind = "" if options.quantize == "none" else f", {options.quantize} weights"
            progress(f"[export] building {name} ({options.precision}{weights_kind}, attention={options.attention}, "
                     f"opset {options.opset})")
            with streamed_weights(tmp / f"{name}.data") as weights:  # the graph holds references, not weights
                model = build(ckpt.dims, ckpt.state, dtype, options.attention, options.opset, metadata)
            # write every intermediate type into the graph: strongly typed builders (TensorRT) need them
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
            _save(model, tmp / name, weights)
            onnx.checker.check_model(str(tmp / name), full_check=True)
            size = sum(p.stat().st_size for p in tmp.glob(name + "*")) / 1e6
            progress(f"[export] wrote {name}: {size:.1f} MB in {time.perf_counter() - t0:.1f} s")
        _write_tokenizer(ckpt, tmp / "tokenizer.json")
        write_manifest(tmp, config)
        check_destination(out_dir, options.overwrite)  # again: the directory may have changed meanwhile
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"[export] bundle ready: {out_dir}")
    return out_dir


def read_graph_config(path: str | Path) -> dict:
    """The whisper_export metadata of an exported ONNX file (the bundle's config)."""
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == graph_io.METADATA_KEY:
            return json.loads(prop.value)
    raise ExportError(f"{path}: no {graph_io.METADATA_KEY!r} metadata; not exported by whisper-export")

