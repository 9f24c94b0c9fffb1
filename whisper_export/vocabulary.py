"""Whisper's built-in vocabularies, for checkpoints that ship no tokenizer files.

Whisper has three vocabularies, fixed by the size of the decoder's logits (``n_vocab``): the byte-level BPE of
GPT-2 for English-only models, a multilingual BPE for the others, and the same multilingual BPE with one more
language token (``yue``) from large-v3 on. The BPE ranks are openai-whisper's ``assets/gpt2.tiktoken`` and
``assets/multilingual.tiktoken``, shipped verbatim in ``whisper_export/assets`` under openai-whisper's MIT licence
(``assets/LICENSE-openai-whisper``); the special tokens follow them in openai-whisper's order
(``whisper.tokenizer.get_encoding``), so every id equals openai-whisper's.

The ranks become a ``tokenizers.Tokenizer`` (the library the runtime already uses for ``tokenizer.json``): the
vocabulary in GPT-2's byte-to-unicode spelling, and as merges every split of a token into two tokens, ordered by
the rank of the token they make. BPE that merges by that order merges what tiktoken merges (the lowest-ranked
adjacent pair whose concatenation is a token), and a pre-token that is itself a token stays whole
(``ignore_merges``), as in tiktoken.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from whisper_export.dims import VOCAB_ENGLISH_ONLY, VOCAB_MULTILINGUAL, VOCAB_V3
from whisper_export.languages import LANGUAGES

ASSETS = Path(__file__).parent / "assets"
# GPT-2's pre-tokenizer, as openai-whisper gives it to tiktoken
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 0.02 s steps


@dataclass(frozen=True)
class Vocabulary:
    """One Whisper vocabulary: its BPE ranks file and how many language tokens follow <|startoftranscript|>."""

    n_vocab: int
    ranks_file: str
    n_languages: int

    def special_tokens(self) -> list[str]:
        """The control and timestamp tokens in id order, right after the BPE ranks (openai-whisper's order)."""
        return [
            "<|endoftext|>",
            "<|startoftranscript|>",
            *[f"<|{code}|>" for code in list(LANGUAGES)[: self.n_languages]],
            "<|translate|>",
            "<|transcribe|>",
            "<|startoflm|>",
            "<|startofprev|>",
            "<|nospeech|>",
            "<|notimestamps|>",
            *[f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)],
        ]

    def describe(self) -> str:
        return f"built-in {self.ranks_file}, {self.n_languages} languages"


VOCABULARIES: dict[int, Vocabulary] = {
    v.n_vocab: v
    for v in (
        Vocabulary(VOCAB_ENGLISH_ONLY, "gpt2.tiktoken", 99),
        Vocabulary(VOCAB_MULTILINGUAL, "multilingual.tiktoken", 99),
        Vocabulary(VOCAB_V3, "multilingual.tiktoken", 100),
    )
}


def vocabulary(n_vocab: int) -> Vocabulary:
    if n_vocab not in VOCABULARIES:
        raise ValueError(
            f"received n_vocab={n_vocab}, expected one of {sorted(VOCABULARIES)} (English-only, multilingual, "
            "large-v3)"
        )
    return VOCABULARIES[n_vocab]


def read_ranks(path: Path) -> dict[bytes, int]:
    """A .tiktoken file: one ``base64(token) rank`` per line (multilingual.tiktoken's rank 50256 is "=", the
    empty token: read as openai-whisper reads it, so every later id stays where openai-whisper puts it)."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: received {line[:40]!r}, expected 'base64-token rank'") from e
    return ranks


def _byte_spelling() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (ByteLevel's alphabet in ``tokenizers``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + shifted)
            shifted += 1
    return spelling


def bpe_tokenizer(ranks: dict[bytes, int]) -> Tokenizer:
    """A byte-level BPE ``Tokenizer`` that encodes as tiktoken does with these ranks and GPT2_PATTERN."""
    table = str.maketrans({chr(b): c for b, c in _byte_spelling().items()})
    spelled = {token: token.decode("latin-1").translate(table) for token in ranks}
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], spelled[left], spelled[right]))
    merges.sort()
    bpe = models.BPE({spelled[t]: r for t, r in ranks.items()}, [(m[3], m[4]) for m in merges],
                     fuse_unk=False, ignore_merges=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


@lru_cache(maxsize=None)
def builtin_tokenizer(n_vocab: int) -> Tokenizer:
    """Whisper's tokenizer for n_vocab: the BPE ranks, then every special token with openai-whisper's id.

    Built once per process (about 2 s); callers must not change the returned object.
    """
    vocab = vocabulary(n_vocab)
    ranks = read_ranks(ASSETS / vocab.ranks_file)
    tokenizer = bpe_tokenizer(ranks)
    specials = vocab.special_tokens()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if tokenizer.get_vocab_size() != n_vocab:
        raise ValueError(
            f"{vocab.ranks_file}: {len(ranks)} ranks + {len(specials)} special tokens = "
            f"{tokenizer.get_vocab_size()}, expected n_vocab={n_vocab}"
        )
    return tokenizer
