"""Transcript writers on hand-made results: the formats are checked by parsers written here."""

from __future__ import annotations

import json
import re

import pytest

from whisper_export.runtime.transcribe import Segment, TranscriptionResult
from whisper_export.runtime.words import Word
from whisper_export.runtime.writers import (
    FORMATS,
    WriterOptions,
    expand_formats,
    format_timestamp,
    to_json,
    to_srt,
    to_tsv,
    to_txt,
    to_vtt,
    write_result,
)


def _segment(i: int, start: float, end: float, text: str) -> Segment:
    return Segment(i, 0, start, end, text, [1, 2], 0.0, -0.2, 1.1, 0.01)


RESULT = TranscriptionResult(
    text="Hello there. General --> Kenobi! Ünïcode ok.",
    language="en",
    segments=[
        _segment(0, 1.0, 2.5, " Hello there."),
        _segment(1, 2.5, 2.5, ""),  # cleared by the transcriber: no cue
        _segment(2, 59.9996, 3661.25, " General --> Kenobi!"),
        _segment(3, 3661.25, 3662.0, " Ünïcode ok."),
    ],
)
SRT_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2}):(\d{2}):(\d{2}),(\d{3})")
VTT_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})")


def _parse_cues(blocks: list[str], timing: re.Pattern, numbered: bool) -> list[tuple[float, float, str]]:
    cues = []
    for n, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        if numbered:
            assert lines.pop(0) == str(n)
        m = timing.fullmatch(lines[0])
        assert m, lines[0]
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, m.groups())
        assert m1 < 60 and s1 < 60 and m2 < 60 and s2 < 60
        cues.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, "\n".join(lines[1:])))
    return cues


EXPECTED = [(1.0, 2.5, "Hello there."), (60.0, 3661.25, "General -> Kenobi!"), (3661.25, 3662.0, "Ünïcode ok.")]


def test_srt():
    text = to_srt(RESULT)
    assert text.endswith("\n") and "\n\n\n" not in text
    assert _parse_cues(text.strip("\n").split("\n\n"), SRT_TIME, numbered=True) == EXPECTED


def test_vtt():
    text = to_vtt(RESULT)
    header, *blocks = text.strip("\n").split("\n\n")
    assert header == "WEBVTT"
    assert _parse_cues(blocks, VTT_TIME, numbered=False) == EXPECTED
    # "-->" inside a cue's text would start a new timing line
    assert all("-->" not in cue for _, _, cue in _parse_cues(blocks, VTT_TIME, numbered=False))


def test_txt_and_json():
    assert to_txt(RESULT) == "Hello there.\nGeneral --> Kenobi!\nÜnïcode ok.\n"
    data = json.loads(to_json(RESULT))
    assert data["text"] == RESULT.text and data["language"] == "en"
    assert [s["start"] for s in data["segments"]] == [1.0, 2.5, 59.9996, 3661.25]
    assert set(data["segments"][0]) >= {"id", "seek", "start", "end", "text", "tokens", "avg_logprob", "no_speech_prob"}


def test_format_timestamp():
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(1.0, ",") == "00:00:01,000"
    assert format_timestamp(2.5) == "00:00:02.500"
    assert format_timestamp(59.9996) == "00:01:00.000"  # rounding carries into the minutes
    assert format_timestamp(36000 + 3.004) == "10:00:03.004"
    with pytest.raises(ValueError, match="received -1"):
        format_timestamp(-1)


def test_write_result(tmp_path):
    paths = write_result(RESULT, tmp_path / "out", "talk", expand_formats("all"))
    assert sorted(p.name for p in paths) == sorted(f"talk.{f}" for f in FORMATS)
    assert (tmp_path / "out" / "talk.vtt").read_text(encoding="utf-8").startswith("WEBVTT\n")
    with pytest.raises(ValueError, match="received 'docx'"):
        expand_formats("docx")


# -- word timestamps: cues cut from the words as openai-whisper's writers cut them -------------------------


def _worded(i: int, words: list[tuple[str, float, float]]) -> Segment:
    text = "".join(w for w, _, _ in words)
    return Segment(i, 0, words[0][1], words[-1][2], text, [1], 0.0, -0.2, 1.1, 0.01,
                   [Word(w, s, e, 0.9) for w, s, e in words])


def _sentence(words: str, start: float, step: float = 0.4) -> list[tuple[str, float, float]]:
    return [(w, round(start + k * step, 2), round(start + (k + 1) * step - 0.05, 2)) for k, w in enumerate(words.split("|"))]


WORDED = TranscriptionResult(
    text="...", language="en",
    segments=[
        _worded(0, _sentence(" Hello| there,| general| Kenobi.", 0.5)),
        _worded(1, _sentence(" You| are| a| bold| one,| said| the| droid| with| some --> arrows.", 2.6, 0.3)),
        Segment(2, 0, 6.0, 6.0, "", [], 0.0, -0.2, 1.1, 0.01, []),  # cleared: no words
        _worded(3, _sentence(" After| a| pause| of| seconds.", 9.7)),
    ],
)
WRITER_CASES = [
    WriterOptions(),
    WriterOptions(highlight_words=True),
    WriterOptions(max_line_width=16),
    WriterOptions(max_line_width=16, max_line_count=2),
    WriterOptions(max_line_width=24, max_line_count=1, highlight_words=True),
    WriterOptions(max_words_per_line=3),
    WriterOptions(max_words_per_line=2, max_line_count=2),
]


def _openai_dict(result: TranscriptionResult) -> dict:
    return {"text": result.text, "language": result.language,
            "segments": [{"start": s.start, "end": s.end, "text": s.text,
                          "words": [{"word": w.word, "start": w.start, "end": w.end, "probability": w.probability}
                                    for w in s.words]} for s in result.segments]}


def _openai_cues(writer_class, result: TranscriptionResult, options: WriterOptions) -> list[tuple[float, float, str]]:
    writer = writer_class(".")
    marker = writer.decimal_marker
    cues = []
    for start, end, text in writer.iterate_result(_openai_dict(result), vars(options) | {}):
        cues.append((_to_seconds(start, marker), _to_seconds(end, marker), text.replace("-->", "->")))
    return cues


def _to_seconds(stamp: str, marker: str) -> float:
    parts = stamp.replace(marker, ".").split(":")
    return sum(float(p) * 60 ** k for k, p in enumerate(reversed(parts)))


@pytest.mark.parametrize("options", WRITER_CASES, ids=str)
def test_word_cues_as_openai_whisper(options):
    """srt/vtt on a transcript with words: each cue's times and text are those openai-whisper's WriteSRT /
    WriteVTT.iterate_result give the same transcript with the same options (its vtt drops zero hours, so the
    times are compared parsed)."""
    utils = pytest.importorskip("whisper.utils")
    srt_blocks = to_srt(WORDED, options).strip("\n").split("\n\n")
    got_srt = _parse_cues(srt_blocks, SRT_TIME, numbered=True)
    assert got_srt == _openai_cues(utils.WriteSRT, WORDED, options)
    header, *vtt_blocks = to_vtt(WORDED, options).strip("\n").split("\n\n")
    assert header == "WEBVTT"
    assert _parse_cues(vtt_blocks, VTT_TIME, numbered=False) == _openai_cues(utils.WriteVTT, WORDED, options)
    if options.max_line_width:  # no line longer than asked (a single longer word aside)
        lines = [line.replace("<u>", "").replace("</u>", "") for _, _, cue in got_srt for line in cue.split("\n")]
        assert all(len(line) <= options.max_line_width for line in lines)
    if options.highlight_words:
        assert sum("<u>" in cue for _, _, cue in got_srt) == sum(len(s.words) for s in WORDED.segments)


def test_word_cue_rules_without_openai():
    """The rules on their own: a cue per segment by default; max_words_per_line cuts lines; with a width and a
    count, cues break at the count and at a pause over 3 s; highlighting underlines one word per cue."""
    plain = _parse_cues(to_srt(WORDED).strip("\n").split("\n\n"), SRT_TIME, numbered=True)
    assert [c[2] for c in plain] == [s.text.strip().replace("-->", "->") for s in WORDED.segments if s.words]
    lines = _parse_cues(to_srt(WORDED, WriterOptions(max_words_per_line=3)).strip("\n").split("\n\n"), SRT_TIME,
                        numbered=True)
    assert [c[2] for c in lines[:2]] == ["Hello there, general", "Kenobi."]  # a cue per chunk within a segment
    cut = _parse_cues(to_srt(WORDED, WriterOptions(max_line_width=16, max_line_count=2)).strip("\n").split("\n\n"),
                      SRT_TIME, numbered=True)
    assert all(cue.count("\n") <= 1 for _, _, cue in cut)
    assert cut[-1][0] == 9.7  # the words after the pause start a cue of their own
    highlighted = _parse_cues(to_srt(WORDED, WriterOptions(highlight_words=True)).strip("\n").split("\n\n"), SRT_TIME,
                              numbered=True)
    assert highlighted[0] == (0.5, 0.85, "<u>Hello</u> there, general Kenobi.")
    assert all(cue.count("<u>") == 1 for _, _, cue in highlighted if "<u>" in cue)


def test_tsv():
    rows = to_tsv(WORDED).rstrip("\n").split("\n")
    assert rows[0] == "start\tend\ttext"
    assert rows[1] == "500\t2050\tHello there, general Kenobi."
    assert [r.split("\t")[:2] for r in rows[1:]] == [[str(round(1000 * s.start)), str(round(1000 * s.end))]
                                                     for s in WORDED.segments if s.text.strip()]
    assert to_tsv(RESULT).split("\n")[2] == "60000\t3661250\tGeneral --> Kenobi!"


def test_json_words_as_openai_writes_them():
    data = json.loads(to_json(WORDED))
    assert data["segments"][0]["words"][0] == {"word": " Hello", "start": 0.5, "end": 0.85, "probability": 0.9}
    assert data["segments"][2]["words"] == []
    assert all("words" not in s for s in json.loads(to_json(RESULT))["segments"])  # none without word timestamps


def test_writer_options_are_checked():
    for bad in (dict(max_line_width=0), dict(max_line_count=-1), dict(max_words_per_line=2.5),
                dict(highlight_words="yes"), dict(max_line_width=True)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}: received"):
            WriterOptions(**bad)
    with pytest.raises(ValueError, match="without word timestamps, expected one transcribed with word_timestamps"):
        to_srt(RESULT, WriterOptions(max_line_width=20))
    assert to_srt(RESULT, WriterOptions()) == to_srt(RESULT)
