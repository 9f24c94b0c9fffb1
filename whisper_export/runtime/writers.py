"""Transcript files: txt, json, srt, vtt, tsv (each a pure function (result, WriterOptions) -> str, plus write_result).

With word timestamps, srt and vtt cues are cut from the words as openai-whisper's SubtitlesWriter.iterate_result
cuts them (WriterOptions: line width and count, words per line, the spoken word underlined).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from whisper_export.atomic import write_text_atomic
from whisper_export.runtime.options import described
from whisper_export.runtime.transcribe import Segment, TranscriptionResult

FORMATS = ("txt", "json", "srt", "vtt", "tsv")


@dataclass(frozen=True)
class WriterOptions:
    """How srt/vtt cues are cut from a transcript's words (openai-whisper's writer options). Each needs a result
    transcribed with word_timestamps=True; without words, cues are the segments and these must stay unset."""

    highlight_words: bool = described(
        False, "srt/vtt (needs word timestamps): underline each word in a cue of its own while it is spoken")
    max_line_width: int | None = described(
        None, "srt/vtt (needs word timestamps): characters per line; with --max-line-count, cues no longer "
              "follow segments")
    max_line_count: int | None = described(
        None, "srt/vtt (needs word timestamps): lines per cue (with --max-line-width)")
    max_words_per_line: int | None = described(
        None, "srt/vtt (needs word timestamps): words per line (without --max-line-width)")

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        if not isinstance(self.highlight_words, bool):
            raise ValueError(f"highlight_words: received {self.highlight_words!r}, expected True or False")
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: received {value!r}, expected None or an int >= 1")

    @property
    def needs_words(self) -> bool:
        """Whether any option is set: each works only on a result with word timestamps."""
        return any(getattr(self, f.name) not in (None, False) for f in fields(self))


DEFAULT_WRITER_OPTIONS = WriterOptions()


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """HH:MM:SS.mmm (SubRip uses ',' as the decimal marker)."""
    if seconds < 0:
        raise ValueError(f"timestamp: received {seconds} s, expected >= 0")
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _cues(result: TranscriptionResult):
    # segments cleared by the transcriber (instantaneous or blank) have no cue
    return [s for s in result.segments if s.text.strip()]


def _has_words(result: TranscriptionResult, options: WriterOptions) -> bool:
    """Whether cues come from words; ValueError for word options on a result without word timestamps."""
    with_words = bool(result.segments) and all(s.words is not None for s in result.segments)
    if options.needs_words and result.segments and not with_words:
        raise ValueError(f"writer options: received {options} for a transcript without word timestamps, expected "
                         "one transcribed with word_timestamps=True")
    return with_words


def subtitle_cues(result: TranscriptionResult, options: WriterOptions = DEFAULT_WRITER_OPTIONS,
                  decimal_marker: str = ".") -> Iterator[tuple[str, str, str]]:
    """(start, end, text) of each srt/vtt cue: the segments' without word timestamps, else openai-whisper's
    iterate_result over the words."""
    if not _has_words(result, options):
        for s in _cues(result):
            yield (format_timestamp(s.start, decimal_marker), format_timestamp(s.end, decimal_marker),
                   s.text.strip().replace("-->", "->"))
        return
    for subtitle in _subtitles(result.segments, options):
        start = format_timestamp(subtitle[0]["start"], decimal_marker)
        end = format_timestamp(subtitle[-1]["end"], decimal_marker)
        text = "".join(w["word"] for w in subtitle).replace("-->", "->")
        if not options.highlight_words:
            yield start, end, text
            continue
        last = start
        spoken = [w["word"] for w in subtitle]
        for i, word in enumerate(subtitle):
            word_start = format_timestamp(word["start"], decimal_marker)
            word_end = format_timestamp(word["end"], decimal_marker)
            if last != word_start:
                yield last, word_start, text
            underlined = "".join(re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w) if j == i else w for j, w in enumerate(spoken))
            yield word_start, word_end, underlined.replace("-->", "->")
            last = word_end


def _subtitles(segments: list[Segment], options: WriterOptions) -> Iterator[list[dict]]:
    """openai-whisper's iterate_subtitles: the words grouped into cues of lines ("\\n" starts a line)."""
    max_line_count = options.max_line_count
    preserve_segments = max_line_count is None or options.max_line_width is None
    max_line_width = options.max_line_width or 1000
    max_words_per_line = options.max_words_per_line or 1000
    line_len, line_count = 0, 1
    subtitle: list[dict] = []
    last = next((w.start for s in segments for w in s.words or []), segments[0].start if segments else None) or 0.0
    for segment in segments:
        words = segment.words or []
        chunk_index = 0
        words_count = max_words_per_line
        while chunk_index < len(words):
            if max_words_per_line > len(words) - chunk_index:
                words_count = len(words) - chunk_index
            for i, original in enumerate(words[chunk_index : chunk_index + words_count]):
                timing = {"word": original.word, "start": original.start, "end": original.end}
                long_pause = not preserve_segments and timing["start"] - last > 3.0
                has_room = line_len + len(timing["word"]) <= max_line_width
                seg_break = i == 0 and len(subtitle) > 0 and preserve_segments
                if line_len > 0 and has_room and not long_pause and not seg_break:
                    line_len += len(timing["word"])  # the line goes on
                else:
                    timing["word"] = timing["word"].strip()
                    if (subtitle and max_line_count is not None and (long_pause or line_count >= max_line_count)
                            or seg_break):
                        yield subtitle  # a new cue
                        subtitle, line_count = [], 1
                    elif line_len > 0:  # a new line
                        line_count += 1
                        timing["word"] = "\n" + timing["word"]
                    line_len = len(timing["word"].strip())
                subtitle.append(timing)
                last = timing["start"]
            chunk_index += max_words_per_line
    if subtitle:
        yield subtitle


def to_txt(result: TranscriptionResult, options: WriterOptions = DEFAULT_WRITER_OPTIONS) -> str:
    return "".join(s.text.strip() + "\n" for s in _cues(result))


def to_srt(result: TranscriptionResult, options: WriterOptions = DEFAULT_WRITER_OPTIONS) -> str:
    blocks = [f"{i}\n{start} --> {end}\n{text}\n"
              for i, (start, end, text) in enumerate(subtitle_cues(result, options, ","), start=1)]
    return "\n".join(blocks)


def to_vtt(result: TranscriptionResult, options: WriterOptions = DEFAULT_WRITER_OPTIONS) -> str:
    blocks = [f"{start} --> {end}\n{text}\n" for start, end, text in subtitle_cues(result, options)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(result: TranscriptionResult, options: WriterOptions = DEFAULT_WRITER_OPTIONS) -> str:
    """openai-whisper's columns: start and end in integer milliseconds, the text (tabs in it become spaces)."""
    rows = [f"{round(1000 * s.start)}\t{round(1000 * s.end)}\t{' '.join(s.text.strip().split(chr(9)))}\n"
            for s in _cues(result)]
    return "start\tend\ttext\n" + "".join(rows)


def to_json(result: TranscriptionResult, options: WriterOptions = DEFAULT_WRITER_OPTIONS) -> str:
    data = asdict(result)
    for segment in data["segments"]:
        if segment.get("words") is None:  # openai-whisper writes "words" only with word timestamps
            segment.pop("words", None)
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


RENDERERS: dict[str, Callable[[TranscriptionResult, WriterOptions], str]] = {
    "txt": to_txt,
    "json": to_json,
    "srt": to_srt,
    "vtt": to_vtt,
    "tsv": to_tsv,
}


def expand_formats(output_format: str) -> tuple[str, ...]:
    """'all' -> every format; otherwise one of FORMATS."""
    if output_format == "all":
        return FORMATS
    if output_format not in FORMATS:
        raise ValueError(f"output format: received {output_format!r}, expected one of {', '.join(FORMATS)} or 'all'")
    return (output_format,)


def write_result(result: TranscriptionResult, output_dir: str | Path, stem: str, formats: Iterable[str],
                 options: WriterOptions = DEFAULT_WRITER_OPTIONS) -> list[Path]:
    """Write <output_dir>/<stem>.<fmt> for each format, each atomically (a symlink there is replaced, not
    followed; a failed write leaves the old file); returns the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        if fmt not in RENDERERS:
            raise ValueError(f"output format: received {fmt!r}, expected one of {', '.join(FORMATS)}")
        path = output_dir / f"{stem}.{fmt}"
        write_text_atomic(path, RENDERERS[fmt](result, options))
        written.append(path)
    return written
