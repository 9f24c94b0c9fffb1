"""Every graph output of a bundle across backends -- torch, onnxruntime, TensorRT -- through polygraphy.

    rows = compare_backends("bundle/", backends=["torch", "onnxruntime", "tensorrt"])
    print(format_table(rows))

Each backend is a polygraphy runner per graph (polygraphy's own OnnxrtRunner for onnxruntime, small
BaseRunner subclasses for the PyTorch reference and for whisper_export.backends.tensorrt.runner.EngineRunner);
``polygraphy.comparator.Comparator.run`` feeds all of them the same seeded random inputs and
``Comparator.compare_accuracy`` with ``SimpleCompareFunc`` (max absolute error against a per-output bound)
compares each backend with the first available one (tolerances: checks/tolerances.py, shared with the release gate). The decoder is
fed twice: a prompt-like call (3 new tokens, 2 logit positions) and a one-token step, so both TensorRT
profiles are exercised. A backend that cannot run here is skipped with its reason (one row), never silently dropped.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisper_export import graph_io as io
from whisper_export.bundle import Bundle
from whisper_export.checks.tolerances import Tolerance, bundle_tolerance

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def check_backend_names(backends: Sequence[str]) -> list[str]:
    """ValueError unless backends is a non-empty list of BACKENDS names."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(f"backends: received {list(backends)}, expected a non-empty subset of {list(BACKENDS)}")
    return list(backends)


@dataclass
class CompareRow:
    graph: str  # "encoder", "decoder[prompt]", "decoder[step]"; "*" for a skipped backend
    output: str
    backend: str
    reference: str
    max_abs: float | None = None
    max_rel: float | None = None
    mean_abs: float | None = None
    cosine: float | None = None
    tolerance: float | None = None
    min_cosine: float | None = None
    status: str = "pass"  # "pass" | "FAIL" | "skipped"
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping-style access (``row.get("ok")``), for callers that treat rows as dicts."""
        return self.to_dict().get(key, default)


def format_table(rows: Sequence[CompareRow]) -> str:
    head = (f"{'graph':<16} {'output':<16} {'backend':<12} {'vs':<12} {'max_abs':>9} {'max_rel':>9} "
            f"{'cosine':>10} {'tol':>7}  status")
    lines = [head]
    for r in rows:
        if r.status == "skipped":
            lines.append(f"{r.graph:<16} {r.output:<16} {r.backend:<12} {r.reference:<12} skipped: {r.reason}")
            continue
        lines.append(
            f"{r.graph:<16} {r.output:<16} {r.backend:<12} {r.reference:<12} {r.max_abs or 0:>9.2e} "
            f"{r.max_rel or 0:>9.2e} {r.cosine or 0:>10.6f} {r.tolerance or 0:>7.0e}  {r.status}"
        )
    return "\n".join(lines)


# -- inputs ------------------------------------------------------------------------------------------


def make_feeds(bundle: Bundle, seed: int) -> dict[str, list[OrderedDict[str, np.ndarray]]]:
    """Seeded random inputs of the right shapes and dtypes: {"encoder": [feed], "decoder": [prompt, step]}."""
    rng = np.random.default_rng(seed)
    d = bundle.dims
    dtype = io.PRECISIONS[bundle.precision]
    n_layer, h, hd = d.n_text_layer, d.n_text_head, d.text_head_dim
    mel = rng.standard_normal((2, d.n_mels, 2 * d.n_audio_ctx)).astype(np.float32)
    n_audio, beams, capacity = 2, 2, 16
    rows = n_audio * beams
    cross = [(rng.standard_normal((n_audio, h, d.n_audio_ctx, hd))).astype(dtype) for _ in range(2 * n_layer)]

    def decoder_feed(n_new: int, offsets: list[int], positions: list[int]) -> OrderedDict[str, np.ndarray]:
        feed: OrderedDict[str, np.ndarray] = OrderedDict()
        feed[io.TOKENS] = rng.integers(0, d.n_vocab, (rows, n_new)).astype(np.int64)
        feed[io.OFFSETS] = np.asarray(offsets, np.int64)
        feed[io.LOGIT_POSITIONS] = np.asarray(positions, np.int64)
        for name in io.self_inputs(n_layer):
            feed[name] = (rng.standard_normal((rows, h, capacity, hd)) * 0.5).astype(dtype)
        for name, value in zip(io.cross_inputs(n_layer), cross):
            feed[name] = value
        return feed

    return {
        "encoder": [OrderedDict([(io.MEL, mel)])],
        "decoder": [decoder_feed(3, [0, 2, 4, 5], [0, 2]), decoder_feed(1, [7, 9, 3, 11], [0])],
    }


# -- runners -----------------------------------------------------------------------------------------


def _base_runner() -> Any:
    from polygraphy.backend.base import BaseRunner

    return BaseRunner


def _metadata(feed: OrderedDict[str, np.ndarray]) -> Any:
    from polygraphy.common import TensorMetadata

    meta = TensorMetadata()
    for name, value in feed.items():
        meta.add(name, value.dtype, tuple(None for _ in value.shape))
    return meta


def torch_runner(graph: str, model: Any, example: OrderedDict[str, np.ndarray]) -> Any:
    """The PyTorch reference (fp32) behind polygraphy's BaseRunner interface; fp16 inputs are upcast."""
    import torch

    n_layer = model.dims.n_text_layer

    class TorchGraphRunner(_base_runner()):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name=f"torch:{graph}")

        def activate_impl(self) -> None:
            pass

        def deactivate_impl(self) -> None:
            pass

        def get_input_metadata_impl(self) -> Any:
            return _metadata(example)

        def infer_impl(self, feed: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
            t0 = time.perf_counter()
            f = {k: torch.from_numpy(np.asarray(v, np.float32) if v.dtype == np.float16 else v) for k, v in feed.items()}
            out: OrderedDict[str, np.ndarray] = OrderedDict()
            with torch.inference_mode():
                if graph == "encoder":
                    ks, vs = model.encode(f[io.MEL])
                    for i, (k, v) in enumerate(zip(ks, vs)):
                        out[f"out_cross_k_{i}"], out[f"out_cross_v_{i}"] = k.numpy(), v.numpy()
                else:
                    selfs = [f[n] for n in io.self_inputs(n_layer)]
                    cross = [f[n] for n in io.cross_inputs(n_layer)]
                    same_rows = torch.arange(f[io.TOKENS].shape[0])  # the graph continues each row's own cache
                    logits, ks, vs = model.decoder(f[io.TOKENS], f[io.OFFSETS], same_rows, selfs[0::2],
                                                   selfs[1::2], cross[0::2], cross[1::2], f[io.LOGIT_POSITIONS])
                    out[io.LOGITS] = logits.numpy()
                    for i, (k, v) in enumerate(zip(ks, vs)):
                        out[f"out_self_k_{i}"], out[f"out_self_v_{i}"] = k.numpy(), v.numpy()
            self.inference_time = time.perf_counter() - t0
            return OrderedDict((k, np.ascontiguousarray(v)) for k, v in out.items())

    return TorchGraphRunner()


def tensorrt_runner(graph: str, engine_path: Path, example: OrderedDict[str, np.ndarray]) -> Any:
    """whisper_export.backends.tensorrt.runner.EngineRunner behind polygraphy's BaseRunner interface."""
    from whisper_export.backends.tensorrt.runner import EngineRunner

    class TensorRTGraphRunner(_base_runner()):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name=f"tensorrt:{graph}")
            self.runner: EngineRunner | None = None

        def activate_impl(self) -> None:
            self.runner = EngineRunner(engine_path).open()

        def deactivate_impl(self) -> None:
            if self.runner is not None:
                self.runner.close()
                self.runner = None

        def get_input_metadata_impl(self) -> Any:
            return _metadata(example)

        def infer_impl(self, feed: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
            assert self.runner is not None
            t0 = time.perf_counter()
            out = OrderedDict(self.runner.infer(feed))
            self.inference_time = time.perf_counter() - t0
            return out

    return TensorRTGraphRunner()


def onnxruntime_runner(graph: str, onnx_path: Path) -> Any:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]), name=f"onnxruntime:{graph}")


# -- availability ------------------------------------------------------------------------------------


def _load_reference_model(bundle: Bundle, checkpoint: Any) -> Any:
    from reference_model import load_checkpoint
    from reference_model.model import Whisper
    from reference_model.sources import PACKAGED

    if checkpoint is None:
        name, source = bundle.config.get("model_name"), bundle.config.get("model_source")
        if name in PACKAGED:
            checkpoint = load_checkpoint(name)
        elif source and Path(source).exists():
            checkpoint = load_checkpoint(source)
        else:
            raise FileNotFoundError(f"the bundle's checkpoint {name!r} ({source}) is not available here; "
                                    "pass checkpoint=")
    elif not hasattr(checkpoint, "state"):
        checkpoint = load_checkpoint(checkpoint)
    return Whisper.from_state_dict(checkpoint.dims, checkpoint.state)


def tensorrt_unavailable(bundle: Bundle) -> str | None:
    """Why the TensorRT backend cannot run here, or None."""
    from whisper_export.backends.tensorrt import trt_api
    from whisper_export.backends.tensorrt.runner import CudaDevice
    from whisper_export.backends.tensorrt.sidecar import EngineSidecar, RuntimeEnv, check_compatible, sidecar_path

    try:
        for graph in ("encoder", "decoder"):
            path = bundle.directory / f"{graph}.engine"
            if not path.is_file():
                return f"{path.name} is missing (run whisper-export build)"
            sidecar = EngineSidecar.read(sidecar_path(path))
            info = trt_api.select(sidecar.trt_module)
            cc, why = CudaDevice().compute_capability()
            check_compatible(sidecar, RuntimeEnv(info.name, info.version, cc, why))
    except Exception as e:  # TensorRTUnavailable, EngineMismatch, SidecarError, CudaError
        return str(e)
    return None


def compare_backends(
    bundle_dir: str | os.PathLike[str],
    backends: Sequence[str] = BACKENDS,
    seed: int = 0,
    checkpoint: Any = None,
    graphs: Sequence[str] = ("encoder", "decoder"),
) -> list[CompareRow]:
    """Rows for one table: each available backend's every output vs the first available backend.

    checkpoint: for the torch backend (a reference_model Checkpoint or a load_checkpoint spec); default:
    the bundle's own model when it can be found here.
    """
    from polygraphy.logger import G_LOGGER

    check_backend_names(backends)
    bundle = Bundle.open(Path(bundle_dir))
    tol = bundle_tolerance(bundle.config)
    feeds = make_feeds(bundle, seed)

    rows: list[CompareRow] = []
    available = _available_backends(bundle, backends, checkpoint, rows)
    if len(available) < 2:
        rows.append(CompareRow("*", "*", ",".join(available) or "-", "-", status="skipped",
                               reason="fewer than two backends available: nothing to compare"))
        return rows

    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        for graph in graphs:
            rows += _compare_graph(bundle, graph, available, feeds[graph], tol)
    finally:
        G_LOGGER.module_severity = severity
    return rows


def _available_backends(bundle: Bundle, backends: Sequence[str], checkpoint: Any,
                        rows: list[CompareRow]) -> dict[str, Any]:
    """The backends that can run here (torch: its model), in request order; a skipped row for each other."""
    available: dict[str, Any] = {}
    for name in backends:
        try:
            if name == "torch":
                available[name] = _load_reference_model(bundle, checkpoint)
            elif name == "onnxruntime":
                import onnxruntime  # noqa: F401

                available[name] = None
            else:
                why = tensorrt_unavailable(bundle)
                if why:
                    raise RuntimeError(why)
                available[name] = None
        except Exception as e:  # ImportError, a missing checkpoint, no GPU, an engine to rebuild, ...
            reason = str(e) if name == "tensorrt" else f"{type(e).__name__}: {e}"
            rows.append(CompareRow("*", "*", name, "-", status="skipped", reason=reason))
    return available


def _compare_graph(bundle: Bundle, graph: str, available: dict[str, Any], graph_feeds: Any,
                   tol: Tolerance) -> list[CompareRow]:
    """One graph's rows: every output of each backend against the first one's, on the same feeds."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    reference = next(iter(available))
    runners = []
    for name in available:
        if name == "torch":
            runners.append(torch_runner(graph, available[name], graph_feeds[0]))
        elif name == "onnxruntime":
            runners.append(onnxruntime_runner(graph, bundle.directory / f"{graph}.onnx"))
        else:
            runners.append(tensorrt_runner(graph, bundle.directory / f"{graph}.engine", graph_feeds[0]))
    results = Comparator.run(runners, data_loader=graph_feeds)
    names = list(available)
    outputs = {name: [dict(it) for it in iters] for name, iters in results}
    ref_iters = outputs[runners[0].name]
    atol = {out: max(tol.bound(np.asarray(it[out], np.float64)) for it in ref_iters) for out in ref_iters[0]}
    accuracy = Comparator.compare_accuracy(
        results, comparisons=[(0, i) for i in range(1, len(runners))],
        compare_func=SimpleCompareFunc(atol=atol, rtol=0.0, check_error_stat="max"),
    )
    rows: list[CompareRow] = []
    for (ref_name, other_name), iterations in accuracy[0].items():
        backend = names[[r.name for r in runners].index(other_name)]
        for index, iteration in enumerate(iterations):
            label = graph if graph == "encoder" else f"decoder[{'prompt' if index == 0 else 'step'}]"
            for out_name, cmp in iteration.items():
                got = np.asarray(outputs[other_name][index][out_name], np.float64).ravel()
                ref = np.asarray(outputs[ref_name][index][out_name], np.float64).ravel()
                norm = float(np.linalg.norm(got) * np.linalg.norm(ref))
                cos = float(got @ ref) / max(norm, 1e-30)
                limit = atol[out_name]
                passed = bool(cmp) and cos >= tol.min_cosine
                rows.append(CompareRow(label, out_name, backend, reference, float(cmp.max_absdiff),
                                       float(cmp.max_reldiff), float(cmp.mean_absdiff), cos, limit,
                                       tol.min_cosine, "pass" if passed else "FAIL"))
    return rows
