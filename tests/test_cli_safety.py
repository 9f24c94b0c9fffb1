"""The CLI as a hostile or careless user drives it: bundles that lead out, outputs that cannot be written,
exports over the wrong directory, absurd audio headers. One line on stderr, the documented exit code."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from whisper_export.bundle import MANIFEST, Bundle, write_manifest

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SHA256 = re.compile(r"\b[0-9a-f]{64}\b")


def run_cli(*args, stdout=subprocess.PIPE, preexec_fn=None, timeout=600) -> subprocess.CompletedProcess:
    exe = shutil.which("whisper-export")
    assert exe, "the whisper-export console script is not installed (pip install -e .)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([exe, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
                          preexec_fn=preexec_fn, timeout=timeout)


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    stderr = result.stderr
    code_seen = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code_seen == code, stderr
    assert "Traceback" not in stderr
    if hasattr(result, "exception") and result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def bundle_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / f.name) if f.name == MANIFEST else (dst / f.name).hardlink_to(f)
    return dst


# -- stdout closed or full -----------------------------------------------------------------------------


def test_stdout_full_is_one_line_and_exit_1():
    with open("/dev/full", "w") as full:
        result = run_cli("info", stdout=full)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: cannot write to stdout (No space left on device); "
                                                  "the output is lost"]


def test_stdout_closed_is_one_line_and_exit_1(tiny_bundle, clips):
    for args in (["info"], ["transcribe", clips["en_fox.wav"]["path"], "--bundle", tiny_bundle]):
        exe = shutil.which("whisper-export")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen([exe, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        process.stdout.close()  # the reader went away (| head -0)
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=300) == 1, stderr
        assert "Traceback" not in stderr
        assert error_lines(stderr) == ["error: cannot write to stdout (Broken pipe); the output is lost"]


# -- bundles ---------------------------------------------------------------------------------------------


def test_a_bundle_leading_out_is_refused_by_check_and_transcribe_alike(tiny_bundle, tmp_path, clips):
    """tokenizer.json is a symlink to a file outside the bundle whose sha256 the manifest lists: nothing is
    hashed or loaded, and no hash is printed."""
    bundle = bundle_copy(tiny_bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere.json"
    shutil.copy(tiny_bundle / "tokenizer.json", outside)
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(outside)
    for args in (["check", "--bundle", bundle], ["transcribe", clips["en_fox.wav"]["path"], "--bundle", bundle]):
        result = invoke(*args)
        line = assert_one_line_error(result, 1, "'tokenizer.json'", "outside the bundle")
        assert not SHA256.search(result.stdout + result.stderr), line


def test_check_on_a_bundle_onnxruntime_cannot_load(tiny_bundle, tmp_path):
    bundle = bundle_copy(tiny_bundle, tmp_path / "b")
    config = Bundle.open(bundle).config
    (bundle / "encoder.onnx").unlink()
    (bundle / "encoder.onnx").write_bytes(b"not a protobuf" * 100)
    write_manifest(bundle, config)  # hashes agree: only onnxruntime can tell
    result = invoke("check", "--bundle", bundle)
    assert_one_line_error(result, 1, "onnxruntime cannot load encoder.onnx")


# -- export --overwrite ------------------------------------------------------------------------------------


def test_overwrite_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    home = tmp_path / "my-documents"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    result = invoke("export", "--out", home, "--overwrite")
    line = assert_one_line_error(result, 2, str(home), "is not a bundle")
    assert "--overwrite replaces only a bundle directory" in line
    assert (home / "thesis.tex").read_text() == "years of work"
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / MANIFEST).write_text('{"format": "something-else"}')
    assert_one_line_error(invoke("export", "--out", fake, "--overwrite"), 2, str(fake), "is not a bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "my-documents"]


def _limit_file_size():
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.slow
def test_overwrite_swaps_a_bundle_in_and_a_failed_export_keeps_the_old(tiny_bundle, tmp_path):
    out = bundle_copy(tiny_bundle, tmp_path / "bundle")
    before = (out / MANIFEST).read_bytes()
    # a disk that fills up while encoder.onnx is written (a 1 MB file size limit)
    failed = run_cli("export", "--out", out, "--overwrite", preexec_fn=_limit_file_size)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert error_lines(failed.stderr) == [f"error: export to {str(out)!r} failed, an existing bundle there is "
                                          "unchanged: File too large"], failed.stderr
    assert (out / MANIFEST).read_bytes() == before
    Bundle.open(out)  # every file still has its sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary sibling left

    def umask_022():
        os.umask(0o022)

    done = run_cli("export", "--out", out, "--overwrite", preexec_fn=umask_022)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0o700
    assert Bundle.open(out).dims.n_vocab == 51864
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# -- audio -------------------------------------------------------------------------------------------------


def test_a_wav_claiming_1_hz_is_refused_without_asking_for_gigabytes(tiny_bundle, tmp_path, wav_bytes):
    """A header saying 1 Hz: resampled 16000-fold (110 KB of it asked for 3.3 GB); refused from the header instead.
    200 bytes here, so that the old code only transcribes 100 s of noise instead of exhausting the memory."""
    path = tmp_path / "one-hz.wav"
    path.write_bytes(wav_bytes(rate=1, data=b"\x01\x00" * 100))
    result = invoke("transcribe", path, "--bundle", tiny_bundle)
    assert_one_line_error(result, 1, str(path), "received sample rate 1 Hz")
