"""The canonical checkpoint every loader produces: dims, an openai-whisper-named state dict, and provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whisper_export.dims import ModelDims


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unknown layout, missing or unexpected keys, wrong shapes."""


@dataclass(frozen=True)
class Checkpoint:
    dims: ModelDims
    state: dict[str, np.ndarray] = field(repr=False)
    name: str  # e.g. "tiny.en"
    format: str  # "ctranslate2" | "huggingface" | "openai"
    source: str  # where it was read from
    tokenizer_json: Path | None = None  # None: Whisper's built-in vocabulary (whisper_export/vocabulary.py)
    # alignment heads, suppress ids, ... as the source provides them (CTranslate2's config.json)
    extra: dict = field(default_factory=dict, repr=False)
    # what load_checkpoint was given (a packaged name or an absolute path): enough to load it again
    spec: str = ""

    def tokenizer(self):
        """A WhisperTokenizer: the checkpoint's tokenizer.json, else Whisper's built-in vocabulary of its n_vocab."""
        from whisper_export.tokenizer import WhisperTokenizer

        return WhisperTokenizer.for_checkpoint(self.tokenizer_json, self.dims.n_vocab)

    def describe(self) -> dict:
        from whisper_export.vocabulary import vocabulary

        return {
            "name": self.name,
            "format": self.format,
            "source": self.source,
            "spec": self.spec,
            "dims": self.dims.to_dict(),
            "tokenizer": str(self.tokenizer_json) if self.tokenizer_json else vocabulary(self.dims.n_vocab).describe(),
            "parameters": int(sum(v.size for v in self.state.values())),
        }


def expected_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """Every canonical state-dict name with its shape, read off the reference module itself."""
    import torch

    from reference_model.model import Whisper

    with torch.device("meta"):
        model = Whisper(dims)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def verify_state(dims: ModelDims, state: dict[str, np.ndarray], source: str) -> None:
    """Raise CheckpointError naming missing/unexpected keys and mismatched shapes."""
    expected = expected_shapes(dims)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: state dict does not match Whisper dims {dims.to_dict()}: "
            f"missing keys {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    wrong = [
        f"{k}: received {tuple(state[k].shape)}, expected {shape}"
        for k, shape in expected.items()
        if tuple(state[k].shape) != shape
    ]
    if wrong:
        raise CheckpointError(f"{source}: wrong shapes: " + "; ".join(wrong[:10]))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e
