"""whisper_export.runtime.audio: loading, error messages, and log-mel parity with transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from whisper_export.runtime.audio import (
    HOP_LENGTH,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    as_audio,
    load_audio,
    log_mel_batch,
    log_mel_spectrogram,
    mel_filters,
    pad_or_trim,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
CLIPS = json.loads((DATA_DIR / "clips.json").read_text(encoding="utf-8"))
SPEECH_CLIP = DATA_DIR / "en_stella.wav"

# transformers computes its features with float32 torch.stft; we use float64.
MEL_TOLERANCE = 1e-4

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def _ffmpeg_convert(src: Path, dst: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), str(dst)], check=True
    )


# --------------------------------------------------------------------------- runtime import


def test_audio_module_imports_without_torch() -> None:
    # A fresh interpreter: this test process may already have torch loaded.
    code = (
        "import sys, whisper_export.runtime.audio; "
        "bad = {'torch', 'transformers'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels: int) -> None:
    from transformers.audio_utils import mel_filter_bank

    expected = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0,
        max_frequency=8000,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )  # (n_freqs, n_mels)
    assert mel_filters(n_mels).shape == (n_mels, 1 + N_FFT // 2)
    np.testing.assert_allclose(mel_filters(n_mels), expected.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_openai_whisper_npz(n_mels: int) -> None:
    """openai-whisper's stored filter banks (assets/mel_filters.npz, float32), 80 and large-v3's 128 bins."""
    whisper = pytest.importorskip("whisper")

    stored = np.load(Path(whisper.__file__).parent / "assets" / "mel_filters.npz")[f"mel_{n_mels}"]
    assert stored.shape == mel_filters(n_mels).shape
    np.testing.assert_allclose(mel_filters(n_mels), stored, rtol=0, atol=1e-6)


def _noise() -> np.ndarray:
    # Fresh every run: parity must not depend on one lucky seed.
    return (np.random.default_rng().standard_normal(7 * SAMPLE_RATE) * 0.1).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("source", ["noise", "speech", "longer_than_30s"])
def test_log_mel_matches_whisper_feature_extractor(n_mels: int, source: str) -> None:
    from transformers import WhisperFeatureExtractor

    if source == "noise":
        audio = _noise()
    elif source == "speech":
        audio = load_audio(SPEECH_CLIP)
    else:
        audio = np.tile(load_audio(SPEECH_CLIP), 8)  # ~37 s, exercises trimming
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    expected = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]

    actual = log_mel_batch([audio], n_mels)[0]

    assert actual.shape == expected.shape == (n_mels, N_FRAMES)
    assert actual.dtype == np.float32
    max_abs = float(np.abs(actual - expected).max())
    assert max_abs <= MEL_TOLERANCE, f"received max abs diff {max_abs:.2e}, expected <= {MEL_TOLERANCE}"


def test_log_mel_batch_items_are_independent() -> None:
    # The max-8 floor is per clip: a loud neighbour must not change a quiet clip.
    quiet, loud = _noise() * 0.01, _noise() * 10
    batch = log_mel_batch([quiet, loud], 80)
    assert batch.shape == (2, 80, N_FRAMES)
    np.testing.assert_array_equal(batch[0], log_mel_batch([quiet], 80)[0])


def test_log_mel_spectrogram_any_length_and_padding() -> None:
    audio = load_audio(SPEECH_CLIP)
    assert log_mel_spectrogram(audio).shape == (80, audio.shape[0] // HOP_LENGTH)
    padded = log_mel_spectrogram(audio, n_mels=128, padding=N_SAMPLES)
    assert padded.shape == (128, (audio.shape[0] + N_SAMPLES) // HOP_LENGTH)
    # A path gives the same features as the loaded array.
    np.testing.assert_array_equal(log_mel_spectrogram(SPEECH_CLIP), log_mel_spectrogram(audio))


def test_unsupported_n_mels_is_rejected() -> None:
    with pytest.raises(AudioError, match=r"received n_mels=64, expected one of \(80, 128\)"):
        log_mel_batch([_noise()], 64)


def test_pad_or_trim() -> None:
    assert pad_or_trim(np.ones(10), 4).tolist() == [1, 1, 1, 1]
    assert pad_or_trim(np.ones(2), 4).tolist() == [1, 1, 0, 0]
    stacked = pad_or_trim(np.ones((3, 2)), 5, axis=0)
    assert stacked.shape == (5, 2) and stacked[3:].sum() == 0
    assert pad_or_trim(np.ones(3), 3).shape == (3,)


# --------------------------------------------------------------------------- loading


def test_resamples_44k1_stereo_to_16k_mono(tmp_path: Path) -> None:
    rate, seconds, freq = 44100, 2.0, 440.0
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    # Right channel silent: the mono mix must be the channel mean (half amplitude).
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.stack([tone, np.zeros_like(tone)], axis=1), rate, subtype="PCM_16")

    audio = load_audio(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.shape[0] == int(SAMPLE_RATE * seconds)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.shape[0])))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / audio.shape[0]
    assert abs(peak_hz - freq) <= 1.0, f"received peak at {peak_hz} Hz, expected {freq} Hz"
    assert np.abs(audio[1000:-1000]).max() == pytest.approx(0.25, abs=0.01)


def test_float_samples_beyond_full_scale_are_clipped(tmp_path: Path) -> None:
    """A float WAV may hold samples past +-1; openai-whisper's ffmpeg decodes to 16-bit integers, which saturate
    there, so the samples are clipped to [-1, 1] (the rest unchanged), at 16 kHz and through the resampler."""
    speech = load_audio(DATA_DIR / "en_fox.wav")
    loud = speech * np.float32(4.0)
    assert np.abs(loud).max() > 1.5
    path = tmp_path / "loud.wav"
    soundfile.write(path, loud, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), np.clip(loud, -1.0, 1.0))
    resampled = tmp_path / "loud_48k.wav"
    soundfile.write(resampled, np.repeat(loud, 3), 3 * SAMPLE_RATE, subtype="FLOAT")
    audio = load_audio(resampled)
    assert np.abs(audio).max() == 1.0 and (np.abs(audio) == 1.0).sum() > 100


@needs_ffmpeg
@pytest.mark.parametrize("suffix", [".mp3", ".m4a"])
def test_compressed_formats_load(tmp_path: Path, suffix: str) -> None:
    # soundfile reads mp3 itself (libsndfile >= 1.1); m4a always needs ffmpeg.
    reference = load_audio(SPEECH_CLIP)
    compressed = tmp_path / f"clip{suffix}"
    _ffmpeg_convert(SPEECH_CLIP, compressed)

    audio = load_audio(compressed)

    assert audio.dtype == np.float32 and audio.ndim == 1
    # Encoder delay/padding adds a few thousand samples at most.
    assert abs(audio.shape[0] - reference.shape[0]) < 0.25 * SAMPLE_RATE
    assert np.abs(audio).max() > 0.1  # decoded speech, not silence


@needs_ffmpeg
def test_missing_ffmpeg_error_explains_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m4a = tmp_path / "clip.m4a"
    _ffmpeg_convert(SPEECH_CLIP, m4a)
    monkeypatch.setenv("PATH", "")

    with pytest.raises(AudioError) as info:
        load_audio(m4a)

    message = str(info.value)
    assert str(m4a) in message
    assert "ffmpeg" in message and "install" in message.lower()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="not found") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="directory") as info:
        load_audio(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message
    assert "WAV" in message  # says which formats are expected


def test_empty_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(AudioError, match="received 0 samples") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_array_with_wrong_sample_rate() -> None:
    with pytest.raises(
        AudioError, match="received sample rate 44100, expected 16000; resample first or pass a file"
    ):
        as_audio(np.zeros(44100, dtype=np.float32), sample_rate=44100)


def test_two_dimensional_array() -> None:
    with pytest.raises(AudioError, match=r"received array of shape \(2, 16000\), expected 1-D"):
        as_audio(np.zeros((2, 16000), dtype=np.float32))


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (np.zeros(100, dtype=np.int16), "received array of dtype int16, expected float32"),
        (np.zeros(0, dtype=np.float32), "received 0 samples"),
        (np.array([0.0, np.nan], dtype=np.float32), "NaN"),
        ([0.0, 0.1], "received list, expected a file path or a 1-D float numpy array"),
    ],
)
def test_other_bad_arrays(value: object, pattern: str) -> None:
    with pytest.raises(AudioError, match=pattern):
        as_audio(value)  # type: ignore[arg-type]


def test_as_audio_accepts_float64_and_paths() -> None:
    audio = as_audio(np.zeros(10, dtype=np.float64), sample_rate=SAMPLE_RATE)
    assert audio.dtype == np.float32 and audio.shape == (10,)
    np.testing.assert_array_equal(as_audio(str(SPEECH_CLIP)), load_audio(SPEECH_CLIP))


# --------------------------------------------------------------------------- committed clips


def test_clips_manifest_matches_committed_files() -> None:
    on_disk = {p.name for p in DATA_DIR.glob("*.wav")}
    assert set(CLIPS) == on_disk
    assert {entry["language"] for entry in CLIPS.values()} == {"en", "de", "fr", "es"}
    for name, entry in CLIPS.items():
        assert entry["text"].strip(), name
        info = soundfile.info(str(DATA_DIR / name))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16"), name
        assert 3.0 <= info.duration <= 8.0, f"{name}: received {info.duration:.2f} s, expected 3-8 s"
