"""`whisper-export transcribe` end to end on the tiny.en bundle: outputs, exit codes, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from whisper_export.commands.transcribe import transcribe

app = typer.Typer()
app.command("transcribe")(transcribe)


@app.callback()
def _group() -> None:
    """Keeps `transcribe` a subcommand, as in cli.py."""


runner = CliRunner()


def _run(*args):
    return runner.invoke(app, ["transcribe", *map(str, args)])


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def good(clips) -> list[Path]:
    return [clips["en_fox.wav"]["path"], clips["en_stella.wav"]["path"]]


def test_text_to_stdout_one_line_per_file(tiny_bundle, good):
    """Several inputs: `path<TAB>text`, one line per file as it finishes; one input: the plain text."""
    result = _run(*good, "--bundle", tiny_bundle, "--beam-size", "1")
    assert result.exit_code == 0, result.stderr
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert set(lines) == {str(p) for p in good}
    assert "dog" in lines[str(good[0])].lower() and "stella" in lines[str(good[1])].lower()
    assert "[transcribe] 2/2" in result.stderr  # progress goes to stderr, never into the transcript
    single = _run(good[1], "--bundle", tiny_bundle, "--beam-size", "1")
    assert single.exit_code == 0 and single.stdout == lines[str(good[1])] + "\n"


def test_bad_file_fails_alone_and_the_others_are_written(tiny_bundle, good, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....WAVEfmt nonsense")
    out = tmp_path / "out"
    result = _run(good[0], junk, tmp_path / "absent.flac", good[1], "--bundle", tiny_bundle, "-f", "all", "-o", out)
    assert result.exit_code == 1
    errors = _errors(result)
    assert len(errors) == 2
    # audios are opened by reader threads: the errors come in the order they are found, each naming its file
    junk_error, = (e for e in errors if "junk.wav" in e)
    absent_error, = (e for e in errors if "absent.flac" in e)
    assert "does not exist" in absent_error and junk_error != absent_error
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{stem}.{fmt}" for stem in ("en_fox", "en_stella") for fmt in ("txt", "json", "srt", "vtt", "tsv"))
    srt = (out / "en_fox.srt").read_text()
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt), srt
    assert (out / "en_stella.vtt").read_text().startswith("WEBVTT\n\n")


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--language", "xx"], 2, "--language: received 'xx'"),
        (["--language", "de"], 2, "received language 'de' for an English-only model"),
        (["--beam-size", "0"], 2, "--beam-size: received 0"),
        (["--output-format", "docx", "-o", "out"], 2, "output format: received 'docx'"),
        (["--task", "summarize"], 2, "--task: received 'summarize'"),
    ],
)
def test_bad_options_fail_up_front(tiny_bundle, good, args, code, fragment):
    result = _run(*good, "--bundle", tiny_bundle, *args)
    assert result.exit_code == code
    assert [fragment in e for e in _errors(result)] == [True]
    assert result.stdout == ""


def test_bundle_problems(tiny_bundle, good, tmp_path):
    result = _run(*good, "--bundle", tiny_bundle, "--model", "tiny.en")
    assert result.exit_code == 2 and "received both --bundle" in _errors(result)[0]
    result = _run(*good, "--backend", "tensorrt")
    assert result.exit_code == 2 and "--backend tensorrt: received no --bundle" in _errors(result)[0]

    def copy(name: str, skip: str | None = None, corrupt: str | None = None) -> Path:
        dst = tmp_path / name
        dst.mkdir()
        for f in Path(tiny_bundle).iterdir():
            if f.name == skip:
                continue
            if f.suffix == ".onnx":
                (dst / f.name).hardlink_to(f)
            else:
                (dst / f.name).write_bytes(f.read_bytes() + (b"\n" if f.name == corrupt else b""))
        return dst

    result = _run(*good, "--bundle", copy("missing", skip="encoder.onnx"))
    assert result.exit_code == 1 and "'encoder.onnx' is missing" in _errors(result)[0]
    result = _run(*good, "--bundle", copy("changed", corrupt="tokenizer.json"))
    assert result.exit_code == 1 and re.search(r"tokenizer.json has sha256 \w+, expected \w+", _errors(result)[0])
    assert result.stdout == ""


def test_torch_backend_needs_no_bundle(good):
    result = _run(good[0], "--backend", "torch", "--beam-size", "1", "--without-timestamps")
    assert result.exit_code == 0, result.stderr
    assert "dog" in result.stdout.lower()
