"""Silero VAD: speech timestamps against faster-whisper's get_speech_timestamps (same model file, same options),
the 30 s chunks against its collect_chunks, the time map against its SpeechTimestampsMap, the pin, the options."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from whisper_export.runtime.audio import SAMPLE_RATE, load_audio
from whisper_export.runtime.transcribe import Segment
from whisper_export.runtime import vad as vad_module
from whisper_export.runtime.vad import FRAME_SAMPLES, SpeechRegion, VadModelError, VadOptions, silero_vad, speech_timestamps
from whisper_export.runtime.vad_transcribe import SpeechChunk, segment_in_original_time, speech_chunks

fw_vad = pytest.importorskip("faster_whisper.vad")

OPTION_SETS = {
    "defaults": VadOptions(),  # faster-whisper's batched pipeline
    "standalone": VadOptions(min_silence_duration_ms=2000),  # its get_speech_timestamps' defaults, 30 s cap
    "eager": VadOptions(threshold=0.3, neg_threshold=0.2, min_speech_duration_ms=250, max_speech_duration_s=5,
                        min_silence_duration_ms=100, speech_pad_ms=30),
    "short": VadOptions(max_speech_duration_s=3, min_silence_duration_ms=50, speech_pad_ms=0),
}


def _seconds(s: float) -> np.ndarray:
    return np.zeros(int(s * SAMPLE_RATE), np.float32)


@pytest.fixture(scope="module")
def inputs(clips) -> dict[str, np.ndarray]:
    """Clips alone, clips with silences, speech on noise, noise alone, and 40 s of speech without a pause."""
    rng = np.random.default_rng(15)
    speech = [load_audio(info["path"]) for _, info in sorted(clips.items())]
    with_silences = np.concatenate([part for clip in speech for part in (_seconds(rng.uniform(0.2, 6)), clip)])
    noise = (rng.standard_normal(20 * SAMPLE_RATE) * 0.03).astype(np.float32)
    on_noise = with_silences + (rng.standard_normal(len(with_silences)) * 0.01).astype(np.float32)
    running = np.concatenate(speech * 2)[: 40 * SAMPLE_RATE]
    return {"fox": speech[2], "stella": speech[5], "with_silences": with_silences, "noise": noise,
            "on_noise": on_noise, "running": running}


def _theirs(audio: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return [(r["start"], r["end"]) for r in fw_vad.get_speech_timestamps(audio, fw_vad.VadOptions(**fields))]


@pytest.mark.parametrize("name", ["fox", "stella", "with_silences", "noise", "on_noise", "running"])
def test_speech_timestamps_equal_faster_whispers(inputs, name):
    audio = inputs[name]
    probs = silero_vad().speech_probs(audio)
    # the model's probabilities themselves: faster-whisper runs the same file in runs of 10,000 frames
    padded = np.pad(audio, (0, FRAME_SAMPLES - len(audio) % FRAME_SAMPLES))
    theirs_probs = fw_vad.get_vad_model()(padded)
    np.testing.assert_allclose(probs[:-1], theirs_probs[: len(probs) - 1], atol=1e-5)
    found = 0
    for label, options in OPTION_SETS.items():
        ours = [(r.start, r.end) for r in speech_timestamps(probs, len(audio), options)]
        theirs = _theirs(audio, options)
        assert len(ours) == len(theirs), (label, ours, theirs)
        for a, b in zip(ours, theirs):  # within one 32 ms frame
            assert abs(a[0] - b[0]) <= FRAME_SAMPLES and abs(a[1] - b[1]) <= FRAME_SAMPLES, (label, a, b)
        found += len(ours)
    if name == "noise":
        assert found == 0
    else:
        assert found > 0


def _whole_model_probs(audio: np.ndarray) -> np.ndarray:
    """The pinned file as one session, frame runs in order with the LSTM state carried: the model as published."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(vad_module.silero_model_path()), providers=["CPUExecutionProvider"])
    body = np.pad(audio, (0, -len(audio) % FRAME_SAMPLES)).reshape(-1, FRAME_SAMPLES)
    context = np.concatenate([np.zeros((1, 64), np.float32), body[:-1, -64:]])
    frames = np.concatenate([context, body], axis=1)
    h = c = np.zeros((1, 1, 128), np.float32)
    probs = []
    for begin in range(0, len(frames), 10_000):
        out, h, c = session.run(None, {"input": frames[begin : begin + 10_000], "h": h, "c": c})
        probs.append(out)
    return np.concatenate(probs)


@pytest.mark.parametrize("workers", [1, 3])
def test_the_model_cut_in_two_gives_the_whole_models_probabilities(inputs, workers):
    """Features in parallel parts, then the LSTM: bit-identical to the uncut model over several runs."""
    audio = np.concatenate([inputs["on_noise"]] * 6)  # > 8192 frames: the LSTM state crosses runs
    assert len(audio) > 1.2 * vad_module.FRAMES_PER_RUN * FRAME_SAMPLES
    probs = vad_module.SileroVad(vad_module.silero_model_path(), workers).speech_probs(audio)
    np.testing.assert_array_equal(probs, _whole_model_probs(audio))


def test_regions_are_ordered_padded_and_capped(inputs):
    audio = inputs["running"]
    for options in OPTION_SETS.values():
        regions = speech_timestamps(silero_vad().speech_probs(audio), len(audio), options)
        assert regions
        for r in regions:
            assert r.start <= r.speech_start < r.speech_end <= r.end
            assert r.end - r.start <= options.max_speech_duration_s * SAMPLE_RATE
        assert all(a.end <= b.start for a, b in zip(regions, regions[1:]))
    long_regions = speech_timestamps(silero_vad().speech_probs(audio), len(audio), VadOptions(max_speech_duration_s=10))
    assert len(long_regions) >= 4  # 40 s of speech cut at most every 10 s


def _fw_chunks(regions: list[SpeechRegion]) -> list[dict]:
    return [{"start": r.start, "end": r.end} for r in regions]


def test_chunks_and_time_map_follow_faster_whisper(inputs):
    """collect_chunks' grouping and audio; SpeechTimestampsMap's times wherever our cut rule does not apply."""
    audio = np.concatenate([inputs["with_silences"]] * 3)  # ~100 s: several chunks
    regions = speech_timestamps(silero_vad().speech_probs(audio), len(audio), VadOptions())
    chunks = speech_chunks(regions)
    their_audio, their_meta = fw_vad.collect_chunks(audio, _fw_chunks(regions), max_duration=30)
    assert len(chunks) == len(their_meta) >= 3
    ts_map = fw_vad.SpeechTimestampsMap(_fw_chunks(regions), SAMPLE_RATE)
    checked = offset = 0
    for chunk, meta, theirs in zip(chunks, their_meta, their_audio):
        # (their meta["segments"] leaves out the first region of every chunk after the first, so the audio,
        # offset and duration are compared: the map below uses none of it)
        np.testing.assert_array_equal(chunk.audio(audio), theirs)
        assert (offset / SAMPLE_RATE, chunk.n_samples / SAMPLE_RATE) == (meta["offset"], meta["duration"])
        assert chunk.n_samples <= 30 * SAMPLE_RATE
        offset += chunk.n_samples
        local = 0
        for region in chunk.regions:  # times inside the speech, away from the cuts
            for sample in np.linspace(region.speech_start, region.speech_end, 7)[1:-1].astype(int):
                t = (local + sample - region.start) / SAMPLE_RATE
                for is_end in (False, True):
                    ours = chunk.original_time(t, is_end=is_end)
                    assert ours == pytest.approx(ts_map.get_original_time(meta["offset"] + t, is_end=is_end), abs=0.006)
                    assert ours == pytest.approx(sample / SAMPLE_RATE, abs=0.001)
                    checked += 1
            local += region.end - region.start
    assert checked > 100


def test_times_in_the_silence_around_a_cut_go_to_the_cut():
    # two regions 10 s apart: pads of 0.4 s; in the chunk, the cut is at 1.8 s
    first = SpeechRegion(16000, 44800, 22400, 38400)  # 1.0-2.8 s, speech 1.4-2.4 s
    second = SpeechRegion(204800, 233600, 211200, 227200)  # 12.8-14.6 s, speech 13.2-14.2 s
    chunk = SpeechChunk((first, second))
    assert chunk.original_time(1.2) == 2.2 and chunk.original_time(1.2, is_end=True) == 2.2  # speech
    assert chunk.original_time(1.6) == 12.8  # a start in the first region's trailing pad: the second's start
    assert chunk.original_time(1.6, is_end=True) == 2.6
    assert chunk.original_time(1.8) == 12.8 and chunk.original_time(1.8, is_end=True) == 2.8  # on the cut
    assert chunk.original_time(2.0, is_end=True) == 2.8  # an end in the second's leading pad: the first's end
    assert chunk.original_time(2.0) == 13.0
    assert chunk.original_time(2.4, is_end=True) == 13.4  # in the second's speech
    # contiguous regions (a short gap split between them): nothing was cut, so no rule
    joined = SpeechChunk((SpeechRegion(0, 32000, 6400, 30000), SpeechRegion(32000, 64000, 34000, 57600)))
    assert joined.original_time(1.9) == 1.9 and joined.original_time(2.1, is_end=True) == 2.1


@dataclasses.dataclass(frozen=True)
class _Word:
    word: str
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class _SegmentWithWords(Segment):
    words: list = dataclasses.field(default_factory=list)


def test_segment_and_word_times_in_original_time():
    first = SpeechRegion(16000, 44800, 22400, 38400)
    second = SpeechRegion(204800, 233600, 211200, 227200)
    chunk = SpeechChunk((first, second))
    plain = Segment(0, 0, 0.4, 2.4, " a b", [1, 2], 0.0, -0.2, 1.0, 0.01)
    mapped = segment_in_original_time(plain, chunk, 7)
    assert (mapped.id, mapped.start, mapped.end, mapped.seek) == (7, 1.4, 13.4, 100)
    # words: each mapped with the region of its middle (one straddling the cut stays in one region)
    words = [_Word(" a", 0.4, 1.0), _Word(" b", 1.7, 2.1), {"word": " c", "start": 2.2, "end": 2.6}]
    segment = _SegmentWithWords(0, 0, 0.4, 2.6, " a b c", [1, 2, 3], 0.0, -0.2, 1.0, 0.01, words)
    mapped = segment_in_original_time(segment, chunk, 0)
    assert [(w.start, w.end) if isinstance(w, _Word) else (w["start"], w["end"]) for w in mapped.words] == [
        (1.4, 2.0), (12.7, 13.1), (13.2, 13.6)]
    assert (mapped.start, mapped.end) == (1.4, 13.6)


def test_silero_pin(monkeypatch):
    path = vad_module.silero_model_path()
    assert path.name == "silero_vad_v6.onnx"
    monkeypatch.setattr(vad_module, "SILERO_SHA256", "0" * 64)
    with pytest.raises(VadModelError, match=r"has sha256 4cbf549b.*, expected 0{64}.*faster-whisper==1\.2\.1"):
        vad_module.silero_model_path()
    monkeypatch.setattr(vad_module, "SILERO_MODULE", "no_such_package_here")
    with pytest.raises(VadModelError, match="pip install faster-whisper==1.2.1"):
        vad_module.silero_model_path()


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 1.5}, r"vad threshold: received 1\.5, expected a probability in \(0, 1\)"),
    ({"threshold": 0.4, "neg_threshold": 0.6}, "expected neg_threshold <= threshold"),
    ({"min_silence_duration_ms": -1}, r"vad min_silence_duration_ms: received -1, expected an int >= 0"),
    ({"speech_pad_ms": 0.5}, r"vad speech_pad_ms: received 0\.5, expected an int >= 0"),
    ({"max_speech_duration_s": 45}, r"received 45, expected seconds in \(0, 30\]"),
    ({"max_speech_duration_s": 1, "speech_pad_ms": 600}, r"expected 2 \* speech_pad_ms \+ 32 ms < max_speech"),
])
def test_vad_options_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VadOptions(**kwargs)
