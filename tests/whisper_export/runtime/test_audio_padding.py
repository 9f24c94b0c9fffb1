"""The log-mel of zero-padded audio skips the frames that lie wholly in the padding (audio._log_mel): the result
must be, bit for bit, the STFT of the whole padded signal, and openai-whisper's log_mel_spectrogram within the
tolerance of the other audio tests."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_export.runtime.audio import (
    HOP_LENGTH,
    MEL_BLOCK_FRAMES,
    MEL_COLUMN_STEP,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    load_audio,
    log10_mel_block,
    log_mel_batch,
    log_mel_spectrogram,
    pad_or_trim,
    scale_log_mel,
)
from whisper_export.runtime.mel_source import MelSource
from whisper_export.runtime.transcribe import long_form_mel

MEL_TOLERANCE = 1e-4  # as test_audio.py: float64 numpy against torch's float32 STFT

# lengths in samples: short, mid-frame ends, shorter than the reflection (N_FFT // 2), 30 s, 30 s + 1, long
LENGTHS = (1, 100, 159, 160, 201, 401, 16000 + 77, 5 * SAMPLE_RATE, N_SAMPLES - 1, N_SAMPLES, N_SAMPLES + 1,
           75 * SAMPLE_RATE + 123)
# paddings around the skip's threshold (10 hops) and the reflection's reach
PADDINGS = (0, 1, 200, 1599, 1600, 1601, 1640, 1641, 2001, 37_777, N_SAMPLES)


def full_log_mel(audio: np.ndarray, n_mels: int, padding: int) -> np.ndarray:
    """Every frame of the padded signal through the STFT, as the code did before the skip: reflect-pad the
    audio and its zeros, frame, and run every MEL_BLOCK_FRAMES block (zeros included)."""
    signal = np.pad(np.concatenate([audio.astype(np.float64), np.zeros(padding)]), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(signal, N_FFT)[::HOP_LENGTH][:-1]
    blocks = [log10_mel_block(frames[i : i + MEL_BLOCK_FRAMES], n_mels)[:, : len(frames[i : i + MEL_BLOCK_FRAMES])]
              for i in range(0, len(frames), MEL_BLOCK_FRAMES)]
    log_spec = np.concatenate(blocks, axis=1)
    return scale_log_mel(log_spec, log_spec.max())


def _audio(n: int, rng: np.random.Generator) -> np.ndarray:
    # speech-like level, with a silent stretch so the floor (max - 8) matters
    audio = (rng.standard_normal(n) * 0.1).astype(np.float32)
    audio[n // 3 : n // 2] = 0.0
    return audio


@pytest.mark.parametrize("n_mels", [80, 128])
def test_padded_log_mel_is_the_full_stft_bit_for_bit(n_mels):
    rng = np.random.default_rng()
    paddings = PADDINGS if n_mels == 80 else (0, 1601, N_SAMPLES)  # the bank's size does not touch the skip
    cases = [(_audio(n, rng), p) for n in LENGTHS[:7] for p in paddings]
    cases += [(_audio(n, rng), p) for n in LENGTHS[7:] for p in (0, 1601, N_SAMPLES)[: 3 if n_mels == 80 else 1]]
    cases += [(np.zeros(n, np.float32), p) for n in (1, 3 * SAMPLE_RATE + 50) for p in (0, 1641, N_SAMPLES)]
    for audio, padding in cases:
        if len(audio) + padding < HOP_LENGTH:
            continue  # no frame at all
        expected = full_log_mel(audio, n_mels, padding)
        got = log_mel_spectrogram(audio, n_mels, padding=padding)
        assert got.dtype == np.float32 and got.shape == expected.shape == (n_mels, (len(audio) + padding) // HOP_LENGTH)
        assert np.array_equal(got, expected), (len(audio), padding, float(np.abs(got - expected).max()))


def test_long_form_mel_and_mel_source_equal_the_full_stft(clips):
    rng = np.random.default_rng()
    audios = [load_audio(c["path"]) for c in clips.values()]
    audios += [_audio(n, rng) for n in (1, 159, 16000 + 77, N_SAMPLES, N_SAMPLES + 1)]
    audios.append(np.zeros(20000, np.float32))
    for audio in audios:
        expected = full_log_mel(audio, 80, N_SAMPLES)
        assert np.array_equal(long_form_mel(audio, 80), expected), len(audio)
        with MelSource(audio, 80) as source:
            if source.content_frames:
                window, size = source.window(0)
                assert np.array_equal(window, pad_or_trim(expected[:, :size], N_FRAMES)), len(audio)
            assert np.array_equal(source.language_window(), pad_or_trim(expected, N_FRAMES)), len(audio)


def test_log_mel_batch_is_the_full_stft_of_the_30_s_window():
    rng = np.random.default_rng()
    audios = [_audio(n, rng) for n in (1, 16000 + 77, N_SAMPLES, N_SAMPLES + 1, 40 * SAMPLE_RATE)]
    audios.append(np.zeros(SAMPLE_RATE, np.float32))
    batch = log_mel_batch(audios, 80)
    for audio, got in zip(audios, batch):
        assert np.array_equal(got, full_log_mel(pad_or_trim(audio), 80, 0)), len(audio)


@pytest.mark.parametrize("n", [SAMPLE_RATE // 2, 5 * SAMPLE_RATE + 77, N_SAMPLES, N_SAMPLES + 1, 40 * SAMPLE_RATE])
def test_padded_log_mel_matches_openai_whisper(n):
    whisper = pytest.importorskip("whisper")
    torch = pytest.importorskip("torch")
    audio = _audio(n, np.random.default_rng())
    expected = whisper.log_mel_spectrogram(torch.from_numpy(audio), 80, padding=N_SAMPLES).numpy()
    got = log_mel_spectrogram(audio, 80, padding=N_SAMPLES)
    assert got.shape == expected.shape
    max_abs = float(np.abs(got - expected).max())
    assert max_abs <= MEL_TOLERANCE, f"received max abs diff {max_abs:.2e}, expected <= {MEL_TOLERANCE}"


def test_a_frame_does_not_depend_on_how_many_frames_share_its_block():
    # the last block of a clip is only as wide as its frames (rounded up to MEL_COLUMN_STEP), so its frames must
    # equal the same frames in a whole block; a one-column product (gemv) would not
    audio = _audio(MEL_BLOCK_FRAMES * HOP_LENGTH + N_FFT, np.random.default_rng()).astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(audio, N_FFT)[::HOP_LENGTH][:MEL_BLOCK_FRAMES]
    whole = log10_mel_block(frames, 80)
    assert whole.shape == (80, MEL_BLOCK_FRAMES)
    for n in (1, 2, 7, 127, 128, 129, 500, 999):
        part = log10_mel_block(frames[:n], 80)
        assert part.shape[1] % MEL_COLUMN_STEP == 0 or part.shape[1] == MEL_BLOCK_FRAMES
        assert np.array_equal(part[:, :n], whole[:, :n]), n
