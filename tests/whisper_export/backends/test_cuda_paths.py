"""The CUDA backend's code paths, run on onnxruntime's CPU provider with OrtValues in host memory (simulated_cuda):
pooled buffers, captured bindings, the streamed greedy ring, one stream for every session, the small graphs that
pick on the "device", and what happens where a bundle or the CUDA runtime lacks something. Each holds the tokens
of the plain CPU path (speed is measured on the GPU by benchmarks/gpu_bench.py, never here)."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest

from whisper_export.runtime.audio import log_mel_batch
from whisper_export.runtime.words import alignment_matrix
from whisper_export.backends.base import BackendError
from whisper_export.backends.picking import Pick
from whisper_export.backends.step import StepRequest
from whisper_export.bundle import Bundle


class _CaptureRefused:
    """A session whose runs with a CUDA graph id raise, as onnxruntime does when a capture fails at run time."""

    def __init__(self, session):
        self._session = session

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run_with_iobinding(self, binding, options=None):
        try:
            graph_id = options.get_run_config_entry("gpu_graph_id") if options is not None else "-1"
        except RuntimeError:  # not set
            graph_id = "-1"
        if graph_id != "-1":
            raise RuntimeError("simulated: capture refused")
        return self._session.run_with_iobinding(binding, options)


@pytest.fixture
def simulated_cuda(monkeypatch):
    """OnnxRuntimeBackend(device="cuda") runs its CUDA code path (OrtCudaBackend) on the CPU provider, OrtValues in
    host memory.
    graphs: "refused" (the capturing session does not open, as onnxruntime refuses it on a CPU), "kept" (it
    opens; the CPU provider ignores graph ids, so every graph path runs as plain runs) or "fail" (it opens, and
    every run with a graph id raises)."""
    import onnxruntime as ort

    from whisper_export.backends import onnxruntime as ob

    from whisper_export.backends.ort_cuda_steps import CudaSteps

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(CudaSteps, "_ort_device", "cpu")
    original = CudaSteps._session
    graphs = {"mode": "refused"}

    def session(self, *args, **kwargs):
        graph = kwargs.pop("graph", False)
        if graph and graphs["mode"] == "refused":
            raise BackendError("no CUDA graphs on the CPU provider")
        device, self.device = self.device, "cpu"
        try:
            opened = original(self, *args, **kwargs)
        finally:
            self.device = device
        return _CaptureRefused(opened) if graph and graphs["mode"] == "fail" else opened

    monkeypatch.setattr(CudaSteps, "_session", session)

    def make(*args, graphs_mode: str = "refused", **kwargs):
        graphs["mode"] = graphs_mode
        return ob.OnnxRuntimeBackend(*args, **kwargs)

    return make


_CPU_TOKENS: dict[tuple, list] = {}  # the plain CPU path's tokens, decoded once per (bundle, options, mel)


def _cpu_tokens(key: tuple, decode_on_cpu) -> list:
    """The CPU path is the reference of every graph mode: it does not depend on the mode, so it is decoded once."""
    if key not in _CPU_TOKENS:
        _CPU_TOKENS[key] = decode_on_cpu()
    return _CPU_TOKENS[key]


@pytest.mark.parametrize("graphs", ["refused", "kept", "fail"])
@pytest.mark.parametrize("variant", ["onnx", "onnxruntime"])
def test_cuda_code_path_on_the_cpu_provider(variant, graphs, tiny_bundle, tiny_bundle_ort, english_clips, simulated_cuda):
    """The CUDA path's pooled buffers, fixed bindings (with graphs: two plain runs, then the capturing one; a
    capture refused at run time: plain IO binding from then on), in-place caches, prompts bound by address into a
    pool's rows, steering updates and picking on the "device", run on the CPU provider: the tokens of the plain
    CPU path, and the buffer sets come back to their pools."""
    from whisper_export.runtime.options import DecodingOptions
    from whisper_export.runtime.scheduler import decode

    bundle = Bundle.open(tiny_bundle if variant == "onnx" else tiny_bundle_ort)
    tokenizer = bundle.tokenizer()
    mel = log_mel_batch(english_clips[:3])
    with simulated_cuda(bundle, device="cuda", graphs_mode=graphs) as sim:
        assert sim.graph_mode == ("off" if graphs == "refused" else "shared")
        assert sim.greedy_queue == 2 and sim.steps_whole_pool
        with simulated_cuda(bundle) as cpu:
            assert cpu.device == "cpu"
            for o, options in enumerate((DecodingOptions(without_timestamps=True), DecodingOptions(),
                                         DecodingOptions(beam_size=3, without_timestamps=True),
                                         DecodingOptions(beam_size=3))):
                for m, rows in enumerate((slice(None), slice(1, 2), slice(None))):
                    want = _cpu_tokens((variant, o, m % 2), lambda: [r.tokens for r in
                                                                     decode(cpu, tokenizer, mel[rows], options)])
                    assert [r.tokens for r in decode(sim, tokenizer, mel[rows], options)] == want
        if graphs == "fail":
            assert sim.graph_mode == "off" and "simulated: capture refused" in sim.graph_error
        else:
            assert sim.graph_mode == ("off" if graphs == "refused" else "shared")
            assert len(sim._steps) > 3  # bindings made once and reused
        # beam steps took their candidates from top_select.onnx (with timestamps: timestamp_top.onnx) on the
        # "device", greedy steps with timestamps their tokens from timestamp_rules.onnx
        assert sim._aux is not None and all(sim._aux.opened(name) is not None for name in ("top", "limited", "top_limited"))
        # greedy steps without timestamps streamed through the ring of each pool's rows where the decoder chooses
        assert sim.buffers.streams() == ([(1, 2), (3, 2)] if variant == "onnxruntime" else [])
        # every decode is over: each pooled set is free again (two cache sets per key, one cross set per pool)
        assert all(len(free) == 2 for free in sim.buffers.cache._free.values())
        assert all(len(free) == 1 for free in sim.buffers.cross._free.values())


@pytest.mark.parametrize("variant", ["onnx", "onnxruntime"])
def test_mixed_windows_in_one_continuous_batch_on_the_cuda_path(variant, tiny_bundle, tiny_bundle_ort, english_clips,
                                                                 simulated_cuda):
    """The scheduler's must-show on the CUDA path (whole-pool steps, free rows stepped and ignored, prompts into
    a pool's rows, reorders of one window's beams within a pool): every window's tokens equal its tokens alone."""
    from scheduler_cases import check_mixed_batch

    bundle = Bundle.open(tiny_bundle if variant == "onnx" else tiny_bundle_ort)
    with simulated_cuda(bundle, device="cuda", graphs_mode="kept") as sim:
        check_mixed_batch(sim, bundle.tokenizer(), english_clips)


def test_streamed_greedy_steps_equal_single_steps(tiny_bundle_ort, english_clips, simulated_cuda):
    """Greedy steps streamed through the host-mapped ring (each step's choice written into the next step's token
    slot, 3 steps queued, 10 steps = the ring's 5 slots twice) choose what 10 single steps with host feedback
    choose, with the same log-probabilities; with a stop token they end once every live row has chosen it, at
    most the queue's 3 steps later (a free row of a pool, not live, never holds them up)."""
    mel = log_mel_batch(english_clips[:3])
    prompt = np.array([[50257, 50362]] * 3)
    bias = np.zeros(51864, np.float32)
    bias[[50256 + 1, 50360]] = -np.inf  # something to filter, as the decoding loop's suppress list does
    eot = 50256

    def start(backend):
        cross = backend.encode(mel)
        cache = backend.new_cache(3, backend.dims.n_text_ctx)
        logits = backend.step(StepRequest(prompt, np.zeros(3, np.int64)), cache, cross).logits
        return logits[:, -1].argmax(-1)[:, None].astype(np.int64), cache, cross

    def greedy(backend, token, cache, cross, steps, stop=None, offset=2, live=None):
        request = StepRequest(token, np.full(3, offset), pick=Pick("best", bias=bias, steps=steps, stop_token=stop),
                              live=live)
        result = backend.step(request, cache, cross)
        return result.tokens, result.logprobs

    with simulated_cuda(tiny_bundle_ort, device="cuda", graphs_mode="kept") as sim, \
            simulated_cuda(tiny_bundle_ort, device="cuda") as ref:
        sim.greedy_queue, ref.greedy_queue = 3, 0
        token, cache, cross = start(ref)
        want_chosen, want_logprobs = [], []
        for i in range(40):
            best, logprob = greedy(ref, token, cache, cross, 1, offset=2 + i)
            want_chosen.append(best[:, 0])
            want_logprobs.append(logprob[:, 0])
            token = best
        want_chosen, want_logprobs = np.stack(want_chosen, 1), np.stack(want_logprobs, 1)

        token, cache, cross = start(sim)
        chosen, logprobs = greedy(sim, token, cache, cross, 10)
        assert chosen.shape == logprobs.shape == (3, 10) and chosen.dtype == np.int64 and logprobs.dtype == np.float32
        assert np.array_equal(chosen, want_chosen[:, :10]) and np.array_equal(logprobs, want_logprobs[:, :10])
        assert sim.buffers.streams() == [(3, 3)]
        # fed back: each row moves on (a stuck feed repeats one token), and the bias holds
        assert all(len(set(row)) > 5 for row in chosen) and not np.isin(chosen, [50257, 50360]).any()

        last_stop = max(list(row).index(eot) for row in want_chosen)  # every clip ends within 40 steps
        token, cache, cross = start(sim)
        chosen, logprobs = greedy(sim, token, cache, cross, 40, stop=eot)
        assert last_stop + 1 <= chosen.shape[1] <= last_stop + 1 + 3
        assert np.array_equal(chosen, want_chosen[:, : chosen.shape[1]])
        # row 2 not live: the stop comes with rows 0 and 1
        token, cache, cross = start(sim)
        chosen, _ = greedy(sim, token, cache, cross, 40, stop=eot, live=np.array([True, True, False]))
        first_two = max(list(row).index(eot) for row in want_chosen[:2])
        assert first_two + 1 <= chosen.shape[1] <= first_two + 1 + 3

        # a run interrupted with steps queued: the next run first waits for them, then streams as before
        stream, run_step, calls = sim.buffers.stream(3, 3), sim._run_step, []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == 5:  # steps 0-3 queued, 0 and 1 seen to finish
                raise KeyboardInterrupt
            run_step(*args, **kwargs)

        token, cache, cross = start(sim)
        sim._run_step = interrupted
        with pytest.raises(KeyboardInterrupt):
            greedy(sim, token, cache, cross, 10)
        del sim._run_step
        assert list(stream._unfinished) == [2, 3]  # queued, never waited for
        waited, wait = [], stream.wait
        stream.wait = lambda i, live=None: waited.append(i) or wait(i, live)
        token, cache, cross = start(sim)
        chosen, logprobs = greedy(sim, token, cache, cross, 10)
        assert waited[:2] == [2, 3] and np.array_equal(chosen, want_chosen[:, :10])
        del stream.wait

        with pytest.raises(ValueError, match=r"expected offset \+ n_new \+ steps - 1 <= cache capacity 448"):
            greedy(sim, token, cache, cross, 9, offset=440)
        with pytest.raises(ValueError, match=r"expected one token per row"):
            greedy(sim, np.zeros((3, 2), np.int64), cache, cross, 2)


@pytest.mark.parametrize("queue", [1, 2, 5])
def test_streamed_decoding_keeps_tokens(queue, tiny_bundle_ort, english_clips, simulated_cuda):
    """The decoding loop asks for the rest of a decode in one streamed call: what follows a row's eot or the
    sample length is dropped, so every queue depth gives the tokens and log-probabilities of one step at a
    time (queue 0)."""
    from whisper_export.runtime.scheduler import decode
    from whisper_export.runtime.options import DecodingOptions

    mel = log_mel_batch(english_clips)
    with simulated_cuda(tiny_bundle_ort, device="cuda", graphs_mode="kept") as backend:
        for options in (DecodingOptions(without_timestamps=True), DecodingOptions(without_timestamps=True, sample_len=6)):
            backend.greedy_queue = 0
            want = decode(backend, backend.bundle.tokenizer(), mel, options)
            backend.greedy_queue = queue
            got = decode(backend, backend.bundle.tokenizer(), mel, options)
            assert [(r.tokens, r.sum_logprob) for r in got] == [(r.tokens, r.sum_logprob) for r in want]
            if options.sample_len:
                assert max(len(r.tokens) for r in got) == options.sample_len
            else:
                assert min(len(r.tokens) for r in got) > 5
        assert (len(mel), queue) in backend.buffers.streams()


def test_beam_candidates_on_the_device_equal_the_hosts(tiny_bundle, english_clips, simulated_cuda):
    """A "top" pick through top_select.onnx on the "device" (logits left in the steering buffer) returns the
    candidates the host picks from the logits, in the same order, log-probabilities to float32 rounding; a
    k above TOP_K falls back to the host."""
    from whisper_export import graph_io

    mel = log_mel_batch(english_clips[:2])
    bias = np.zeros(51864, np.float32)
    bias[[50257, 50360]] = -np.inf
    rows = 4

    def step(backend, k):
        cross = backend.encode(mel)
        cache = backend.new_cache(rows, 64)
        prompt = np.array([[50257, 50362]] * rows)
        logits = backend.step(StepRequest(prompt, np.zeros(rows, np.int64), group=2), cache, cross).logits
        token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        # rows 0-1 continue audio 0, rows 2-3 audio 1, with a beam reorder before the step
        request = StepRequest(token, np.full(rows, 2), group=2, sources=np.array([1, 0, 3, 2]),
                              pick=Pick("top", k=k, bias=bias))
        result = backend.step(request, cache, cross)
        return result.tokens, result.logprobs

    with simulated_cuda(tiny_bundle, device="cuda", graphs_mode="kept") as sim, simulated_cuda(tiny_bundle) as cpu:
        for k in (6, graph_io.TOP_K):
            (top, logprobs), (want, want_logprobs) = step(sim, k), step(cpu, k)
            assert top.shape == (rows, k) and np.array_equal(top, want)
            np.testing.assert_allclose(logprobs, want_logprobs, rtol=0, atol=2e-5)
        assert len(sim._aux.opened("top")) == 1  # one captured binding, reused
        top, _ = step(sim, graph_io.TOP_K + 1)
        assert top.shape == (rows, graph_io.TOP_K + 1) and len(sim._aux.opened("top")) == 1


def test_one_shared_stream_waits_once_per_picked_step(tiny_bundle, english_clips, simulated_cuda, monkeypatch):
    """With every session on one stream (user_compute_stream), a beam step's cache reorder and decoder step, and
    a greedy step with timestamps, are only queued (run without synchronising) and the small graph that picks
    from the step's logits waits for all of it: the tokens of waiting for every run, which the backend does
    without a shared stream."""
    import onnxruntime as ort

    from whisper_export.backends.ort_runs import NO_SYNC
    from whisper_export.runtime.scheduler import decode
    from whisper_export.runtime.options import DecodingOptions

    runs: list[tuple[str, bool]] = []  # (graph file, queued) of every IO-binding run
    original = ort.InferenceSession.run_with_iobinding

    def spy(self, binding, options=None):
        try:
            queued = options is not None and options.get_run_config_entry(NO_SYNC) == "1"
        except RuntimeError:  # not set
            queued = False
        runs.append((os.path.basename(self._model_path), queued))
        return original(self, binding, options)

    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", spy)
    mel = log_mel_batch(english_clips[:2])
    options = [DecodingOptions(), DecodingOptions(beam_size=3, without_timestamps=True)]
    with simulated_cuda(tiny_bundle) as cpu:
        want = [[r.tokens for r in decode(cpu, cpu.bundle.tokenizer(), mel, o)] for o in options]
    for shared in (False, True):
        extra = {"provider_options": {"user_compute_stream": "1"}} if shared else {}
        # greedy_queue 0: one picked step at a time (streamed steps are test_streamed_timestamp_steps_...'s)
        with simulated_cuda(tiny_bundle, device="cuda", graphs_mode="kept", greedy_queue=0, **extra) as sim:
            assert sim.shared_stream == shared
            runs.clear()
            assert [[r.tokens for r in decode(sim, sim.bundle.tokenizer(), mel, o)] for o in options] == want
        queued = {name for name, q in runs if q}
        assert queued == ({"decoder.onnx", "cache_reorder.onnx"} if shared else set()), queued
        # whatever was queued is waited for by the next picking graph's run, before the host reads anything
        for i, (name, q) in enumerate(runs):
            if q:
                later = [n for n, wait in runs[i + 1 :] if not wait]
                assert later and later[0] in ("top_select.onnx", "timestamp_rules.onnx"), runs[i : i + 4]


@pytest.mark.parametrize("queue", [1, 3])
def test_streamed_timestamp_steps_equal_host_rules(queue, tiny_bundle_ort, english_clips, simulated_cuda):
    """On one stream for every session, greedy decoding with timestamps streams through the host-mapped ring:
    per step the decoder step and timestamp_rules.onnx are queued, the graph reading each row's timestamp state
    from the ring and writing its choice and the next state into it. The tokens are the CPU's (rules applied to
    host logits), the log-probabilities to float32 rounding, for every queue depth; without a shared stream the
    steps run one at a time."""
    from whisper_export.runtime.scheduler import decode
    from whisper_export.runtime.options import DecodingOptions

    mel = log_mel_batch(english_clips)
    options = DecodingOptions()
    with simulated_cuda(tiny_bundle_ort) as cpu:
        want = decode(cpu, cpu.bundle.tokenizer(), mel, options)
    ts_begin = cpu.bundle.tokenizer().special.timestamp_begin
    assert all(sum(t >= ts_begin for t in r.tokens) >= 2 for r in want)  # timestamps in every window
    for shared in (True, False):
        extra = {"provider_options": {"user_compute_stream": "1"}} if shared else {}
        with simulated_cuda(tiny_bundle_ort, device="cuda", graphs_mode="kept", greedy_queue=queue, **extra) as sim:
            got = decode(sim, sim.bundle.tokenizer(), mel, options)
            ring_runs = [key for key in sim._aux.opened("limited")._bindings if key[0] == "limited-ring"]
            assert bool(ring_runs) == shared and ((len(mel), queue) in sim.buffers.streams()) == shared
        assert [r.tokens for r in got] == [r.tokens for r in want]
        assert [r.sum_logprob for r in got] == pytest.approx([r.sum_logprob for r in want], rel=1e-5, abs=1e-5)


def test_streaming_falls_back_to_single_steps_without_host_mapped_memory(tiny_bundle_ort, english_clips,
                                                                         simulated_cuda, monkeypatch):
    """Where the CUDA runtime gives no host-mapped memory, greedy decoding goes on one picked step at a time
    (greedy_queue 0), with the same tokens, and greedy_error says why."""
    from whisper_export.backends.host_mapped import HostMappedError
    from whisper_export.backends.ort_buffers import DeviceBuffers
    from whisper_export.runtime.scheduler import decode
    from whisper_export.runtime.options import DecodingOptions

    mel = log_mel_batch(english_clips[:2])
    options = DecodingOptions(without_timestamps=True)
    with simulated_cuda(tiny_bundle_ort, device="cuda") as backend:
        want = [r.tokens for r in decode(backend, backend.bundle.tokenizer(), mel, options)]

        def refuse(self, rows, queue):
            raise HostMappedError("simulated: no CUDA runtime library")

        monkeypatch.setattr(DeviceBuffers, "stream", refuse)
        assert [r.tokens for r in decode(backend, backend.bundle.tokenizer(), mel, options)] == want
        assert backend.greedy_queue == 0 and "simulated: no CUDA runtime" in backend.greedy_error


def test_bundle_without_the_optional_graphs_decodes_on_host_logits(tiny_bundle, english_clips, tmp_path,
                                                                     simulated_cuda):
    """A bundle exported before top_select.onnx and timestamp_rules.onnx existed opens (the files are optional;
    an older exporter's timestamp_select.onnx, which took limits, is ignored) and beam search and greedy with timestamps
    on the CUDA path work on host logits instead, with the same tokens."""
    import json

    from whisper_export.runtime.scheduler import decode
    from whisper_export.runtime.options import DecodingOptions

    old = tmp_path / "old-bundle"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("top_select.onnx", "timestamp_rules.onnx", "timestamp_top.onnx"):
        (old / name).unlink()
        del manifest["files"][name]
    (old / "timestamp_select.onnx").write_bytes(b"an older exporter's graph")  # listed, never opened
    manifest["files"]["timestamp_select.onnx"] = hashlib.sha256(b"an older exporter's graph").hexdigest()
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert Bundle.open(old).top_path is None and Bundle.open(old).limited_path is None
    assert Bundle.open(tiny_bundle).top_path is not None and Bundle.open(tiny_bundle).limited_path is not None

    mel = log_mel_batch(english_clips[:2])
    results = []
    for directory in (old, tiny_bundle):
        with simulated_cuda(directory, device="cuda") as backend:
            results.append([r.tokens for options in (DecodingOptions(beam_size=3, without_timestamps=True),
                                                     DecodingOptions(), DecodingOptions(beam_size=3))
                            for r in decode(backend, backend.bundle.tokenizer(), mel, options)])
            aux = backend._aux
            opened = tuple(aux.opened(name) is not None for name in ("top", "limited", "top_limited"))
            assert opened == (directory == tiny_bundle,) * 3
    assert results[0] == results[1] and all(len(tokens) > 3 for tokens in results[0])


@pytest.mark.parametrize("beam_size", [None, 3])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_timestamp_rules_on_picked_steps_equal_filtering_the_logits(device, beam_size, tiny_bundle, english_clips,
                                                                     simulated_cuda, monkeypatch):
    """Greedy and beam search with timestamps after the first sampled step ask for picks under the timestamp rules
    of each row's state (on the "device": timestamp_rules.onnx / timestamp_top.onnx): the tokens of filtering
    host logits every step (the path they replace), and the same sum of log-probabilities, bit for bit on the
    CPU, to float32 rounding through the graphs."""
    from whisper_export.runtime.decoding import WindowDecode
    from whisper_export.runtime.options import DecodingOptions
    from whisper_export.runtime.scheduler import decode

    mel = log_mel_batch(english_clips)
    graph = "top_limited" if beam_size else "limited"
    with simulated_cuda(tiny_bundle, device=device) as backend:
        tokenizer, options = backend.bundle.tokenizer(), DecodingOptions(beam_size=beam_size)
        ruled = []
        original = backend.step
        backend.step = lambda request, *a: ruled.append(request.pick.rules is not None) or original(request, *a)
        fast = decode(backend, tokenizer, mel, options)
        assert sum(ruled) > (10 if beam_size else 0)
        monkeypatch.setattr(WindowDecode, "_later_pick", lambda self: Pick("logits"))
        ruled.clear()
        slow = decode(backend, tokenizer, mel, options)
        assert not any(ruled)
        assert (getattr(backend, "_aux", None) is not None and backend._aux.opened(graph) is not None) == (device == "cuda")
    for a, b in zip(fast, slow):
        assert a.tokens == b.tokens and any(t >= tokenizer.special.timestamp_begin for t in a.tokens)
        if device == "cpu":
            assert a.sum_logprob == b.sum_logprob
        else:
            assert a.sum_logprob == pytest.approx(b.sum_logprob, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("variant", ["onnx", "onnxruntime"])
def test_align_on_the_cuda_path_binds_the_cross_buffers(variant, tiny_bundle, tiny_bundle_ort, clips, simulated_cuda):
    """Word timestamps on the CUDA path: Backend.align binds the encoder's pooled cross K/V OrtValues as align.onnx's
    inputs (nothing copied through numpy) and gives the CPU path's scores and probabilities; align_matrices turns
    those scores into the host's alignment matrices where they lie (the CPU backend leaves that to the host); with the GPU's default
    bundle kind (attention="onnxruntime", greedy steps streamed), two files transcribed at once with word timestamps
    get the CPU's words."""
    from whisper_export.runtime.api import WhisperRuntime

    bundle = Bundle.open(tiny_bundle if variant == "onnx" else tiny_bundle_ort)
    special = bundle.tokenizer().special
    paths = [clips[name]["path"] for name in ("en_fox.wav", "en_weather.wav")]
    mel = log_mel_batch(paths)
    tokens = np.array([[special.sot, special.no_timestamps, 383, 2068, 7586, special.eot],
                       [special.sot, special.no_timestamps, 383, 6193, special.eot, special.eot]], np.int64)
    request = (np.array([0, 1], np.int64), tokens, np.array([6, 5], np.int64))
    with simulated_cuda(bundle, device="cuda", graphs_mode="kept") as sim, simulated_cuda(bundle) as cpu:
        cross = sim.encode(mel)
        assert not isinstance(cross.values[0], np.ndarray)  # OrtValues of the pooled set
        qk, probs = sim.align(cross, *request)
        want_qk, want_probs = cpu.align(cpu.encode(mel), *request)
        np.testing.assert_allclose(qk, want_qk, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-7)
        frames = np.array([1500, 701], np.int64)  # a whole window, and one of 1402 mel frames
        matrix, matrix_probs = sim.align_matrices(cross, *request, frames)
        assert cpu.align_matrices(cpu.encode(mel), *request, frames) is None  # the host's numpy, on the CPU
        np.testing.assert_array_equal(matrix_probs, probs)
        for r, (length, n) in enumerate(zip(request[2], frames)):  # alignment_matrix.onnx on the device's scores
            want = alignment_matrix(qk[r, :, :length], 2 * int(n))
            np.testing.assert_allclose(matrix[r, :length, :n], want, rtol=1e-5, atol=1e-5)
        if variant == "onnx":
            return
        words = []
        for backend in (sim, cpu):
            runtime = WhisperRuntime(backend, bundle.tokenizer())
            results = runtime.transcribe_batch(paths, word_timestamps=True, temperature=0.0)
            words.append([[(w.word, w.start, w.end) for s in r.unwrap().segments for w in s.words] for r in results])
        assert words[0] == words[1] and all(len(w) >= 9 for w in words[0])


def test_streamed_steps_finish_with_a_free_slot_on_recycled_memory(tiny_bundle_ort, english_clips, simulated_cuda,
                                                                   monkeypatch):
    """A pool slot no window was encoded into, on memory a recycling allocator handed out holding NaN bit patterns
    (as onnxruntime's process-wide CUDA arena hands an fp16 backend the buffers an fp32 backend freed): the free
    row is stepped and ignored, so the streamed greedy steps still finish, and the live row's tokens and
    log-probabilities are the plain CPU path's."""
    from whisper_export.backends import ort_greedy
    from whisper_export.backends.ort_buffers import DeviceBuffers

    empty = DeviceBuffers.empty

    def recycled(self, shape, dtype):
        value = empty(self, shape, dtype)
        if np.issubdtype(dtype, np.floating):
            value.update_inplace(np.full(shape, np.nan, dtype))
        return value

    monkeypatch.setattr(DeviceBuffers, "empty", recycled)
    monkeypatch.setattr(ort_greedy, "_SPIN_LIMIT_S", 2.0)  # a hang shows in seconds, not a minute
    mel = log_mel_batch(english_clips[:1])
    prompt = np.array([[50257, 50362]])
    bias = np.zeros(51864, np.float32)

    def greedy(backend, slots, live):
        cross = backend.new_cross(slots)
        backend.encode(mel, into=cross, slots=[0])  # slot 1 (if any) holds what the allocator left there
        cache = backend.new_cache(slots, backend.dims.n_text_ctx)
        logits = backend.step(StepRequest(np.repeat(prompt, slots, 0), np.zeros(slots, np.int64)), cache, cross).logits
        token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        request = StepRequest(token, np.full(slots, 2), pick=Pick("best", bias=bias, steps=12), live=live)
        result = backend.step(request, cache, cross)
        return result.tokens, result.logprobs

    with simulated_cuda(tiny_bundle_ort, device="cuda", graphs_mode="kept") as sim, \
            simulated_cuda(tiny_bundle_ort) as cpu:
        chosen, logprobs = greedy(sim, 2, np.array([True, False]))
        assert sim.buffers.streams() == [(2, 2)]  # streamed through the ring
        want_chosen, want_logprobs = greedy(cpu, 1, None)
        assert np.array_equal(chosen[:1], want_chosen) and np.allclose(logprobs[:1], want_logprobs, atol=1e-5)
        assert len(set(chosen[0])) > 5  # fed back: a stuck feed repeats one token
        # the free slot's cross K/V were zeroed when the pool's set was made: its ignored row computes numbers
        assert np.isfinite(logprobs[1]).all()


def test_encoder_runs_are_power_of_two_batches_written_into_their_slots(tiny_bundle, english_clips, simulated_cuda):
    """cuDNN plans the encoder's convolutions once per batch shape, so the CUDA path cuts each run of consecutive
    slots into power-of-two batches (7 windows: 4 + 2 + 1); every slot holds what the CPU path encodes for its
    window alone."""
    bundle = Bundle.open(tiny_bundle)
    mel = log_mel_batch([*english_clips, *english_clips[:2]])[:7]
    slots = [2, 3, 4, 5, 6, 7, 8]
    with simulated_cuda(bundle, device="cuda") as sim, simulated_cuda(bundle) as cpu:
        encoder, batches = sim.encoder, []

        class RecordingBinding:
            def __init__(self, binding):
                self.binding = binding

            def __getattr__(self, name):
                return getattr(self.binding, name)

            def bind_cpu_input(self, name, value):
                batches.append(len(value))
                self.binding.bind_cpu_input(name, value)

        class RecordingEncoder:
            def __getattr__(self, name):
                return getattr(encoder, name)

            def io_binding(self):
                return RecordingBinding(encoder.io_binding())

            def run_with_iobinding(self, binding, *args):
                return encoder.run_with_iobinding(binding.binding, *args)

        sim.encoder = RecordingEncoder()
        cross = sim.encode(mel, into=sim.new_cross(9), slots=slots)
        assert batches == [4, 2, 1]
        for i, slot in enumerate(slots):
            alone = cpu.encode(mel[i : i + 1]).values
            for value, want in zip(cross.values, alone):
                np.testing.assert_allclose(value.numpy()[slot], want[0], rtol=1e-5, atol=1e-5)


def test_cuda_sessions_use_cudnns_heuristic_unless_told_otherwise():
    """The exhaustive cuDNN search (the CUDA provider's default) benchmarks the encoder again at every new batch
    size; sessions ask for the heuristic, and a caller's provider_options still win."""
    from whisper_export.backends.ort_sessions import providers

    (name, options), _ = providers("cuda", 0, "fp16", {}, graph=False)
    assert name == "CUDAExecutionProvider" and options["cudnn_conv_algo_search"] == "DEFAULT"
    (_, options), _ = providers("cuda", 1, "fp32", {"cudnn_conv_algo_search": "EXHAUSTIVE"}, graph=True)
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE" and options["device_id"] == "1"
    assert options["use_tf32"] == "0" and options["enable_cuda_graph"] == "1"


def test_a_float32_bundle_with_onnxruntime_attention_is_refused_on_cuda(tiny_bundle_ort, tiny_bundle):
    """GroupQueryAttention has no float32 CUDA kernel: onnxruntime would run it on the CPU beside caches on the
    device and decode garbage (seen on the H200), so the CUDA backend refuses such a bundle in one line, before it
    looks for a GPU, naming the fix; the standard fp32 bundle is not refused for that reason."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    with pytest.raises(BackendError, match="received precision fp32 with --attention onnxruntime, expected fp16"):
        OnnxRuntimeBackend(tiny_bundle_ort, device="cuda")
    try:
        OnnxRuntimeBackend(tiny_bundle, device="cuda").close()
    except BackendError as error:  # on a machine without a GPU: the provider check, not the precision one
        assert "attention" not in str(error)


def test_a_second_transcription_reuses_the_first_ones_buffer_sets(tiny_bundle, english_clips, simulated_cuda):
    """The buffer sets (cross K/V, cache pairs) of a finished transcription go back to their pools when it ends,
    not when the garbage collector next runs (off here): a second run of the same shape takes them again instead
    of making new ones, which on a GPU would mean allocating, zeroing and capturing graphs for new addresses."""
    import gc

    from whisper_export.runtime.options import split_options
    from whisper_export.runtime.transcribe import Transcriber

    def made(pool) -> int:
        return int(repr(pool._ids)[len("count("):-1])  # ids handed out so far, without taking one

    bundle = Bundle.open(tiny_bundle)
    files = [str(p) for p in english_clips[:3]]
    with simulated_cuda(bundle, device="cuda") as backend:
        transcriber = Transcriber(backend, bundle.tokenizer())
        texts = []
        gc.disable()
        try:
            for _ in range(2):
                options, decoding = split_options(dict(beam_size=2, batch_size=2, without_timestamps=True))
                texts.append(sorted((i, r.text) for i, r in transcriber.run(files, options, decoding)))
                if len(texts) == 1:
                    first = made(backend.buffers.cache), made(backend.buffers.cross)
        finally:
            gc.enable()
        assert first[0] >= 2 and first[1] >= 1
        assert (made(backend.buffers.cache), made(backend.buffers.cross)) == first
    assert texts[0] == texts[1]
