"""Audio files read in blocks: header first (rate, channels, duration), then 16 kHz mono float32 a block at a time.

libsndfile (soundfile) reads WAV, FLAC, OGG/Vorbis, MP3, AIFF; its blocks are mixed to mono and resampled with
a soxr stream (bit-identical to a one-shot soxr.resample of the whole file, whatever the block size). Other
formats are decoded by the ffmpeg executable through a pipe. Nothing here holds more than a block, so a file's
length costs time, not memory.

Hostile headers are refused before anything is decoded: a sample rate outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE
(a WAV claiming 1 Hz would otherwise be resampled 16000-fold), no channels, or a duration over the caller's
limit. libsndfile's own error is reported as it is, with the path; installing ffmpeg is suggested only when
ffmpeg is missing and the file looks like a format ffmpeg decodes and libsndfile does not.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisper_export.runtime.audio import SAMPLE_RATE, AudioError

# Telephone audio is 8 kHz and studio masters go up to 384/768 kHz; outside these bounds a header is damaged
# or hostile, and resampling it would cost up to 16000x its size.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
BLOCK_SAMPLES = 1 << 18  # samples (all channels together) read per block: 1 MiB of float32
# A pipe (a FIFO, `<(ffmpeg ...)`, /dev/stdin) can be read once only, while a header is read before the audio:
# its bytes are copied to a temporary file first, at most this many (24 h of 16-bit 16 kHz stereo is 5.5 GB)
MAX_PIPE_BYTES = 6 << 30
SOUNDFILE_FORMATS = "WAV, FLAC, OGG/Vorbis, MP3, AIFF"
FFMPEG_INSTALL = ("install ffmpeg (Debian/Ubuntu: `apt-get install ffmpeg`, macOS: `brew install ffmpeg`, "
                  "Windows: `winget install ffmpeg`) or convert the file to WAV/FLAC")
# WAV format tags of codecs that ffmpeg decodes and libsndfile does not
_FFMPEG_WAV_CODECS = {0x0055: "MP3 in WAV", 0x0092: "AC-3 in WAV", 0x2000: "AC-3 in WAV", 0x00FF: "AAC in WAV",
                      0x1610: "AAC in WAV", 0x0161: "WMA in WAV", 0x0162: "WMA in WAV"}


@dataclass(frozen=True)
class AudioHeader:
    """What a file says about itself before decoding."""

    path: Path
    decoder: str  # "soundfile" | "ffmpeg"
    sample_rate: int  # the file's rate (ffmpeg: SAMPLE_RATE, it resamples itself)
    channels: int
    frames: int | None  # samples per channel; None when the container does not say (ffmpeg without a duration)
    # a pipe's bytes in a temporary file (deleted with this header), read instead of path
    spool: Any = field(default=None, repr=False, compare=False)

    @property
    def source(self) -> Path:
        """What the decoders open: the file itself, or the temporary copy of a pipe."""
        return _source(self.path, self.spool)

    @property
    def duration(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate


def probe(path: str | os.PathLike[str], *, pipes: bool = True) -> AudioHeader:
    """Read the header only; AudioError (naming the path) for anything that cannot be decoded sensibly.
    pipes: whether a named pipe is read (into a temporary file); False refuses it (an archive's files)."""
    path = Path(os.fspath(path))
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AudioError(f"audio file not found: received path {str(path)!r}, which does not exist") from None
    except OSError as e:  # a symlink loop, a name too long, no permission on a directory on the way
        raise AudioError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise AudioError(f"received directory {str(path)!r}, expected an audio file ({SOUNDFILE_FORMATS}, "
                         "or any format ffmpeg decodes)")
    if stat.S_ISFIFO(mode) and not pipes:
        raise AudioError(f"received {str(path)!r}, a named pipe, expected a regular audio file")
    spool = _spooled(path, mode)
    source = _source(path, spool)
    try:
        with open(source, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise AudioError(f"cannot read {str(path)!r}: {e.strerror}") from None
    import soundfile  # deferred: it loads a C library

    try:
        info = soundfile.info(str(source))
    except (RuntimeError, TypeError, ValueError) as e:  # LibsndfileError is a RuntimeError
        return _probe_ffmpeg(path, head, _libsndfile_reason(e, source), spool)
    header = AudioHeader(path, "soundfile", int(info.samplerate), int(info.channels), int(info.frames), spool)
    check_header(header)
    return header


def _source(path: Path, spool: Any) -> Path:
    return Path(spool.name) if spool is not None else path


def _spooled(path: Path, mode: int) -> Any:
    """None for a regular file (mode: its st_mode); for a pipe, a temporary file holding all its bytes
    (MAX_PIPE_BYTES at most). Devices and sockets are refused."""
    if stat.S_ISREG(mode):
        return None
    if not stat.S_ISFIFO(mode):
        raise AudioError(f"received {str(path)!r}, a device or socket, expected an audio file or a pipe")
    spool = tempfile.NamedTemporaryFile(prefix="whisper-export-pipe-", suffix=path.suffix)
    try:
        with open(path, "rb") as pipe:
            while chunk := pipe.read(1 << 20):
                if spool.tell() + len(chunk) > MAX_PIPE_BYTES:
                    raise AudioError(f"{str(path)!r}: received more than {MAX_PIPE_BYTES >> 30} GiB from the pipe, "
                                     "expected at most that (pass a file, or split the audio)")
                spool.write(chunk)
        spool.flush()
    except OSError as e:
        spool.close()
        raise AudioError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except AudioError:
        spool.close()
        raise
    return spool


def check_header(header: AudioHeader, max_duration: float | None = None) -> None:
    where = f"{str(header.path)!r}"
    if not MIN_SAMPLE_RATE <= header.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{where}: received sample rate {header.sample_rate} Hz in the file header, expected "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz (the header is damaged or not audio)")
    if header.channels < 1:
        raise AudioError(f"{where}: received {header.channels} channels in the file header, expected at least 1")
    if max_duration is not None and header.duration is not None and header.duration > max_duration:
        raise AudioError(f"{where}: received {header.duration:.1f} s of audio (from its header), expected at most "
                         f"max_duration={max_duration:g} s; raise max_duration (--max-duration) or split the file")


def _libsndfile_reason(error: Exception, path: Path) -> str:
    """libsndfile's message without soundfile's "Error opening '<path>': " prefix (the path is said once)."""
    reason = " ".join(str(error).split())
    prefix = f"Error opening {str(path)!r}: "
    return reason[len(prefix):] if reason.startswith(prefix) else reason


def ffmpeg_format(head: bytes) -> str | None:
    """The name of a format that ffmpeg decodes and libsndfile does not, recognised by its first bytes."""
    if head[4:8] == b"ftyp":
        return "MP4/M4A/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:2] in (b"\xff\xf1", b"\xff\xf9"):
        return "AAC (ADTS)"
    if head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11":
        return "WMA/ASF"
    if head[:5] == b"#!AMR":
        return "AMR"
    if head[:2] == b"\x0b\x77":
        return "AC-3"
    if head[:3] == b"FLV":
        return "FLV"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3") or (len(head) > 188 and head[0] == head[188] == 0x47):
        return "MPEG program/transport stream"
    if head[:4] == b"OggS" and b"OpusHead" in head[:64]:
        return "Ogg/Opus"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "MP3"  # libsndfile reads MP3 only from 1.1 on
    if head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and len(head) >= 22:
        return _FFMPEG_WAV_CODECS.get(int.from_bytes(head[20:22], "little"))
    return None


def _probe_ffmpeg(path: Path, head: bytes, libsndfile: str, spool: Any = None) -> AudioHeader:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        known = ffmpeg_format(head)
        if known:
            raise AudioError(f"cannot read {str(path)!r}: it looks like {known}, which libsndfile does not decode "
                             f"(it said: {libsndfile}), and the ffmpeg executable is not on PATH; {FFMPEG_INSTALL}")
        raise AudioError(f"cannot read {str(path)!r}: {libsndfile} (libsndfile); expected {SOUNDFILE_FORMATS}")
    result = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-i", str(_source(path, spool))], capture_output=True,
                            check=False)
    text = result.stderr.decode(errors="replace")
    if not re.search(r"Stream #\S+.*: Audio:", text):
        lines = text.strip().splitlines()
        raise AudioError(f"cannot read {str(path)!r}: {libsndfile} (libsndfile); "
                         f"{lines[-1] if lines else 'no audio stream'} (ffmpeg)")
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    frames = None
    if duration:
        h, m, s = duration.groups()
        frames = round((int(h) * 3600 + int(m) * 60 + float(s)) * SAMPLE_RATE)
    return AudioHeader(path, "ffmpeg", SAMPLE_RATE, 1, frames, spool)


def pcm_blocks(header: AudioHeader, max_samples: int | None = None) -> Iterator[np.ndarray]:
    """16 kHz mono float32 blocks of the file in [-1, 1], in order; AudioError past max_samples (a header that
    lied) or for NaN/inf samples. Close the iterator to stop early (an ffmpeg process is then killed). Float
    samples beyond full scale are clipped, as openai-whisper's ffmpeg decoding to 16-bit integers does."""
    blocks = _soundfile_blocks(header) if header.decoder == "soundfile" else _ffmpeg_blocks(header)
    done = 0
    try:
        for block in blocks:
            if not np.isfinite(block).all():
                raise AudioError(f"{str(header.path)!r}: received NaN or inf near {done / SAMPLE_RATE:.2f} s, "
                                 "expected finite samples")
            np.clip(block, -1.0, 1.0, out=block)
            done += len(block)
            if max_samples is not None and done > max_samples:
                raise AudioError(f"{str(header.path)!r}: received more than {max_samples / SAMPLE_RATE:g} s of "
                                 "audio, expected at most max_duration (the header understated the length)")
            if len(block):
                yield block
    finally:
        blocks.close()


def _soundfile_blocks(header: AudioHeader) -> Iterator[np.ndarray]:
    import soundfile

    frames = max(1, BLOCK_SAMPLES // header.channels)
    resampler = None
    if header.sample_rate != SAMPLE_RATE:
        try:
            import soxr  # deferred: only non-16 kHz files need it
        except ImportError as e:
            raise AudioError(f"{str(header.path)!r}: received audio at {header.sample_rate} Hz, expected "
                             f"{SAMPLE_RATE} Hz; resampling needs the `soxr` package (pip install soxr)") from e
        resampler = soxr.ResampleStream(header.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    try:
        with soundfile.SoundFile(str(header.source)) as f:
            while True:
                data = f.read(frames, dtype="float32", always_2d=True)
                mono = mix_to_mono(data)
                last = len(data) < frames
                yield mono if resampler is None else resampler.resample_chunk(mono, last=last)
                if last:
                    return
    except RuntimeError as e:
        raise AudioError(f"cannot read {str(header.path)!r}: {_libsndfile_reason(e, header.source)} "
                         "(libsndfile)") from None


def mix_to_mono(data: np.ndarray) -> np.ndarray:
    """(n, channels) float32 -> (n,) float32, the plain channel average Whisper was trained on:
    data.mean(axis=1, dtype=float32), whose numpy reduction is slow over a short axis; one and two channels
    (nearly every file) take a direct path with the same float32 operations, so the same values."""
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    if data.shape[1] == 2:
        return (data[:, 0] + data[:, 1]) / np.float32(2)
    return data.mean(axis=1, dtype=np.float32)


def _ffmpeg_blocks(header: AudioHeader) -> Iterator[np.ndarray]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError(f"cannot read {str(header.path)!r}: the ffmpeg executable left PATH; {FFMPEG_INSTALL}")
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0", "-i", str(header.source),
           "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(SAMPLE_RATE), "-"]  # fmt: skip
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: ffmpeg never blocks on what it says
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        try:
            carry = b""
            while chunk := process.stdout.read(2 * BLOCK_SAMPLES):
                chunk = carry + chunk
                usable = len(chunk) - len(chunk) % 2
                carry = chunk[usable:]
                yield np.frombuffer(chunk[:usable], dtype=np.int16).astype(np.float32) / 32768.0
            if process.wait() != 0:
                errors.seek(0)
                lines = errors.read().decode(errors="replace").strip().splitlines()
                reason = lines[-1] if lines else f"exit status {process.returncode}"
                raise AudioError(f"{str(header.path)!r} is not a readable audio file (ffmpeg: {reason}); expected "
                                 f"{SOUNDFILE_FORMATS} or another format ffmpeg decodes (mp3, m4a, webm, ...)")
        finally:
            if process.poll() is None:
                process.kill()
            process.stdout.close()
            process.wait()


def read_all(path: str | os.PathLike[str]) -> np.ndarray:
    """The whole file as (n_samples,) float32 at 16 kHz (what load_audio returns)."""
    header = probe(path)
    blocks = list(pcm_blocks(header))
    audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if audio.shape[0] == 0:
        raise AudioError(f"{str(header.path)!r} contains no audio: received 0 samples, expected at least 1")
    return audio
