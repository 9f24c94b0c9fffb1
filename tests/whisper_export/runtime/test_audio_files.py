"""Hostile and careless audio files: refused from their headers, libsndfile's own words, ffmpeg only when it helps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from whisper_export.runtime.audio import SAMPLE_RATE, AudioError, load_audio, pad_or_trim
from whisper_export.runtime.audio_files import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, probe
from whisper_export.runtime.mel_source import MelSource
from whisper_export.runtime.options import TranscribeOptions
from whisper_export.runtime.transcribe import long_form_mel

DATA = Path(__file__).resolve().parents[2] / "data"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("rate", [1, MIN_SAMPLE_RATE - 1, MAX_SAMPLE_RATE + 1, 2**31 - 1])
def test_absurd_sample_rates_are_refused_before_decoding(tmp_path, wav_bytes, rate):
    """A 110 KB WAV claiming 1 Hz asked for 3.3 GB (resampled 16000-fold); now its header is refused."""
    path = write(tmp_path / "one-hz.wav", wav_bytes(rate=rate, data=b"\x01\x00" * 5000))
    for read in (load_audio, lambda p: MelSource(p, 80)):
        with pytest.raises(AudioError) as info:
            read(path)
        message = str(info.value)
        assert f"received sample rate {rate} Hz" in message and str(path) in message
        assert f"expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz" in message


def test_rates_within_the_bounds_are_read(tmp_path, wav_bytes):
    path = write(tmp_path / "8k.wav", wav_bytes(rate=8000, data=b"\x10\x00" * 8000))
    assert load_audio(path).shape == (SAMPLE_RATE,)


@pytest.mark.parametrize("make, reason", [
    (lambda w: b"this is text, not sound\n" * 50, "Format not recognised"),
    (lambda w: w()[:20], "Malformed 'fmt ' chunk"),
    (lambda w: w(channels=0), "Channel count is zero"),
    (lambda w: w(channels=5000), "Too many channels specified"),
    (lambda w: b"", "Format not recognised"),
])
def test_libsndfile_errors_are_reported_as_they_are(tmp_path, wav_bytes, no_ffmpeg, make, reason):
    path = write(tmp_path / "bad.wav", make(wav_bytes))
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert reason in message and str(path) in message
    assert "install" not in message.lower()  # ffmpeg would not read these either
    assert "\n" not in message


@pytest.mark.parametrize("head, kind", [
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom", "MP4/M4A/MOV"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "Matroska/WebM"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c", "WMA/ASF"),
])
def test_install_ffmpeg_is_suggested_only_for_what_it_decodes(tmp_path, no_ffmpeg, head, kind):
    path = write(tmp_path / "clip.bin", head + b"\0" * 2000)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert f"it looks like {kind}" in message and "install ffmpeg" in message and str(path) in message


def test_compressed_wav_codec_suggests_ffmpeg(tmp_path, wav_bytes, no_ffmpeg):
    path = write(tmp_path / "mp3-in.wav", wav_bytes(tag=0x0055, bits=0))
    with pytest.raises(AudioError, match="it looks like MP3 in WAV.*install ffmpeg"):
        load_audio(path)


@pytest.fixture
def m4a(tmp_path, ffmpeg_on_path) -> Path:
    out = tmp_path / "stella.m4a"
    subprocess.run([str(ffmpeg_on_path), "-nostdin", "-loglevel", "error", "-i", str(DATA / "en_stella.wav"),
                    str(out)], check=True)
    return out


def test_ffmpeg_streams_what_libsndfile_cannot_read(m4a):
    header = probe(m4a)
    assert header.decoder == "ffmpeg" and header.duration == pytest.approx(4.4, abs=1.0)
    reference = load_audio(DATA / "en_stella.wav")
    audio = load_audio(m4a)
    assert abs(len(audio) - len(reference)) < 0.25 * SAMPLE_RATE and np.abs(audio).max() > 0.1
    expected = long_form_mel(m4a, 80)
    with MelSource(m4a, 80) as mel:
        assert mel.content_frames == expected.shape[-1] - 3000
        window, size = mel.window(0)
        assert size == mel.content_frames and np.array_equal(window, pad_or_trim(expected[:, :size], 3000))
        assert np.array_equal(mel.language_window(), expected[:, :3000])


def test_ffmpeg_error_is_one_line_naming_the_file(tmp_path, ffmpeg_on_path):
    path = write(tmp_path / "noise.wav", b"\x8f" * 3000)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message and "Format not recognised" in message and "(ffmpeg)" in message
    assert "\n" not in message


def _sparse_wav(path: Path, seconds: float, wav_bytes) -> Path:
    """A WAV of that many seconds of digital silence, as a sparse file: no disk space, no time to write."""
    n_bytes = int(seconds * SAMPLE_RATE) * 2
    path.write_bytes(wav_bytes(data=b"", claimed=n_bytes))
    with open(path, "r+b") as f:
        f.truncate(44 + n_bytes)
    return path


def test_max_duration_refuses_from_the_header_before_decoding(tmp_path, wav_bytes):
    day_and_more = _sparse_wav(tmp_path / "25h.wav", 25 * 3600, wav_bytes)
    limit = TranscribeOptions().max_duration
    assert limit == 86400.0
    with pytest.raises(AudioError, match=r"received 90000.0 s of audio \(from its header\), expected at most "
                                         r"max_duration=86400 s"):
        MelSource(day_and_more, 80, max_duration=limit)
    two_hours = _sparse_wav(tmp_path / "2h.wav", 7200, wav_bytes)
    with pytest.raises(AudioError, match="max_duration=3600"):
        MelSource(two_hours, 80, max_duration=3600)
    with pytest.raises(AudioError, match="expected at most max_duration=1 s"):
        MelSource(np.zeros(2 * SAMPLE_RATE, np.float32), 80, max_duration=1)


def test_max_duration_option_is_checked():
    for bad in (0, -1.0, float("nan"), float("inf"), "1h", True):
        with pytest.raises(ValueError, match="max_duration: received"):
            TranscribeOptions(max_duration=bad)
    assert TranscribeOptions(max_duration=None).max_duration is None


def test_max_duration_of_an_ffmpeg_file(m4a):
    with pytest.raises(AudioError, match="from its header"):
        MelSource(m4a, 80, max_duration=1.0)


def test_nan_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    audio = np.zeros(SAMPLE_RATE, np.float32)
    audio[12345] = np.nan
    soundfile.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="received NaN or inf near 0.00 s"):
        load_audio(path)


def test_truncated_data_is_read_as_far_as_it_goes(tmp_path, wav_bytes):
    """A WAV whose data chunk claims more than the file holds (a copy cut short): libsndfile reads what is
    there, as ffmpeg does; refusing it would lose the part that is intact."""
    path = write(tmp_path / "cut.wav", wav_bytes(data=b"\x00\x10" * 8000, claimed=64000))
    assert load_audio(path).shape == (8000,)


def _fifo_with_writer(path: Path, data: bytes):
    import os
    import threading

    os.mkfifo(path)

    def write() -> None:
        with open(path, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def test_a_pipe_is_read_once_into_a_temporary_copy(tmp_path, clips):
    """A FIFO (as `<(ffmpeg ...)` or /dev/stdin give) can be read only once, while the header is read before the
    audio: the samples equal the file's, and the temporary copy is gone with the header."""
    wav = clips["en_fox.wav"]["path"]
    writer = _fifo_with_writer(tmp_path / "pipe.wav", wav.read_bytes())
    header = probe(tmp_path / "pipe.wav")
    writer.join(10)
    assert header.path == tmp_path / "pipe.wav" and header.source != header.path and header.source.is_file()
    spooled = header.source
    from whisper_export.runtime.audio_files import pcm_blocks

    np.testing.assert_array_equal(np.concatenate(list(pcm_blocks(header))), load_audio(wav))
    del header
    import gc

    gc.collect()
    assert not spooled.exists()


def test_a_pipe_of_garbage_and_a_device_are_one_line_errors(tmp_path):
    writer = _fifo_with_writer(tmp_path / "noise.wav", bytes(range(256)) * 12)
    with pytest.raises(AudioError, match=r"cannot read '.*noise.wav': .*\(libsndfile\)") as e:
        probe(tmp_path / "noise.wav")
    writer.join(10)
    assert "\n" not in str(e.value)
    with pytest.raises(AudioError, match="received '/dev/zero', a device or socket, expected an audio file or a pipe"):
        probe("/dev/zero")
