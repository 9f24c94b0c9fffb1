"""The TensorRT backend of the decoding runtime (whisper_export.backends.base.Backend).

    with TensorRTBackend("bundle/") as backend:
        results = decode(backend, tokenizer, mel)

Nothing but the logits crosses to the host: ``encode`` leaves the cross-attention K/V on the device, where
the decoder engine reads them; the self-attention caches live on the device as two buffer sets per cache
that ping-pong -- step t reads set A and writes set B, step t+1 reads B and writes A -- because TensorRT
does not promise that an output may alias an input. A beam reorder copies rows from the front set into the
other one (one device-to-device copy per run of consecutive source rows and cache) before the step. A cache
handle is consumed by decode(); using it again raises instead of reading overwritten memory.
Buffers are freed when their handle is garbage-collected, and all of them on close().
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisper_export.backends.tensorrt.runner import Buffer, DeviceApi, DeviceTensor, EngineRunner
from whisper_export import graph_io as io
from whisper_export.backends.base import Backend, BackendError
from whisper_export.bundle import Bundle, BundleError


def _free(buffers: list[Buffer]) -> None:
    for b in buffers:
        try:
            b.free()
        except Exception:  # at interpreter exit the CUDA context may already be gone
            pass


@dataclass(eq=False)
class _Cross:
    tensors: list[DeviceTensor]  # in graph_io.cross_inputs order
    n_audio: int


@dataclass(eq=False)
class _CachePair:
    """The two buffer sets of one cache; ``step`` counts decode() calls, ``front`` holds the current cache."""

    sets: tuple[list[Buffer], list[Buffer]]
    front: int = 0
    step: int = 0


@dataclass(eq=False)
class _Cache:
    pair: _CachePair
    step: int
    rows: int
    capacity: int
    shape: tuple[int, ...] = field(default=())


class TensorRTBackend(Backend):
    """bundle: a directory (or Bundle) with encoder.engine and decoder.engine built by whisper-export build."""

    def __init__(self, bundle: Bundle | str | os.PathLike[str], device: DeviceApi | None = None,
                 runner_factory: Any = EngineRunner) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(Path(bundle))
        self.dims = self.bundle.dims
        self.precision = self.bundle.precision
        if self.precision not in io.PRECISIONS:
            raise BundleError(f"bundle precision: received {self.precision!r}, expected one of {sorted(io.PRECISIONS)}")
        self.dtype = np.dtype(io.PRECISIONS[self.precision])
        paths = {g: self.bundle.directory / f"{g}.engine" for g in ("encoder", "decoder")}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise BackendError(f"{', '.join(missing)}: missing; build the engines first: whisper-export build "
                               f"--out {self.bundle.directory}")
        n_layer = self.dims.n_text_layer
        self._cross_out, self._cross_in = io.cross_outputs(n_layer), io.cross_inputs(n_layer)
        self._self_in, self._self_out = io.self_inputs(n_layer), io.self_outputs(n_layer)
        self.encoder: EngineRunner = runner_factory(paths["encoder"], device)
        self.decoder: EngineRunner = runner_factory(paths["decoder"], device)
        for runner in (self.encoder, self.decoder):
            if runner.sidecar.precision != self.precision:
                raise BackendError(f"{runner.engine_path.name}: received precision {runner.sidecar.precision}, "
                                   f"expected the bundle's {self.precision}; rebuild the engines")
        self.encoder.open()
        try:
            self.decoder.open()
        except BaseException:
            self.encoder.close()
            raise
        self.device: DeviceApi = self.encoder.device
        self._small: dict[str, Buffer] = {}  # mel, steering inputs, logits: reused every call
        self._live: weakref.WeakSet[Any] = weakref.WeakSet()
        limits = self.decoder.sidecar.limits
        self.max_rows = int(limits["max_rows"])
        self.max_capacity = int(limits["max_capacity"])

    # -- helpers -------------------------------------------------------------------------------------

    def _buffer(self, name: str, nbytes: int) -> Buffer:
        buf = self._small.get(name)
        if buf is None:
            buf = self._small[name] = self.device.buffer(nbytes)
        buf.ensure(nbytes)
        return buf

    def _upload(self, name: str, array: np.ndarray, runner: EngineRunner) -> DeviceTensor:
        array = np.ascontiguousarray(array)
        buf = self._buffer(name, array.nbytes)
        assert runner.stream is not None
        buf.upload(array, runner.stream)
        return DeviceTensor(buf, array.shape, array.dtype)

    def _track(self, handle: Any, buffers: list[Buffer]) -> None:
        weakref.finalize(handle, _free, buffers)
        self._live.add(handle)

    # -- Backend -------------------------------------------------------------------------------------

    def encode(self, mel: np.ndarray) -> _Cross:
        self.check_mel(mel)
        profile, shapes = self.encoder.plan({io.MEL: (mel.shape, mel.dtype)})
        mel_t = self._upload(io.MEL, mel, self.encoder)
        outputs = {name: DeviceTensor(self.device.buffer(0), shapes[name], self.dtype) for name in self._cross_out}
        for t in outputs.values():
            t.buffer.ensure(t.nbytes)
        self.encoder.execute({io.MEL: mel_t}, outputs, profile)
        # the decoder runs on its own stream: make the cross K/V complete before it may read them
        assert self.encoder.stream is not None
        self.encoder.stream.synchronize()
        cross = _Cross([outputs[n.replace("in_", "out_", 1)] for n in self._cross_in], mel.shape[0])
        self._track(cross, [t.buffer for t in cross.tensors])
        return cross

    def new_cache(self, rows: int, capacity: int) -> _Cache:
        self.check_new_cache(rows, capacity)
        if rows > self.max_rows or capacity > self.max_capacity:
            raise ValueError(
                f"new_cache: received rows={rows}, capacity={capacity}, expected rows <= {self.max_rows} and "
                f"capacity <= {self.max_capacity} (the decoder engine's profile); rebuild with larger "
                "--max-batch/--max-beam"
            )
        d = self.dims
        shape = (rows, d.n_text_head, capacity, d.text_head_dim)
        nbytes = int(np.prod(shape)) * self.dtype.itemsize
        front = [self.device.buffer(nbytes) for _ in self._self_in]
        back = [self.device.buffer(nbytes) for _ in self._self_in]
        assert self.decoder.stream is not None
        for b in front:  # masked positions must hold finite values: 0 x NaN would poison the attention
            b.zero(nbytes, self.decoder.stream)
        pair = _CachePair((front, back))
        self._track(pair, front + back)
        return _Cache(pair, 0, rows, capacity, shape)

    def decode(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        cache_index: np.ndarray,
        logit_positions: np.ndarray,
        cache: _Cache,
        cross: _Cross,
    ) -> tuple[np.ndarray, _Cache]:
        self.check_handles(cache, cross, _Cache, _Cross)
        if cache.step != cache.pair.step:
            raise BackendError(
                f"decode: received a cache consumed by an earlier decode (step {cache.step}, the cache is at step "
                f"{cache.pair.step}); use the cache the last decode() returned"
            )
        self.check_step(tokens, offsets, cache_index, logit_positions, cache.rows, cache.capacity, cross.n_audio)
        steering = {io.TOKENS: tokens, io.OFFSETS: offsets, io.LOGIT_POSITIONS: logit_positions}
        pair = cache.pair
        if self.reorders(cache_index):
            self._reorder(pair, cache_index, int(np.prod(cache.shape[1:])) * self.dtype.itemsize)
        current, spare = pair.sets[pair.front], pair.sets[1 - pair.front]
        feeds: dict[str, tuple[tuple[int, ...], Any]] = {n: (v.shape, v.dtype) for n, v in steering.items()}
        feeds.update({n: (cache.shape, self.dtype) for n in self._self_in})
        feeds.update({n: (t.shape, t.dtype) for n, t in zip(self._cross_in, cross.tensors)})
        profile, shapes = self.decoder.plan(feeds)

        inputs = {n: self._upload(n, v, self.decoder) for n, v in steering.items()}
        inputs.update({n: DeviceTensor(b, cache.shape, self.dtype) for n, b in zip(self._self_in, current)})
        inputs.update(dict(zip(self._cross_in, cross.tensors)))
        logits = DeviceTensor(self._buffer(io.LOGITS, 0), shapes[io.LOGITS], np.dtype(np.float32))
        logits.buffer.ensure(logits.nbytes)
        outputs = {io.LOGITS: logits}
        outputs.update({n: DeviceTensor(b, cache.shape, self.dtype) for n, b in zip(self._self_out, spare)})
        self.decoder.execute(inputs, outputs, profile)
        assert self.decoder.stream is not None
        host = logits.buffer.download(np.empty(logits.shape, np.float32), self.decoder.stream)
        self.decoder.stream.synchronize()
        pair.front = 1 - pair.front
        pair.step += 1
        return host, _Cache(pair, pair.step, cache.rows, cache.capacity, cache.shape)

    def _reorder(self, pair: "_CachePair", cache_index: np.ndarray, row_bytes: int) -> None:
        """Row r of the other set := row cache_index[r] of the front set, then the other set is the front."""
        src_set, dst_set = pair.sets[pair.front], pair.sets[1 - pair.front]
        runs: list[tuple[int, int, int]] = []  # (first source row, first destination row, rows)
        for r, s in enumerate(cache_index.tolist()):
            if runs and runs[-1][0] + runs[-1][2] == s and runs[-1][1] + runs[-1][2] == r:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((s, r, 1))
        assert self.decoder.stream is not None
        for src, dst in zip(src_set, dst_set):
            for s, r, n in runs:
                dst.copy_from(src, n * row_bytes, s * row_bytes, r * row_bytes, self.decoder.stream)
        pair.front = 1 - pair.front

    def close(self) -> None:
        for handle in list(self._live):
            if isinstance(handle, _Cross):
                _free([t.buffer for t in handle.tensors])
            elif isinstance(handle, _CachePair):
                _free([*handle.sets[0], *handle.sets[1]])
        self._live = weakref.WeakSet()
        _free(list(self._small.values()))
        self._small.clear()
        self.encoder.close()
        self.decoder.close()

    def __repr__(self) -> str:
        return f"TensorRTBackend({str(Path(self.bundle.directory))!r}, {self.encoder.sidecar.trt_module})"
