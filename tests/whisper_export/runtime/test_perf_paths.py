"""The speed-ups of issue 6 keep behaviour: the same mel, hashes, encoder outputs, log probabilities and tokens
(speed itself is measured by `whisper-export bench` and benchmarks/, never asserted here)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from whisper_export.runtime.audio import log_mel_batch
from whisper_export.bundle import Bundle, BundleError
from whisper_export.backends.picking import chosen_logprobs, log_softmax


def test_chosen_logprobs_is_log_softmax_bit_for_bit():
    rng = np.random.default_rng(1)
    for rows in (1, 5, 16):
        x = (rng.standard_normal((rows, 51864)) * rng.uniform(1, 20)).astype(np.float32)
        x[:, rng.integers(0, 51864, 90)] = -np.inf
        chosen = x.argmax(-1)
        chosen[0] = rng.integers(0, 100)  # a sampled, non-maximal token
        chosen = np.where(np.isinf(x[np.arange(rows), chosen]), x.argmax(-1), chosen)
        expected = log_softmax(x)[np.arange(rows), chosen]
        for scratch in (None, np.empty_like(x)):
            got = chosen_logprobs(x, chosen, scratch)
            assert got.dtype == np.float32 and np.array_equal(got, expected)
        # several per row, as beam search asks for its top candidates
        top = np.argpartition(x, -6, axis=-1)[:, -6:]
        assert np.array_equal(chosen_logprobs(x, top), np.take_along_axis(log_softmax(x), top, axis=-1))


def test_verified_hash_cache_still_catches_a_changed_file(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_EXPORT_CACHE_DIR", str(tmp_path / "cache"))
    bundle = tmp_path / "b"
    bundle.mkdir()
    for f in tiny_bundle.iterdir():
        (bundle / f.name).hardlink_to(f) if f.suffix == ".onnx" else shutil.copy(f, bundle / f.name)
    tokenizer = bundle / "tokenizer.json"
    old = time.time() - 60
    os.utime(tokenizer, (old, old))
    # ctime is now: too fresh to be trusted (a write within the same timestamp tick would go unseen)
    monkeypatch.setattr("whisper_export.hashing.HASH_CACHE_MIN_AGE_NS", 0)
    Bundle.open(bundle)
    cache = (tmp_path / "cache" / "verified-sha256.json").read_text()
    assert os.path.realpath(tokenizer) in cache and os.path.realpath(bundle / "decoder.onnx") in cache
    Bundle.open(bundle)  # from the cache
    # same size, mtime put back: the ctime still changes, so the file is hashed again and rejected
    st = tokenizer.stat()
    data = bytearray(tokenizer.read_bytes())
    data[100] ^= 1
    tokenizer.write_bytes(bytes(data))
    os.utime(tokenizer, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BundleError, match="tokenizer.json has sha256"):
        Bundle.open(bundle)
    monkeypatch.setenv("WHISPER_EXPORT_HASH_CACHE", "0")
    with pytest.raises(BundleError, match="tokenizer.json has sha256"):
        Bundle.open(bundle)


def test_cpu_encoder_per_window_equals_one_batch(tiny_bundle, english_clips):
    from whisper_export import graph_io
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(tiny_bundle) as backend:
        mel = log_mel_batch(english_clips[:3])
        split = backend.encode(mel).values
        whole = backend.encoder.run(backend._cross_out, {graph_io.MEL: mel})
        assert all(np.array_equal(a, b) for a, b in zip(split, whole))


def test_default_greedy_steps_stop_with_the_last_row(tiny_bundle, english_clips):
    """Streamed greedy steps (Pick "best" with steps > 1; Backend.step's default runs them one call at a time)
    stop at the step where the last live row chooses the stop token, and run all the steps without one."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.backends.picking import Pick
    from whisper_export.backends.step import StepRequest

    with OnnxRuntimeBackend(tiny_bundle) as backend:
        cross = backend.encode(log_mel_batch(english_clips[:2]))
        bias = np.zeros(backend.dims.n_vocab, np.float32)
        runs = []
        for stop in (None, 50256):
            cache = backend.new_cache(2, 64)
            prompt = StepRequest(np.array([[50257, 50362]] * 2), np.zeros(2, np.int64))
            token = backend.step(prompt, cache, cross).logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            pick = Pick("best", bias=bias, steps=40, stop_token=stop)
            runs.append(backend.step(StepRequest(token, np.full(2, 2), pick=pick), cache, cross).tokens)
    full, stopped = runs
    assert full.shape == (2, 40)
    last_stop = max(list(row).index(50256) for row in full)
    assert np.array_equal(stopped, full[:, : last_stop + 1])


@pytest.mark.parametrize("variant", ["onnx", "onnxruntime"])
def test_greedy_choice_by_the_backend_equals_filtering_the_logits(variant, tiny_bundle, tiny_bundle_ort, english_clips,
                                                                  monkeypatch):
    """Greedy without timestamps asks the backend for the best token after the prompt step: the same tokens and
    log-probabilities, bit for bit, as filtering host logits and taking their argmax (the path it replaces)."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.backends.picking import Pick
    from whisper_export.runtime.decoding import WindowDecode
    from whisper_export.runtime.options import DecodingOptions
    from whisper_export.runtime.scheduler import decode

    bundle = Bundle.open(tiny_bundle if variant == "onnx" else tiny_bundle_ort)
    tokenizer = bundle.tokenizer()
    mel = log_mel_batch(english_clips)
    options = DecodingOptions(without_timestamps=True)
    with OnnxRuntimeBackend(bundle) as backend:
        assert backend.selects == (variant == "onnxruntime")
        kinds = []
        original = backend.step
        backend.step = lambda request, *a: kinds.append(request.pick.kind) or original(request, *a)
        fast = decode(backend, tokenizer, mel, options)
        assert kinds.count("best") >= 1 and kinds.count("logits") == 1  # the prompt step's logits only
        monkeypatch.setattr(WindowDecode, "_later_pick", lambda self: Pick("logits"))
        kinds.clear()
        slow = decode(backend, tokenizer, mel, options)
        assert set(kinds) == {"logits"} and len(kinds) > 10
    for a, b in zip(fast, slow):
        assert a.tokens == b.tokens and a.no_speech_prob == b.no_speech_prob
        assert a.sum_logprob == b.sum_logprob
        assert len(a.tokens) > 5
    monkeypatch.undo()
    # with timestamps the rules travel as per-row state; sampling needs the logits
    dims = backend.dims
    assert WindowDecode(tokenizer, dims, DecodingOptions(), "en").later.rules is not None
    assert WindowDecode(tokenizer, dims, DecodingOptions(temperature=0.5), "en").later.kind == "logits"
    assert WindowDecode(tokenizer, dims, DecodingOptions(beam_size=3), "en").later.kind == "top"


def test_top_candidates_are_the_sorted_best_with_ties_by_id():
    """sampling.top_candidates (the host's beam candidates, and the contract of top_select.onnx): the k best
    of each row, best first, equal values by id, whatever argpartition does with ties at the k-th value;
    log-probabilities bit for bit those of log_softmax."""
    from whisper_export.backends.picking import top_candidates

    rng = np.random.default_rng()
    x = rng.standard_normal((6, 5000)).astype(np.float32)
    x[0, [7, 70, 700, 4000]] = 9.0  # four-way tie at the top
    x[1, rng.choice(5000, 12, replace=False)] = 5.0  # a tie straddling the k-th place
    x[2, rng.choice(5000, 100, replace=False)] = -np.inf
    x[3] *= 40.0  # a spread wider than the first margins: the k best found by a partition
    x[4] = -np.inf
    x[4, [3, 9]] = [1.0, 2.0]  # fewer finite values than k
    x[5] = -np.inf  # none
    for k in (1, 6, 16):
        ids, logprobs = top_candidates(x, k)
        want = np.lexsort((np.broadcast_to(np.arange(5000), x.shape), -x), axis=-1)[:, :k]
        assert np.array_equal(ids, want) and ids.dtype == np.int64
        assert np.array_equal(logprobs, np.take_along_axis(log_softmax(x), want, axis=-1), equal_nan=True)
    assert top_candidates(x, 4)[0][0].tolist() == [7, 70, 700, 4000]


def test_select_graphs_pad_only_floats(tiny_bundle, tiny_bundle_ort):
    """onnxruntime's CUDA Pad takes float types only: an int64 Pad would run on the CPU, with copies around it
    and no CUDA graph (top_select.onnx's first version did, at ~0.5 ms per beam step on the H200)."""
    import onnx

    for bundle_dir in (tiny_bundle, tiny_bundle_ort):
        bundle = Bundle.open(bundle_dir)
        for path in (bundle.select_path, bundle.top_path, bundle.limited_path, bundle.decoder_path):
            model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
            types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
            pads = [n for n in model.graph.node if n.op_type == "Pad"]
            assert all(types[n.input[0]] in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) for n in pads), path.name


def test_host_mapped_memory_or_a_clear_error():
    """HostMapped: page-locked memory from the CUDA runtime, viewed as numpy arrays; on a machine without a CUDA
    runtime library a HostMappedError that names the libraries it tried, and with one but no GPU driver (a pip
    package may bring libcudart to a CPU machine) one that names the CUDA error."""
    from whisper_export.backends.host_mapped import _CUDART_NAMES, HostMapped, HostMappedError, HostMemory

    try:
        memory = HostMapped(64)
    except HostMappedError as e:
        no_library = all(name in str(e) for name in _CUDART_NAMES[:2])
        assert no_library or str(e).startswith("cudaHostAlloc(64): received CUDA error "), e
        memory = HostMemory(64)
    a, b = memory.view(np.int64, (2, 2), 0), memory.view(np.float32, (4,), 32)
    a[:] = [[1, 2], [3, 4]]
    b[:] = 0.5
    assert memory.view(np.int64, (4,), 0).tolist() == [1, 2, 3, 4] and memory.view(np.float32, (8,), 32)[:4].tolist() == [0.5] * 4
