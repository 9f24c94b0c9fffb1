"""MelSource: long_form_mel's windows, bit for bit, in memory that does not grow with the audio's length."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from whisper_export.runtime.audio import N_FRAMES, SAMPLE_RATE, AudioError, pad_or_trim
from whisper_export.runtime.mel_source import MelSource
from whisper_export.runtime.transcribe import long_form_mel

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["kept", "streamed"], autouse=True)
def first_pass(request, monkeypatch):
    """Every test twice: short audio keeping its first pass's frames (the default up to KEEP_FRAMES), and every
    audio streamed through the second pass (KEEP_FRAMES 0), which long files take."""
    if request.param == "streamed":
        monkeypatch.setattr("whisper_export.runtime.mel_source.KEEP_FRAMES", 0)
    return request.param


def assert_same_as_long_form(source, n_mels: int, seeks=None) -> None:
    """Every window (at the given seeks, default each 30 s as the transcription steps), the language window and
    the frame levels equal what runtime.transcribe computes from long_form_mel (the _Job.window rule)."""
    expected = long_form_mel(source, n_mels)
    content = expected.shape[-1] - N_FRAMES
    with MelSource(source, n_mels) as mel:
        assert mel.content_frames == content
        assert np.array_equal(mel.language_window(), pad_or_trim(expected, N_FRAMES))
        levels = mel.frame_levels()
        assert levels.dtype == np.float32 and np.array_equal(levels, expected[:, :content].max(axis=0))
        for seek in seeks if seeks is not None else range(0, content, N_FRAMES):
            window, size = mel.window(seek)
            assert size == min(N_FRAMES, content - seek)
            assert window.dtype == np.float32 and window.shape == (n_mels, N_FRAMES)
            assert np.array_equal(window, pad_or_trim(expected[:, seek : seek + size], N_FRAMES)), seek


@pytest.mark.parametrize("n_mels", [80, 128])
def test_waveforms_of_every_awkward_length(n_mels):
    rng = np.random.default_rng(0)
    for n in (1, 159, 160, 201, 401, 16000, 160 * 1000 - 230, 480017, 500001):
        audio = (rng.standard_normal(n) * 0.1).astype(np.float32)
        content = n // 160
        assert_same_as_long_form(audio, n_mels, seeks=sorted({0, content // 3, max(content - 1, 0)} - {content}))


def test_committed_clips_and_a_long_silence(clips):
    for info in clips.values():
        assert_same_as_long_form(info["path"], 80)
    speech = soundfile.read(clips["en_fox.wav"]["path"], dtype="float32")[0]
    assert_same_as_long_form(np.concatenate([speech, np.zeros(95 * SAMPLE_RATE, np.float32), speech]), 80)


def test_a_resampled_stereo_file_read_in_blocks(tmp_path):
    """44.1 kHz stereo, 75 s: several soundfile blocks, soxr stream chunks and mel blocks; every seek the
    transcription could make after a cut segment (not multiples of anything)."""
    rng = np.random.default_rng(1)
    t = np.arange(44100 * 75 + 13) / 44100
    left = 0.3 * np.sin(2 * np.pi * 440 * t) * (t % 7 < 3)
    stereo = np.stack([left, 0.05 * rng.standard_normal(len(t))], axis=1).astype(np.float32)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 44100, subtype="PCM_16")
    assert_same_as_long_form(path, 80, seeks=[0, 2999, 1234, 5000, 7400])


def test_going_back_restarts_the_stream():
    audio = (np.random.default_rng(2).standard_normal(SAMPLE_RATE * 100) * 0.1).astype(np.float32)
    expected = long_form_mel(audio, 80)
    with MelSource(audio, 80) as mel:
        for seek in (6000, 0, 9999, 3000, 9999):
            window, size = mel.window(seek)
            assert np.array_equal(window, pad_or_trim(expected[:, seek : seek + size], N_FRAMES))


def test_seek_outside_the_audio_is_refused_and_empty_audio_too(tmp_path, wav_bytes):
    with MelSource(np.zeros(SAMPLE_RATE, np.float32), 80) as mel:
        assert mel.content_frames == 100 and mel.duration == 1.0
        for seek in (-1, 100):
            with pytest.raises(ValueError, match=f"seek: received {seek}, expected 0 <= seek < content_frames"):
                mel.window(seek)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(wav_bytes(data=b""))
    with pytest.raises(AudioError, match="contains no audio: received 0 samples"):
        MelSource(empty, 80)
    with pytest.raises(AudioError, match="received n_mels=64"):
        MelSource(np.zeros(10, np.float32), 64)


MEASURE = """
import resource, sys
sys.path.insert(0, sys.argv[2])
from whisper_export.runtime.mel_source import MelSource
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with MelSource(sys.argv[1], 80) as mel:
    mel.language_window(); mel.frame_levels()
    for seek in range(0, mel.content_frames, 3000):
        mel.window(seek)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def _peak_growth_kb(path: Path) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(ROOT)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def test_memory_does_not_grow_with_the_length(tmp_path):
    """1 min and 6 min of 16 kHz audio: the peak RSS grows by the same few MB (long_form_mel would hold 12 MB of
    float32 mel and ~50 MB of float64 signal and log-mel for the longer one). benchmarks/mel_memory.py measures
    5 min against 3 hours."""
    growth = {}
    for minutes in (1, 6):
        path = tmp_path / f"{minutes}.wav"
        with soundfile.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
            rng = np.random.default_rng(minutes)
            for _ in range(minutes):
                f.write((0.1 * rng.standard_normal(60 * SAMPLE_RATE)).astype(np.float32))
        growth[minutes] = _peak_growth_kb(path)
    assert growth[6] - growth[1] < 4 * 1024, json.dumps(growth)
