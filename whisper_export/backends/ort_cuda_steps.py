"""The onnxruntime backend on CUDA, its plain half: sessions, device buffers, handles, the encoder and the decoder
steps that return logits (ort_cuda.py adds the steps that pick on the device).

Every buffer lives as long as the backend, so that nothing is allocated or bound per step and CUDA graphs can
replay the decoder step:
- cross K/V: pooled sets of `slots` audios; the encoder writes each window straight into its slot.
- self-attention caches: a pooled pair of sets per (rows, capacity). Steps update the current set in place (the
  decoder's ScatterElements, or GroupQueryAttention for attention="onnxruntime", skips its copy when output and
  input are one buffer); a beam reorder runs cache_reorder.onnx from the current set into the other, which
  becomes current (greedy steps copy nothing).
- steering inputs (tokens, offsets, logit positions) are fixed device tensors updated in place; logits are a
  fixed device tensor, copied to the host only when the step returns logits.
- CUDA graphs (the CUDA EP's enable_cuda_graph): a one-token step over a whole cache is captured once per (cross
  set, cache sets, what is bound) and replayed (run config gpu_graph_id), which is why the scheduler steps every
  row of a pool (steps_whole_pool). A step over part of a cache (a prompt of newly admitted windows) binds that
  part by address and runs without a graph. If the decoder cannot run under capture, a second session with the
  step's shapes fixed is tried, then plain IO binding: see `graph_mode`.
- one CUDA stream for every session (host_mapped.CudaStream as user_compute_stream): a step whose logits a small
  graph picks from is queued with its cache reorder and that graph's run, and waited for once.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from whisper_export import graph_io
from whisper_export.backends.base import BackendError
from whisper_export.backends.host_mapped import CudaStream, HostMappedError
from whisper_export.backends.ort_aux import AuxGraphs
from whisper_export.backends.ort_buffers import CacheHandle, CrossHandle, DeviceBuffers
from whisper_export.backends.ort_common import OrtBackend
from whisper_export.backends.ort_runs import CapturedRuns
from whisper_export.backends.step import StepRequest

# WHISPER_EXPORT_CUDA_GRAPH=0: plain IO binding on CUDA (for comparisons and as a way out of a driver problem)
CUDA_GRAPH_ENV = "WHISPER_EXPORT_CUDA_GRAPH"


def check_cuda_provider() -> None:
    """BackendError unless onnxruntime can run on CUDA here."""
    if hasattr(ort, "preload_dlls"):
        # CUDA/cuDNN from pip's nvidia-* packages are not on the loader path: onnxruntime finds them itself
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - system-wide CUDA libraries may still do; the check below decides
            pass
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError(
            f"device 'cuda': received onnxruntime {ort.__version__} with providers "
            f"{ort.get_available_providers()}, expected CUDAExecutionProvider (pip install onnxruntime-gpu)"
        )


def _range(value: Any, start: int, stop: int) -> tuple[list[int], int]:
    """(shape, address) of rows [start, stop) of a device tensor whose first axis is rows."""
    shape = list(value.shape())
    itemsize = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(int64)": 8}[value.data_type()]
    return [stop - start, *shape[1:]], value.data_ptr() + start * int(np.prod(shape[1:])) * itemsize


class CudaSteps(OrtBackend):
    device = "cuda"
    _ort_device = "cuda"  # where OrtValues live (a test may point it at "cpu" to run this path on the CPU provider)
    steps_whole_pool = True
    # a prompt call costs its launches here (~2 ms for tiny.en on an H100 whether it has 2 tokens or 33, 1 row or
    # 4): the scheduler pads prompts of different lengths into one call instead of one call per length
    pads_prompts = True

    def __init__(self, bundle, threads: int | None = None, *, cuda_graph: bool | None = None, device_id: int = 0,
                 shared_stream: bool = True, provider_options: dict[str, str] | None = None):
        super().__init__(bundle, threads, device_id=device_id, provider_options=provider_options)
        if self.selects and self.dtype == np.float32 and self._ort_device == "cuda":
            # GroupQueryAttention has fp16/bf16 CUDA kernels only: onnxruntime would place the float32 one on the
            # CPU, beside caches bound on the device, and the steps decode garbage (seen on an H200)
            raise BackendError(
                f"{self.bundle.directory}: received precision {self.precision} with --attention onnxruntime, "
                "expected fp16 for CUDA (onnxruntime's GroupQueryAttention has no float32 CUDA kernel); re-export "
                "it with --fp16, or with --attention onnx")
        check_cuda_provider()
        stream: CudaStream | None = None
        self.stream_error: str | None = None  # why the sessions have a stream each (no CUDA runtime library)
        if shared_stream and "user_compute_stream" not in self.provider_options:
            try:
                stream = CudaStream(device_id)
                self.provider_options["user_compute_stream"] = str(stream.handle)
            except HostMappedError as e:
                self.stream_error = str(e)
        self.shared_stream = "user_compute_stream" in self.provider_options
        self.encoder = self._session(self.bundle.encoder_path, [graph_io.MEL], self._cross_out)
        # `decoder` runs prompts (and every step without graphs); `step_decoder` the captured one-token steps
        self.decoder: ort.InferenceSession | None = None
        self.step_decoder: ort.InferenceSession | None = None
        self.graph_mode, self.graph_error = "off", None
        if cuda_graph if cuda_graph is not None else os.environ.get(CUDA_GRAPH_ENV, "1") != "0":
            self._open_graph_decoder()
        if self.decoder is None:
            self.decoder = self._session(self.bundle.decoder_path, self._dec_in, self._dec_out)
        self._aux: AuxGraphs | None = None
        self.buffers = DeviceBuffers(self.dims, self.dtype, self._ort_device, device_id,
                                     (lambda rows: self._aux_graphs().choice_buffers(rows)) if self.selects else None)
        self._graph_ids = itertools.count(1)
        self._steps = CapturedRuns(self.step_decoder or self.decoder, self._graph_ids, self.graph_mode != "off",
                                   self._graphs_failed)
        self._prompt_options = ort.RunOptions()
        if self.graph_mode == "shared":
            self._prompt_options.add_run_config_entry("gpu_graph_id", "-1")
        self._cuda_stream = stream  # set after the sessions that use it, so that it is released after them

    # -- sessions ---------------------------------------------------------------------------------------

    def _open_graph_decoder(self) -> None:
        """One session that runs prompts without a graph and captures steps; else a second session with the
        step's shapes fixed (its shape arithmetic folds to constants, nothing left for the CPU); else none."""
        path, errors = self.bundle.decoder_path, []
        try:
            self.decoder = self.step_decoder = self._session(path, self._dec_in, self._dec_out, graph=True)
            self.graph_mode = "shared"
            return
        except BackendError as e:
            errors.append(str(e))
        try:
            fixed = {"n_new": 1, "n_logits": 1, "capacity": self.dims.n_text_ctx}
            self.step_decoder = self._session(path, self._dec_in, self._dec_out, graph=True, fixed=fixed)
            self.graph_mode = "step-session"
            return
        except BackendError as e:
            errors.append(str(e))
        self.graph_error = "; ".join(errors)

    def _graphs_failed(self, error: Exception) -> ort.InferenceSession:
        """A capture that failed leaves its session unusable: plain IO binding from now on."""
        self.graph_error, self.graph_mode, self.step_decoder = f"capture failed: {error}", "off", None
        self.decoder = self._session(self.bundle.decoder_path, self._dec_in, self._dec_out)
        self._prompt_options = ort.RunOptions()
        return self.decoder

    def _aux_graphs(self) -> AuxGraphs:
        if self._aux is None:
            paths = {"reorder": self.bundle.reorder_path, "select": self.bundle.select_path, "top": self.bundle.top_path,
                     "limited": self.bundle.limited_path, "top_limited": self.bundle.top_limited_path}
            self._aux = AuxGraphs(
                lambda which, inputs, outputs, graph: self._session(paths[which], inputs, outputs, graph=graph),
                self.buffers.zeros, self._graph_ids, self.graph_mode != "off", self.dims.n_text_layer,
                self.dims.n_vocab)
        return self._aux

    # -- handles and the encoder -------------------------------------------------------------------------

    def new_cross(self, slots: int) -> CrossHandle:
        self.check_new_cross(slots)
        lease = self.buffers.cross.take((slots,))
        return CrossHandle(lease.buffers.values, slots, lease)

    def new_cache(self, rows: int, capacity: int) -> CacheHandle:
        self.check_new_cache(rows, capacity)
        if self.graph_mode != "off":
            capacity = self.dims.n_text_ctx  # one shape for every decode: one captured graph serves them all
        return CacheHandle((self.buffers.cache.take((rows, capacity)), self.buffers.cache.take((rows, capacity))),
                           rows, capacity)

    def encode(self, mel: np.ndarray, into: CrossHandle | None = None, slots: Sequence[int] | None = None) -> CrossHandle:
        """Each run of consecutive slots in encoder runs of power-of-two batches, written into the slots by address."""
        written = self.check_encode(mel, into, slots, CrossHandle)
        cross = into if into is not None else self.new_cross(mel.shape[0])
        order = np.argsort(written, kind="stable")
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order) and written[order[j]] == written[order[j - 1]] + 1:
                j += 1
            # runs are power-of-two batches: cuDNN plans the convolutions once per input shape (~0.1 s each on
            # an H200, against ~10 ms to encode 16 windows), so a process meets at most log2(rows) + 1 shapes
            j = i + _pow2_floor(j - i)
            first, batch = written[order[i]], np.ascontiguousarray(mel[order[i:j]])
            binding = self.encoder.io_binding()
            binding.bind_cpu_input(graph_io.MEL, batch)
            for name, value in zip(self._cross_out, cross.values):
                shape, address = _range(value, first, first + j - i)
                binding.bind_output(name, self._ort_device, self.device_id, self.dtype, shape, address)
            self.encoder.run_with_iobinding(binding)
            i = j
        return cross

    # -- plain steps -----------------------------------------------------------------------------------

    def _decode(self, request: StepRequest, cache: CacheHandle, cross: CrossHandle) -> np.ndarray:
        """Logits to the host: a one-token step over the whole cache on fixed buffers (captured); any other step
        (a prompt, part of the cache) bound by address and run as it is."""
        self._reorder(request, cache)
        if self._whole_step(request, cache):
            self._step(request.tokens, request.offsets, cache, cross)
            return self.buffers.steering(cache.rows).logits.numpy()
        return self._range_step(request, cache, cross)

    def _whole_step(self, request: StepRequest, cache: CacheHandle) -> bool:
        return (request.start == 0 and request.rows == cache.rows and request.tokens.shape[1] == 1
                and request.positions is None)

    def _reorder(self, request: StepRequest, cache: CacheHandle, wait: bool | None = None) -> None:
        """The request's beam reorder: cache_reorder.onnx from the current set into the other, which becomes
        current (rows outside the request's range keep their place)."""
        index = request.cache_index()
        if index is None:
            return
        whole = np.arange(cache.rows, dtype=np.int64)
        whole[request.start : request.stop] = index + request.start
        # on a shared stream the step that reads the reordered set runs after the reorder without a wait between
        self._aux_graphs().reorder(cache.sets_key(), cache.values, cache.spare, whole,
                                   wait=not self.shared_stream if wait is None else wait)
        cache.flip()

    def _range_step(self, request: StepRequest, cache: CacheHandle, cross: CrossHandle) -> np.ndarray:
        self._check_prompt(request.tokens, request.offsets)
        binding = self.decoder.io_binding()
        for name, value in ((graph_io.TOKENS, request.tokens), (graph_io.OFFSETS, request.offsets),
                            (graph_io.LOGIT_POSITIONS, request.logit_positions())):
            binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=np.int64))
        g = request.group
        for name_in, name_out, value in zip(self._self_in, self._self_out, cache.values):
            shape, address = _range(value, request.start, request.stop)
            binding.bind_input(name_in, self._ort_device, self.device_id, self.dtype, shape, address)
            binding.bind_output(name_out, self._ort_device, self.device_id, self.dtype, shape, address)
        for name, value in zip(self._cross_in, cross.values):
            shape, address = _range(value, request.start // g, request.stop // g)
            binding.bind_input(name, self._ort_device, self.device_id, self.dtype, shape, address)
        if self.selects:  # its choice is not read
            binding.bind_cpu_input(graph_io.LOGIT_BIAS, self._no_bias)
            binding.bind_output(graph_io.BEST_TOKEN, "cpu")
            binding.bind_output(graph_io.BEST_LOGPROB, "cpu")
        binding.bind_output(graph_io.LOGITS, "cpu")
        self.decoder.run_with_iobinding(binding, self._prompt_options)
        return binding.get_outputs()[-1].numpy()  # bound last

    def _step(self, tokens: np.ndarray, offsets: np.ndarray, cache: CacheHandle, cross: CrossHandle,
              logit_bias: np.ndarray | None = None, wait: bool = True) -> None:
        """One token per row of the whole cache on fixed buffers (the steering set of the row count), its
        logits left in the steering buffer. logit_bias: a selecting decoder's (None: left as it is).
        wait=False: queued, for a later run on the same stream to wait for."""
        steering = self.buffers.steering(cache.rows)
        bias = self._aux_graphs().device_bias(logit_bias) if self.selects else None
        # tokens and offsets change every step; logit positions never (position 0, which the zeroed buffer holds)
        steering.values[graph_io.TOKENS].update_inplace(np.ascontiguousarray(tokens, dtype=np.int64))
        steering.values[graph_io.OFFSETS].update_inplace(np.ascontiguousarray(offsets, dtype=np.int64))
        self._run_step(lambda binding: self._bind_steering(binding, steering, bias), cache, cross, wait=wait)

    @staticmethod
    def _bind_steering(binding, steering, bias) -> None:
        for name, value in steering.values.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(graph_io.LOGITS, steering.logits)
        if steering.choice is not None:
            binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, bias)
            binding.bind_ortvalue_output(graph_io.BEST_TOKEN, steering.choice[0])
            binding.bind_ortvalue_output(graph_io.BEST_LOGPROB, steering.choice[1])

    def _bind_tensors(self, binding, cache: CacheHandle, cross: CrossHandle) -> None:
        for name_in, name_out, value in zip(self._self_in, self._self_out, cache.values):
            binding.bind_ortvalue_input(name_in, value)
            binding.bind_ortvalue_output(name_out, value)  # in place
        for name, value in zip(self._cross_in, cross.values):
            binding.bind_ortvalue_input(name, value)

    def _run_step(self, bind, cache: CacheHandle, cross: CrossHandle, *key: Any, wait: bool = True) -> None:
        """A step on fixed buffers bound by bind(binding) and to the cache and cross K/V: one binding (and graph)
        per buffer combination, key naming what bind chose. The step is idempotent, as a capture's two plain runs
        first need: it rewrites the same positions of the current set in place."""

        def bind_all(binding) -> None:
            bind(binding)
            self._bind_tensors(binding, cache, cross)

        cross_id = cross.lease.buffers.id if cross.lease is not None else id(cross)
        self._steps.run((cross_id, *cache.sets_key(), *key), bind_all, wait)

    def align(self, cross: CrossHandle, audio_rows, tokens, lengths):
        """Backend.align on align.onnx (ort_align.py): the pool's cross K/V OrtValues bound where they lie, on the
        backend's stream; tokens in, scores and probabilities out through the host."""
        return self._align_on(cross, CrossHandle, audio_rows, tokens, lengths)

    def align_matrices(self, cross: CrossHandle, audio_rows, tokens, lengths, frames):
        """Backend.align_matrices: align.onnx's scores stay on the device for alignment_matrix.onnx; only the
        (rows, tokens, frames) matrices and the probabilities reach the host."""
        return self._align_on(cross, CrossHandle, audio_rows, tokens, lengths, frames,
                              (self._ort_device, self.device_id))

    def close(self) -> None:
        # dropping the sessions frees their memory (and the device arena) once handles are gone
        self._steps = None  # type: ignore[assignment]
        self.buffers.clear()
        self.encoder = self.decoder = self.step_decoder = self._aux = self._align = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.bundle.directory)!r}, device='cuda', threads={self.threads}, "
                f"cuda_graph={self.graph_mode!r})")


def _pow2_floor(n: int) -> int:
    """The largest power of two <= n (n >= 1)."""
    return 1 << (n.bit_length() - 1)
