"""Word timestamps against openai-whisper itself: its transcribe(word_timestamps=True) on tiny.en written as an
OpenAI .pt (the packaged weights; reference_model's state-dict names are openai's) with tiny.en's published
alignment heads, against WhisperRuntime on the exported bundle (align.onnx), greedy and beam 5, on the bundled
English clips (all files in one batch) and on a longer audio made of them with silences between (two windows, the
second starting where the first one's last word ended)."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_export.runtime.audio import SAMPLE_RATE, load_audio

whisper = pytest.importorskip("whisper")
torch = pytest.importorskip("torch")

MODES = {"greedy": {}, "beam 5": {"beam_size": 5}}


@pytest.fixture(scope="session")
def openai_tiny(tmp_path_factory, tiny_checkpoint):
    """openai-whisper's model, loaded once: tiny.en as an OpenAI .pt, tiny.en's alignment heads set as load_model
    sets them for the name "tiny.en" (a path gets openai's last-half default)."""
    from reference_model.openai import save_openai

    path = save_openai(tiny_checkpoint, tmp_path_factory.mktemp("openai") / "tiny.en.pt")
    model = whisper.load_model(str(path), device="cpu")
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    return model


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    from whisper_export.runtime.api import WhisperRuntime

    with WhisperRuntime.load(tiny_bundle) as rt:
        yield rt


@pytest.fixture(scope="module")
def audios(english_clips) -> dict[str, np.ndarray]:
    """The five clips, and 36 s of them with 1-4 s of silence before, between and after."""
    clips = {path.name: load_audio(path) for path in english_clips}
    gaps = [1.0, 2.5, 4.0, 1.5, 3.0, 2.0]
    parts = [np.zeros(int(gaps[0] * SAMPLE_RATE), np.float32)]
    for clip, gap in zip(clips.values(), gaps[1:]):
        parts += [clip, np.zeros(int(gap * SAMPLE_RATE), np.float32)]
    return {**clips, "concatenated": np.concatenate(parts)}


def _openai_words(model, audio: np.ndarray, options: dict) -> list[tuple[str, float, float]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny's matrices are small: one thread is faster here, and never oversubscribed
    try:
        result = whisper.transcribe(model, audio, word_timestamps=True, temperature=0.0, fp16=False, **options)
    finally:
        torch.set_num_threads(threads)
    return [(w["word"], w["start"], w["end"]) for s in result["segments"] for w in s["words"]]


@pytest.mark.slow  # openai-whisper runs its encoder twice per window in torch: ~1 min on 2 cores
@pytest.mark.parametrize("mode", MODES)
def test_words_match_openai_whisper(mode, openai_tiny, runtime, audios):
    options = MODES[mode]
    names = list(audios)
    ours = runtime.transcribe_batch([audios[n] for n in names], word_timestamps=True, temperature=0.0, **options)
    starts, ends = [], []
    for name, item in zip(names, ours):
        got = [(w.word, w.start, w.end) for s in item.unwrap().segments for w in s.words]
        want = _openai_words(openai_tiny, audios[name], options)
        assert [w for w, _, _ in got] == [w for w, _, _ in want], name  # the same words
        assert len(got) >= 9, name  # every clip says a sentence
        starts += [abs(a[1] - b[1]) for a, b in zip(got, want)]
        ends += [abs(a[2] - b[2]) for a, b in zip(got, want)]
    starts, ends = np.array(starts), np.array(ends)
    assert starts.mean() <= 0.03 and ends.mean() <= 0.03, (starts.mean(), ends.mean())
    assert np.mean((starts <= 0.1) & (ends <= 0.1)) >= 0.95


@pytest.mark.slow
def test_hallucination_silence_threshold_as_openai_whisper(openai_tiny, runtime, audios):
    """4 s of silence, 2 s of a clip played backwards (words tiny.en is unsure of), 6 s of silence, a clip: with
    hallucination_silence_threshold=2 openai-whisper skips the silence before the anomalous words and decodes
    again from there; the same segments and words here, and the rule changed the transcript."""
    silence = lambda seconds: np.zeros(int(seconds * SAMPLE_RATE), np.float32)  # noqa: E731
    backwards = audios["en_breakfast.wav"][::-1][: 2 * SAMPLE_RATE]
    audio = np.concatenate([silence(4), backwards, silence(6), audios["en_stella.wav"]])
    options = dict(word_timestamps=True, temperature=0.0, hallucination_silence_threshold=2.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        theirs = whisper.transcribe(openai_tiny, audio, fp16=False, **options)["segments"]
    finally:
        torch.set_num_threads(threads)
    ours = runtime.transcribe(audio, **options).segments
    assert [s.text for s in ours] == [s["text"] for s in theirs]
    assert np.allclose([(s.start, s.end) for s in ours], [(s["start"], s["end"]) for s in theirs], atol=0.011)
    got = [(w.word, w.start, w.end) for s in ours for w in s.words]
    want = [(w["word"], w["start"], w["end"]) for s in theirs for w in s["words"]]
    assert [w for w, _, _ in got] == [w for w, _, _ in want]
    assert np.abs(np.array([g[1:] for g in got]) - np.array([w[1:] for w in want])).mean() <= 0.03
    without = runtime.transcribe(audio, word_timestamps=True, temperature=0.0).segments
    assert [s.text for s in without] != [s.text for s in ours]
