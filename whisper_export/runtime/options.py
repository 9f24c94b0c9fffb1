"""Decoding and transcription options, with openai-whisper's names, defaults and semantics.

Both classes are frozen and check themselves on construction (`_verify`), so an impossible combination
fails before any audio is read: the CLI maps these ValueErrors to exit code 2. Each field carries its help
text (`described`): `whisper-export transcribe` makes one option per field from it, so a new field is a new
option with one default and one description.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from whisper_export import graph_io
from whisper_export.runtime.vad import VadOptions
from whisper_export.runtime.words import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS
from whisper_export.tokenizer import LANGUAGES, TASKS, TO_LANGUAGE_CODE

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# openai-whisper's CLI builds the fallback schedule from --temperature in these steps, up to 1.0
DEFAULT_TEMPERATURE_INCREMENT = 0.2
# beams (or samples) per audio: a beam search takes beam_size + 1 candidates per row from the device, and
# top_select.onnx hands out TOP_K of them; every beam is also a decoder row with its own self-attention cache
# (batch_size x beam_size rows in memory at once)
MAX_BEAM_SIZE = graph_io.TOP_K - 1


def described(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with its help text. cli: how `whisper-export transcribe` differs for this field:
    cli_default (openai-whisper's CLI default where it differs from its API's), cli=False (no option)."""
    return field(default=default, metadata={"help": help, **cli})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool): nan and inf compare false with everything and pass range checks."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fallback_temperatures(temperature: float, increment: float | None) -> tuple[float, ...]:
    """openai-whisper's CLI rule: temperature, temperature + increment, ... up to 1.0 (just temperature when
    increment is None or temperature is above 1)."""
    if not _is_number(temperature) or temperature < 0:
        raise ValueError(f"temperature: received {temperature!r}, expected a finite float >= 0")
    if increment is None:
        return (float(temperature),)
    if not _is_number(increment) or increment <= 0:
        raise ValueError(
            f"temperature_increment_on_fallback: received {increment!r}, expected a finite float > 0 or None "
            "(no fallback)"
        )
    steps = math.floor((1.0 + 1e-6 - temperature) / increment) + 1 if temperature <= 1.0 else 1
    return tuple(round(temperature + i * increment, 6) for i in range(steps))


@dataclass(frozen=True)
class DecodingOptions:
    """One decoding pass over 30 s windows (openai-whisper's DecodingOptions, minus fp16: the bundle decides)."""

    task: str = described("transcribe", "transcribe (speech to text in its language) or translate (to English; "
                          "multilingual models only)")
    language: str | None = described(None, "language spoken, a code such as en, de or a name such as german; "
                                           "None: detect from the first 30 s (English-only models: en)")
    temperature: float = described(0.0, "0: greedy or beam search; > 0: sampling", cli=False)
    sample_len: int | None = described(None, "most tokens sampled per 30 s window; None: half the text context")
    best_of: int | None = described(None, "candidates sampled at temperature > 0, the most likely kept; "
                                          f"at most {MAX_BEAM_SIZE}", cli_default=5)
    beam_size: int | None = described(None, "beams of the beam search at temperature 0 (1 or None: greedy); "
                                            f"at most {MAX_BEAM_SIZE}", cli_default=5)
    patience: float | None = described(None, "beam search patience (arXiv:2204.05424): go on until beam_size x "
                                             "patience sequences finished; None: 1.0, conventional beam search")
    length_penalty: float | None = described(None, "length penalty alpha in [0, 1] (arXiv:1609.08144); None: "
                                                   "divide the log probability by the length")
    prompt: str | list[int] | None = described(None, "previous text, fed after <|startofprev|>", cli=False)
    prefix: str | list[int] | None = described(None, "text each 30 s window's transcript is taken to begin with: "
                                                     "the transcript continues it")
    suppress_tokens: str | Iterable[int] | None = described("-1", "comma-separated token ids never sampled; -1: "
                                                                  "most symbols that are not speech")
    suppress_blank: bool = described(True, "never start a window's text with a blank or the end of text")
    without_timestamps: bool = described(False, "text only: no timestamp tokens, one segment per 30 s window")
    max_initial_timestamp: float | None = described(1.0, "seconds: a window's first timestamp may not be later")
    seed: int | None = described(None, "seed of temperature sampling (the fallback temperatures too): the same "
                                       "seed and inputs give the same transcript; None: fresh")

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: received {self.task!r}, expected one of {', '.join(TASKS)}")
        if self.language is not None:
            key = self.language.lower() if isinstance(self.language, str) else self.language
            if not isinstance(key, str) or TO_LANGUAGE_CODE.get(key, key) not in LANGUAGES:
                raise ValueError(
                    f"language: received {self.language!r}, expected None (detect) or a code such as 'en', 'de' "
                    f"(one of {len(LANGUAGES)}) or a name such as 'german'"
                )
        if not _is_number(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"temperature: received {self.temperature!r}, expected one float >= 0 "
                "(a fallback schedule belongs to TranscribeOptions.temperature)"
            )
        for name in ("sample_len", "best_of", "beam_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name}: received {value!r}, expected None or an int >= 1")
        for name in ("best_of", "beam_size"):
            value = getattr(self, name)
            if value is not None and value > MAX_BEAM_SIZE:
                raise ValueError(
                    f"{name}: received {value}, expected at most {MAX_BEAM_SIZE} (candidates per audio that the "
                    "device picks in one step; each is a decoder row with its own cache)"
                )
        if self.beam_size is not None and self.best_of is not None:
            raise ValueError(
                f"beam_size and best_of: received beam_size={self.beam_size} and best_of={self.best_of}, "
                "expected at most one (beam search is deterministic, best_of samples)"
            )
        if self.temperature == 0 and self.best_of is not None:
            raise ValueError(
                f"best_of: received {self.best_of} with temperature 0, expected None: greedy samples are identical"
            )
        if self.temperature > 0 and self.beam_size is not None:
            raise ValueError(
                f"beam_size: received {self.beam_size} with temperature {self.temperature}, expected None: "
                "beam search is for temperature 0 (use best_of when sampling)"
            )
        if self.patience is not None:
            if self.beam_size is None:
                raise ValueError(f"patience: received {self.patience} without beam_size, expected beam_size to be set")
            if not _is_number(self.patience) or self.patience <= 0:
                raise ValueError(f"patience: received {self.patience!r}, expected a float > 0")
        if self.length_penalty is not None and not (_is_number(self.length_penalty) and 0 <= self.length_penalty <= 1):
            raise ValueError(f"length_penalty: received {self.length_penalty!r}, expected None or a float in [0, 1]")
        if self.max_initial_timestamp is not None and not (
            _is_number(self.max_initial_timestamp) and self.max_initial_timestamp >= 0
        ):
            raise ValueError(
                f"max_initial_timestamp: received {self.max_initial_timestamp!r}, expected None or seconds >= 0"
            )
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed: received {self.seed!r}, expected None or an int >= 0")
        self.suppress_token_ids()  # raises on a malformed list

    def suppress_token_ids(self) -> tuple[int, ...]:
        """The user's ids (-1 kept as the marker for 'non-speech tokens'); control tokens are added later."""
        value = self.suppress_tokens
        if value is None:
            return ()
        try:
            if isinstance(value, str):
                ids = tuple(int(t) for t in value.split(",") if t.strip())
            else:
                ids = tuple(int(t) for t in value)
        except (TypeError, ValueError):
            raise ValueError(
                f"suppress_tokens: received {value!r}, expected comma-separated token ids such as '-1' or '-1,123'"
            ) from None
        if any(t < -1 for t in ids):
            raise ValueError(f"suppress_tokens: received {value!r}, expected ids >= 0, or -1 for non-speech tokens")
        return ids


@dataclass(frozen=True)
class TranscribeOptions:
    """Long-form transcription (openai-whisper's transcribe() arguments)."""

    temperature: float | tuple[float, ...] = described(
        DEFAULT_TEMPERATURES, "temperatures tried in order until a window's result passes the thresholds", cli=False)
    compression_ratio_threshold: float | None = described(
        2.4, "a window whose text's gzip compression ratio is above this is too repetitive: retry hotter")
    logprob_threshold: float | None = described(
        -1.0, "a window whose average log probability is below this is too unsure: retry hotter")
    no_speech_threshold: float | None = described(
        0.6, "a window whose <|nospeech|> probability is above this and that is too unsure is silence: skipped")
    condition_on_previous_text: bool = described(
        True, "prompt each window with the text so far; off: no earlier text in the prompt (less consistent "
              "text, less prone to getting stuck in a loop)")
    initial_prompt: str | None = described(None, "text before the first window (names, spelling, style)")
    carry_initial_prompt: bool = described(
        False, "prompt every window with the initial prompt, before the text so far (if conditioned on it)")
    batch_size: int = described(8, "audios decoded together")
    # Not in openai-whisper: start each window at the next sound instead of in a long silence. Whisper's
    # first timestamp of a window must come within max_initial_timestamp (1 s) of its start, so speech that
    # begins 15 s into a window gets a segment starting 14 s early; skipping near-digital silence (60 dB
    # under the loudest frame) keeps segment starts on the speech and never decodes pure silence.
    skip_silence: bool = described(
        False, "start each 30 s window at the next sound (not in openai-whisper): segment times stay on the "
               "speech after long silences")
    clip_timestamps: str | tuple[float, ...] = described(
        "0", "start,end,start,end,... seconds of the clips to transcribe, in order; the last end defaults to "
             "the end of the file")
    # Not in openai-whisper: seconds of audio at most per file, read from its header before anything is decoded
    # (None: no limit); a longer file fails alone with AudioError, so a mistaken or hostile input cannot keep
    # a batch busy for days
    max_duration: float | None = described(
        86400.0, "seconds of audio at most per file, checked from its header before decoding (None: no limit)")
    # Not in openai-whisper: decode only the speech that Silero VAD finds (runtime/vad.py), cut into chunks
    # of at most 30 s that are decoded together up to batch_size, each on its own: no conditioning on earlier
    # chunks, whatever condition_on_previous_text says (runtime/vad_transcribe.py)
    vad: bool = described(False, "decode only the speech Silero VAD finds, in chunks of at most 30 s decoded "
                                 "together and each on its own (not in openai-whisper; see README)")
    vad_options: VadOptions | None = described(None, "the speech detection's settings; None: VadOptions()",
                                               cli=False)
    # openai-whisper's word timestamps: each segment's words with start, end and probability, from the
    # cross-attention of the bundle's alignment heads (align.onnx) and dynamic time warping
    word_timestamps: bool = described(
        False, "each segment's words with start, end and probability (needs a bundle with align.onnx)")
    prepend_punctuations: str = described(
        PREPEND_PUNCTUATIONS, "with word timestamps: these punctuation marks join the next word")
    append_punctuations: str = described(
        APPEND_PUNCTUATIONS, "with word timestamps: these punctuation marks join the previous word")
    hallucination_silence_threshold: float | None = described(
        None, "with word timestamps: skip silences longer than this many seconds around a segment that looks "
              "hallucinated")

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        self._verify_words()
        temps = self.temperatures
        if not temps or any(not _is_number(t) or t < 0 for t in temps):
            raise ValueError(
                f"temperature: received {self.temperature!r}, expected a finite float >= 0 or a non-empty tuple of them"
            )
        for name in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold"):
            value = getattr(self, name)
            if value is not None and not _is_number(value):
                raise ValueError(f"{name}: received {value!r}, expected None or a finite float")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size: received {self.batch_size!r}, expected an int >= 1")
        self.clips()  # raises on a malformed list
        d = self.max_duration
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d < float("inf")):
            raise ValueError(f"max_duration: received {d!r}, expected None or seconds > 0 (finite)")
        if not isinstance(self.vad, bool):
            raise ValueError(f"vad: received {self.vad!r}, expected True or False")
        if self.vad_options is not None:
            if not isinstance(self.vad_options, VadOptions):
                raise ValueError(f"vad_options: received {self.vad_options!r}, expected None or a VadOptions")
            if not self.vad:
                raise ValueError(f"vad_options: received {self.vad_options!r} with vad=False, expected vad=True")

    def _verify_words(self) -> None:
        if not isinstance(self.word_timestamps, bool):
            raise ValueError(f"word_timestamps: received {self.word_timestamps!r}, expected True or False")
        for name in ("prepend_punctuations", "append_punctuations"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}: received {getattr(self, name)!r}, expected a string of punctuation marks")
        threshold = self.hallucination_silence_threshold
        if threshold is None:
            return
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"hallucination_silence_threshold: received {threshold!r}, expected None or seconds >= 0")
        if not self.word_timestamps:
            raise ValueError(f"hallucination_silence_threshold: received {threshold!r} without word_timestamps, "
                             "expected word_timestamps=True (the rule needs the words' times)")

    @property
    def temperatures(self) -> tuple[float, ...]:
        t = self.temperature
        if isinstance(t, (int, float)):
            return (float(t),)
        return tuple(t)

    def clips(self) -> tuple[tuple[float, float | None], ...]:
        """clip_timestamps as (start, end) seconds, in order; end None: the end of the file (openai-whisper's
        rule for an odd count). Transcription's seek stays inside them."""
        value = self.clip_timestamps
        expected = "expected 'start,end,start,end,...' seconds, each >= 0 and larger than the one before"
        try:
            if isinstance(value, str):
                times = [float(t) for t in value.split(",")] if value.strip() else [0.0]
            else:
                times = [float(t) for t in value] or [0.0]
        except (TypeError, ValueError):
            raise ValueError(f"clip_timestamps: received {value!r}, {expected}") from None
        if any(not math.isfinite(t) or t < 0 for t in times) or any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError(f"clip_timestamps: received {value!r}, {expected}")
        ends: list[float | None] = [*times[1::2], None]
        return tuple(zip(times[::2], ends))


def decoding_at(decoding: Mapping[str, Any], temperature: float) -> DecodingOptions:
    """The options of one fallback step: beam search only at 0, best_of only above (openai's rule)."""
    kwargs = {k: v for k, v in decoding.items() if k != "temperature"}
    if temperature > 0:
        kwargs.pop("beam_size", None)
        kwargs.pop("patience", None)
    else:
        kwargs.pop("best_of", None)
    return DecodingOptions(**kwargs, temperature=temperature)


_DECODING = {f.name for f in fields(DecodingOptions)}
_TRANSCRIBE = {f.name for f in fields(TranscribeOptions)}


def split_options(options: Mapping[str, Any]) -> tuple[TranscribeOptions, dict[str, Any]]:
    """Route keyword options to TranscribeOptions and the DecodingOptions keywords; `temperature` is the
    fallback schedule. The decoding options are checked at every temperature here, so beam_size=0 fails
    before any audio is read.
    """
    unknown = sorted(set(options) - _DECODING - _TRANSCRIBE)
    if unknown:
        raise TypeError(f"received unknown option(s) {unknown}, expected any of {sorted(_DECODING | _TRANSCRIBE)}")
    transcribe = TranscribeOptions(**{k: v for k, v in options.items() if k in _TRANSCRIBE})
    decoding = {k: v for k, v in options.items() if k in _DECODING and k != "temperature"}
    for t in transcribe.temperatures:
        decoding_at(decoding, t)
    return transcribe, decoding
