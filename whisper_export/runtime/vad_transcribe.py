"""transcribe(vad=True): decode only the speech, in chunks of at most 30 s, all chunks of all files together.

Each audio's speech regions (runtime/vad.py) are merged in order into chunks of at most 30 s (faster-whisper's
batched pipeline, `collect_chunks`): a chunk's audio is its regions' samples back to back, the silence between
them cut out. Every chunk of every file goes to the transcriber as an independent audio in one call, without
conditioning on earlier text, so chunks are decoded together up to batch_size whatever file they come from.
Each file's chunk results are stitched back into one TranscriptionResult whose times are those of the
original audio (faster-whisper's `SpeechTimestampsMap`); a file without speech has no segments and no text.
The language of a multilingual model is detected once per file, on its first chunk.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from whisper_export.runtime.audio import FRAMES_PER_SECOND, N_FRAMES, N_SAMPLES, SAMPLE_RATE, AudioInput, as_audio, pad_or_trim
from whisper_export.runtime.decoding import detect_language
from whisper_export.runtime.options import TranscribeOptions
from whisper_export.runtime.transcribe import ProgressCallback, Segment, Transcriber, TranscriptionResult, long_form_mel
from whisper_export.runtime.vad import SpeechRegion, VadOptions, detect_speech, silero_vad


@dataclass(frozen=True)
class SpeechChunk:
    """Speech regions of one audio, decoded as one audio of their samples back to back (at most 30 s)."""

    regions: tuple[SpeechRegion, ...]  # in order

    @property
    def n_samples(self) -> int:
        return sum(r.end - r.start for r in self.regions)

    def audio(self, waveform: np.ndarray) -> np.ndarray:
        return np.concatenate([waveform[r.start : r.end] for r in self.regions]).astype(np.float32, copy=False)

    def original_time(self, seconds: float, *, is_end: bool = False, region: int | None = None) -> float:
        """A time in the chunk's audio, in seconds of the original audio.

        Where silence was cut out between two regions, a time in the silence around the cut (the pads of the
        two regions) is taken to be at the cut: a segment's start then goes to the later region's start, its
        end (is_end) to the earlier region's end. Whisper often ends a segment where the next one starts,
        somewhere in that silence; without this rule such an end would be dated in the later region, up to
        the whole cut-out silence late. region: the region to use (no rule applied)."""
        local_starts = np.cumsum([0] + [r.end - r.start for r in self.regions]).tolist()
        sample = round(seconds * SAMPLE_RATE)
        if region is None:
            region = min(bisect.bisect_right(local_starts, sample) - 1, len(self.regions) - 1)
            if is_end and region > 0 and self._cut_before(region):
                if sample - local_starts[region] <= self.regions[region].speech_start - self.regions[region].start:
                    region, sample = region - 1, local_starts[region]
            elif not is_end and region + 1 < len(self.regions) and self._cut_before(region + 1):
                if local_starts[region + 1] - sample <= self.regions[region].end - self.regions[region].speech_end:
                    region, sample = region + 1, local_starts[region + 1]
            seconds = sample / SAMPLE_RATE
        return round(seconds + (self.regions[region].start - local_starts[region]) / SAMPLE_RATE, 3)

    def region_at(self, seconds: float) -> int:
        """The region holding a time of the chunk's audio (a time on a border: the later region)."""
        local_ends = np.cumsum([r.end - r.start for r in self.regions]).tolist()
        return min(bisect.bisect_right(local_ends, round(seconds * SAMPLE_RATE)), len(local_ends) - 1)

    def _cut_before(self, region: int) -> bool:
        return self.regions[region - 1].end < self.regions[region].start


def speech_chunks(regions: Sequence[SpeechRegion], max_samples: int = N_SAMPLES) -> list[SpeechChunk]:
    """Consecutive regions grouped while their samples add up to at most max_samples (a region longer than
    that on its own, which VadOptions' max_speech_duration_s rules out, is a chunk of its own)."""
    chunks: list[SpeechChunk] = []
    current: list[SpeechRegion] = []
    size = 0
    for region in regions:
        if current and size + (region.end - region.start) > max_samples:
            chunks.append(SpeechChunk(tuple(current)))
            current, size = [], 0
        current.append(region)
        size += region.end - region.start
    if current:
        chunks.append(SpeechChunk(tuple(current)))
    return chunks


def segment_in_original_time(segment: Segment, chunk: SpeechChunk, index: int) -> Segment:
    """The segment of a chunk's result in the original audio's time, renumbered. Words (when a segment has
    them) are mapped with the region of their middle, so that a word never straddles cut-out silence, and the
    segment then spans its words."""
    changes: dict[str, Any] = {"id": index, "seek": round(chunk.original_time(segment.seek / FRAMES_PER_SECOND) * FRAMES_PER_SECOND)}
    words = getattr(segment, "words", None)
    if words:
        mapped = [_word_in_original_time(word, chunk) for word in words]
        changes.update(words=mapped, start=_field(mapped[0], "start"), end=_field(mapped[-1], "end"))
    else:
        changes.update(start=chunk.original_time(segment.start), end=chunk.original_time(segment.end, is_end=True))
    return dataclasses.replace(segment, **changes)


def _field(item: Any, name: str) -> float:
    return item[name] if isinstance(item, Mapping) else getattr(item, name)


def _word_in_original_time(word: Any, chunk: SpeechChunk) -> Any:
    start, end = _field(word, "start"), _field(word, "end")
    region = chunk.region_at((start + end) / 2)
    times = {"start": chunk.original_time(start, region=region), "end": chunk.original_time(end, region=region)}
    return {**word, **times} if isinstance(word, Mapping) else dataclasses.replace(word, **times)


@dataclass
class _File:
    """One input of the call: its chunks and what has come back for them."""

    index: int
    frames: int  # of the original audio, for progress
    chunks: list[SpeechChunk]
    audios: list[np.ndarray]
    language: str | None
    language_probs: dict[str, float] | None = None
    results: list[TranscriptionResult | None] = dataclasses.field(default_factory=list)
    done_samples: list[float] = dataclasses.field(default_factory=list)

    def result(self) -> TranscriptionResult:
        segments: list[Segment] = []
        for chunk, result in zip(self.chunks, self.results):
            assert result is not None
            segments += [segment_in_original_time(s, chunk, len(segments) + k) for k, s in enumerate(result.segments)]
        text = " ".join(r.text for r in self.results if r is not None and r.text)
        return TranscriptionResult(text, self.language or "en", segments, self.language_probs)


def transcribe_speech(
    transcriber: Transcriber,
    audios: Sequence[AudioInput],
    options: TranscribeOptions,
    decoding: Mapping[str, Any],
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
    """(input index, its result or the exception that stopped it) as each file is done, like Transcriber.run.
    Option errors (and a missing or changed VAD model) raise before any audio is read."""
    chunk_options = dataclasses.replace(options, vad=False, vad_options=None, condition_on_previous_text=False)
    transcriber.run([], chunk_options, decoding)  # the transcriber's own option checks, on no audio
    vad = silero_vad(getattr(transcriber.backend, "threads", None))  # the decoder's CPU threads, where it has any
    return _transcribe_speech(transcriber, audios, chunk_options, options.vad_options or VadOptions(), decoding, progress, vad)


def _transcribe_speech(transcriber, audios, chunk_options, vad_options, decoding, progress, vad):
    """Speech and chunks of every file, then each file's language where it is unknown, then the decoding."""
    tok = transcriber.tokenizer
    language = decoding.get("language") or (None if tok.is_multilingual else "en")
    files: list[_File] = []
    for i, audio in enumerate(audios):
        try:
            waveform = as_audio(audio)
            chunks = speech_chunks(detect_speech(waveform, vad_options, vad))
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others
            yield i, e
            continue
        file = _File(i, len(waveform) * FRAMES_PER_SECOND // SAMPLE_RATE, chunks, [c.audio(waveform) for c in chunks], language)
        file.results, file.done_samples = [None] * len(chunks), [0] * len(chunks)
        if progress:
            progress(i, 0, file.frames)
        if chunks:
            files.append(file)
        else:  # no speech: nothing to decode
            if progress:
                progress(i, file.frames, file.frames)
            yield i, TranscriptionResult("", language or "en", [], None)
    unknown = [f for f in files if f.language is None]
    for start in range(0, len(unknown), chunk_options.batch_size):
        batch = unknown[start : start + chunk_options.batch_size]
        try:
            _detect_language(transcriber, batch)
        except Exception as e:  # noqa: BLE001 - fail these files, keep the rest
            for file in batch:
                files.remove(file)
                yield file.index, e
    yield from _decode_chunks(transcriber, files, chunk_options, decoding, progress)


def _detect_language(transcriber: Transcriber, files: list[_File]) -> None:
    """Each file's language from its first chunk, seen as the transcriber sees a first window."""
    backend = transcriber.backend
    mel = np.stack([pad_or_trim(long_form_mel(f.audios[0], backend.dims.n_mels), N_FRAMES) for f in files])
    codes, probs = detect_language(backend, transcriber.tokenizer, backend.encode(mel), len(files))
    for file, code, p in zip(files, codes, probs):
        file.language, file.language_probs = code, p


def _decode_chunks(transcriber, files, options, decoding, progress) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
    """All chunks of the files of one language in one transcriber call; each file as its last chunk is done."""
    languages = list(dict.fromkeys(f.language for f in files))
    for language in languages:
        group = [f for f in files if f.language == language]
        owners = [(f, k) for f in group for k in range(len(f.chunks))]

        def chunk_progress(item: int, done: int, total: int) -> None:
            file, k = owners[item]
            file.done_samples[k] = done / max(total, 1) * file.chunks[k].n_samples
            speech = sum(c.n_samples for c in file.chunks)
            progress(file.index, int(file.frames * sum(file.done_samples) / speech), file.frames)

        failed: set[int] = set()
        outcomes = transcriber.run(
            [f.audios[k] for f, k in owners], options, {**decoding, "language": language},
            chunk_progress if progress else None,
        )
        for item, outcome in outcomes:
            file, k = owners[item]
            if file.index in failed:
                continue
            if isinstance(outcome, Exception):
                failed.add(file.index)
                yield file.index, outcome
                continue
            file.results[k] = outcome
            if all(r is not None for r in file.results):
                yield file.index, file.result()
