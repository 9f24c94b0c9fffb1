"""Decoding and transcription options, with openai-whisper's names, defaults and semantics.

Both classes are frozen and check themselves on construction (`_verify`), so an impossible combination
fails before any audio is read: the CLI maps these ValueErrors to exit code 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from whisper_export.runtime.words import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS
from whisper_export.tokenizer import LANGUAGES, TASKS, TO_LANGUAGE_CODE

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DecodingOptions:
    """One decoding pass over 30 s windows (openai-whisper's DecodingOptions, minus fp16: the bundle decides)."""

    task: str = "transcribe"  # or "translate"
    language: str | None = None  # None: detect (multilingual models) or "en" (English-only models)
    temperature: float = 0.0  # 0: greedy or beam search; > 0: sampling
    sample_len: int | None = None  # max tokens to sample; None: n_text_ctx // 2
    best_of: int | None = None  # independent samples at temperature > 0, best by log probability
    beam_size: int | None = None  # beams at temperature 0; None: greedy
    patience: float | None = None  # beam search keeps going until beam_size * patience sequences finished
    length_penalty: float | None = None  # None: divide by length; alpha in [0, 1]: Google NMT penalty
    prompt: str | list[int] | None = None  # previous text, fed after <|startofprev|>
    prefix: str | list[int] | None = None  # forced start of this window's text
    suppress_tokens: str | Iterable[int] | None = "-1"  # "-1": non-speech symbols; plus control tokens always
    suppress_blank: bool = True  # no blank or eot as the first sampled token
    without_timestamps: bool = False  # <|notimestamps|>: text only, one segment per window
    max_initial_timestamp: float | None = 1.0  # seconds; the first timestamp may not be later
    seed: int | None = None  # for temperature sampling; None: fresh entropy

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
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(
                f"temperature: received {self.temperature!r}, expected one float >= 0 "
                "(a fallback schedule belongs to TranscribeOptions.temperature)"
            )
        for name in ("sample_len", "best_of", "beam_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name}: received {value!r}, expected None or an int >= 1")
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
            if not isinstance(self.patience, (int, float)) or self.patience <= 0:
                raise ValueError(f"patience: received {self.patience!r}, expected a float > 0")
        if self.length_penalty is not None and not (
            isinstance(self.length_penalty, (int, float)) and 0 <= self.length_penalty <= 1
        ):
            raise ValueError(f"length_penalty: received {self.length_penalty!r}, expected None or a float in [0, 1]")
        if self.max_initial_timestamp is not None and not (
            isinstance(self.max_initial_timestamp, (int, float)) and self.max_initial_timestamp >= 0
        ):
            raise ValueError(
                f"max_initial_timestamp: received {self.max_initial_timestamp!r}, expected None or seconds >= 0"
            )
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

    temperature: float | tuple[float, ...] = DEFAULT_TEMPERATURES  # tried in order until a result passes
    compression_ratio_threshold: float | None = 2.4  # above: too repetitive, retry hotter
    logprob_threshold: float | None = -1.0  # below: too unsure, retry hotter
    no_speech_threshold: float | None = 0.6  # above (and unsure): the window is silence, skip it
    condition_on_previous_text: bool = True  # feed the text so far as the prompt
    initial_prompt: str | None = None  # text before the first window
    batch_size: int = 8  # audios decoded together in transcribe_batch
    # Not in openai-whisper: start each window at the next sound instead of in a long silence. Whisper's
    # first timestamp of a window must come within max_initial_timestamp (1 s) of its start, so speech that
    # begins 15 s into a window gets a segment starting 14 s early; skipping near-digital silence (60 dB
    # under the loudest frame) keeps segment starts on the speech and never decodes pure silence.
    skip_silence: bool = False
    # word timestamps (openai-whisper's): each segment's words with start, end and probability, from the
    # cross-attention of the bundle's alignment heads (align.onnx) and dynamic time warping
    word_timestamps: bool = False
    prepend_punctuations: str = PREPEND_PUNCTUATIONS  # with word_timestamps: these join the next word
    append_punctuations: str = APPEND_PUNCTUATIONS  # with word_timestamps: these join the previous word
    # with word_timestamps: skip silences longer than this many seconds around a segment that looks hallucinated
    hallucination_silence_threshold: float | None = None

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        self._verify_words()
        temps = self.temperatures
        if not temps or any(isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0 for t in temps):
            raise ValueError(
                f"temperature: received {self.temperature!r}, expected a float >= 0 or a non-empty tuple of them"
            )
        for name in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name}: received {value!r}, expected None or a float")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size: received {self.batch_size!r}, expected an int >= 1")

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
    fallback schedule. The decoding options are checked at every temperature now, so beam_size=0 fails here
    rather than after the audio has been read.
    """
    unknown = sorted(set(options) - _DECODING - _TRANSCRIBE)
    if unknown:
        raise TypeError(f"received unknown option(s) {unknown}, expected any of {sorted(_DECODING | _TRANSCRIBE)}")
    transcribe = TranscribeOptions(**{k: v for k, v in options.items() if k in _TRANSCRIBE})
    decoding = {k: v for k, v in options.items() if k in _DECODING and k != "temperature"}
    for t in transcribe.temperatures:
        decoding_at(decoding, t)
    return transcribe, decoding
