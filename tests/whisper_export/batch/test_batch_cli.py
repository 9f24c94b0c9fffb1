"""`whisper-export batch` in-process (no --ray): a run killed with SIGKILL keeps complete part files and a rerun
finishes the rest, each input once; Ray is never imported; the texts are `whisper-export transcribe`'s for the same
options; bad options and INPUTS are one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import cli
from batch_helpers import CLIPS, clip_of, make_inputs
from whisper_export.batch import read_output
from whisper_export.batch.store import PartStore

REPO = Path(__file__).resolve().parents[3]
FAST = ("--beam-size", "1", "--without-timestamps")  # greedy, one segment per window: the cheapest decode
runner = CliRunner()


def _batch_process(listing: Path, out: Path, bundle: Path) -> subprocess.Popen:
    """The real CLI, in-process mode, with -X importtime (every module it imports is named on stderr)."""
    args = [sys.executable, "-X", "importtime", "-m", "cli", "batch", str(listing), "--out", str(out), "--bundle",
            str(bundle), "--files-per-batch", "2", "--rows-per-part", "2", *FAST]
    return subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _imported(stderr: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", stderr, re.M)}


def _part_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def test_a_killed_run_resumes_each_input_once_without_ray_and_texts_equal_transcribes(tmp_path, tiny_bundle, clips):
    made = make_inputs(tmp_path / "audio", clips, copies=4)  # 12 clips and a corrupt file
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    # relative to the list's directory, with a comment and a repeat: still 13 inputs
    listing.write_text("# inputs\n" + "".join(f"../audio/{p.name}\n" for p in made) + f"../audio/{made[0].name}\n")
    out = tmp_path / "out"

    first = _batch_process(listing, out, tiny_bundle)
    deadline = time.monotonic() + 300
    while len(list(out.glob("part-*.parquet"))) < 2:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no part file appeared"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    _, first_err = first.communicate(timeout=60)
    kept = _part_bytes(out)
    kept_paths = [p for name in kept for p in pq.read_table(out / name)["path"].to_pylist()]  # every part complete
    assert 4 <= len(kept_paths) < 13

    second = _batch_process(listing, out, tiny_bundle)
    _, second_err = second.communicate(timeout=300)
    assert second.returncode == 0, second_err
    assert f"resuming: {len(kept_paths)} of 13 input(s) already written" in second_err
    assert all(_part_bytes(out)[name] == data for name, data in kept.items())  # the first run's parts untouched
    written = [p for part in sorted(out.glob("part-*.parquet")) for p in pq.read_table(part)["path"].to_pylist()]
    assert sorted(written) == sorted(str(p) for p in made)  # each input exactly once
    for stderr in (first_err, second_err):
        imported = _imported(stderr)
        assert "whisper_export.batch.job" in imported and not {m for m in imported if m.split(".")[0] == "ray"}

    reference = tmp_path / "transcribe"
    result = runner.invoke(cli.app, ["transcribe", *(str(clips[c]["path"]) for c in CLIPS), "--bundle",
                                     str(tiny_bundle), "-f", "json", "-o", str(reference), *FAST])
    assert result.exit_code == 0, result.output
    texts = {c: json.loads((reference / f"{Path(c).stem}.json").read_text())["text"] for c in CLIPS}
    rows = read_output(out).to_pylist()
    assert len(rows) == 13
    for row in rows:
        if row["path"] == str(made[-1]):
            assert row["error"].startswith("AudioError") and row["text"] is None
        else:
            assert row["error"] is None and row["text"] == texts[clip_of(row["path"])]


def test_sigterm_keeps_the_parts_and_says_so(tmp_path, tiny_bundle, clips):
    """A scheduler's SIGTERM (kill, docker stop) unwinds like Ctrl-C: the parts written are complete and kept,
    one line says so, exit 143 (128 + SIGTERM)."""
    made = make_inputs(tmp_path / "audio", clips, copies=4)
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in made))
    out = tmp_path / "out"
    process = _batch_process(listing, out, tiny_bundle)
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*.parquet")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no part file appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert f"error: terminated (SIGTERM): the part files under {out} are kept" in stderr
    assert "Traceback" not in stderr
    kept = [p for part in sorted(out.glob("part-*.parquet")) for p in pq.read_table(part)["path"].to_pylist()]
    assert 2 <= len(kept) < len(made) and not list(out.glob(".*.tmp"))


def _run(*args) -> tuple[int, str]:
    result = runner.invoke(cli.app, ["batch", *map(str, args)])
    return result.exit_code, result.stderr


@pytest.mark.parametrize("args, message", [
    (["missing-dir", "--out", "{out}"], "error: INPUTS: received 'missing-dir', which does not exist"),
    (["{audio}/en_fox-000.wav", "--out", "{out}"], "expected a directory of audio, a text file of paths or a JSONL"),
    (["{jsonl}", "--out", "{out}"], "line 2: received {\"file\": \"x.wav\"}, expected an object with a non-empty 'path'"),
    (["{audio}", "--out", "{out}", "--actors", "2"], "error: --actors: received 2, expected it only with --ray"),
    (["{audio}", "--out", "{out}", "--files-per-batch", "0"], "error: --files-per-batch: received 0, expected an int >= 1"),
    (["{audio}", "--out", "{out}", "--beam-size", "x"], "error: --beam-size: received 'x', expected an int"),
    (["{empty}", "--out", "{out}"], "received no audio files, expected at least one"),
])
def test_bad_options_and_inputs_exit_2_with_one_line(args, message, tmp_path, clips):
    make_inputs(tmp_path / "audio", clips, copies=1, corrupt=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "in.jsonl").write_text('{"path": "a.wav"}\n{"file": "x.wav"}\n')
    names = {"out": tmp_path / "out", "audio": tmp_path / "audio", "jsonl": tmp_path / "in.jsonl",
             "empty": tmp_path / "empty"}
    code, stderr = _run(*(a.format(**names) for a in args))
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_second_run_on_the_same_out_is_refused(tmp_path, clips, tiny_bundle):
    make_inputs(tmp_path / "audio", clips, copies=1, corrupt=False)
    with PartStore(tmp_path / "out", words=False):  # a run in progress holds the directory
        code, stderr = _run(tmp_path / "audio", "--out", tmp_path / "out", "--bundle", tiny_bundle)
    assert code == 2 and "another batch run is writing to" in stderr, stderr
    assert not list((tmp_path / "out").glob("part-*"))


def test_word_timestamps_give_a_words_column(tmp_path, clips, tiny_bundle):
    """--word-timestamps: a words column with each file's words."""
    make_inputs(tmp_path / "audio", clips, copies=1, corrupt=False)
    code, stderr = _run(tmp_path / "audio", "--out", tmp_path / "out", "--bundle", tiny_bundle, "--word-timestamps",
                        *FAST[:2])
    assert code == 0, stderr
    rows = read_output(tmp_path / "out").to_pylist()
    assert len(rows) == 3 and all(json.loads(r["words"]) for r in rows)
