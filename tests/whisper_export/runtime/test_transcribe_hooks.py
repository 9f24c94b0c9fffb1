"""The transcription's openai-whisper options as data (clip_timestamps, the CLI's temperature schedule) and its
on_segment callback, on the public API."""

from __future__ import annotations

import math

import pytest

from whisper_export.runtime import transcribe
from whisper_export.runtime.api import WhisperRuntime
from whisper_export.runtime.options import MAX_BEAM_SIZE, DecodingOptions, TranscribeOptions, fallback_temperatures


@pytest.mark.parametrize("value, clips", [
    ("0", ((0.0, None),)),
    ("", ((0.0, None),)),
    ("1.5,4,10", ((1.5, 4.0), (10.0, None))),  # an odd count: the last clip runs to the end (openai's rule)
    ((2, 3.5), ((2.0, 3.5),)),
])
def test_clip_timestamps(value, clips):
    assert TranscribeOptions(clip_timestamps=value).clips() == clips


@pytest.mark.parametrize("value", ["4,2", "1,1", "-1", "nan", "1,inf", "a,b", (1, "x")])
def test_clip_timestamps_refused(value):
    with pytest.raises(ValueError, match=r"clip_timestamps: received .*, expected 'start,end,start,end,\.\.\.'"):
        TranscribeOptions(clip_timestamps=value)


@pytest.mark.parametrize("options, fragment", [
    ({"temperature": math.nan}, "temperature: received nan"),
    ({"temperature": (0.0, math.inf)}, "temperature: received (0.0, inf)"),
    ({"no_speech_threshold": math.nan}, "no_speech_threshold: received nan, expected None or a finite float"),
])
def test_transcribe_options_refuse_what_is_not_a_number(options, fragment):
    with pytest.raises(ValueError) as e:
        TranscribeOptions(**options)
    assert fragment in str(e.value)


def test_beam_size_and_best_of_have_a_maximum():
    assert DecodingOptions(beam_size=MAX_BEAM_SIZE).beam_size == 15
    for name in ("beam_size", "best_of"):
        extra = {"temperature": 0.5} if name == "best_of" else {}
        with pytest.raises(ValueError, match=f"{name}: received 16, expected at most 15"):
            DecodingOptions(**{name: 16}, **extra)


def test_fallback_temperatures_refuse_bad_increments():
    for increment in (0, -0.2, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature_increment_on_fallback: received"):
            fallback_temperatures(0.0, increment)
    assert fallback_temperatures(1.0, 0.2) == (1.0,) and fallback_temperatures(0.9, 0.2) == (0.9,)


def test_on_segment_sees_every_segment_as_it_is_made(tiny_bundle, clips):
    paths = [clips["en_fox.wav"]["path"], clips["en_stella.wav"]["path"]]
    seen: list[tuple[int, object]] = []
    with WhisperRuntime.load(tiny_bundle) as rt:
        done = {}
        for index, item in rt.transcribe_iter(paths, on_segment=lambda i, s: seen.append((i, s)), temperature=0.0):
            done[index] = item.unwrap()
            # a file's segments were all reported before the file is yielded
            assert [s for i, s in seen if i == index] == done[index].segments
    assert sorted(done) == [0, 1] and all(done[i].segments for i in done)


def test_an_idle_loop_admits_the_audios_being_read_as_one_first_wave(tiny_bundle, english_clips, monkeypatch):
    """The first admission waits (a bounded while) for the audios already being read instead of encoding the
    first one alone and the others one by one as they open: on a GPU each admission costs an encoder and a
    prompt call whatever its size. Texts stay those of one-at-a-time decoding. The bound is raised so that a
    loaded machine's slow reads do not decide the outcome."""
    monkeypatch.setattr(transcribe, "GATHER_SECONDS", 30.0)
    sizes: list[int] = []
    with WhisperRuntime.load(tiny_bundle) as runtime:
        encode = runtime.backend.encode

        def recording_encode(mel, *args, **kwargs):
            sizes.append(len(mel))
            return encode(mel, *args, **kwargs)

        alone = [r.result.text for r in runtime.transcribe_batch(english_clips, batch_size=1, temperature=0.0)]
        runtime.backend.encode = recording_encode
        together = runtime.transcribe_batch(english_clips, batch_size=len(english_clips), temperature=0.0)
    assert sizes and sizes[0] == len(english_clips), f"encoder calls of {sizes} windows"
    assert [r.result.text for r in together] == alone
