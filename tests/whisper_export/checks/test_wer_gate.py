"""The accuracy gate (check --wer): a good bundle passes, a deliberately damaged one fails, bad input is named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_export.checks.wer import WerGate, check_wer, corpus_wer, edit_distance, read_references

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def refs_tsv(clips, tmp_path_factory) -> Path:
    """The English clips copied under audio/, listed by relative path with their texts (a comment and a blank
    line included)."""
    root = tmp_path_factory.mktemp("refs")
    (root / "audio").mkdir()
    lines = ["# audio<TAB>reference", ""]
    for name, info in sorted(clips.items()):
        if info["language"] == "en":
            shutil.copy(info["path"], root / "audio" / name)
            lines.append(f"audio/{name}\t{info['text']}")
    (root / "refs.tsv").write_text("\n".join(lines) + "\n")
    return root / "refs.tsv"


@pytest.fixture(scope="module")
def damaged_bundle(tiny_checkpoint_damaged, tmp_path_factory) -> Path:
    from whisper_export.export.exporter import export_bundle

    return export_bundle(tiny_checkpoint_damaged, tmp_path_factory.mktemp("damaged") / "tiny", progress=lambda _: None)


def test_the_gate_passes_the_fp32_bundle(tiny_bundle, refs_tsv):
    report = check_wer(tiny_bundle, WerGate(refs_tsv))
    assert report.ok and len(report.rows) == 5, report.table()
    assert report.bundle_wer == report.reference_wer  # the fp32 bundle gives the reference's tokens
    assert 0 < report.reference_wer < 0.5  # tiny.en misses some of espeak-ng's words, gets most
    assert "WER PASS" in report.table()


def test_the_gate_fails_a_damaged_bundle(damaged_bundle, refs_tsv):
    report = check_wer(damaged_bundle, WerGate(refs_tsv, max_increase=0.005))
    assert not report.ok and report.increase > 0.005, report.table()
    assert "WER FAIL" in report.table()


def test_the_cli_prints_both_wers_and_exits_1_on_a_damaged_bundle(damaged_bundle, refs_tsv):
    two_clips = refs_tsv.with_name("two.tsv")
    two_clips.write_text("\n".join(refs_tsv.read_text().splitlines()[2:4]) + "\n")
    res = subprocess.run([sys.executable, "-m", "cli", "check", "--bundle", str(damaged_bundle), "--wer",
                          str(two_clips), "--seed", "1"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 1, res.stderr
    assert "WER bundle" in res.stdout and "WER torch fp32 reference" in res.stdout and "WER FAIL" in res.stdout


@pytest.mark.parametrize("option, message", [
    (["--max-wer-increase", "1.5"], "--max-wer-increase: received 1.5, expected 0 <= value < 1"),
    (["--normalizer", "french"], "--normalizer: received 'french', expected one of english, basic"),
])
def test_bad_gate_options_exit_2_before_any_check(tiny_bundle, refs_tsv, option, message):
    res = subprocess.run([sys.executable, "-m", "cli", "check", "--bundle", str(tiny_bundle), "--wer", str(refs_tsv),
                          *option], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.parametrize("content, message", [
    ("clip.wav reference without a tab\n", r"refs.tsv:1: received 'clip.wav reference without a tab', expected"),
    ("missing.wav\thello\n", r"refs.tsv:1: audio 'missing.wav' \(.*missing.wav\) does not exist"),
    ("audio.wav\t   \n", r"refs.tsv:1: received .*, expected 'audio<TAB>reference text'"),
    ("# only a comment\n\n", "lists no clips"),
])
def test_malformed_references_are_named(tmp_path, content, message):
    (tmp_path / "audio.wav").write_bytes(b"")
    (tmp_path / "refs.tsv").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_references(tmp_path / "refs.tsv")
    with pytest.raises(ValueError, match="does not exist"):
        read_references(tmp_path / "absent.tsv")


def test_wer_arithmetic():
    assert edit_distance("the cat sat".split(), "the bat sat down".split()) == 2
    assert corpus_wer(["the cat sat", "a b"], ["the bat sat down", "a b"]) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="no words after normalisation"):
        corpus_wer(["  "], ["x"])
