"""The onnxruntime backend on the CPU: numpy arrays in, numpy arrays out, caches updated in place.

Every handle is a list of numpy arrays, one per cache or cross K/V of each layer. A step binds views of its row
range (contiguous slices of the first axis) as the decoder's inputs and the same memory as its cache outputs:
the decoder's ScatterElements (and GroupQueryAttention, for attention="onnxruntime") skips its copy when output
and input are one buffer, so a step writes only its new positions, and a pool's rows are stepped in place
without copying the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whisper_export import graph_io
from whisper_export.backends.ort_common import OrtBackend
from whisper_export.backends.step import StepRequest


@dataclass
class CpuCross:
    values: list[np.ndarray]  # (slots, H, n_audio_ctx, hd) per layer, graph_io.cross_inputs order
    slots: int


@dataclass
class CpuCache:
    values: list[np.ndarray]  # (rows, H, capacity, hd) per layer, graph_io.self_inputs order
    rows: int
    capacity: int


def _bind_array(binding, name: str, array: np.ndarray, output: bool) -> None:
    """Bind a C-contiguous array (or slice) by address: onnxruntime reads or writes it in place. The binding
    holds only the address: the caller keeps `array` alive until the run has returned (a temporary freed
    earlier is memory that another thread may already be writing)."""
    assert array.flags.c_contiguous, name
    bind = binding.bind_output if output else binding.bind_input
    bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)


class OrtCpuBackend(OrtBackend):
    device = "cpu"

    def __init__(self, bundle, threads: int | None = None):
        super().__init__(bundle, threads)
        self.encoder = self._session(self.bundle.encoder_path, [graph_io.MEL], self._cross_out)
        self.decoder = self._session(self.bundle.decoder_path, self._dec_in, self._dec_out)

    def new_cross(self, slots: int) -> CpuCross:
        self.check_new_cross(slots)
        d = self.dims
        shape = (slots, d.n_text_head, d.n_audio_ctx, d.text_head_dim)
        return CpuCross([np.empty(shape, self.dtype) for _ in self._cross_in], slots)

    def new_cache(self, rows: int, capacity: int) -> CpuCache:
        self.check_new_cache(rows, capacity)
        d = self.dims
        shape = (rows, d.n_text_head, capacity, d.text_head_dim)
        return CpuCache([np.zeros(shape, self.dtype) for _ in self._self_in], rows, capacity)

    def encode(self, mel: np.ndarray, into: CpuCross | None = None, slots: Sequence[int] | None = None) -> CpuCross:
        """One window per run, each written into its slot: on a CPU the encoder is compute-bound, and one window's
        activations (the 1500 x 1500 attention scores: 54 MB per layer for tiny) stay in cache; windows one by
        one take ~10% less time than a batch, with bit-identical outputs."""
        written = self.check_encode(mel, into, slots, CpuCross)
        cross = into if into is not None else self.new_cross(mel.shape[0])
        for i, slot in enumerate(written):
            binding = self.encoder.io_binding()
            window = np.ascontiguousarray(mel[i : i + 1])  # alive until the run returns
            _bind_array(binding, graph_io.MEL, window, output=False)
            for name, value in zip(self._cross_out, cross.values):
                _bind_array(binding, name, value[slot : slot + 1], output=True)
            self.encoder.run_with_iobinding(binding)
        return cross

    def _decode(self, request: StepRequest, cache: CpuCache, cross: CpuCross) -> np.ndarray:
        self.check_handles(cache, cross, CpuCache, CpuCross)
        self._check_prompt(request.tokens, request.offsets)
        start, stop, group = request.start, request.stop, request.group
        rows = [value[start:stop] for value in cache.values]  # views: the step writes the pool itself
        index = request.cache_index()
        if index is not None:
            for view in rows:
                view[...] = view[index]  # fancy indexing copies first, so the rows move as a whole
        binding = self.decoder.io_binding()
        # held in this dict until the run returns: logit_positions() and any int64 copy are temporaries
        small_inputs = {graph_io.TOKENS: request.tokens, graph_io.OFFSETS: request.offsets,
                        graph_io.LOGIT_POSITIONS: request.logit_positions()}
        small_inputs = {name: np.ascontiguousarray(value, dtype=np.int64) for name, value in small_inputs.items()}
        for name, value in small_inputs.items():
            _bind_array(binding, name, value, output=False)
        for name_in, name_out, view in zip(self._self_in, self._self_out, rows):
            _bind_array(binding, name_in, view, output=False)
            _bind_array(binding, name_out, view, output=True)
        for name, value in zip(self._cross_in, cross.values):
            _bind_array(binding, name, value[start // group : stop // group], output=False)
        if self.selects:  # its in-graph choice is not used on the CPU: numpy picks from the logits
            _bind_array(binding, graph_io.LOGIT_BIAS, self._no_bias, output=False)
            binding.bind_output(graph_io.BEST_TOKEN, "cpu")
            binding.bind_output(graph_io.BEST_LOGPROB, "cpu")
        binding.bind_output(graph_io.LOGITS, "cpu")
        self.decoder.run_with_iobinding(binding)
        return binding.get_outputs()[-1].numpy()  # bound last

    def align(self, cross: CpuCross, audio_rows, tokens, lengths):
        """Backend.align on align.onnx (ort_align.py), fed the pool's numpy cross K/V as they are."""
        return self._align_on(cross, CpuCross, audio_rows, tokens, lengths)

    def close(self) -> None:
        self.encoder = self.decoder = self._align = None  # type: ignore[assignment]
