"""`whisper-export transcribe` keeps every finished transcript: outputs that never collide, each file written as
soon as it is done (a killed or interrupted run keeps them), stdout lines that name their file, and progress a
log can follow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

import cli
from whisper_export.commands.transcribe_output import Progress, output_names
from whisper_export.runtime.audio import SAMPLE_RATE, load_audio

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
FAST = ("--beam-size", "1", "--without-timestamps")  # greedy, one segment per window: the cheapest decode


def _run(*args):
    return runner.invoke(cli.app, ["transcribe", *map(str, args)])


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_output_names_never_collide():
    paths = [Path(p) for p in ("a/x.wav", "b/x.wav", "x-2.wav", "c/X.flac", "x-3.mp3", "d/x.wav", "y.wav")]
    names = output_names(paths)
    assert names == ["x", "x-4", "x-2", "X-5", "x-3", "x-6", "y"]
    assert len({n.casefold() for n in names}) == len(names)  # distinct on case-insensitive file systems too
    assert output_names([Path("a/x.wav")] * 3) == ["x", "x-2", "x-3"]  # the same file twice: two outputs


def test_same_file_names_give_distinct_outputs(tiny_bundle, clips, tmp_path):
    """a/x.wav, b/x.wav and x-2.wav beside them: three transcripts, each under the name the README's rule gives."""
    sources = {"a/x.wav": "en_fox.wav", "b/x.wav": "en_stella.wav", "x-2.wav": "en_weather.wav"}
    for rel, name in sources.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        shutil.copy(clips[name]["path"], tmp_path / rel)
    out = tmp_path / "out"
    result = _run(*(tmp_path / rel for rel in sources), "--bundle", tiny_bundle, "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    texts = {p.name: p.read_text().lower() for p in out.iterdir()}
    assert set(texts) == {"x.txt", "x-3.txt", "x-2.txt"}
    assert "dog" in texts["x.txt"] and "stella" in texts["x-3.txt"] and "weather" in texts["x-2.txt"]


def test_stdout_lines_name_their_file_when_one_fails(tiny_bundle, clips, tmp_path):
    fox = tmp_path / "tab\there.wav"  # a tab in the path is written as \t: the line's first tab still ends the path
    shutil.copy(clips["en_fox.wav"]["path"], fox)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....WAVEfmt nonsense")
    stella = clips["en_stella.wav"]["path"]
    result = _run(fox, junk, stella, "--bundle", tiny_bundle, *FAST)
    assert result.exit_code == 1
    assert len(_errors(result)) == 1 and str(junk) in _errors(result)[0]
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert set(lines) == {str(fox).replace("\t", "\\t"), str(stella)}
    assert "dog" in lines[str(fox).replace("\t", "\\t")].lower() and "stella" in lines[str(stella)].lower()


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory, clips) -> Path:
    """About 3 minutes of the English clips back to back: several windows of real decoding."""
    speech = np.concatenate([load_audio(clips[n]["path"]) for n in sorted(clips) if n.startswith("en_")])
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, np.tile(speech, int(np.ceil(180 * SAMPLE_RATE / len(speech)))), SAMPLE_RATE)
    return path


def _start(tmp_path: Path, tiny_bundle: Path, first: Path, long_speech: Path) -> tuple[subprocess.Popen, Path]:
    """The real CLI on a short file, then a long one, one at a time, writing every format."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "cli", "transcribe", str(first), str(long_speech), "--bundle", str(tiny_bundle),
            "-o", str(out), "-f", "all", "--batch-size", "1", *FAST]
    # Ctrl-C as at a terminal, also where the test run itself was started in the background (a shell without job
    # control starts background commands with SIGINT ignored, and Python keeps an ignored SIGINT ignored)
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wanted = [out / f"{first.stem}.{fmt}" for fmt in ("txt", "json", "srt", "vtt", "tsv")]
    deadline = time.monotonic() + 300
    while not all(p.exists() for p in wanted):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first file's outputs never appeared"
        time.sleep(0.01)
    return process, out


def _check_first_kept(out: Path, first: Path) -> None:
    result = json.loads((out / f"{first.stem}.json").read_text())
    assert "dog" in result["text"].lower()
    assert (out / f"{first.stem}.txt").read_text() == result["segments"][0]["text"].strip() + "\n"
    assert (out / f"{first.stem}.tsv").read_text().startswith("start\tend\ttext\n0\t")
    assert not list(out.glob("long.*"))  # the file still being transcribed has no output


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_finished_files_survive_an_interrupted_run(how, tiny_bundle, clips, long_speech, tmp_path):
    first = clips["en_fox.wav"]["path"]
    process, out = _start(tmp_path, tiny_bundle, first, long_speech)
    process.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if how == "kill -9":
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130, stderr
        assert "error: interrupted: 1 of 2 file(s) finished and kept" in stderr and "Traceback" not in stderr
    _check_first_kept(out, first)


def test_progress_in_a_log_every_tenth_or_30_s(capsys):
    now = [0.0]
    progress = Progress([Path("a.wav"), Path("b.wav")], tty=False, clock=lambda: now[0])
    a, b = 45 * 60 * 100, 10 * 60 * 100  # 45 and 10 minutes, in mel frames
    progress(0, 0, a)
    progress(1, 0, b)
    for done in range(3000, a + 1, 3000):  # a 30 s window every 2 s: a line every tenth
        now[0] += 2
        progress(0, done, a)
    for seconds, done in ((31, 3000), (2, 6000), (2, 9000)):  # a slow window: a line 30 s after the last
        now[0] += seconds
        progress(1, done, b)
    tenths = [f"[transcribe] file 1/2: {4.5 * k // 1:.0f}:{30 * (k % 2):02d} / 45:00" for k in range(1, 10)]
    assert capsys.readouterr().err.splitlines() == [
        *tenths, "[transcribe] 1/2 a.wav", "[transcribe] file 2/2: 0:30 / 10:00", "[transcribe] file 2/2: 1:30 / 10:00",
    ]


def test_progress_lines_of_a_long_file(tiny_bundle, clips, tmp_path):
    """2 minutes 5 s, mostly silence (cheap windows): a line after each 30 s window, then the file's line."""
    speech = load_audio(clips["en_fox.wav"]["path"])
    audio = np.concatenate([speech, np.zeros(122 * SAMPLE_RATE, np.float32)])
    path = tmp_path / "quiet.wav"
    sf.write(path, audio, SAMPLE_RATE)
    result = _run(path, "--bundle", tiny_bundle, *FAST)
    assert result.exit_code == 0, result.stderr
    length = len(audio) // SAMPLE_RATE
    stamp = f"{length // 60}:{length % 60:02d}"
    assert [line for line in result.stderr.splitlines() if line.startswith("[transcribe]")] == [
        *(f"[transcribe] file 1/1: {m}:{s:02d} / {stamp}" for m, s in ((0, 30), (1, 0), (1, 30), (2, 0))),
        f"[transcribe] 1/1 {path}",
    ]
