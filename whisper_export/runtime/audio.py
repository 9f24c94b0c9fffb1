"""Audio loading and Whisper log-mel features, in numpy only.

This module is part of the runtime, which must import without torch or
transformers; the features are checked against transformers'
``WhisperFeatureExtractor`` in the tests instead.

Shapes use ``B`` for batch, ``n_mels`` for mel bins and ``n_frames`` for
STFT frames (``N_FRAMES`` for a 30 s window).
"""

from __future__ import annotations

import functools
import os
from typing import Sequence, Union

import numpy as np

# Hard-coded audio hyperparameters, as in openai-whisper's audio.py.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds of audio the encoder sees at once
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30 s chunk (graph_io.N_FRAMES)

# The encoder's stride-2 convolution halves the frame rate, so each output
# position (and each timestamp token step) covers two mel frames.
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # 320 samples = 20 ms
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 frames/s = 10 ms per frame
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 50 tokens/s = 20 ms per token

# Whisper checkpoints use 80 mel bins, except large-v3(-turbo) with 128.
SUPPORTED_N_MELS = (80, 128)

# Slaney mel filters span 0 Hz up to the Nyquist frequency of 16 kHz audio.
_MEL_MAX_FREQUENCY = SAMPLE_RATE / 2

AudioInput = Union[str, "os.PathLike[str]", np.ndarray]


class AudioError(ValueError):
    """Raised for any audio input that cannot be turned into 16 kHz mono float32."""


# --------------------------------------------------------------------------- loading


def load_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 in [-1, 1] at 16 kHz.

    WAV/FLAC/OGG/MP3 are read with soundfile; other formats (m4a, webm, ...)
    are decoded by the ``ffmpeg`` executable when it is on PATH. Headers are
    checked first (audio_files.probe: sample rate bounds); the file is read in
    blocks, but the result holds all of it: long audio goes through MelSource.

    Returns:
        (n_samples,) float32
    """
    from whisper_export.runtime.audio_files import read_all  # the decoders import this module's constants

    if sample_rate != SAMPLE_RATE:
        raise AudioError(f"received sample_rate={sample_rate}, expected {SAMPLE_RATE} (Whisper's rate)")
    return read_all(path)


def as_audio(audio_or_path: AudioInput, sample_rate: int | None = None) -> np.ndarray:
    """Normalise a path or an in-memory waveform to (n_samples,) float32 at 16 kHz.

    Arrays are not resampled: they must already be 1-D float at ``SAMPLE_RATE``.
    ``sample_rate`` states the array's rate so that a mismatch fails loudly
    instead of silently producing garbage transcripts; ``None`` means 16 kHz.
    For a path the rate is read from the file header and the file is resampled.
    """
    if isinstance(audio_or_path, (str, os.PathLike)):
        if sample_rate is not None and sample_rate != SAMPLE_RATE:
            raise AudioError(
                f"received sample rate {sample_rate} with path {os.fspath(audio_or_path)!r}, expected "
                f"None or {SAMPLE_RATE}; a file's own rate is read from its header and resampled"
            )
        return load_audio(audio_or_path)

    if not isinstance(audio_or_path, np.ndarray):
        raise AudioError(
            f"received {type(audio_or_path).__name__}, expected a file path or a 1-D float numpy array"
        )
    audio = audio_or_path
    if sample_rate is not None and sample_rate != SAMPLE_RATE:
        raise AudioError(
            f"received sample rate {sample_rate}, expected {SAMPLE_RATE}; resample first or pass a file"
        )
    if audio.ndim != 1:
        raise AudioError(
            f"received array of shape {audio.shape}, expected 1-D (n_samples,); mix channels to mono first"
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(
            f"received array of dtype {audio.dtype}, expected float32 in [-1, 1]; "
            "for int16 PCM divide by 32768"
        )
    if audio.shape[0] == 0:
        raise AudioError("received 0 samples, expected at least 1")
    if not np.isfinite(audio).all():
        raise AudioError("received audio containing NaN or inf, expected finite samples")
    return np.ascontiguousarray(audio, dtype=np.float32)


def pad_or_trim(array: np.ndarray, length: int = N_SAMPLES, *, axis: int = -1) -> np.ndarray:
    """Zero-pad or truncate ``array`` along ``axis`` to exactly ``length``, as the encoder expects."""
    size = array.shape[axis]
    if size > length:
        return np.take(array, np.arange(length), axis=axis)
    if size < length:
        # zeros (calloc: untouched pages cost nothing) and one copy; np.pad writes every padding element
        shape = list(array.shape)
        shape[axis] = length
        out = np.zeros(shape, array.dtype)
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, size)
        out[tuple(index)] = array
        return out
    return array


# --------------------------------------------------------------------------- features


def _hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    # Slaney's scale: linear below 1 kHz, logarithmic above.
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    mels = 3.0 * freq / 200.0
    log_region = freq >= min_log_hz
    mels[log_region] = min_log_mel + np.log(freq[log_region] / min_log_hz) * logstep
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    freq = 200.0 * mels / 3.0
    log_region = mels >= min_log_mel
    freq[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freq


def _check_n_mels(n_mels: int) -> None:
    if n_mels not in SUPPORTED_N_MELS:
        raise AudioError(f"received n_mels={n_mels!r}, expected one of {SUPPORTED_N_MELS}")


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised, Slaney-scaled triangular mel filter bank.

    Same values as ``transformers.audio_utils.mel_filter_bank(1 + N_FFT // 2,
    n_mels, 0, 8000, 16000, norm="slaney", mel_scale="slaney")`` (and librosa),
    but transposed to whisper's layout so that ``mel_filters(n) @ power``
    projects a spectrogram. Read-only because the result is cached.

    Returns:
        (n_mels, 1 + N_FFT // 2) float64
    """
    _check_n_mels(n_mels)
    n_freqs = 1 + N_FFT // 2
    fft_freqs = np.linspace(0, SAMPLE_RATE // 2, n_freqs)
    mel_edges = np.linspace(
        _hz_to_mel_slaney(np.array([0.0]))[0],
        _hz_to_mel_slaney(np.array([_MEL_MAX_FREQUENCY]))[0],
        n_mels + 2,
    )
    # Each filter i rises from edge i to its centre at edge i+1 and falls to edge i+2.
    hz_edges = _mel_to_hz_slaney(mel_edges)
    slopes = hz_edges[None, :] - fft_freqs[:, None]  # (n_freqs, n_mels + 2)
    widths = np.diff(hz_edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    weights = np.maximum(0.0, np.minimum(down, up))  # (n_freqs, n_mels)
    # Slaney normalisation: equal area per filter, so wide high bands are not louder.
    weights *= 2.0 / (hz_edges[2:] - hz_edges[:-2])
    filters = np.ascontiguousarray(weights.T)
    filters.flags.writeable = False
    return filters


@functools.lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    # Periodic Hann (torch.hann_window default): the symmetric window of N + 1 without its last point.
    window = np.hanning(N_FFT + 1)[:-1]
    window.flags.writeable = False
    return window


# Frames per block of the STFT and the mel projection (MelSource streams blocks on the same grid), projected
# MEL_COLUMN_STEP frames at a time. A frame's value must not depend on how many frames were computed with it
# (tests/whisper_export/runtime/test_audio_padding.py holds the streamed, skipped and whole computations to each
# other bit for bit): the FFT rows are independent, and the band product below sums each (frame, filter) over the
# same bins in the same order wherever the frame lies. A short clip's block is as wide as its frames.
MEL_BLOCK_FRAMES = 1000
MEL_COLUMN_STEP = 128


@functools.lru_cache(maxsize=None)
def _mel_bands(n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """mel_filters(n_mels) as bands: each triangle covers at most 14 consecutive FFT bins (391 of 80 x 201 weights
    are not zero). Returns (bins (n_mels, width) int, weights (n_mels, width) float64): filter m is the sum over k of
    weights[m, k] * power[bins[m, k]], zero weights past a filter's end."""
    filters = mel_filters(n_mels)
    nonzero = filters > 0
    starts = nonzero.argmax(axis=1)
    ends = filters.shape[1] - nonzero[:, ::-1].argmax(axis=1)
    width = int((ends - starts).max())
    bins = np.minimum(starts[:, None] + np.arange(width), filters.shape[1] - 1)
    weights = np.where(bins < ends[:, None], np.take_along_axis(filters, bins, axis=1), 0.0)
    return bins, weights


def log10_mel_block(frames: np.ndarray, n_mels: int) -> np.ndarray:
    """(n, N_FFT) float64 frames, 1 <= n <= MEL_BLOCK_FRAMES -> (n_mels, width) float64 log10 mel power, width
    n rounded up to a multiple of MEL_COLUMN_STEP (at most MEL_BLOCK_FRAMES); columns n.. are padding.

    The projection is a gather over each filter's band, not a BLAS matmul: a multithreaded BLAS's threads spin
    for a while after each call, and on a CPU whose cores run onnxruntime's encoder that spinning took them from
    it (the tiny encoder 18% slower per window on 2 cores). On one thread it costs ~2 ms more per 30 s."""
    n = frames.shape[0]
    width = min(MEL_BLOCK_FRAMES, -(-n // MEL_COLUMN_STEP) * MEL_COLUMN_STEP)
    bins, weights = _mel_bands(n_mels)
    out = np.empty((n_mels, width))
    power = np.zeros((1 + N_FFT // 2, MEL_COLUMN_STEP))
    # MEL_COLUMN_STEP frames at a time, every product as wide (numpy sums a one-frame band in another order): the
    # temporaries stay small enough for malloc to reuse, where whole-block ones (MBs) are fresh pages each call
    # (page faults were half of a short clip's time)
    for start in range(0, n, MEL_COLUMN_STEP):
        spectrum = np.fft.rfft(frames[start : start + MEL_COLUMN_STEP] * _hann_window(), axis=-1)
        count = len(spectrum)
        power[:, :count] = (spectrum.real**2 + spectrum.imag**2).T
        power[:, count:] = 0.0
        banded = power[bins]  # (n_mels, band width, MEL_COLUMN_STEP)
        banded *= weights[:, :, None]
        columns = min(MEL_COLUMN_STEP, width - start)
        out[:, start : start + columns] = banded.sum(axis=1)[:, :columns]  # in band order, per frame
    np.maximum(out, 1e-10, out=out)
    return np.log10(out, out=out)


def scale_log_mel(log_spec: np.ndarray, peak: float) -> np.ndarray:
    """log10 mel power -> Whisper's features: 80 dB dynamic range below the loudest bin (peak), then roughly
    into [-1, 1]. float32."""
    return ((np.maximum(log_spec, peak - 8.0) + 4.0) / 4.0).astype(np.float32)


# Zero samples after the audio that the STFT really runs over: 10 frames, >= N_FFT / 2 + 2 hops, so that the last
# of them is pure silence. Every frame after it is that same silent frame (MelSource streams the same frames).
SILENT_TAIL_SAMPLES = 10 * HOP_LENGTH


def _log_mel(audio: np.ndarray, n_mels: int, padding: int = 0) -> np.ndarray:
    """(n_samples,) float and ``padding`` zero samples after it -> (n_mels, (n_samples + padding) // HOP_LENGTH)
    float32.

    Mirrors ``torch.stft(center=True, pad_mode="reflect")`` followed by
    whisper's scaling. Computed in float64: torch works in float32, but the
    extra precision keeps us within ~5e-5 of it while float32 FFTs here
    would add their own, different rounding error.

    A frame whose window lies wholly in the zero padding (the reflection at the end included) is the log-mel
    of silence: log10 of the 1e-10 floor in every bin, then floored at the loudest bin - 8 like the rest. So
    the STFT runs over the audio and SILENT_TAIL_SAMPLES of the zeros only, and its last frame (pure silence)
    is repeated to the full length: bit for bit the frames of the whole padded signal, because every block
    has the same shape and a frame's value depends on its own samples only. A 5 s clip padded to 30 s is a
    sixth of the work.
    """
    if padding > SILENT_TAIL_SAMPLES:
        total = (len(audio) + padding) // HOP_LENGTH
        mel = _log_mel(audio, n_mels, SILENT_TAIL_SAMPLES)
        out = np.empty((n_mels, total), np.float32)
        out[:, : mel.shape[1]] = mel
        out[:, mel.shape[1] :] = mel[:, -1:]
        return out
    pad = N_FFT // 2
    padded = np.pad(np.pad(audio.astype(np.float64), (0, padding)), (pad, pad), mode="reflect")
    # frames: (n_samples // HOP_LENGTH + 1, N_FFT), a strided view, no copy.
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    # Whisper drops the last frame so that 30 s map to exactly N_FRAMES frames.
    frames = frames[:-1]
    log_spec = np.empty((n_mels, frames.shape[0]))
    for start in range(0, frames.shape[0], MEL_BLOCK_FRAMES):
        block = frames[start : start + MEL_BLOCK_FRAMES]
        log_spec[:, start : start + len(block)] = log10_mel_block(block, n_mels)[:, : len(block)]
    return scale_log_mel(log_spec, log_spec.max())


def log_mel_spectrogram(audio: AudioInput, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """Whisper log-mel spectrogram of a whole waveform (any length).

    Args:
        audio: a path, or a (n_samples,) float array at 16 kHz.
        n_mels: 80 or 128, to match the checkpoint.
        padding: zero samples appended first; openai-whisper's long-form
            transcription passes N_SAMPLES so the last window is complete.

    Returns:
        (n_mels, (n_samples + padding) // HOP_LENGTH) float32
    """
    _check_n_mels(n_mels)
    if padding < 0:
        raise AudioError(f"received padding={padding}, expected a non-negative number of samples")
    return _log_mel(as_audio(audio), n_mels, padding)


def log_mel_batch(audios: Sequence[AudioInput], n_mels: int = 80) -> np.ndarray:
    """Encoder input for a batch of clips of at most 30 s each.

    Each clip is zero-padded or trimmed to N_SAMPLES, so the result equals
    ``WhisperFeatureExtractor(feature_size=n_mels)(...).input_features``.

    Args:
        audios: paths and/or (n_samples,) float arrays at 16 kHz.

    Returns:
        (B, n_mels, N_FRAMES) float32
    """
    _check_n_mels(n_mels)
    if len(audios) == 0:
        raise AudioError("received an empty batch, expected at least one clip")
    # One clip at a time: the float64 STFT of a whole batch at once is slower
    # (memory-bound) and needs ~20 MB per clip.
    clips = (as_audio(audio)[:N_SAMPLES] for audio in audios)
    return np.stack([_log_mel(clip, n_mels, N_SAMPLES - len(clip)) for clip in clips])
