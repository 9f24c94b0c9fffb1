"""Alignment heads: the decoder cross-attention heads whose weights follow the timing of the words.

Word timestamps (runtime/words.py) need them, so export writes them into the bundle config. Where they come from,
first match wins:
1. the checkpoint: CTranslate2's config.json and Hugging Face's generation_config.json carry ``alignment_heads``
   as [layer, head] pairs (the loaders put them into Checkpoint.extra);
2. the published values of openai-whisper's models (KNOWN, transcribed from openai-whisper's ``_ALIGNMENT_HEADS``,
   which OpenAI's .pt files do not carry), by the checkpoint's model name, else by its dims when exactly one known
   model has them (a fine-tune keeps its base model's shape);
3. openai-whisper's fallback: every head of the last half of the decoder layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reference_model.checkpoint import Checkpoint, CheckpointError
from whisper_export.dims import ModelDims


@dataclass(frozen=True)
class KnownHeads:
    """One published model: the dims that identify it and its alignment heads as [layer, head] pairs."""

    n_mels: int
    n_vocab: int
    n_text_layer: int
    n_text_head: int
    n_text_state: int
    heads: tuple[tuple[int, int], ...]

    def fits(self, dims: ModelDims) -> bool:
        return (self.n_mels, self.n_vocab, self.n_text_layer, self.n_text_head, self.n_text_state) == (
            dims.n_mels, dims.n_vocab, dims.n_text_layer, dims.n_text_head, dims.n_text_state)


def _known(n_mels: int, n_vocab: int, layers: int, heads: int, width: int, pairs: list[list[int]]) -> KnownHeads:
    return KnownHeads(n_mels, n_vocab, layers, heads, width, tuple((int(a), int(b)) for a, b in pairs))


_EN, _MULTI, _V3 = 51864, 51865, 51866
# openai-whisper's _ALIGNMENT_HEADS (base85 + gzip of a (n_text_layer, n_text_head) boolean mask), written out;
# tests/reference_model/test_alignment_heads.py decodes openai-whisper's own table and compares
KNOWN: dict[str, KnownHeads] = {
    "tiny.en": _known(80, _EN, 4, 6, 384, [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]),
    "tiny": _known(80, _MULTI, 4, 6, 384, [[2, 2], [3, 0], [3, 2], [3, 3], [3, 4], [3, 5]]),
    "base.en": _known(80, _EN, 6, 8, 512, [[3, 3], [4, 7], [5, 1], [5, 5], [5, 7]]),
    "base": _known(80, _MULTI, 6, 8, 512, [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]),
    "small.en": _known(80, _EN, 12, 12, 768, [
        [6, 6], [7, 0], [7, 3], [7, 8], [8, 2], [8, 5], [8, 7], [9, 0], [9, 4], [9, 8], [9, 10], [10, 0], [10, 1],
        [10, 2], [10, 3], [10, 6], [10, 11], [11, 2], [11, 4]]),
    "small": _known(80, _MULTI, 12, 12, 768, [
        [5, 3], [5, 9], [8, 0], [8, 4], [8, 7], [8, 8], [9, 0], [9, 7], [9, 9], [10, 5]]),
    "medium.en": _known(80, _EN, 24, 16, 1024, [
        [11, 4], [14, 1], [14, 12], [14, 14], [15, 4], [16, 0], [16, 4], [16, 9], [17, 12], [17, 14], [18, 7],
        [18, 10], [18, 15], [20, 0], [20, 3], [20, 9], [20, 14], [21, 12]]),
    "medium": _known(80, _MULTI, 24, 16, 1024, [[13, 15], [15, 4], [15, 15], [16, 1], [20, 0], [23, 4]]),
    "large-v1": _known(80, _MULTI, 32, 20, 1280, [
        [9, 19], [11, 2], [11, 4], [11, 17], [22, 7], [22, 11], [22, 17], [23, 2], [23, 15]]),
    "large-v2": _known(80, _MULTI, 32, 20, 1280, [
        [10, 12], [13, 17], [16, 11], [16, 12], [16, 13], [17, 15], [17, 16], [18, 4], [18, 11], [18, 19], [19, 11],
        [21, 2], [21, 3], [22, 3], [22, 9], [22, 12], [23, 5], [23, 7], [23, 13], [25, 5], [26, 1], [26, 12],
        [27, 15]]),
    "large-v3": _known(128, _V3, 32, 20, 1280, [
        [7, 0], [10, 17], [12, 18], [13, 12], [16, 1], [17, 14], [19, 11], [21, 4], [24, 1], [25, 6]]),
    "large-v3-turbo": _known(128, _V3, 4, 20, 1280, [[2, 4], [2, 11], [3, 3], [3, 6], [3, 11], [3, 14]]),
}
ALIASES = {"large": "large-v3", "turbo": "large-v3-turbo"}


def model_key(name: str) -> str | None:
    """The KNOWN key a checkpoint name stands for ("openai/whisper-tiny.en", "faster-whisper-large-v3",
    "tiny.en.pt"'s stem "tiny.en", "turbo"), or None."""
    base = re.sub(r"\.(pt|bin)$", "", name.strip().lower().rstrip("/").rsplit("/", 1)[-1])
    base = re.sub(r"^(faster-|distil-)?whisper-", "", base)
    base = ALIASES.get(base, base)
    return base if base in KNOWN else None


def validate_heads(heads, dims: ModelDims, source: str) -> list[list[int]]:
    """[[layer, head], ...] sorted and unique, each inside the decoder; CheckpointError naming what was received."""
    try:
        pairs = sorted({(int(layer), int(head)) for layer, head in heads})
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: alignment_heads: received {heads!r}, expected [[layer, head], ...]") from None
    bad = [p for p in pairs if not (0 <= p[0] < dims.n_text_layer and 0 <= p[1] < dims.n_text_head)]
    if not pairs or bad:
        raise CheckpointError(
            f"{source}: alignment_heads: received {heads!r}, expected a non-empty list of [layer, head] with "
            f"0 <= layer < {dims.n_text_layer} and 0 <= head < {dims.n_text_head}")
    return [list(p) for p in pairs]


def last_half_heads(dims: ModelDims) -> list[list[int]]:
    """openai-whisper's default: every head of the last half of the decoder layers."""
    return [[layer, head] for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
            for head in range(dims.n_text_head)]


def resolve_alignment_heads(ckpt: Checkpoint) -> tuple[list[list[int]], str]:
    """(the checkpoint's alignment heads as [layer, head] pairs, where they came from): "checkpoint",
    "known:<model>" (by name or by dims) or "last-half"."""
    carried = ckpt.extra.get("alignment_heads")
    if carried:
        return validate_heads(carried, ckpt.dims, ckpt.source), "checkpoint"
    key = model_key(ckpt.name)
    if key is not None and KNOWN[key].fits(ckpt.dims):
        return [list(p) for p in KNOWN[key].heads], f"known:{key}"
    # by shape: only when it names one model (large-v1 and large-v2 share theirs)
    shaped = [k for k, known in KNOWN.items() if known.fits(ckpt.dims)]
    if len(shaped) == 1:
        return [list(p) for p in KNOWN[shaped[0]].heads], f"known:{shaped[0]}"
    return last_half_heads(ckpt.dims), "last-half"
