"""The three forms of INPUTS, and the output directory's rules (one row per path read back, one kind of row per
directory). No model, no Ray."""

from __future__ import annotations

import os

import pytest

from whisper_export.batch import read_output
from whisper_export.batch.inputs import list_inputs
from whisper_export.batch.rows import decode_input, error_row, inspect_input
from whisper_export.batch.store import PartStore


def _touch(path, data: bytes = b"") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return os.path.abspath(path)


def test_a_directory_gives_its_audio_files_recursively_sorted_symlinks_kept(tmp_path):
    b = _touch(tmp_path / "a" / "b.WAV")
    a = _touch(tmp_path / "a" / "a.flac")
    deep = _touch(tmp_path / "z" / "deep" / "c.mp3")
    _touch(tmp_path / "a" / "notes.txt")
    (tmp_path / "link.wav").symlink_to(tmp_path / "a" / "a.flac")
    assert list_inputs(tmp_path) == [str(tmp_path / "link.wav"), a, b, deep]


def test_a_text_list_is_relative_to_its_own_directory(tmp_path, monkeypatch):
    listing = tmp_path / "lists" / "todo.txt"
    listing.parent.mkdir()
    listing.write_text("# a comment\n../x.wav\n\n  /abs/y.wav  \n../x.wav\n")
    monkeypatch.chdir(tmp_path / "lists")
    assert list_inputs(listing) == [str(tmp_path / "x.wav"), "/abs/y.wav"]


def test_jsonl_is_read_by_its_path_field_and_recognised_by_its_first_line(tmp_path):
    listing = tmp_path / "inputs.list"  # no .jsonl extension: the first line tells
    listing.write_text('{"path": "a.wav", "id": 1}\n\n{"path": "/b.wav"}\n')
    assert list_inputs(listing) == [str(tmp_path / "a.wav"), "/b.wav"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.wav"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: received invalid JSON"):
        list_inputs(bad)


def test_inputs_that_are_no_list_are_refused(tmp_path):
    with pytest.raises(ValueError, match="received the audio file"):
        list_inputs(_touch(tmp_path / "one.wav"))
    with pytest.raises(ValueError, match="not UTF-8 text"):
        list_inputs(_touch(tmp_path / "blob.bin", b"\xff\xfe\x00\x81"))


def test_a_file_that_cannot_be_decoded_is_its_own_error(tmp_path):
    row = decode_input(_touch(tmp_path / "noise.wav", os.urandom(500)), 3600.0)
    assert row["audio"] == b"" and row["error"].startswith("AudioError") and "noise.wav" in row["error"]
    missing = decode_input(str(tmp_path / "missing.wav"), 3600.0)
    assert "missing.wav" in missing["error"]


def test_a_named_pipe_or_a_symlink_loop_in_an_archive_is_its_own_error_at_once(tmp_path):
    """A FIFO named .wav under INPUTS has no writer: reading it would block for ever, so the batch refuses it as a
    row error (transcribe reads pipes, batch does not); a symlink loop says so, not "does not exist"."""
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    for read in (decode_input, inspect_input):
        row = read(str(fifo), 3600.0)
        assert row["audio"] == b"" and "a named pipe, expected a regular audio file" in row["error"]
        row = read(str(loop), 3600.0)
        assert "loop.wav" in row["error"] and "does not exist" not in row["error"], row["error"]


def test_an_inspected_input_stays_on_disk_with_its_headers_duration(tmp_path, clips):
    """The in-process batch reads headers only (the runtime streams the file), so a long file costs no memory
    for its samples: no audio in the dict, the duration from the header."""
    import soundfile

    path = clips["en_fox.wav"]["path"]
    item = inspect_input(str(path), 3600.0)
    assert item["audio"] is None and item["error"] is None
    assert item["duration"] == soundfile.info(str(path)).duration
    assert "max_duration=1" in inspect_input(str(path), 1.0)["error"]


def test_read_output_keeps_one_row_per_path_the_last_written(tmp_path):
    with PartStore(tmp_path, words=False) as store:
        store.write([error_row("/a.wav", "first", None, False), error_row("/b.wav", "b", None, False)])
        store.write([error_row("/a.wav", "second", 1.5, False)])
        assert store.written() == {"/a.wav", "/b.wav"}
    rows = read_output(tmp_path).to_pylist()
    assert [(r["path"], r["error"]) for r in rows] == [("/b.wav", "b"), ("/a.wav", "second")]


def test_a_directory_holds_one_kind_of_row(tmp_path):
    with PartStore(tmp_path, words=False) as store:
        store.write([error_row("/a.wav", "x", None, False)])
    with PartStore(tmp_path, words=True) as store, pytest.raises(ValueError, match="written without word"):
        store.written()
    (tmp_path / "part-000009.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="part-000009.parquet', which is not readable Parquet"):
        read_output(tmp_path)


def test_an_out_that_cannot_be_written_or_holds_a_corrupt_part_is_refused_naming_it(tmp_path):
    """Both are a bad --out (exit 2 through the command, as transcribe's --output-dir): the message names the
    directory or the part file."""
    a_file = tmp_path / "afile.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="cannot write there"):
        with PartStore(a_file, words=False):
            pass
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-000000.parquet").write_bytes(os.urandom(300))
    with PartStore(out, words=False) as store, pytest.raises(ValueError, match="part-000000.parquet") as info:
        store.written()
    assert "\n" not in str(info.value)


def test_inputs_that_exist_but_are_no_list_say_so():
    with pytest.raises(ValueError, match="'/dev/null', which is neither a directory nor a regular file"):
        list_inputs("/dev/null")
