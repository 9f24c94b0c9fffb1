"""Whisper tokenizer for the numpy runtime, backed by a HuggingFace ``tokenizer.json`` or, for checkpoints
without tokenizer files, by Whisper's own vocabulary shipped in this package (``vocabulary.py``).

Kept free of torch and transformers so the runtime installs small: only the stdlib,
numpy and ``tokenizers`` are imported here.

Whisper's special-token layout depends on the model family, and the ids move between them:

=========================  =======  =====  ===========  ===============
family                     n_vocab  eot    languages    timestamp_begin
=========================  =======  =====  ===========  ===============
English-only (``*.en``)    51864    50256  99 (unused)  50363
multilingual (tiny..v2)    51865    50257  99           50364
large-v3 / v3-turbo        51866    50257  100 (+yue)   50365
=========================  =======  =====  ===========  ===============

So ids are never hard-coded: they are read by name from the tokenizer and then
cross-checked against ``n_vocab`` (the size of the decoder's logits), which catches a
tokenizer shipped with the wrong checkpoint before it produces garbage text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from whisper_export.languages import LANGUAGES, TO_LANGUAGE_CODE  # noqa: F401  (re-exported)
from whisper_export.vocabulary import N_TIMESTAMPS as _N_TIMESTAMPS
from whisper_export.vocabulary import builtin_tokenizer, vocabulary

TASKS = ("transcribe", "translate")
SECONDS_PER_TIMESTAMP = 0.02


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's control tokens for one model family."""

    eot: int
    sot: int
    sot_prev: int
    sot_lm: int
    translate: int
    transcribe: int
    no_timestamps: int
    no_speech: int
    timestamp_begin: int
    language_tokens: tuple[int, ...]
    language_codes: tuple[str, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, n_vocab: int) -> SpecialTokens:
        vocabulary(n_vocab)  # a supported size, or ValueError naming the valid ones

        def require(*names: str) -> int:
            # Several names cover renames across releases (e.g. nocaptions -> nospeech).
            for name in names:
                token_id = tokenizer.token_to_id(name)
                if token_id is not None:
                    return token_id
            raise ValueError(f"tokenizer has no token {' or '.join(map(repr, names))}")

        sot = require("<|startoftranscript|>")
        no_timestamps = require("<|notimestamps|>")
        codes, ids = _language_tokens(tokenizer)
        special = cls(
            eot=require("<|endoftext|>"),
            sot=sot,
            sot_prev=require("<|startofprev|>"),
            sot_lm=require("<|startoflm|>"),
            translate=require("<|translate|>"),
            transcribe=require("<|transcribe|>"),
            no_timestamps=no_timestamps,
            no_speech=require("<|nospeech|>", "<|nocaptions|>"),
            # Timestamp tokens are often missing from tokenizer.json; they follow notimestamps.
            timestamp_begin=no_timestamps + 1,
            language_tokens=ids,
            language_codes=codes,
        )
        special._check_against(n_vocab)
        return special

    def _check_against(self, n_vocab: int) -> None:
        n_timestamps = n_vocab - self.timestamp_begin
        if n_timestamps != _N_TIMESTAMPS:
            raise ValueError(
                f"received n_vocab={n_vocab}, expected n_vocab={self.timestamp_begin + _N_TIMESTAMPS} "
                f"for this tokenizer (timestamp_begin={self.timestamp_begin} + {_N_TIMESTAMPS} "
                f"timestamp tokens): the tokenizer does not belong to this model"
            )
        expected_languages = vocabulary(n_vocab).n_languages
        if len(self.language_tokens) != expected_languages:
            raise ValueError(
                f"received {len(self.language_tokens)} language tokens with n_vocab={n_vocab}, "
                f"expected {expected_languages}: the tokenizer does not belong to this model"
            )
        # The decoder relies on sot + 1 + index(language); a reordered vocab would silently
        # mislabel languages, so insist on the contiguous layout.
        expected_ids = tuple(range(self.sot + 1, self.sot + 1 + expected_languages))
        if self.language_tokens != expected_ids:
            raise ValueError(
                f"received language token ids {self.language_tokens[0]}..{self.language_tokens[-1]} "
                f"(not contiguous in LANGUAGES order), expected {expected_ids[0]}..{expected_ids[-1]} "
                f"right after <|startoftranscript|>={self.sot}"
            )

    @property
    def timestamp_end(self) -> int:
        """Last timestamp token id (30.00 s), inclusive."""
        return self.timestamp_begin + _N_TIMESTAMPS - 1


# Some tokenizer.json files (e.g. tiny.en's) spell Hebrew with the retired ISO code "iw".
_LEGACY_LANGUAGE_TOKENS = {"he": "iw"}


def _language_tokens(tokenizer: Tokenizer) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The language tokens present, in LANGUAGES order, stopping at the first absent one."""
    codes: list[str] = []
    ids: list[int] = []
    for code in LANGUAGES:
        token_id = tokenizer.token_to_id(f"<|{code}|>")
        if token_id is None and code in _LEGACY_LANGUAGE_TOKENS:
            token_id = tokenizer.token_to_id(f"<|{_LEGACY_LANGUAGE_TOKENS[code]}|>")
        if token_id is None:
            break
        codes.append(code)
        ids.append(token_id)
    return tuple(codes), tuple(ids)


class WhisperTokenizer:
    """Text <-> token ids plus Whisper's prompt conventions, for one ``n_vocab``."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int) -> None:
        # Holding one Tokenizer matters: building it parses ~2 MB of JSON, and decode runs
        # once per segment.
        self._tokenizer = tokenizer
        self._n_vocab = n_vocab
        self._special = SpecialTokens.from_tokenizer(tokenizer, n_vocab)

    @classmethod
    def from_file(cls, path: str | Path, n_vocab: int) -> WhisperTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"received tokenizer path {str(path)!r}, expected an existing tokenizer.json file"
            )
        return cls(Tokenizer.from_file(str(path)), n_vocab)

    @classmethod
    def from_json_str(cls, json_str: str, n_vocab: int) -> WhisperTokenizer:
        return cls(Tokenizer.from_str(json_str), n_vocab)

    @classmethod
    def builtin(cls, n_vocab: int) -> WhisperTokenizer:
        """Whisper's own vocabulary for n_vocab (openai-whisper's BPE ranks and special-token layout)."""
        return cls(builtin_tokenizer(n_vocab), n_vocab)

    @classmethod
    def for_checkpoint(cls, tokenizer_json: str | Path | None, n_vocab: int) -> WhisperTokenizer:
        """The checkpoint's tokenizer.json when it has one, else the built-in vocabulary of its n_vocab."""
        return cls.builtin(n_vocab) if tokenizer_json is None else cls.from_file(tokenizer_json, n_vocab)

    def to_json_str(self) -> str:
        """The tokenizer as ``tokenizer.json`` text (what a bundle ships)."""
        return self._tokenizer.to_str()

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def is_multilingual(self) -> bool:
        # English-only models keep language tokens in the vocab but were never trained on them.
        return self._n_vocab >= 51865

    @property
    def special(self) -> SpecialTokens:
        return self._special

    # -- text -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Plain BPE ids; no sot/eot added (tokenizer.json's post-processor would add them)."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: Iterable[int] | np.ndarray) -> str:
        """Text of the ordinary tokens; special and timestamp tokens (ids >= eot) are dropped."""
        eot = self._special.eot
        return self._tokenizer.decode([t for t in self._checked_ids(tokens) if t < eot])

    def decode_with_timestamps(self, tokens: Iterable[int] | np.ndarray) -> str:
        """Text with timestamp tokens rendered inline, e.g. ``"<|0.00|> Hello<|1.00|>"``.

        Other special tokens (eot, sot, ...) are dropped, as in ``decode``.
        """
        special = self._special
        parts: list[str] = []
        pending: list[int] = []
        for token in self._checked_ids(tokens):
            if token < special.eot:
                pending.append(token)
            elif token >= special.timestamp_begin:
                # Decode text runs whole: a multi-byte character may span several tokens.
                if pending:
                    parts.append(self._tokenizer.decode(pending))
                    pending = []
                seconds = (token - special.timestamp_begin) * SECONDS_PER_TIMESTAMP
                parts.append(f"<|{seconds:.2f}|>")
        if pending:
            parts.append(self._tokenizer.decode(pending))
        return "".join(parts)

    def _checked_ids(self, tokens: Iterable[int] | np.ndarray) -> list[int]:
        ids = tokens.tolist() if isinstance(tokens, np.ndarray) else [int(t) for t in tokens]
        if ids and (min(ids) < 0 or max(ids) >= self._n_vocab):
            bad = next(t for t in ids if t < 0 or t >= self._n_vocab)
            raise ValueError(f"received token id {bad}, expected 0 <= id < n_vocab={self._n_vocab}")
        return ids

    # -- prompts --------------------------------------------------------------------------

    def language_token(self, language: str) -> int:
        """Id of ``<|code|>``; accepts codes ("de") and names or aliases ("german")."""
        code = self._language_code(language)
        return self._special.language_tokens[self._special.language_codes.index(code)]

    def _language_code(self, language: str) -> str:
        key = language.lower()
        code = TO_LANGUAGE_CODE.get(key, key)
        valid = self._special.language_codes
        if code not in valid:
            hint = ""
            if code in LANGUAGES:
                hint = f" ({code!r} needs a model with n_vocab=51866; this one has n_vocab={self._n_vocab})"
            raise ValueError(
                f"received language {language!r}, expected one of {len(valid)} codes: "
                f"{', '.join(valid)} (or a name such as 'german'){hint}"
            )
        return code

    def sot_sequence(self, language: str | None = None, task: str = "transcribe") -> list[int]:
        """Decoder prompt: ``[sot]`` for English-only models, ``[sot, lang, task]`` otherwise."""
        if task not in TASKS:
            raise ValueError(f"received task {task!r}, expected one of {', '.join(TASKS)}")
        special = self._special
        if not self.is_multilingual:
            if language is not None and self._language_code(language) != "en":
                raise ValueError(
                    f"received language {language!r} for an English-only model "
                    f"(n_vocab={self._n_vocab}), expected 'en' or None"
                )
            if task == "translate":
                raise ValueError(
                    f"received task 'translate' for an English-only model (n_vocab={self._n_vocab}), "
                    "expected 'transcribe'; translation needs a multilingual model"
                )
            return [special.sot]
        if language is None:
            # Whisper was always trained with a language token; guessing one silently would
            # degrade output, so the caller must detect it first (detection prompt: [sot]).
            raise ValueError(
                f"received language=None for a multilingual model (n_vocab={self._n_vocab}), "
                f"expected a language code such as 'en' or 'de'; detect the language first"
            )
        task_token = special.transcribe if task == "transcribe" else special.translate
        return [special.sot, self.language_token(language), task_token]

    # -- suppression ----------------------------------------------------------------------

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Symbol and music-note tokens that openai-whisper suppresses (``suppress_tokens=-1``).

        Built exactly like openai-whisper's ``Tokenizer.non_speech_tokens``, so the set tracks
        the vocab instead of being a list of ids that is only right for one family.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()

        # U+2640..U+267F symbols share their first two UTF-8 bytes, so when one is split into
        # several tokens its first token can still be suppressed without hurting speech.
        miscellaneous = set("♩♪♫♬♭♮♯")

        # Hyphens and apostrophes are fine inside words, only not starting one.
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))


def load_tokenizer(directory: str | Path, n_vocab: int) -> WhisperTokenizer:
    """Load ``tokenizer.json`` from an export bundle or checkpoint directory."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"received directory {str(directory)!r} without tokenizer.json, "
            "expected an export bundle or checkpoint directory containing it"
        )
    return WhisperTokenizer.from_file(path, n_vocab)


__all__ = [
    "LANGUAGES",
    "TO_LANGUAGE_CODE",
    "TASKS",
    "SECONDS_PER_TIMESTAMP",
    "SpecialTokens",
    "WhisperTokenizer",
    "load_tokenizer",
]

