"""`whisper-export transcribe`'s options come from the options dataclasses' fields (one default, one help text):
every field is an option with openai-whisper's default, a new field becomes an option, and bad values fail up
front with exit code 2 and one line naming the option, before any model is loaded or audio is read."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import cli
from whisper_export.commands import transcribe as command
from whisper_export.commands.field_options import command_signature, field_options
from whisper_export.runtime.options import (
    DEFAULT_TEMPERATURES,
    MAX_BEAM_SIZE,
    DecodingOptions,
    TranscribeOptions,
    described,
    fallback_temperatures,
)

runner = CliRunner()
# the options the issue lists from openai-whisper's CLI (its names with dashes)
OPENAI_OPTIONS = ("--initial-prompt", "--condition-on-previous-text", "--temperature-increment-on-fallback",
                  "--compression-ratio-threshold", "--logprob-threshold", "--no-speech-threshold", "--patience",
                  "--best-of", "--length-penalty", "--suppress-tokens", "--clip-timestamps", "--temperature",
                  "--beam-size", "--language", "--task", "--carry-initial-prompt", "--verbose", "--seed",
                  "--skip-silence", "--output-format", "--output-dir", "--threads")


def _transcribe_command():
    return typer.main.get_command(cli.app).commands["transcribe"]


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_every_field_is_an_option_with_its_default_and_help():
    params = {p.name: p for p in _transcribe_command().params}
    for cls in (DecodingOptions, TranscribeOptions):
        for f in fields(cls):
            if f.metadata.get("cli", True) is False:  # prompt; temperature is --temperature and its increment
                assert f.name not in {o.name for o in command.OPTIONS}
                assert f.name not in params or f.name == "temperature"
                continue
            assert "help" in f.metadata, f"{cls.__name__}.{f.name} has no help text"
            option = params[f.name]
            assert option.opts[0] == "--" + f.name.replace("_", "-")
            assert f.metadata["help"] in option.help
            want = f.metadata.get("cli_default", f.default)
            assert option.default in ((None if want is None else str(want)), want), (f.name, option.default, want)
    assert all(flag in [o for p in params.values() for o in p.opts] for flag in OPENAI_OPTIONS)


def test_defaults_are_openai_whispers():
    """The defaults of openai-whisper's transcribe() and DecodingOptions, read from openai-whisper itself;
    beam_size and best_of are its CLI's 5, and its CLI's temperature schedule is ours."""
    whisper = pytest.importorskip("whisper")
    theirs = inspect.signature(whisper.transcribe).parameters
    ours = {o.name: o for o in command.OPTIONS}
    for name in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold",
                 "condition_on_previous_text", "initial_prompt", "carry_initial_prompt", "clip_timestamps"):
        assert ours[name].default == theirs[name].default, name
    decoding = {f.name: f.default for f in fields(whisper.DecodingOptions)}
    for name in ("task", "language", "sample_len", "patience", "length_penalty", "prefix", "suppress_tokens",
                 "suppress_blank", "without_timestamps", "max_initial_timestamp"):
        assert ours[name].default == decoding[name], name
    assert ours["beam_size"].default == ours["best_of"].default == 5
    assert fallback_temperatures(0.0, 0.2) == DEFAULT_TEMPERATURES == TranscribeOptions().temperatures
    assert fallback_temperatures(0.5, 0.2) == (0.5, 0.7, 0.9)  # np.arange(0.5, 1 + 1e-6, 0.2), as openai's CLI
    assert fallback_temperatures(0.3, None) == (0.3,)


def test_help_lists_the_options_with_their_defaults():
    result = runner.invoke(cli.app, ["transcribe", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    rows: dict[str, str] = {}
    for line in result.stdout.splitlines():  # an option's row, and the lines its help wraps onto
        if line.startswith("│ --"):
            flag = line.split()[1]
            rows[flag] = line
        elif line.startswith("│    ") and rows:
            rows[flag] += " " + line.strip("│ ")
    for flag, default in (("--compression-ratio-threshold", "2.4"), ("--beam-size", "5"), ("--best-of", "5"),
                          ("--logprob-threshold", "-1.0"), ("--suppress-tokens", "-1"), ("--clip-timestamps", "0"),
                          ("--temperature-increment-on-fallback", "0.2"), ("--initial-prompt", "None")):
        assert f"[default: {default}]" in rows[flag], rows[flag]
    assert "--no-condition-on-previous-text" in rows["--condition-on-previous-text"]


@dataclass(frozen=True)
class _NewOptions:
    """Fields as another engineer adds them (WriterOptions, word timestamps): each must become an option."""

    highlight_words: bool = described(False, "underline each word as it is spoken")
    max_line_width: int | None = described(None, "characters per line")
    prepend_punctuations: str = described("\"'¿([{-", "merged with the next word")
    threshold: float | None = described(0.5, "a threshold", cli_default=0.25)


def test_a_new_field_becomes_an_option():
    received = {}

    def explicit(audio: str) -> None:
        pass

    def command_fn(**params):
        received.update(params)

    command_fn.__signature__ = command_signature(inspect.signature(explicit), field_options(_NewOptions))
    app = typer.Typer()
    app.command("run")(command_fn)
    app.callback()(lambda: None)
    options = {o.name: o for o in field_options(_NewOptions)}

    result = runner.invoke(app, ["run", "a.wav"])
    assert result.exit_code == 0, result.output
    assert {k: options[k].parse(v) for k, v in received.items() if k != "audio"} == {
        "highlight_words": False, "max_line_width": None, "prepend_punctuations": "\"'¿([{-", "threshold": 0.25}
    result = runner.invoke(app, ["run", "a.wav", "--highlight-words", "--max-line-width", "42",
                                 "--prepend-punctuations", "(", "--threshold", "None"])
    assert result.exit_code == 0, result.output
    assert {k: options[k].parse(v) for k, v in received.items() if k != "audio"} == {
        "highlight_words": True, "max_line_width": 42, "prepend_punctuations": "(", "threshold": None}
    with pytest.raises(ValueError, match=r"--max-line-width: received 'wide', expected an int or None"):
        options["max_line_width"].parse("wide")
    with pytest.raises(TypeError, match="repeat a command parameter"):  # a field may not shadow an option
        def clash(highlight_words: bool) -> None:
            pass
        command_signature(inspect.signature(clash), field_options(_NewOptions))


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "nan"], "--temperature: received nan, expected a finite float >= 0"),
    (["--temperature", "inf"], "--temperature: received inf, expected a finite float >= 0"),
    (["--temperature-increment-on-fallback", "0"], "--temperature-increment-on-fallback: received 0.0"),
    (["--threads", str((os.cpu_count() or 1) + 1)], f"expected an int from 1 to {os.cpu_count()}"),
    (["--beam-size", str(MAX_BEAM_SIZE + 1)], f"--beam-size: received {MAX_BEAM_SIZE + 1}, expected at most 15"),
    (["--beam-size", "1000"], "--beam-size: received 1000, expected at most 15"),
    (["--best-of", "16", "--temperature", "0.5"], "--best-of: received 16, expected at most 15"),
    (["--beam-size", "wide"], "--beam-size: received 'wide', expected an int or None"),
    (["--threads", "many"], "--threads: received 'many', expected an int"),
    (["--temperature", "hot"], "--temperature: received 'hot', expected a number"),
    (["--patience", "nan"], "--patience: received nan, expected a float > 0"),
    (["--logprob-threshold", "inf"], "--logprob-threshold: received inf, expected None or a finite float"),
    (["--length-penalty", "2"], "--length-penalty: received 2.0, expected None or a float in [0, 1]"),
    (["--clip-timestamps", "10,5"], "--clip-timestamps: received '10,5', expected 'start,end,start,end,...'"),
    (["--suppress-tokens", "-1,abc"], "--suppress-tokens: received '-1,abc', expected comma-separated token ids"),
    (["--task", "summarize"], "--task: received 'summarize'"),
    (["-f", "docx", "-o", "out"], "output format: received 'docx'"),
    (["--highlight-words", "--max-line-width", "42"],
     "--highlight-words, --max-line-width: received without --word-timestamps, expected --word-timestamps"),
    (["--word-timestamps", "--max-line-count", "0"], "--max-line-count: received 0, expected None or an int >= 1"),
    (["--hallucination-silence-threshold", "2"],
     "--hallucination-silence-threshold: received 2.0 without word_timestamps"),
])
def test_bad_options_fail_before_any_work(args, fragment, tmp_path):
    """A bundle that does not exist and audio that does not exist: neither is touched (that would be exit 1)."""
    result = runner.invoke(cli.app, ["transcribe", str(tmp_path / "absent.wav"), "--bundle", str(tmp_path / "nope"),
                                     *args])
    assert result.exit_code == 2, result.output
    errors = _errors(result)
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_dir_fails_before_transcription(where, tiny_bundle, english_clips, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = blocker / "out" if where == "under_a_file" else Path("/proc/whisper-export-out")
    result = runner.invoke(cli.app, ["transcribe", str(english_clips[0]), "--bundle", str(tiny_bundle), "-o", str(out)])
    assert result.exit_code == 2
    errors = _errors(result)
    assert len(errors) == 1 and f"--output-dir {out}: cannot write there" in errors[0], result.stderr
    assert "[transcribe]" not in result.stderr  # nothing was transcribed
    assert not out.exists()


def test_exit_codes_for_models_and_bundles(tmp_path, english_clips):
    """A --model that is no checkpoint is an invalid option (2), from transcribe as from info; a bundle that
    cannot be loaded is 1 from transcribe and from check alike."""
    clip = str(english_clips[0])
    bad_model = runner.invoke(cli.app, ["transcribe", clip, "--model", str(tmp_path / "missing.pt")])
    assert bad_model.exit_code == 2 and "no such file or directory" in _errors(bad_model)[0]
    info = runner.invoke(cli.app, ["info", "--model", str(tmp_path / "missing.pt")])
    assert info.exit_code == 2
    (tmp_path / "not_a_bundle").mkdir()
    for args in (["transcribe", clip, "--bundle"], ["check", "--bundle"]):
        result = runner.invoke(cli.app, [*args, str(tmp_path / "not_a_bundle")])
        assert result.exit_code == 1, (args, result.output)
        assert len(_errors(result)) == 1 and "not_a_bundle" in _errors(result)[0]


def test_version_and_models():
    from whisper_export import __version__
    from reference_model.sources import PACKAGED

    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"whisper-export {__version__}\n"
    result = runner.invoke(cli.app, ["models"])
    assert result.exit_code == 0
    rows = result.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == list(PACKAGED)
    for row, packaged in zip(rows, PACKAGED.values()):
        assert packaged.pip_spec in row and row.endswith("yes")  # the test extra installs every packaged model
    assert "(default)" in rows[0]
