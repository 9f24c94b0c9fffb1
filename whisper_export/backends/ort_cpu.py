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
        if _one_prompt_per_group(request):
            return self._decode_shared(request, cache, cross)
        rows = [value[start:stop] for value in cache.values]  # views: the step writes the pool itself
        index = request.cache_index()
        if index is not None:
            for view in rows:
                view[...] = view[index]  # fancy indexing copies first, so the rows move as a whole
        return self._run_decoder(request.tokens, request.offsets, request.logit_positions(), rows,
                                 [value[start // group : stop // group] for value in cross.values])

    def _decode_shared(self, request: StepRequest, cache: CpuCache, cross: CpuCross) -> np.ndarray:
        """A prompt whose rows of each audio are one (beam search's and best_of's G copies): run once per audio,
        into a zeroed cache of one row per audio, then copied to the G rows. On a CPU a prompt costs its tokens,
        so this is G times less work (115 ms against 27 for 5 rows of 150 tokens, tiny.en, 2 threads); the rows'
        logits are the audio's, repeated."""
        g, written = request.group, request.tokens.shape[1]
        n_audio = request.rows // g
        # (n_audio, H, capacity, hd) per cache: zeros past the prompt, where the mask hides them
        rows = [np.zeros((n_audio,) + value.shape[1:], value.dtype) for value in cache.values]
        slots = slice(request.start // g, request.stop // g)
        logits = self._run_decoder(request.tokens[::g], request.offsets[::g], request.logit_positions(), rows,
                                   [value[slots] for value in cross.values])
        for value, one in zip(cache.values, rows):
            audio_major = value[request.start : request.stop].reshape((-1, g) + value.shape[1:])  # a view
            audio_major[:, :, :, :written] = one[:, None, :, :written]
        return np.repeat(logits, g, axis=0)

    def _run_decoder(self, tokens: np.ndarray, offsets: np.ndarray, positions: np.ndarray,
                     rows: list[np.ndarray], cross: list[np.ndarray]) -> np.ndarray:
        """One decoder run over contiguous cache rows (read and written in place) and their cross K/V slots."""
        binding = self.decoder.io_binding()
        # held in this dict until the run returns: logit_positions() and any int64 copy are temporaries
        small_inputs = {graph_io.TOKENS: tokens, graph_io.OFFSETS: offsets, graph_io.LOGIT_POSITIONS: positions}
        small_inputs = {name: np.ascontiguousarray(value, dtype=np.int64) for name, value in small_inputs.items()}
        for name, value in small_inputs.items():
            _bind_array(binding, name, value, output=False)
        for name_in, name_out, view in zip(self._self_in, self._self_out, rows):
            _bind_array(binding, name_in, view, output=False)
            _bind_array(binding, name_out, view, output=True)
        for name, value in zip(self._cross_in, cross):
            _bind_array(binding, name, value, output=False)
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


def _one_prompt_per_group(request: StepRequest) -> bool:
    """Whether a several-token step at offset 0 (a prompt) gives every row of each audio the same tokens, with no
    reorder: its rows would compute the same thing G times."""
    g, (rows, n_new) = request.group, request.tokens.shape
    if g == 1 or n_new == 1 or request.cache_index() is not None or request.offsets.any():
        return False  # offset 0 only: rows past a prompt may hold different pasts
    tokens = request.tokens.reshape(rows // g, g, n_new)
    return bool((tokens == tokens[:, :1]).all())
