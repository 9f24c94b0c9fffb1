"""Atomic outputs: a symlink at the target is replaced, never followed; a failed write leaves the old file whole."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_export.atomic import write_text_atomic
from whisper_export.runtime.transcribe import Segment, TranscriptionResult
from whisper_export.runtime.writers import write_result

ROOT = Path(__file__).resolve().parents[2]
RESULT = TranscriptionResult("hello world", "en", [Segment(0, 0, 0.0, 1.0, " hello world", [1, 2], 0.0, -0.1, 1.0, 0.01)])


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.txt").symlink_to(victim)
    (out / "clip.json").symlink_to(tmp_path / "dangling")
    written = write_result(RESULT, out, "clip", ["txt", "json"])
    assert victim.read_text() == "precious\n" and not (tmp_path / "dangling").exists()
    for path in written:
        assert path.is_file() and not path.is_symlink()
    assert (out / "clip.txt").read_text() == "hello world\n"
    assert sorted(p.name for p in out.iterdir()) == ["clip.json", "clip.txt"]  # no temporary file left


def test_new_files_get_ordinary_permissions_and_replaced_ones_keep_theirs(tmp_path):
    old_umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "new.txt", "x")
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        write_text_atomic(kept, "new")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "new"


FULL_DISK = """
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from whisper_export.runtime.transcribe import Segment, TranscriptionResult
from whisper_export.runtime.writers import write_result
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
text = "word " * 5000
result = TranscriptionResult(text, "en", [Segment(0, 0, 0.0, 1.0, text, [1], 0.0, -0.1, 1.0, 0.01)])
try:
    write_result(result, sys.argv[2], "clip", ["txt", "json"])
except OSError as e:
    print(e.errno)
"""


def test_a_full_disk_leaves_the_old_transcript_not_a_truncated_one(tmp_path):
    """The file size limit (RLIMIT_FSIZE) makes the write fail as a full disk would, part-way through."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.txt").write_text("the old transcript\n")
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(ROOT), str(out)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "27"  # EFBIG: the write did fail
    assert (out / "clip.txt").read_text() == "the old transcript\n"
    assert sorted(p.name for p in out.iterdir()) == ["clip.txt"]  # no temporary file, no partial json


def test_an_error_while_writing_removes_the_temporary_file(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_text_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_two_directories_exchange_names_in_one_step(tmp_path):
    """export/build --overwrite swap the new bundle in with exchange_paths: afterwards each name holds the other's
    files (on Linux; elsewhere it answers False and the exporter renames in two steps)."""
    import sys

    from whisper_export.atomic import exchange_paths

    old, new = tmp_path / "bundle", tmp_path / ".bundle.tmp"
    for directory, text in ((old, "old"), (new, "new")):
        directory.mkdir()
        (directory / "manifest.json").write_text(text)
    swapped = exchange_paths(new, old)
    if not sys.platform.startswith("linux"):
        assert swapped is False
        return
    assert swapped is True
    assert (old / "manifest.json").read_text() == "new" and (new / "manifest.json").read_text() == "old"
    with pytest.raises(FileNotFoundError):
        exchange_paths(tmp_path / "missing", old)


def test_directories_a_killed_run_left_beside_an_output_are_removed_and_live_ones_kept(tmp_path):
    """sibling_directory names carry the host and the process: a later run removes those whose process is gone
    (a killed export's half-written bundle), keeps a live process's and anything else beside the output."""
    import subprocess
    import sys

    from whisper_export.export.siblings import _host, remove_stale_siblings, sibling_directory

    out = tmp_path / "bundle"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".bundle.tmp-{_host()}-{dead_pid}-0123abcd"
    nested = tmp_path / f"..bundle.build-{_host()}-{dead_pid}-0123abcd.tmp-{_host()}-{dead_pid}-4567abcd"
    other_host = tmp_path / f".bundle.tmp-elsewhere-{dead_pid}-0123abcd"
    live = sibling_directory(out, "build")  # this process's
    unrelated = tmp_path / ".bundle.notes"
    for path in (stale, nested, other_host, unrelated):
        path.mkdir()
    (stale / "encoder.onnx").write_bytes(b"half")
    assert sorted(p.name for p in remove_stale_siblings(out)) == sorted([stale.name, nested.name])
    assert not stale.exists() and not nested.exists()
    assert other_host.is_dir() and live.is_dir() and unrelated.is_dir()
