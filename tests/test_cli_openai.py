"""Each openai-whisper option of `whisper-export transcribe` changes the transcription as openai-whisper documents
it: where decoding is deterministic (temperature 0), against openai-whisper itself on the same tiny.en weights
(written as an OpenAI .pt by reference_model); where it samples, by its documented effect, seeded."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

import cli
from whisper_export.bundle import Bundle
from whisper_export.runtime import decoding
from whisper_export.runtime.audio import SAMPLE_RATE, load_audio

whisper = pytest.importorskip("whisper")
runner = CliRunner()
NO_FALLBACK = ("--temperature-increment-on-fallback", "None")  # temperature 0 only: deterministic, comparable
GREEDY = ("--beam-size", "1", *NO_FALLBACK)  # openai-whisper's transcribe() default (its CLI's is beam 5)


@pytest.fixture(scope="module")
def openai_model(tiny_checkpoint, tmp_path_factory):
    from reference_model.openai import save_openai

    path = save_openai(tiny_checkpoint, tmp_path_factory.mktemp("openai") / "tiny.en.pt")
    return whisper.load_model(str(path), device="cpu")


@pytest.fixture(scope="module")
def two_windows(clips, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The fox, 25 s of silence, Stella: 33 s, two 30 s windows or more."""
    audio = np.concatenate([load_audio(clips["en_fox.wav"]["path"]), np.zeros(25 * SAMPLE_RATE, np.float32),
                            load_audio(clips["en_stella.wav"]["path"])])
    path = tmp_path_factory.mktemp("audio") / "two_windows.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
    return path, load_audio(path)


@pytest.fixture(scope="module")
def fox(clips) -> tuple[Path, np.ndarray]:
    path = clips["en_fox.wav"]["path"]
    return path, load_audio(path)


@pytest.fixture(scope="module")
def fast_fox(clips, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The fox at twice the speed: hard enough for tiny.en that the beam search's options change its choice."""
    audio = load_audio(clips["en_fox.wav"]["path"])[::2].copy()
    path = tmp_path_factory.mktemp("audio") / "fast_fox.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
    return path, load_audio(path)


def ours(bundle: Path, audio: Path, tmp_path: Path, *args: str) -> dict:
    """The CLI's JSON result for one file."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    result = runner.invoke(cli.app, ["transcribe", str(audio), "--bundle", str(bundle), "-f", "json", "-o", str(out),
                                     *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / f"{audio.stem}.json").read_text())


def theirs(model, audio: np.ndarray, **options) -> dict:
    return whisper.transcribe(model, audio, fp16=False, temperature=options.pop("temperature", 0.0), **options)


def spoken(segments, duration: float) -> list[tuple[float, float, str]]:
    """(start, end, text) of the segments with text, times cut to the audio: openai-whisper keeps times in the
    padding after the audio (and segments wholly there), ours clamps them to its end."""
    rows = [(min(s["start"], duration), min(s["end"], duration), s["text"]) for s in segments]
    return [(round(a, 2), round(b, 2), text) for a, b, text in rows if a < b and text.strip()]


def _recording(monkeypatch, owner, method: str) -> list[list[int]]:
    """The prompt tokens of every decode call, recorded around the original method (which still runs)."""
    seen: list[list[int]] = []
    original = getattr(owner, method)

    def record(*args):  # a method's self, or a module function's first argument
        tokens = original(*args)
        seen.append(list(tokens))
        return tokens

    monkeypatch.setattr(owner, method, record)
    return seen


@pytest.mark.parametrize("args, options", [
    (("--initial-prompt", "Quick brown foxes."), {"initial_prompt": "Quick brown foxes."}),
    (("--initial-prompt", "Quick brown foxes.", "--no-condition-on-previous-text"),
     {"initial_prompt": "Quick brown foxes.", "condition_on_previous_text": False}),
    (("--initial-prompt", "Stella.", "--no-condition-on-previous-text", "--carry-initial-prompt"),
     {"initial_prompt": "Stella.", "condition_on_previous_text": False, "carry_initial_prompt": True}),
])
def test_window_prompts_are_openais(args, options, openai_model, two_windows, tiny_bundle, tmp_path, monkeypatch):
    """--initial-prompt goes after <|startofprev|> in the first window; --no-condition-on-previous-text leaves
    the later windows without earlier text (openai-whisper: without any prompt, unless --carry-initial-prompt);
    every window's prompt tokens and the segments are openai-whisper's."""
    path, audio = two_windows
    mine = _recording(monkeypatch, decoding, "initial_tokens")  # every window's, as WindowDecode builds it
    result = ours(tiny_bundle, path, tmp_path, *args, *GREEDY)
    reference = _recording(monkeypatch, whisper.decoding.DecodingTask, "_get_initial_tokens")
    expected = theirs(openai_model, audio, **options)
    assert len(mine) >= 2 and mine == reference
    tok = Bundle.open(tiny_bundle).tokenizer()
    prompt = tok.encode(" " + options["initial_prompt"])
    sot = [tok.special.sot]
    assert mine[0][: len(prompt) + 1] == [tok.special.sot_prev, *prompt]
    later = [window[: window.index(tok.special.sot)] for window in mine[1:]]
    if options.get("carry_initial_prompt"):
        assert all(p == [tok.special.sot_prev, *prompt] for p in later)  # the initial prompt only, every window
    elif options.get("condition_on_previous_text", True):
        assert all(len(p) > len(prompt) + 1 for p in later)  # the text so far follows the initial prompt
    else:
        assert all(window[: window.index(tok.special.sot) + 1] == sot for window in mine[1:])  # no prompt at all
    duration = len(audio) / SAMPLE_RATE
    assert spoken(result["segments"], duration) == spoken(expected["segments"], duration)


def test_clip_timestamps_confine_the_windows_as_openai(openai_model, two_windows, tiny_bundle, tmp_path):
    """Only the clips 0-2 s and 27 s-the end are transcribed, each from its start, as openai-whisper does."""
    path, audio = two_windows
    result = ours(tiny_bundle, path, tmp_path, "--clip-timestamps", "0,2,27", *GREEDY)
    expected = theirs(openai_model, audio, clip_timestamps="0,2,27")
    duration = len(audio) / SAMPLE_RATE
    assert spoken(result["segments"], duration) == spoken(expected["segments"], duration)
    seeks = {s["seek"] for s in result["segments"]}
    assert {0, 2700} <= seeks and all(s < 200 or s >= 2700 for s in seeks)  # windows start in the clips only
    full = ours(tiny_bundle, path, tmp_path, *GREEDY)
    assert any(200 <= s["seek"] < 2700 for s in full["segments"])


def test_clips_that_start_past_the_end_are_passed_over(two_windows, tiny_bundle, tmp_path):
    """A clip starting after the audio's end (its end cut to the audio) holds no window: the clips before it are
    transcribed as without it, and a list of such clips alone gives no segments (no error)."""
    path, audio = two_windows
    duration = len(audio) / SAMPLE_RATE
    past = f"{duration + 5:.1f},{duration + 9:.1f}"
    within = ours(tiny_bundle, path, tmp_path, "--clip-timestamps", "0,2,27,30", *GREEDY)
    beyond = ours(tiny_bundle, path, tmp_path, "--clip-timestamps", f"0,2,27,30,{past}", *GREEDY)
    assert within["segments"] and beyond["segments"] == within["segments"]
    assert ours(tiny_bundle, path, tmp_path, "--clip-timestamps", past, *GREEDY)["segments"] == []


def test_a_window_with_a_full_prompt_samples_as_many_tokens_as_openais(openai_model, fox, tiny_bundle, tmp_path):
    """With the longest prompt (223 tokens) and <|endoftext|> suppressed, the window runs until the row holds
    more than n_ctx tokens, as openai-whisper's loop does: the last sampled token is never fed back, so it is the
    (n_ctx + 1)-th. Same tokens as openai-whisper's."""
    path, audio = fox
    tok = Bundle.open(tiny_bundle).tokenizer()
    prompt = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 30)
    args = ("--initial-prompt", prompt, "--suppress-tokens", f"-1,{tok.special.eot}", "--without-timestamps")
    result = ours(tiny_bundle, path, tmp_path, *args, *GREEDY)
    expected = theirs(openai_model, audio, initial_prompt=prompt, suppress_tokens=f"-1,{tok.special.eot}",
                      without_timestamps=True)
    mine = [t for s in result["segments"] for t in s["tokens"]]
    theirs_tokens = [t for s in expected["segments"] for t in s["tokens"]]
    n_ctx = openai_model.dims.n_text_ctx
    sample_begin = 1 + (n_ctx // 2 - 1) + 2  # <|startofprev|>, the prompt's last 223 tokens, <|sot|> <|notimestamps|>
    assert mine == theirs_tokens
    assert len(mine) == n_ctx + 1 - sample_begin


BEAM = ("--beam-size", "5", "--without-timestamps", *NO_FALLBACK)


@pytest.mark.parametrize("args, options", [
    (("--patience", "2"), {"patience": 2.0}),  # more finished sequences before stopping: a longer one wins
    (("--length-penalty", "1"), {"length_penalty": 1.0}),  # Google NMT's length penalty: here the short one wins
])
def test_beam_search_options_are_openais(args, options, openai_model, fast_fox, tiny_bundle, tmp_path):
    path, audio = fast_fox
    result = ours(tiny_bundle, path, tmp_path, *BEAM, *args)
    expected = theirs(openai_model, audio, beam_size=5, without_timestamps=True, **options)
    assert [s["tokens"] for s in result["segments"]] == [s["tokens"] for s in expected["segments"]]
    plain = ours(tiny_bundle, path, tmp_path, *BEAM)
    assert result["text"] != plain["text"], result["text"]  # the option changed the transcript


@pytest.mark.parametrize("args, options", [
    (("--suppress-tokens", "-1,3290"), {"suppress_tokens": "-1,3290"}),  # 3290: " dog"
    (("--prefix", "The quick brown"), {"prefix": "The quick brown"}),
])
def test_greedy_options_are_openais(args, options, openai_model, fox, tiny_bundle, tmp_path):
    path, audio = fox
    result = ours(tiny_bundle, path, tmp_path, *GREEDY, *args)
    expected = theirs(openai_model, audio, **options)
    assert [s["tokens"] for s in result["segments"]] == [s["tokens"] for s in expected["segments"]]
    plain = ours(tiny_bundle, path, tmp_path, *GREEDY)
    assert result["segments"][0]["tokens"] != plain["segments"][0]["tokens"]  # the option changed the transcript
    if "suppress_tokens" in options:  # the suppressed token is gone where greedy decoding had it
        assert 3290 in plain["segments"][0]["tokens"] and 3290 not in result["segments"][0]["tokens"]


def test_tsv_and_verbose_are_openais(openai_model, fox, tiny_bundle, tmp_path):
    """-f tsv: openai-whisper's writer's file (start and end in integer milliseconds, the text); --verbose: its
    line per segment as decoded."""
    path, audio = fox
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["transcribe", str(path), "--bundle", str(tiny_bundle), "-f", "all", "-o",
                                     str(out), "--verbose", *GREEDY])
    assert result.exit_code == 0, result.output
    ours_json = json.loads((out / "en_fox.json").read_text())
    whisper.utils.get_writer("tsv", str(tmp_path))(ours_json, "openai.wav")
    assert (out / "en_fox.tsv").read_text() == (tmp_path / "openai.tsv").read_text()
    header, row = (out / "en_fox.tsv").read_text().splitlines()
    assert header == "start\tend\ttext" and re.fullmatch(r"0\t\d{4}\tThe quick \S.* dog\.", row), row
    printed = io.StringIO()
    with redirect_stdout(printed):
        theirs(openai_model, audio, verbose=True)
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("[")]
    assert lines and [line for line in result.stderr.splitlines() if line.startswith("[0")] == lines


def _temperatures(result: dict) -> list[float]:
    return [s["temperature"] for s in result["segments"]]


SAMPLED = ("--beam-size", "1", "--without-timestamps", "--sample-len", "24", "--best-of", "2")  # a cheap window to sample


def test_fallback_thresholds_and_increment(fox, tiny_bundle, tmp_path):
    """A window falls back to the next temperature when its compression ratio is above the threshold or its
    average log probability below (neither can be <= 0 or >= 0 here); None turns a check off; the schedule is
    --temperature, + increment, ... up to 1.0; a window too unsure and likely silent is skipped, not retried."""
    path, _ = fox

    def run(*args):
        return ours(tiny_bundle, path, tmp_path, "--seed", "1", *SAMPLED, *args)

    assert _temperatures(run()) == [0.0]
    assert _temperatures(run("--logprob-threshold", "0")) == [1.0]
    assert _temperatures(run("--logprob-threshold", "0", "--temperature-increment-on-fallback", "0.3")) == [0.9]
    assert _temperatures(run("--logprob-threshold", "0", "--temperature", "0.5")) == [0.9]
    assert _temperatures(run("--logprob-threshold", "0", *NO_FALLBACK)) == [0.0]
    assert _temperatures(run("--compression-ratio-threshold", "0")) == [1.0]
    assert _temperatures(run("--compression-ratio-threshold", "None", "--logprob-threshold", "None")) == [0.0]
    silent = run("--logprob-threshold", "0", "--no-speech-threshold", "0")
    assert silent["segments"] == [] and silent["text"] == ""
    assert _temperatures(run("--logprob-threshold", "0", "--no-speech-threshold", "None")) == [1.0]


def test_seed_makes_sampling_and_fallback_reproducible(fox, tiny_bundle, tmp_path):
    path, _ = fox
    forced = ("--logprob-threshold", "0", *SAMPLED)  # every temperature of the schedule is sampled

    def run(seed: str) -> list:
        result = ours(tiny_bundle, path, tmp_path, "--seed", seed, *forced)
        return [(s["tokens"], s["temperature"], s["avg_logprob"]) for s in result["segments"]]

    first = run("7")
    assert first[0][1] == 1.0 and first == run("7")
    assert run("8") != first


def test_best_of_keeps_the_most_likely_sample(fox, tiny_bundle, tmp_path):
    path, _ = fox

    def avg_logprob(best_of: str, seed: str) -> float:
        result = ours(tiny_bundle, path, tmp_path, "--temperature", "1", *NO_FALLBACK, "--seed", seed,
                      "--without-timestamps", "--sample-len", "24", "--best-of", best_of)
        return result["segments"][0]["avg_logprob"]

    # summed over three seeds: one single sample can be luckier than the best of eight others (a few % of seeds)
    seeds = ("0", "1", "2")
    assert sum(avg_logprob("8", s) for s in seeds) > sum(avg_logprob("1", s) for s in seeds)


def test_skip_silence_starts_windows_at_speech(two_windows, tiny_bundle, tmp_path):
    """Not in openai-whisper: without it, the 25 s of silence start the second window and its first timestamp
    can come at most 1 s in, so Stella's sentence is placed 25 s early or lost; with it, the window starts at her."""
    path, _ = two_windows
    plain = ours(tiny_bundle, path, tmp_path, *GREEDY)
    skipped = ours(tiny_bundle, path, tmp_path, *GREEDY, "--skip-silence")
    stella = [s for s in skipped["segments"] if "stella" in s["text"].lower()]
    assert stella and 27.5 <= stella[0]["start"] <= 28.5  # she starts at 28.1 s
    assert all(s["start"] < 27.5 for s in plain["segments"] if "stella" in s["text"].lower())


def test_more_decoding_fields_reach_the_decoder(fox, tiny_bundle, tmp_path):
    """--sample-len caps the tokens of a window, --without-timestamps leaves out the timestamp tokens."""
    path, _ = fox
    timestamp_begin = Bundle.open(tiny_bundle).tokenizer().special.timestamp_begin
    plain = ours(tiny_bundle, path, tmp_path, *GREEDY)
    assert any(t >= timestamp_begin for t in plain["segments"][0]["tokens"])
    text_only = ours(tiny_bundle, path, tmp_path, *GREEDY, "--without-timestamps")
    assert all(t < timestamp_begin for t in text_only["segments"][0]["tokens"])
    short = ours(tiny_bundle, path, tmp_path, *GREEDY, "--without-timestamps",
                 "--sample-len", "3")
    assert short["segments"][0]["tokens"] == text_only["segments"][0]["tokens"][:3]


def test_word_timestamps_and_subtitle_options_are_openais(openai_model, fox, tiny_bundle, tmp_path):
    """--word-timestamps with openai-whisper's subtitle options: the srt and vtt files openai-whisper's CLI writes
    (its transcribe(word_timestamps=True) and writers on the same weights and alignment heads), and its JSON words."""
    path, audio = fox
    out = tmp_path / "out"
    subtitles = {"highlight_words": True, "max_line_width": 20, "max_line_count": 2, "max_words_per_line": None}
    result = runner.invoke(cli.app, ["transcribe", str(path), "--bundle", str(tiny_bundle), "-f", "all", "-o",
                                     str(out), "--word-timestamps", "--highlight-words", "--max-line-width", "20",
                                     "--max-line-count", "2", *GREEDY])
    assert result.exit_code == 0, result.output
    openai_model.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])  # the bundle's (load_model's for the name)
    reference = whisper.transcribe(openai_model, audio, word_timestamps=True, temperature=0.0, fp16=False)
    for fmt in ("srt", "vtt"):
        whisper.utils.get_writer(fmt, str(tmp_path))(reference, "openai.wav", subtitles)
        # openai-whisper's writers leave a blank line after the last cue too; its vtt times drop a zero hour
        want = (tmp_path / f"openai.{fmt}").read_text()[:-1]
        want = re.sub(r"(?m)^(\d\d:\d\d\.\d{3}) --> (\d\d:\d\d\.\d{3})$", r"00:\1 --> 00:\2", want)
        assert (out / f"en_fox.{fmt}").read_text() == want, fmt
    ours = [w for s in json.loads((out / "en_fox.json").read_text())["segments"] for w in s["words"]]
    want = [w for s in reference["segments"] for w in s["words"]]
    assert [(w["word"], w["start"], w["end"]) for w in ours] == [(w["word"], w["start"], w["end"]) for w in want]
    assert np.allclose([w["probability"] for w in ours], [w["probability"] for w in want], atol=1e-3)
    assert (out / "en_fox.srt").read_text().count("<u>") == len(ours) >= 8
