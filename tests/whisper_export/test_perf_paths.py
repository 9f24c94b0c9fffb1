"""The speed-ups of issue 6 keep behaviour: the same mel, hashes, encoder outputs, log probabilities and tokens
(speed itself is measured by `whisper-export bench` and benchmarks/, never asserted here)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from whisper_export.audio import N_SAMPLES, load_audio, log_mel_batch, log_mel_spectrogram
from whisper_export.bundle import Bundle, BundleError
from whisper_export.sampling import chosen_logprobs, log_softmax
from whisper_export.transcribe import long_form_mel


@pytest.mark.parametrize("n_mels", [80, 128])
def test_long_form_mel_is_the_padded_mel_bit_for_bit(clips, n_mels):
    rng = np.random.default_rng(0)
    audios = [load_audio(c["path"]) for c in clips.values()]
    audios += [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (1, 159, 160, 401, 16000, 480000, 500001)]
    audios.append(np.zeros(20000, np.float32))
    for audio in audios:
        expected = log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)
        got = long_form_mel(audio, n_mels)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected), len(audio)


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
        (bundle / f.name).symlink_to(f) if f.suffix == ".onnx" else shutil.copy(f, bundle / f.name)
    tokenizer = bundle / "tokenizer.json"
    old = time.time() - 60
    os.utime(tokenizer, (old, old))
    # ctime is now: too fresh to be trusted (a write within the same timestamp tick would go unseen)
    monkeypatch.setattr("whisper_export.bundle.HASH_CACHE_MIN_AGE_NS", 0)
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


@pytest.mark.parametrize("variant", ["onnx", "onnxruntime"])
def test_cuda_code_path_on_the_cpu_provider(variant, tiny_bundle, tiny_bundle_ort, english_clips, monkeypatch):
    """The CUDA path's pooled buffers, fixed bindings, ping-pong caches (in-place ones for attention=
    "onnxruntime") and steering updates, run on the CPU provider (no graphs): the tokens of the plain CPU path,
    and the buffer sets come back to their pools."""
    import onnxruntime as ort

    from whisper_export.backends import onnxruntime as ob
    from whisper_export.decoding import decode
    from whisper_export.options import DecodingOptions

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ob.OnnxRuntimeBackend, "_ort_device", "cpu")
    original = ob.OnnxRuntimeBackend._session

    def session(self, *args, **kwargs):
        if kwargs.get("graph"):
            raise ob.BackendError("no CUDA graphs on the CPU provider")
        device, self.device = self.device, "cpu"
        try:
            return original(self, *args, **kwargs)
        finally:
            self.device = device

    monkeypatch.setattr(ob.OnnxRuntimeBackend, "_session", session)
    bundle = Bundle.open(tiny_bundle if variant == "onnx" else tiny_bundle_ort)
    tokenizer = bundle.tokenizer()
    mel = log_mel_batch(english_clips[:3])
    with ob.OnnxRuntimeBackend(bundle) as cpu, ob.OnnxRuntimeBackend(bundle, device="cuda") as sim:
        assert sim.graph_mode == "off" and "no CUDA graphs" in sim.graph_error
        assert sim.in_place == (variant == "onnxruntime")
        assert sim.select_min_rows == 1  # greedy steps select on the "device" (greedy_select.onnx) at every batch
        for options in (DecodingOptions(without_timestamps=True), DecodingOptions(),
                        DecodingOptions(beam_size=3, without_timestamps=True)):
            for m in (mel, mel[1:2], mel):
                assert [r.tokens for r in decode(sim, tokenizer, m, options)] == \
                       [r.tokens for r in decode(cpu, tokenizer, m, options)]
        # every decode is over: each pooled set is free again (two cache sets per key, one cross set per batch)
        assert all(len(free) == 2 for free in sim._cache_pool._free.values())
        assert all(len(free) == 1 for free in sim._cross_pool._free.values())


@pytest.mark.parametrize("variant", ["onnx", "onnxruntime"])
def test_greedy_choice_by_the_backend_equals_filtering_the_logits(variant, tiny_bundle, tiny_bundle_ort, english_clips):
    """Greedy without timestamps takes Backend.decode_best after the prompt step: the same tokens and
    log-probabilities, bit for bit, as filtering host logits and taking their argmax (the path it replaces).
    attention="onnxruntime": the decoder's own in-graph choice, the same tokens and log-probabilities to fp32
    rounding (its log-sum-exp is onnxruntime's, not numpy's)."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.decoding import DecodingTask
    from whisper_export.options import DecodingOptions

    class LogitsEveryStep(DecodingTask):
        def _later_bias(self, decoder):
            return None

    bundle = Bundle.open(tiny_bundle if variant == "onnx" else tiny_bundle_ort)
    tokenizer = bundle.tokenizer()
    mel = log_mel_batch(english_clips)
    with OnnxRuntimeBackend(bundle) as backend:
        assert backend.selects == (variant == "onnxruntime")
        calls = []
        original = backend.decode_best
        backend.decode_best = lambda *a: calls.append(1) or original(*a)  # counts, then runs the real one
        options = DecodingOptions(without_timestamps=True)
        fast = DecodingTask(backend, tokenizer, options).run(backend.encode(mel), len(mel))
        assert len(calls) > 10
        before = len(calls)
        slow = LogitsEveryStep(backend, tokenizer, options).run(backend.encode(mel), len(mel))
        assert len(calls) == before
    for a, b in zip(fast, slow):
        assert a.tokens == b.tokens and a.no_speech_prob == b.no_speech_prob
        if variant == "onnx":
            assert a.sum_logprob == b.sum_logprob
        else:
            assert a.sum_logprob == pytest.approx(b.sum_logprob, rel=1e-5, abs=1e-5)
        assert len(a.tokens) > 5
    # with timestamps the rules depend on the tokens: the loop keeps asking for logits
    for options in (DecodingOptions(), DecodingOptions(temperature=0.5, without_timestamps=True)):
        task = DecodingTask(backend, tokenizer, options)
        assert task._later_bias(task._wire(None, 4)) is None
