"""Word timestamps through WhisperRuntime on real speech, without openai-whisper: options checked before any audio
is read, words that make up their segments' text, batches equal to files one at a time, the torch backend equal
to the bundle, and the transcript files written from them (openai-whisper's writers, where installed, cut the
same subtitles from the same words)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisper_export.runtime.api import WhisperRuntime
from whisper_export.runtime.writers import FORMATS, WriterOptions, to_srt, to_vtt, write_result


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    with WhisperRuntime.load(tiny_bundle) as rt:
        yield rt


@pytest.fixture(scope="module")
def worded(runtime, clips):
    """Two clips transcribed together with word timestamps (greedy, no fallback)."""
    paths = [clips[n]["path"] for n in ("en_stella.wav", "en_weather.wav")]
    return paths, [r.unwrap() for r in runtime.transcribe_batch(paths, word_timestamps=True, temperature=0.0)]


@pytest.mark.parametrize("options, message", [
    (dict(word_timestamps="yes"), "word_timestamps: received 'yes', expected True or False"),
    (dict(word_timestamps=True, hallucination_silence_threshold=-1.0),
     "hallucination_silence_threshold: received -1.0, expected None or seconds >= 0"),
    (dict(hallucination_silence_threshold=2.0),
     "hallucination_silence_threshold: received 2.0 without word_timestamps, expected word_timestamps=True"),
    (dict(word_timestamps=True, prepend_punctuations=None), "prepend_punctuations: received None, expected a string"),
])
def test_word_options_fail_before_any_audio_is_read(runtime, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        runtime.transcribe(tmp_path / "absent.wav", **options)


def test_words_make_up_their_segments(worded, runtime, clips):
    paths, results = worded
    for result in results:
        spoken = [s for s in result.segments if s.text.strip()]
        assert spoken
        for s in spoken:
            assert "".join(w.word for w in s.words) == s.text  # every text token in one word, in order
            assert s.words[0].start == s.start and s.words[-1].end == s.end  # clips this clean: no long words
            assert all(a.start <= a.end <= b.start + 1e-9 for a, b in zip(s.words, s.words[1:]))
            assert all(0.0 < w.probability <= 1.0 for w in s.words)
    # two files at once: the words of each file alone
    for path, result in zip(paths, results):
        alone = runtime.transcribe(path, word_timestamps=True, temperature=0.0)
        assert [s.words for s in alone.segments] == [s.words for s in result.segments]
    # without word timestamps: no words, the same text; the segment's end is its last timestamp token's (4.40 s)
    # instead of its last word's
    plain = runtime.transcribe(paths[0], temperature=0.0)
    assert all(s.words is None for s in plain.segments)
    assert [s.text for s in plain.segments] == [s.text for s in results[0].segments]
    assert plain.segments[-1].end > results[0].segments[-1].end == results[0].segments[-1].words[-1].end


def test_torch_backend_gives_the_bundles_words(worded, tiny_checkpoint):
    paths, results = worded
    with WhisperRuntime.load(model=tiny_checkpoint, backend="torch") as torch_runtime:
        got = torch_runtime.transcribe(paths[0], word_timestamps=True, temperature=0.0)
    assert [(w.word, w.start, w.end) for s in got.segments for w in s.words] == \
           [(w.word, w.start, w.end) for s in results[0].segments for w in s.words]


def test_transcript_files_with_words(worded, tmp_path):
    _, results = worded
    options = WriterOptions(max_line_width=22, max_line_count=2, highlight_words=True)
    written = write_result(results[0], tmp_path, "stella", FORMATS, options)
    assert sorted(p.suffix for p in written) == sorted(f".{f}" for f in FORMATS)
    data = json.loads((tmp_path / "stella.json").read_text(encoding="utf-8"))
    words = [w for s in data["segments"] for w in s["words"]]
    assert words and set(words[0]) == {"word", "start", "end", "probability"}
    srt = (tmp_path / "stella.srt").read_text(encoding="utf-8")
    n_words = sum(len(s.words) for s in results[0].segments)
    assert srt.count("<u>") == n_words  # one cue per spoken word
    assert (tmp_path / "stella.tsv").read_text(encoding="utf-8").startswith("start\tend\ttext\n")
    utils = pytest.importorskip("whisper.utils")
    openai_dict = {"segments": [{"start": s.start, "end": s.end, "text": s.text,
                                 "words": [vars(w) | {} for w in s.words]} for s in results[0].segments]}
    for ours, writer in ((to_srt, utils.WriteSRT), (to_vtt, utils.WriteVTT)):
        cues = [text for _, _, text in writer(".").iterate_result(openai_dict, vars(options) | {})]
        rendered = ours(results[0], options)
        blocks = rendered.strip("\n").split("\n\n")[(ours is to_vtt):]
        assert [b.split("\n", 2 - (ours is to_vtt))[-1] for b in blocks] == cues
    assert np.isclose(words[0]["start"], results[0].segments[0].words[0].start)
