"""The onnxruntime backend: the bundle's encoder.onnx and decoder.onnx on CPU or CUDA.

CPU: numpy in, numpy out; each step's cache outputs are fed back as the next step's inputs as they are
(onnxruntime reads contiguous numpy arrays in place, so nothing is copied on the host).

CUDA: IO binding onto buffers that live as long as the backend, so that nothing is allocated or bound per step
and CUDA graphs can replay the decoder step:
- cross K/V: the encoder writes them into a pooled buffer set (one per batch size in use) and they stay there
  for every step of every decode that uses them; they are never recomputed or copied.
- self-attention caches: a pooled pair of buffer sets per decoder row count; each step reads one set and writes
  the other, then they swap. A beam reorder runs cache_reorder.onnx from one set into the other before the step
  (greedy steps copy nothing extra). A bundle exported with attention="onnxruntime" appends in place instead
  (GroupQueryAttention's past/present buffer sharing: in_self_* and out_self_* bound to the same set), so a
  step writes n_new positions per row rather than copying the whole cache.
- steering inputs (tokens, offsets, logit positions) are fixed device tensors updated in place
  (OrtValue.update_inplace), only when they changed; logits are a fixed device tensor copied to the host.
- greedy steps of a decoder that chooses in its own graph (attention="onnxruntime") stream through a ring in
  host-mapped memory, greedy_queue of them queued on the device, each reading the previous one's choice there
  (ort_greedy.py): the host reads each choice as it lands, without synchronising, and the GPU runs the steps
  back to back.
- CUDA graphs (ORT CUDA EP enable_cuda_graph): a one-token step is captured once per (rows, cross set, cache
  set, direction or ring slot) and replayed (run config gpu_graph_id); a prompt runs without a graph
  (gpu_graph_id -1) the first time its shape (rows, n_new, n_logits) comes, and is captured like a step from
  the second time on. With graphs the cache capacity is n_text_ctx for every decode, so one graph serves every
  window. If the decoder graph cannot run under capture (onnxruntime refuses nodes outside the CUDA EP), a
  second session specialised to one-token steps is tried, then plain IO binding: see `graph_mode`.
- one CUDA stream for every session (host_mapped.CudaStream as user_compute_stream): a step whose logits a small
  graph picks from is queued with its cache reorder and that graph's run, and waited for once.
The steps that pick on the device (decode_best, decode_top, decode_best_limited, decode_greedy[_limited]) are in
ort_picking.py, this class's base.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import onnxruntime as ort

from whisper_export import graph_io
from whisper_export.backends.base import BackendError
from whisper_export.backends.cpu_info import physical_cores
from whisper_export.backends.host_mapped import CudaStream, HostMappedError
from whisper_export.backends.ort_align import AlignRunner
from whisper_export.backends.ort_aux import AuxGraphs
from whisper_export.backends.ort_buffers import CacheHandle as _Cache
from whisper_export.backends.ort_buffers import CrossHandle as _Cross
from whisper_export.backends.ort_buffers import DeviceBuffers
from whisper_export.backends.ort_picking import DevicePicking
from whisper_export.backends.ort_runs import CapturedRuns
from whisper_export.backends.ort_sessions import open_session
from whisper_export.bundle import Bundle, BundleError

DEVICES = ("cpu", "cuda")
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


class OnnxRuntimeBackend(DevicePicking):
    _ort_device = "cuda"  # where the CUDA path's OrtValues live (a test may point it at "cpu")
    # CUDA: from this many rows on, decode_best selects on the device (one more captured small graph) instead
    # of copying the logits to the host (4 x n_vocab bytes per row); on the H100 the device wins from 1 row on
    # (tiny.en: 0.59 vs 0.72 ms per step at 1 row, 0.76 vs 3.58 at 16; NOTES.md, GPU run 8)
    select_min_rows = 1

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        *,
        cuda_graph: bool | None = None,
        device_id: int = 0,
        greedy_queue: int = 2,
        shared_stream: bool = True,
        provider_options: dict[str, str] | None = None,
    ):
        """cuda_graph (CUDA only): None = on unless WHISPER_EXPORT_CUDA_GRAPH=0; see the module docstring.
        greedy_queue (CUDA, a decoder that chooses greedily): greedy steps kept queued on the device while the
        host waits for the oldest (ort_greedy.py); at most this many run after the last row's eot. 0 waits for
        every step (decode_best per step). 2: tiny.en on the H200 runs 0.275 ms/step (4 and 8: the same; 1:
        0.288; 0: 0.413) and decodes the 5 clips at 0.371 ms/token (4: 0.410, 8: 0.486, the steps run after
        an eot; 0: 0.440) (NOTES.md, GPU run 19).
        shared_stream (CUDA): every session on one CUDA stream of the backend's (host_mapped.CudaStream), so that
        a beam step's reorder, decoder step and candidates, or a greedy step and its timestamp rules, are waited
        for once; False leaves each session on onnxruntime's own stream (a wait after every run). A
        user_compute_stream in provider_options is shared the same way.
        provider_options (CUDA): more CUDA execution provider options, e.g. {"sdpa_kernel": "1"} to choose
        onnxruntime's attention kernels (its default, cuDNN's, measured fastest for Whisper: GPU run 12)."""
        if device not in DEVICES:
            raise ValueError(f"device: received {device!r}, expected one of {', '.join(DEVICES)}")
        if not isinstance(greedy_queue, int) or greedy_queue < 0:
            raise ValueError(f"greedy_queue: received {greedy_queue!r}, expected an int >= 0")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: received {threads!r}, expected a positive int or None (physical cores)")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(os.fspath(bundle))
        self.dims = self.bundle.dims
        self.precision = self.bundle.precision
        if self.precision not in graph_io.PRECISIONS:
            raise BundleError(f"bundle precision: received {self.precision!r}, expected one of {sorted(graph_io.PRECISIONS)}")
        self.dtype = graph_io.PRECISIONS[self.precision]
        self.device = device
        self.device_id = device_id
        self.provider_options = dict(provider_options or {})
        self.threads = threads or physical_cores()
        n_layer = self.dims.n_text_layer
        self._cross_out = graph_io.cross_outputs(n_layer)
        self._cross_in = graph_io.cross_inputs(n_layer)
        self._self_in = graph_io.self_inputs(n_layer)
        self._self_out = graph_io.self_outputs(n_layer)
        # attention="onnxruntime" (graphs_ort.py): the cache is appended to in place, the decoder also chooses
        # greedily (one run per greedy step), and a step of several tokens must be a prompt (every offset 0)
        self.in_place = self.selects = self.bundle.config.get("attention") == "onnxruntime"
        self._dec_out = graph_io.decoder_outputs(n_layer, self.selects)
        self._dec_in = graph_io.decoder_inputs(n_layer, self.selects)
        self._aux: AuxGraphs | None = None  # CUDA: the bundle's small graphs (ort_aux.py)
        self._align: AlignRunner | None = None  # align.onnx (ort_align.py), opened by the first align()
        self._no_bias = np.zeros(self.dims.n_vocab, np.float32)  # a selecting decoder's bias input, unused
        # streamed greedy steps need the choice inside the decoder's graph; elsewhere one step at a time
        self.greedy_queue = greedy_queue if device == "cuda" and self.selects else 0
        self.greedy_error: str | None = None  # why streaming was given up (no host-mapped memory)

        if device == "cuda":
            check_cuda_provider()
        # CUDA: every session on one stream (host_mapped.CudaStream; a caller's own user_compute_stream does as
        # well), so that a step and the small graph reading its output are queued together and waited for once
        stream: CudaStream | None = None
        self.stream_error: str | None = None  # why the sessions have a stream each (no CUDA runtime library)
        if device == "cuda" and shared_stream and "user_compute_stream" not in self.provider_options:
            try:
                stream = CudaStream(device_id)
                self.provider_options["user_compute_stream"] = str(stream.handle)
            except HostMappedError as e:
                self.stream_error = str(e)
        self.shared_stream = device == "cuda" and "user_compute_stream" in self.provider_options
        self.encoder = self._session(self.bundle.encoder_path, [graph_io.MEL], self._cross_out)
        # CUDA: `decoder` runs prompt steps (and every step without graphs); `step_decoder` runs the captured
        # one-token steps (the same session unless the specialised fallback was needed)
        self.step_decoder: ort.InferenceSession | None = None
        self.graph_mode = "off"
        self.graph_error: str | None = None
        if device == "cpu":
            self.decoder = self._session(self.bundle.decoder_path, self._dec_in, self._dec_out)
            return
        want_graph = cuda_graph if cuda_graph is not None else os.environ.get(CUDA_GRAPH_ENV, "1") != "0"
        self.decoder = None  # type: ignore[assignment]
        if want_graph:
            self._open_graph_decoder()
        if self.decoder is None:
            self.decoder = self._session(self.bundle.decoder_path, self._dec_in, self._dec_out)
        self.buffers = DeviceBuffers(self.dims, self.dtype, self._ort_device, device_id,
                                     (lambda rows: self._aux_graphs().choice_buffers(rows)) if self.selects else None)
        self._graph_ids = itertools.count(1)
        # one-token steps: one binding per buffer combination, captured with graphs
        self._steps = CapturedRuns(self.step_decoder or self.decoder, self._graph_ids, self.graph_mode != "off",
                                   self._graphs_failed)
        self._prompt_shapes: set[tuple[int, int, int]] = set()  # (rows, n_new, n_logits) of the prompts run
        # the prompt runs in the capturing session ("shared") outside any graph, else in a plain session
        self._prompt_options = ort.RunOptions()
        if self.graph_mode == "shared":
            self._prompt_options.add_run_config_entry("gpu_graph_id", "-1")
        self._cuda_stream = stream  # set after the sessions that use it, so that it is released after them

    # -- sessions ------------------------------------------------------------------------------------

    def _session(self, path, inputs: list[str], outputs: list[str], graph: bool = False,
                 fixed: dict[str, int] | None = None) -> ort.InferenceSession:
        return open_session(path, inputs, outputs, device=self.device, device_id=self.device_id,
                            precision=self.precision, threads=self.threads, provider_options=self.provider_options,
                            graph=graph, fixed=fixed)

    def _open_graph_decoder(self) -> None:
        """One session that runs prompts without a graph and captures steps; else a second session with the
        step's shapes fixed (its shape arithmetic folds to constants, nothing left for the CPU); else none."""
        path = self.bundle.decoder_path
        errors = []
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
        """A capture that failed leaves its session unusable: go on with plain IO binding (the session the
        one-token steps run in from now on)."""
        self.graph_error = f"capture failed: {error}"
        self.graph_mode = "off"
        self.step_decoder = None
        self.decoder = self._session(self.bundle.decoder_path, self._dec_in, self._dec_out)
        self._prompt_options = ort.RunOptions()
        return self.decoder

    # -- Backend ---------------------------------------------------------------------------------------

    def encode(self, mel: np.ndarray) -> _Cross:
        self.check_mel(mel)
        if self.device == "cpu":
            return _Cross(self._encode_cpu(mel), mel.shape[0])
        lease = self.buffers.cross.take((mel.shape[0],))
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(graph_io.MEL, np.ascontiguousarray(mel))
        for name, value in zip(self._cross_in, lease.buffers.values):
            binding.bind_ortvalue_output(name.replace("in_", "out_", 1), value)
        self.encoder.run_with_iobinding(binding)
        return _Cross(lease.buffers.values, mel.shape[0], lease)

    def _encode_cpu(self, mel: np.ndarray) -> list[np.ndarray]:
        """One window per run, each written into its slice of the batch's outputs: on a CPU the encoder is
        compute-bound, and one window's activations (the 1500 x 1500 attention scores: 54 MB per layer for
        tiny, five times that for a batch of 5) stay in cache and fault in 5x fewer fresh pages on the first
        call; 5 windows take ~10% less time than one batch of 5, with bit-identical outputs."""
        n = mel.shape[0]
        if n == 1:
            return self.encoder.run(self._cross_out, {graph_io.MEL: mel})
        d = self.dims
        shape = (n, d.n_text_head, d.n_audio_ctx, d.text_head_dim)
        outputs = [np.empty(shape, self.dtype) for _ in self._cross_out]
        item = int(np.prod(shape[1:]))
        for i in range(n):
            binding = self.encoder.io_binding()
            binding.bind_cpu_input(graph_io.MEL, np.ascontiguousarray(mel[i : i + 1]))
            for name, out in zip(self._cross_out, outputs):
                binding.bind_output(name, "cpu", 0, self.dtype, [1, *shape[1:]], out.ctypes.data + i * item * out.itemsize)
            self.encoder.run_with_iobinding(binding)
        return outputs

    def new_cache(self, rows: int, capacity: int) -> _Cache:
        self.check_new_cache(rows, capacity)
        d = self.dims
        if self.device == "cpu":
            shape = (rows, d.n_text_head, capacity, d.text_head_dim)
            return _Cache([np.zeros(shape, self.dtype) for _ in self._self_in], rows, capacity)
        if self.graph_mode != "off":
            capacity = d.n_text_ctx  # one shape for every decode: one captured graph serves them all
        a = self.buffers.cache.take((rows, capacity))
        b = self.buffers.cache.take((rows, capacity))
        return _Cache(a.buffers.values, rows, capacity, b.buffers.values, (a, b), 0)

    def _check_prompt(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        if self.in_place and tokens.shape[1] > 1 and offsets.any():
            raise ValueError(
                f"offsets: received {offsets.tolist()} for a {tokens.shape[1]}-token step, expected all 0: a bundle "
                "exported with attention='onnxruntime' takes several tokens only as a prompt (GroupQueryAttention)")

    def _after_step(self, cache: _Cache) -> _Cache:
        """The handle of the cache a step wrote: the other set of the pair, or the same one when in place."""
        return cache if self.in_place else cache.swapped()

    def decode(self, tokens, offsets, cache_index, logit_positions, cache: _Cache, cross: _Cross):
        self.check_handles(cache, cross, _Cache, _Cross)
        self.check_step(tokens, offsets, cache_index, logit_positions, cache.rows, cache.capacity, cross.n_audio)
        self._check_prompt(tokens, offsets)
        if self.device == "cpu":
            outputs, cache = self._run_cpu(tokens, offsets, cache_index, logit_positions, cache, cross)
            return outputs[0], cache
        cache = self._reorder(cache, cache_index)
        if tokens.shape[1] == 1 and logit_positions.shape == (1,) and logit_positions[0] == 0:
            logits = self._step(tokens, offsets, cache, cross)
        else:
            logits = self._prompt(tokens, offsets, logit_positions, cache, cross)
        # the outputs become the next inputs and the consumed inputs the next outputs: no allocation per step
        return logits, self._after_step(cache)

    def _run_cpu(self, tokens, offsets, cache_index, logit_positions, cache: _Cache, cross: _Cross,
                 logit_bias: np.ndarray | None = None) -> tuple[list[np.ndarray], _Cache]:
        """The decoder's outputs (graph_io.decoder_outputs order) and the new cache, on numpy arrays."""
        values = cache.values
        if self.reorders(cache_index):
            values = [np.take(c, cache_index, axis=0) for c in values]
        feeds = {graph_io.TOKENS: tokens, graph_io.OFFSETS: offsets, graph_io.LOGIT_POSITIONS: logit_positions,
                 **dict(zip(self._self_in, values)), **dict(zip(self._cross_in, cross.values))}
        if self.selects:
            feeds[graph_io.LOGIT_BIAS] = self._no_bias if logit_bias is None else logit_bias
        outputs = self.decoder.run(self._dec_out, feeds)
        return outputs, _Cache(outputs[1 : 1 + len(self._self_out)], cache.rows, cache.capacity)

    def _aux_graphs(self) -> AuxGraphs:
        if self._aux is None:
            paths = {"reorder": self.bundle.reorder_path, "select": self.bundle.select_path, "top": self.bundle.top_path,
                     "limited": self.bundle.limited_path, "top_limited": self.bundle.top_limited_path}
            self._aux = AuxGraphs(
                lambda which, inputs, outputs, graph: self._session(paths[which], inputs, outputs, graph=graph),
                self.buffers.zeros, self._graph_ids, self.graph_mode != "off", self.dims.n_text_layer,
                self.dims.n_vocab)
        return self._aux

    def _reorder(self, cache: _Cache, cache_index: np.ndarray) -> _Cache:
        """CUDA: the cache with row r := row cache_index[r], written into the other set of the pair (which the
        step then reads); the cache itself when cache_index is the identity."""
        if not self.reorders(cache_index):
            return cache
        assert cache.spare is not None, "CUDA caches come in pairs (new_cache)"
        # on a shared stream the step that reads the reordered set runs after the reorder without a wait between
        self._aux_graphs().reorder(cache.sets_key(), cache.values, cache.spare, cache_index, wait=not self.shared_stream)
        return cache.swapped()

    def _prompt(self, tokens, offsets, logit_positions, cache: _Cache, cross: _Cross) -> np.ndarray:
        """Any other step. The first of its shape (rows, n_new, n_logits) runs as is (no graph); a shape seen
        before runs on fixed buffers like a one-token step, captured with graphs (the same prompt starts every
        window, while a previous window's text as a prompt seldom repeats its length: not worth a capture)."""
        shape = (tokens.shape[0], tokens.shape[1], len(logit_positions))
        if self.graph_mode == "step-session" or shape not in self._prompt_shapes:  # that session takes 1 token
            self._prompt_shapes.add(shape)
            return self._plain_prompt(tokens, offsets, logit_positions, cache, cross)
        steering = self.buffers.steering(*shape)
        for name, value in ((graph_io.TOKENS, tokens), (graph_io.OFFSETS, offsets),
                            (graph_io.LOGIT_POSITIONS, logit_positions)):
            steering.values[name].update_inplace(np.ascontiguousarray(value, dtype=np.int64))
        bias = self._aux_graphs().device_bias(None) if self.selects else None  # its choice is not read
        self._run_step(lambda binding: self._bind_steering(binding, steering, bias), cache, cross, "prompt", *shape)
        return steering.logits.numpy()

    def _plain_prompt(self, tokens, offsets, logit_positions, cache: _Cache, cross: _Cross) -> np.ndarray:
        """Any step, run as is (no graph): steering copied from the host, logits bound to host memory."""
        binding = self.decoder.io_binding()
        for name, value in (
            (graph_io.TOKENS, tokens),
            (graph_io.OFFSETS, offsets),
            (graph_io.LOGIT_POSITIONS, logit_positions),
        ):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        self._bind_tensors(binding, cache, cross)
        if self.selects:
            binding.bind_cpu_input(graph_io.LOGIT_BIAS, self._no_bias)
            binding.bind_output(graph_io.BEST_TOKEN, "cpu")
            binding.bind_output(graph_io.BEST_LOGPROB, "cpu")
        binding.bind_output(graph_io.LOGITS, "cpu")
        self.decoder.run_with_iobinding(binding, self._prompt_options)
        return binding.get_outputs()[-1].numpy()  # bound last: the caches first, the logits last

    def _bind_tensors(self, binding, cache: _Cache, cross: _Cross) -> None:
        for name, value in zip(self._self_in, cache.values):
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self._cross_in, cross.values):
            binding.bind_ortvalue_input(name, value)
        assert cache.spare is not None, "CUDA caches come in pairs (new_cache)"
        for name, value in zip(self._self_out, cache.values if self.in_place else cache.spare):
            binding.bind_ortvalue_output(name, value)

    def _step(self, tokens, offsets, cache: _Cache, cross: _Cross, fetch: bool = True,
              logit_bias: np.ndarray | None = None, wait: bool = True) -> np.ndarray | None:
        """One token per row on fixed buffers (the steering set of the row count). logit_bias: a selecting
        decoder's. wait=False (no fetch): queued, for a later run on the same stream to wait for."""
        steering = self.buffers.steering(cache.rows)
        # a selecting decoder's bias buffer is bound once; its value changes in place (None: left as it is)
        bias = self._aux_graphs().device_bias(logit_bias) if self.selects else None
        # tokens and offsets change every step; logit positions never (the one-token step asks for position 0,
        # which the zeroed buffer holds)
        steering.values[graph_io.TOKENS].update_inplace(np.ascontiguousarray(tokens, dtype=np.int64))
        steering.values[graph_io.OFFSETS].update_inplace(np.ascontiguousarray(offsets, dtype=np.int64))

        self._run_step(lambda binding: self._bind_steering(binding, steering, bias), cache, cross, wait=wait or fetch)
        return steering.logits.numpy() if fetch else None

    @staticmethod
    def _bind_steering(binding, steering, bias) -> None:
        for name, value in steering.values.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(graph_io.LOGITS, steering.logits)
        if steering.choice is not None:
            binding.bind_ortvalue_input(graph_io.LOGIT_BIAS, bias)
            binding.bind_ortvalue_output(graph_io.BEST_TOKEN, steering.choice[0])
            binding.bind_ortvalue_output(graph_io.BEST_LOGPROB, steering.choice[1])

    def _run_step(self, bind, cache: _Cache, cross: _Cross, *key: Any, wait: bool = True) -> None:
        """A step on fixed buffers bound by bind(binding) and to the cache and cross K/V: one binding (and graph)
        per buffer combination, key naming what bind chose. The step is idempotent, as a capture's two plain runs
        first need: it reads one cache set and writes the other, or rewrites the same position in place."""

        def bind_all(binding) -> None:
            bind(binding)
            self._bind_tensors(binding, cache, cross)

        cross_id = cross.lease.buffers.id if cross.lease is not None else id(cross)
        self._steps.run((cross_id, *cache.sets_key(), *key), bind_all, wait)

    def align(self, cross: _Cross, audio_rows, tokens, lengths):
        """Backend.align on align.onnx, opened on first use (ort_align.py; CUDA: cross.values bound in place)."""
        if not isinstance(cross, _Cross):
            raise TypeError(f"align: received cross {type(cross).__name__}, expected the handle encode() returns")
        self._align = self._align or AlignRunner(self.bundle, self._session)
        return self._align.run(cross.values, cross.n_audio, audio_rows, tokens, lengths)

    def close(self) -> None:
        # dropping the sessions frees their memory (and the device arena) once handles are gone
        if self.device == "cuda":
            self._steps = None  # type: ignore[assignment]
            self.buffers.clear()
        self.encoder = self.decoder = self.step_decoder = self._aux = self._align = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        extra = f", cuda_graph={self.graph_mode!r}" if self.device == "cuda" else ""
        return f"OnnxRuntimeBackend({str(self.bundle.directory)!r}, device={self.device!r}, threads={self.threads}{extra})"
