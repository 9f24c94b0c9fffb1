"""Transcript writers on hand-made results: the formats are checked by parsers written here."""

from __future__ import annotations

import json
import re

import pytest

from whisper_export.runtime.transcribe import Segment, TranscriptionResult
from whisper_export.runtime.writers import FORMATS, expand_formats, format_timestamp, to_json, to_srt, to_txt, to_vtt, write_result


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
