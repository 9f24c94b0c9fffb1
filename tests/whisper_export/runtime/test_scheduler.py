"""Continuous batching (runtime/scheduler.py): windows of different prompt lengths, beam sizes and timestamp modes,
admitted as others finish and stepped together at different offsets, give exactly the tokens each gives alone."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_export.bundle import Bundle
from whisper_export.runtime.audio import log_mel_batch
from whisper_export.runtime.decoding import WindowDecode
from whisper_export.runtime.options import DecodingOptions
from whisper_export.runtime.scheduler import Scheduler, Window
from scheduler_cases import check_mixed_batch

def test_mixed_windows_in_one_continuous_batch_equal_each_alone(tiny_bundle, english_clips):
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    bundle = Bundle.open(tiny_bundle)
    with OnnxRuntimeBackend(bundle) as backend:
        check_mixed_batch(backend, bundle.tokenizer(), english_clips)


def test_a_freed_slot_is_taken_at_once(tiny_bundle, english_clips):
    """With two slots and three windows, the third is admitted in the tick after the first one finishes, into
    the same pool: its cache and cross K/V stay the same objects (the rows are reused, not reallocated). Until
    that tick a finished window's cross K/V stay in its slot as encoded (word timestamps are aligned on them
    after the tick: runtime/transcribe.py)."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    bundle = Bundle.open(tiny_bundle)
    tokenizer = bundle.tokenizer()
    mels = log_mel_batch(english_clips[:3])
    finished: list[int] = []
    with OnnxRuntimeBackend(bundle) as backend:
        scheduler = Scheduler(backend, 2)
        options = DecodingOptions(without_timestamps=True)
        for i in range(3):
            scheduler.submit(Window(mels[i], WindowDecode(tokenizer, backend.dims, options, "en"),
                                    lambda w: finished.append((w.tag, w.slot)), lambda w, e: None, tag=i))
        scheduler.tick()
        (pool,) = scheduler.pools.values()
        cache, cross = pool.cache, pool.cross
        assert len(pool.live()) == 2 and len(scheduler.queue) == 1
        while not finished:
            assert len(scheduler.queue) == 1
            scheduler.tick()
        for tag, slot in finished:
            assert pool.windows[slot] is None
            own = backend.encode(mels[tag : tag + 1]).values
            assert all(np.array_equal(row[slot], mine[0]) for row, mine in zip(cross.values, own))
        scheduler.tick()  # the waiting window takes the freed slot
        assert not scheduler.queue and list(scheduler.pools.values()) == [pool]
        third = {**dict(finished), **{w.tag: w.slot for w in pool.live()}}[2]  # it may be done already
        assert third in [slot for tag, slot in finished if tag != 2]
        assert np.array_equal(cross.values[0][third], backend.encode(mels[2:3]).values[0][0])
        scheduler.run()
        assert sorted(t for t, _ in finished) == [0, 1, 2] and pool.cache is cache and pool.cross is cross


def test_streamed_greedy_calls_stay_short_while_windows_are_expected(tiny_bundle, english_clips):
    """While expecting() says more windows are coming (audios still being read), a streamed greedy call takes at
    most busy_steps steps, as when windows wait in the queue; once nothing is expected the call runs to the end
    of the window. The tokens are those of the window decoded without expectations."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    bundle = Bundle.open(tiny_bundle)
    tokenizer = bundle.tokenizer()
    mel = log_mel_batch(english_clips[:1])[0]
    options = DecodingOptions(without_timestamps=True)
    with OnnxRuntimeBackend(bundle) as backend:
        alone: list = []
        plain = Scheduler(backend, 2)
        plain.submit(Window(mel, WindowDecode(tokenizer, backend.dims, options, "en"),
                            lambda w: alone.append(w.decode.result()), lambda w, e: None))
        plain.run()

        expected = [True]
        steps: list[int] = []
        step = backend.step

        def recording_step(request, cache, cross):
            if request.pick.kind == "best":
                steps.append(request.pick.steps)
            return step(request, cache, cross)

        backend.step = recording_step
        scheduler = Scheduler(backend, 2, expecting=lambda: expected[0])
        scheduler.busy_steps = 3
        results: list = []
        scheduler.submit(Window(mel, WindowDecode(tokenizer, backend.dims, options, "en"),
                                lambda w: results.append(w.decode.result()), lambda w, e: None))
        for _ in range(3):
            scheduler.tick()
        assert steps == [3, 3, 3]
        expected[0] = False
        scheduler.run()
        del backend.step
    assert len(steps) == 4 and steps[-1] > 3, steps
    assert results[0].tokens == alone[0].tokens and results[0].text == alone[0].text


def test_a_failed_call_fails_its_windows_only(tiny_bundle, english_clips):
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    bundle = Bundle.open(tiny_bundle)
    tokenizer = bundle.tokenizer()
    mels = log_mel_batch(english_clips[:2])
    outcomes: dict[int, object] = {}
    with OnnxRuntimeBackend(bundle) as backend:
        scheduler = Scheduler(backend, 2)
        good = DecodingOptions(without_timestamps=True)
        scheduler.submit(Window(mels[0], WindowDecode(tokenizer, backend.dims, good, "en"),
                                lambda w: outcomes.setdefault(0, w.decode.result()),
                                lambda w, e: outcomes.setdefault(0, e), tag=0))
        broken = Window(np.zeros((3, 3000), np.float32), WindowDecode(tokenizer, backend.dims, DecodingOptions(), "en"),
                        lambda w: outcomes.setdefault(1, w.decode.result()), lambda w, e: outcomes.setdefault(1, e), tag=1)
        scheduler.submit(broken)
        scheduler.run()
    assert isinstance(outcomes[1], ValueError) and "in_mel" in str(outcomes[1])
    assert not isinstance(outcomes[0], Exception) and outcomes[0].text


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["onnx", "onnxruntime"])
def test_mixed_windows_in_one_continuous_batch_on_a_gpu(variant, tiny_bundle_fp16, tiny_checkpoint, tmp_path,
                                                          english_clips):
    """The must-show on a real CUDA device: fp16 bundles of both attention kinds (the on-demand GPU bundle is the
    onnxruntime one), captured graphs and streamed greedy steps on, every window's tokens together = alone."""
    import onnxruntime as ort

    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.export.exporter import ExportOptions, export_bundle

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDAExecutionProvider is not installed")
    directory = tiny_bundle_fp16 if variant == "onnx" else export_bundle(
        tiny_checkpoint, tmp_path / "ort", ExportOptions(precision="fp16", attention="onnxruntime"),
        progress=lambda _: None)
    bundle = Bundle.open(directory)
    with OnnxRuntimeBackend(bundle, device="cuda") as gpu:
        assert gpu.graph_mode != "off", gpu.graph_error
        check_mixed_batch(gpu, bundle.tokenizer(), english_clips, logprob_rel=2e-3)


def test_a_backend_that_steps_whole_pools_admits_in_waves(tiny_bundle, english_clips):
    """Where free rows are stepped anyway (CUDA), a freed slot waits until half the slots are free (or as many as
    windows wait): encoder calls take several windows at once. Every window's tokens are those of the plain
    scheduler, which admits a window as soon as a slot is free."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    bundle = Bundle.open(tiny_bundle)
    tokenizer = bundle.tokenizer()
    mels = log_mel_batch([*english_clips, *english_clips[:3]])
    options = DecodingOptions(without_timestamps=True)

    def decode_all(scheduler: Scheduler) -> dict[int, list[int]]:
        tokens: dict[int, list[int]] = {}
        for i, mel in enumerate(mels):
            scheduler.submit(Window(mel, WindowDecode(tokenizer, backend.dims, options, "en"),
                                    lambda w: tokens.__setitem__(w.tag, w.decode.result().tokens),
                                    lambda w, e: None, tag=i))
        scheduler.run()
        return tokens

    with OnnxRuntimeBackend(bundle) as backend:
        alone = decode_all(Scheduler(backend, 4))
        sizes: list[tuple[int, int]] = []  # (windows encoded, windows still waiting then)
        encode = backend.encode
        waves = Scheduler(backend, 4)
        waves.whole_pool = True

        def recording_encode(mel, into=None, slots=None):
            sizes.append((len(mel), len(waves.queue)))
            return encode(mel, into, slots)

        backend.encode = recording_encode
        try:
            assert decode_all(waves) == alone
        finally:
            del backend.encode
    assert sizes[0] == (4, len(mels) - 4)
    assert sum(n for n, _ in sizes) == len(mels)
    assert all(n >= min(2, n + waiting) for n, waiting in sizes[1:]), sizes


def _decode_recording_prompts(backend, tokenizer, mels, texts, max_windows):
    """Tokens of each window (previous text texts[i]) decoded through max_windows slots, and the prompt calls
    made: rows (unpadded) or the tokens' shape (padded)."""
    options = DecodingOptions(without_timestamps=True)
    tokens: dict[int, list[int]] = {}
    calls: list = []
    scheduler = Scheduler(backend, max_windows)
    for i, mel in enumerate(mels):
        scheduler.submit(Window(mel, WindowDecode(tokenizer, backend.dims, options, "en", texts[i]),
                                lambda w: tokens.__setitem__(w.tag, w.decode.result().tokens),
                                lambda w, e: None, tag=i))
    step = backend.step

    def recording_step(request, cache, cross):
        if request.pick.kind == "logits" and request.tokens.shape[1] > 1:
            calls.append(request.rows if not backend.pads_prompts else request.tokens.shape)
        return step(request, cache, cross)

    backend.step = recording_step
    try:
        scheduler.run()
    finally:
        del backend.step
    return tokens, calls


def _prompt_width(backend, tokenizer, text) -> int:
    return WindowDecode(tokenizer, backend.dims, DecodingOptions(without_timestamps=True), "en", text).prompt().shape[1]


def test_windows_with_one_prompt_are_prompted_in_one_call(tiny_bundle, english_clips):
    """Windows admitted together take neighbouring slots by prompt layout, whatever their order in the queue: four
    windows alternating between two previous texts are prompted in two calls, not four, and each gives the tokens
    it gives alone; on a backend that pads prompts (the CUDA one), in one call of the longest prompt's width."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    bundle = Bundle.open(tiny_bundle)
    tokenizer = bundle.tokenizer()
    mels = log_mel_batch(english_clips[:4])
    texts = [None, "Hello there.", None, "Hello there."]

    with OnnxRuntimeBackend(bundle) as backend:
        backend.pads_prompts = False
        alone, alone_calls = _decode_recording_prompts(backend, tokenizer, mels, texts, 1)
        together, together_calls = _decode_recording_prompts(backend, tokenizer, mels, texts, 4)
        # where calls cost their launches, the two prompt lengths share one call, the shorter padded
        backend.pads_prompts = True
        padded, padded_calls = _decode_recording_prompts(backend, tokenizer, mels, texts, 4)
        longest = _prompt_width(backend, tokenizer, texts[1])
    assert together == alone and padded == alone
    assert alone_calls == [1, 1, 1, 1]
    assert together_calls == [2, 2]
    assert padded_calls == [(4, longest)]


def test_padded_prompt_calls_are_capped_in_padding_and_logits(tiny_bundle, english_clips, monkeypatch):
    """A long previous text does not pad three short prompts to its width (the padding would be more than the
    run's own tokens and more than PROMPT_PAD_SLACK): it gets a call of its own. And a run stops growing where
    its logits (rows x read positions) would pass MAX_PROMPT_LOGIT_ROWS. Tokens stay those of each window alone."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.runtime import scheduler

    bundle = Bundle.open(tiny_bundle)
    tokenizer = bundle.tokenizer()
    mels = log_mel_batch(english_clips[:4])
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    with OnnxRuntimeBackend(bundle) as backend:
        short, long = _prompt_width(backend, tokenizer, None), _prompt_width(backend, tokenizer, long_text)
        assert 4 * long - (3 * short + long) > max(3 * short + long, scheduler.PROMPT_PAD_SLACK)  # the case is real
        texts = [None, long_text, None, None]
        backend.pads_prompts = False
        alone, _ = _decode_recording_prompts(backend, tokenizer, mels, texts, 1)
        backend.pads_prompts = True
        padded, padded_calls = _decode_recording_prompts(backend, tokenizer, mels, texts, 4)
        assert padded == alone
        assert padded_calls == [(3, short), (1, long)]

        # each window reads two positions (the no-speech one at SOT, and its last): two windows of one layout are
        # 2 rows x 2 positions, a third of another length makes 3 rows x 3 positions, past a cap of 4
        texts = [None, "Hello there.", None, "Hello there."]
        backend.pads_prompts = False
        alone, _ = _decode_recording_prompts(backend, tokenizer, mels, texts, 1)
        backend.pads_prompts = True
        monkeypatch.setattr(scheduler, "MAX_PROMPT_LOGIT_ROWS", 4)
        capped, capped_calls = _decode_recording_prompts(backend, tokenizer, mels, texts, 4)
        hello = _prompt_width(backend, tokenizer, texts[1])
    assert capped == alone
    assert capped_calls == [(2, short), (2, hello)]
