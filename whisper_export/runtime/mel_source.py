"""The long-form log-mel of one audio, window by window, in memory that does not grow with the audio's length.

``runtime.transcribe.long_form_mel(audio, n_mels)`` is openai-whisper's log-mel of the audio padded with 30 s of
zeros, floored at the loudest bin - 8: a 3-hour file is 345 MB of float32 features (80 mels), and the float64
STFT behind them several times that. MelSource gives the same values, bit for bit, from two streamed passes
over the file: the first finds the loudest bin (and each frame's loudest bin, for skip_silence), the second
computes the frames a window asks for, a block at a time, as the transcription moves forward. A window
behind the current block restarts the second pass (the transcription loop never goes back).

Memory: a few MB of blocks, plus 8 bytes per mel frame (0.8 KB per second of audio) for frame_levels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from whisper_export.runtime.audio import (
    HOP_LENGTH,
    MEL_BLOCK_FRAMES,
    N_FFT,
    N_FRAMES,
    SAMPLE_RATE,
    SILENT_TAIL_SAMPLES,
    AudioError,
    AudioInput,
    _check_n_mels,
    as_audio,
    log10_mel_block,
    pad_or_trim,
    scale_log_mel,
)
from whisper_export.runtime.audio_files import AudioHeader, check_header, pcm_blocks, probe

# audio up to this many frames (2 min) keeps its first pass's frames, so its windows need no second pass; that
# is most of the work of a short clip, and at most 7.7 MB (80 mels, float64) per open audio
KEEP_FRAMES = 12_000
_ARRAY_BLOCK = 1 << 18  # samples of an in-memory waveform handed on at a time


class MelSource:
    """``MelSource(audio, n_mels, max_duration=...)``: a path or a (n_samples,) float array at 16 kHz.

    Attributes: ``content_frames`` (mel frames of the audio itself), ``duration`` (seconds).
    A file longer than max_duration seconds (from its header, before decoding) raises AudioError.
    """

    def __init__(self, audio: AudioInput, n_mels: int, *, max_duration: float | None = None):
        _check_n_mels(n_mels)
        if max_duration is not None and not max_duration > 0:
            raise AudioError(f"max_duration: received {max_duration!r}, expected None or seconds > 0")
        self.n_mels = n_mels
        self._array: np.ndarray | None = None
        self._header: AudioHeader | None = None
        self._max_samples = None if max_duration is None else int(max_duration * SAMPLE_RATE)
        if isinstance(audio, (str, os.PathLike)):
            self._header = probe(audio)
            check_header(self._header, max_duration)
            self.name = repr(os.fspath(audio))
        else:
            self._array = as_audio(audio)
            self.name = "the waveform"
            if self._max_samples is not None and len(self._array) > self._max_samples:
                raise AudioError(f"received {len(self._array) / SAMPLE_RATE:.1f} s of audio, expected at most "
                                 f"max_duration={max_duration:g} s")
        self._blocks: Iterator[tuple[int, np.ndarray]] | None = None
        self._cache: list[tuple[int, np.ndarray]] = []  # (first frame, scaled (n_mels, n) float32), in order
        self._first_pass()

    # -- the two passes ------------------------------------------------------------------------------------

    def _samples(self) -> Iterator[np.ndarray]:
        if self._array is not None:
            return (self._array[i : i + _ARRAY_BLOCK] for i in range(0, len(self._array), _ARRAY_BLOCK))
        assert self._header is not None
        return pcm_blocks(self._header, self._max_samples)

    def _first_pass(self) -> None:
        peak = -np.inf
        frame_max = []
        n_samples = 0
        kept: list[tuple[int, np.ndarray]] | None = []
        for start, log_spec, n_samples in _log10_blocks(self._samples(), self.n_mels):
            peak = max(peak, float(log_spec.max()))
            frame_max.append(log_spec.max(axis=0))
            if kept is not None:
                kept.append((start, log_spec))
                if start + log_spec.shape[1] > KEEP_FRAMES:
                    kept = None
        if n_samples == 0:
            raise AudioError(f"{self.name} contains no audio: received 0 samples, expected at least 1")
        self.n_samples = n_samples
        self.content_frames = n_samples // HOP_LENGTH
        self.computed_frames = (n_samples + SILENT_TAIL_SAMPLES) // HOP_LENGTH  # long_form_mel's STFT frames
        self.duration = n_samples / SAMPLE_RATE
        self._peak = peak
        self._frame_max = np.concatenate(frame_max)[: self.content_frames]
        self._complete = kept is not None  # every frame is in the cache: no second pass
        if kept is not None:
            self._cache = [(start, scale_log_mel(log_spec, peak)) for start, log_spec in kept]

    def _frames(self, start: int, stop: int) -> np.ndarray:
        """Scaled frames start..stop (0 <= start <= stop <= computed_frames): (n_mels, stop - start) float32."""
        if not self._cache or start < self._cache[0][0]:
            self._restart()
        elif self._complete:  # a short audio: every frame kept from the first pass
            return np.concatenate([block[:, max(start - first, 0) : max(stop - first, 0)]
                                   for first, block in self._cache], axis=1)
        parts = []
        while True:
            # drop blocks wholly before start; a window never reaches back past its own start
            while self._cache and self._cache[0][0] + self._cache[0][1].shape[1] <= start:
                self._cache.pop(0)
            end = self._cache[-1][0] + self._cache[-1][1].shape[1] if self._cache else 0
            if end >= stop or not self._advance():
                break
        for first, block in self._cache:
            lo, hi = max(start, first), min(stop, first + block.shape[1])
            if lo < hi:
                parts.append(block[:, lo - first : hi - first])
        out = np.concatenate(parts, axis=1) if parts else np.zeros((self.n_mels, 0), np.float32)
        assert out.shape[1] == stop - start, (out.shape, start, stop)
        return out

    def _restart(self) -> None:
        self._close_blocks()
        self._cache, self._complete = [], False
        self._blocks = _log10_blocks(self._samples(), self.n_mels)
        self._advance()

    def _advance(self) -> bool:
        assert self._blocks is not None
        item = next(self._blocks, None)
        if item is None:
            return False
        start, log_spec, _ = item
        self._cache.append((start, scale_log_mel(log_spec, self._peak)))
        return True

    # -- what the transcription loop asks for --------------------------------------------------------------

    def window(self, seek: int, end: int | None = None) -> tuple[np.ndarray, int]:
        """The 30 s window at mel frame seek: ((n_mels, N_FRAMES) float32 zero-padded past the audio, or past
        frame end (a clip's end), the number of frames of audio in it), as
        pad_or_trim(long_form_mel(audio)[:, seek:seek + size], N_FRAMES)."""
        if not 0 <= seek < self.content_frames:
            raise ValueError(f"seek: received {seek}, expected 0 <= seek < content_frames ({self.content_frames})")
        stop = self.content_frames if end is None else min(end, self.content_frames)
        if stop <= seek:
            raise ValueError(f"end: received {end}, expected a frame after seek {seek}")
        size = min(N_FRAMES, stop - seek)
        return pad_or_trim(self._frames(seek, seek + size), N_FRAMES), size

    def language_window(self) -> np.ndarray:
        """pad_or_trim(long_form_mel(audio), N_FRAMES): the first 30 s as openai-whisper detects the language
        on them (the padding frames are the log-mel of silence, not zeros). (n_mels, N_FRAMES) float32."""
        known = min(self.computed_frames, N_FRAMES)
        mel = self._frames(0, known)
        if known < N_FRAMES:  # long_form_mel repeats its last computed frame (pure silence) to the end
            mel = np.concatenate([mel, np.repeat(mel[:, -1:], N_FRAMES - known, axis=1)], axis=1)
        return mel

    def frame_levels(self) -> np.ndarray:
        """Each audio frame's loudest mel bin, long_form_mel(audio)[:, :content_frames].max(axis=0):
        (content_frames,) float32. The scaling is monotonic, so the maximum of the scaled bins is the scaled
        maximum, kept from the first pass."""
        return scale_log_mel(self._frame_max, self._peak)

    # -- lifetime ------------------------------------------------------------------------------------------

    def _close_blocks(self) -> None:
        if self._blocks is not None:
            self._blocks.close()  # stops a decoder (kills an ffmpeg process)
            self._blocks = None

    def close(self) -> None:
        self._close_blocks()
        self._cache = []

    def __enter__(self) -> "MelSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MelSource({self.name}, n_mels={self.n_mels}, {self.duration:.1f} s)"


def _log10_blocks(samples: Iterator[np.ndarray], n_mels: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """(first frame, (n_mels, n) float64 log10 mel power, samples read so far) for the frames of the audio
    followed by SILENT_TAIL_SAMPLES zeros, in blocks of MEL_BLOCK_FRAMES on the grid audio._log_mel uses.

    The signal is reflect-padded by N_FFT // 2 at the start, as torch.stft(center=True) and np.pad do; the
    end padding lies in the zeros. Frame i covers padded samples i * HOP_LENGTH .. + N_FFT."""
    pad, block = N_FFT // 2, MEL_BLOCK_FRAMES
    span = (block - 1) * HOP_LENGTH + N_FFT  # padded samples under one block of frames
    chunks = (np.asarray(c, np.float64) for c in samples)
    head, n_read, ended = [], 0, False
    while n_read <= pad:  # the reflection needs samples 1..pad
        chunk = next(chunks, None)
        if chunk is None:
            ended = True
            break
        head.append(chunk)
        n_read += len(chunk)
    x = head[0] if len(head) == 1 else np.concatenate(head) if head else np.zeros(0)
    first = np.concatenate([x[: pad + 1], np.zeros(max(0, pad + 1 - len(x)))])  # tail zeros for a short audio
    buffer, buffer_start, frame = np.concatenate([first[pad:0:-1], x]), 0, 0
    while not ended:
        while frame * HOP_LENGTH + span <= buffer_start + len(buffer):  # whole blocks whose samples have arrived
            offset = frame * HOP_LENGTH - buffer_start
            frames = np.lib.stride_tricks.sliding_window_view(buffer[offset : offset + span], N_FFT)[::HOP_LENGTH]
            yield frame, log10_mel_block(frames, n_mels), n_read
            frame += block
            drop = frame * HOP_LENGTH - buffer_start
            buffer, buffer_start = buffer[drop:], buffer_start + drop
        chunk = next(chunks, None)
        if chunk is None:
            ended = True
        else:
            buffer = np.concatenate([buffer, chunk])
            n_read += len(chunk)
    # the end: zeros under every remaining frame, then the remaining blocks (the last one partial)
    total = (n_read + SILENT_TAIL_SAMPLES) // HOP_LENGTH
    needed = (total - 1) * HOP_LENGTH + N_FFT
    buffer = np.concatenate([buffer, np.zeros(max(0, needed - buffer_start - len(buffer)))])
    for first_frame in range(frame, total, block):
        count = min(block, total - first_frame)
        offset = first_frame * HOP_LENGTH - buffer_start
        frames = np.lib.stride_tricks.sliding_window_view(
            buffer[offset : offset + (count - 1) * HOP_LENGTH + N_FFT], N_FFT)[::HOP_LENGTH]
        yield first_frame, log10_mel_block(frames, n_mels)[:, :count], n_read
