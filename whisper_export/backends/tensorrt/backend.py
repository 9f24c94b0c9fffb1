"""The TensorRT backend of the decoding runtime (whisper_export.backends.base.Backend).

    with TensorRTBackend("bundle/") as backend:
        results = decode(backend, tokenizer, mel)

Nothing but the logits crosses to the host: ``encode`` leaves the cross-attention K/V on the device (in their
pool slots), where the decoder engine reads them; the self-attention caches live on the device as two buffer
sets per cache, the front one current: a step over the whole cache reads the front set and writes the other,
which becomes the front (TensorRT does not promise that an output may alias an input); a step over part of it
(a prompt of newly admitted windows) runs on staging copies of its rows. A beam reorder copies rows from the
front set into the other one (one device-to-device copy per run of consecutive source rows and cache) before
the step. Buffers are freed when their handle is garbage-collected, and all of them on close().
"""

from __future__ import annotations

import os
from collections.abc import Sequence
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisper_export.backends.tensorrt.runner import Buffer, DeviceApi, DeviceTensor, EngineRunner
from whisper_export import graph_io as io
from whisper_export.backends.base import Backend, BackendError
from whisper_export.backends.step import StepRequest
from whisper_export.bundle import Bundle, BundleError


def _free(buffers: list[Buffer]) -> None:
    for b in buffers:
        try:
            b.free()
        except Exception:  # at interpreter exit the CUDA context may already be gone
            pass


@dataclass(eq=False)
class _Cross:
    tensors: list[DeviceTensor]  # (slots, H, n_audio_ctx, hd) each, in graph_io.cross_inputs order
    slots: int


@dataclass(eq=False)
class _Cache:
    """The two buffer sets of one cache; sets[front] holds the current values (TensorRT does not promise that an
    output may alias an input, so a step writes the other set)."""

    sets: tuple[list[Buffer], list[Buffer]]
    rows: int
    capacity: int
    shape: tuple[int, ...]
    front: int = 0


class TensorRTBackend(Backend):
    """bundle: a directory (or Bundle) with encoder.engine and decoder.engine built by whisper-export build."""

    steps_whole_pool = True  # the scheduler steps every row of a pool, so steps need no staging
    max_rows: int  # the decoder engine's profile: rows of one step at most

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

    def _tensors(self, shape: tuple[int, ...], count: int) -> list[DeviceTensor]:
        nbytes = int(np.prod(shape)) * self.dtype.itemsize
        return [DeviceTensor(self.device.buffer(nbytes), shape, self.dtype) for _ in range(count)]

    def new_cross(self, slots: int) -> _Cross:
        self.check_new_cross(slots)
        d = self.dims
        cross = _Cross(self._tensors((slots, d.n_text_head, d.n_audio_ctx, d.text_head_dim), len(self._cross_in)), slots)
        self._track(cross, [t.buffer for t in cross.tensors])
        return cross

    def encode(self, mel: np.ndarray, into: _Cross | None = None, slots: Sequence[int] | None = None) -> _Cross:
        written = self.check_encode(mel, into, slots, _Cross)
        profile, shapes = self.encoder.plan({io.MEL: (mel.shape, mel.dtype)})
        mel_t = self._upload(io.MEL, mel, self.encoder)
        fresh = self.new_cross(mel.shape[0])
        outputs = {name.replace("in_", "out_", 1): t for name, t in zip(self._cross_in, fresh.tensors)}
        self.encoder.execute({io.MEL: mel_t}, outputs, profile)
        assert self.encoder.stream is not None
        if into is not None:  # each window into its slot
            slot_bytes = fresh.tensors[0].nbytes // mel.shape[0]
            for src, dst in zip(fresh.tensors, into.tensors):
                for i, slot in enumerate(written):
                    dst.buffer.copy_from(src.buffer, slot_bytes, i * slot_bytes, slot * slot_bytes, self.encoder.stream)
        # the decoder runs on its own stream: make the cross K/V complete before it may read them
        self.encoder.stream.synchronize()
        return into if into is not None else fresh

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
        cache = _Cache((front, back), rows, capacity, shape)
        self._track(cache, front + back)
        return cache

    def _decode(self, request: StepRequest, cache: _Cache, cross: _Cross) -> np.ndarray:
        """The whole cache: (reorder into the back set,) the front set in, the back set out, then they swap.
        Part of it: its rows (reordered) copied into a staging set, run into another, copied back."""
        self.check_handles(cache, cross, _Cache, _Cross)
        rows, g = request.rows, request.group
        shape = (rows, *cache.shape[1:])
        row_bytes = int(np.prod(cache.shape[1:])) * self.dtype.itemsize
        index = request.cache_index()
        whole = request.start == 0 and rows == cache.rows
        if whole:
            if index is not None:
                self._reorder(cache, index, row_bytes)
            inputs, outputs = cache.sets[cache.front], cache.sets[1 - cache.front]
        else:
            inputs, outputs = self._staging("in", rows, row_bytes), self._staging("out", rows, row_bytes)
            sources = (index if index is not None else np.arange(rows)) + request.start
            self._copy_rows(cache.sets[cache.front], inputs, sources, np.arange(rows), row_bytes)
        cross_t = self._cross_range(cross, request.start // g, request.stop // g)
        steering = {io.TOKENS: request.tokens, io.OFFSETS: request.offsets, io.LOGIT_POSITIONS: request.logit_positions()}
        feeds: dict[str, tuple[tuple[int, ...], Any]] = {n: (v.shape, v.dtype) for n, v in steering.items()}
        feeds.update({n: (shape, self.dtype) for n in self._self_in})
        feeds.update({n: (t.shape, t.dtype) for n, t in zip(self._cross_in, cross_t)})
        profile, shapes = self.decoder.plan(feeds)
        feed = {n: self._upload(n, v, self.decoder) for n, v in steering.items()}
        feed.update({n: DeviceTensor(b, shape, self.dtype) for n, b in zip(self._self_in, inputs)})
        feed.update(dict(zip(self._cross_in, cross_t)))
        logits = DeviceTensor(self._buffer(io.LOGITS, 0), shapes[io.LOGITS], np.dtype(np.float32))
        logits.buffer.ensure(logits.nbytes)
        results = {io.LOGITS: logits, **{n: DeviceTensor(b, shape, self.dtype) for n, b in zip(self._self_out, outputs)}}
        self.decoder.execute(feed, results, profile)
        if whole:
            cache.front = 1 - cache.front
        else:
            self._copy_rows(outputs, cache.sets[cache.front], np.arange(rows), np.arange(rows) + request.start, row_bytes)
        assert self.decoder.stream is not None
        host = logits.buffer.download(np.empty(logits.shape, np.float32), self.decoder.stream)
        self.decoder.stream.synchronize()
        return host

    def _staging(self, which: str, rows: int, row_bytes: int) -> list[Buffer]:
        return [self._buffer(f"stage-{which}-{i}", rows * row_bytes) for i in range(len(self._self_in))]

    def _cross_range(self, cross: _Cross, first: int, stop: int) -> list[DeviceTensor]:
        """The cross K/V of slots [first, stop): the pool's own buffers when they start at slot 0, else a copy."""
        shape = (stop - first, *cross.tensors[0].shape[1:])
        if first == 0:
            return [DeviceTensor(t.buffer, shape, t.dtype) for t in cross.tensors]
        slot_bytes = cross.tensors[0].nbytes // cross.slots
        staged = []
        for i, t in enumerate(cross.tensors):
            buffer = self._buffer(f"stage-cross-{i}", (stop - first) * slot_bytes)
            buffer.copy_from(t.buffer, (stop - first) * slot_bytes, first * slot_bytes, 0, self.decoder.stream)
            staged.append(DeviceTensor(buffer, shape, t.dtype))
        return staged

    def _copy_rows(self, src_set: list[Buffer], dst_set: list[Buffer], sources: np.ndarray, targets: np.ndarray,
                   row_bytes: int) -> None:
        """Row targets[r] of each destination := row sources[r] of its source, one copy per run of rows."""
        runs: list[tuple[int, int, int]] = []  # (first source row, first destination row, rows)
        for s, r in zip(sources.tolist(), targets.tolist()):
            if runs and runs[-1][0] + runs[-1][2] == s and runs[-1][1] + runs[-1][2] == r:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((s, r, 1))
        assert self.decoder.stream is not None
        for src, dst in zip(src_set, dst_set):
            for s, r, n in runs:
                dst.copy_from(src, n * row_bytes, s * row_bytes, r * row_bytes, self.decoder.stream)

    def _reorder(self, cache: _Cache, index: np.ndarray, row_bytes: int) -> None:
        """Row r of the back set := row index[r] of the front set, then the back set is the front."""
        rows = np.arange(cache.rows)
        self._copy_rows(cache.sets[cache.front], cache.sets[1 - cache.front], index, rows, row_bytes)
        cache.front = 1 - cache.front

    def close(self) -> None:
        for handle in list(self._live):
            if isinstance(handle, _Cross):
                _free([t.buffer for t in handle.tensors])
            elif isinstance(handle, _Cache):
                _free([*handle.sets[0], *handle.sets[1]])
        self._live = weakref.WeakSet()
        _free(list(self._small.values()))
        self._small.clear()
        self.encoder.close()
        self.decoder.close()

    def __repr__(self) -> str:
        return f"TensorRTBackend({str(Path(self.bundle.directory))!r}, {self.encoder.sidecar.trt_module})"
