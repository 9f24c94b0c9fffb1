"""Model dimensions, shared by the exporter, the bundle and the runtime (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Vocabulary sizes of the three Whisper tokenizer generations.
VOCAB_ENGLISH_ONLY = 51864
VOCAB_MULTILINGUAL = 51865
VOCAB_V3 = 51866


@dataclass(frozen=True)
class ModelDims:
    """Every size of a Whisper model, named as in openai-whisper."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelDims.{f.name}: received {value!r}, expected a positive int")
        if self.n_mels not in (80, 128):
            raise ValueError(f"ModelDims.n_mels: received {self.n_mels}, expected 80 or 128")
        if self.n_vocab not in (VOCAB_ENGLISH_ONLY, VOCAB_MULTILINGUAL, VOCAB_V3):
            raise ValueError(
                f"ModelDims.n_vocab: received {self.n_vocab}, expected one of "
                f"{VOCAB_ENGLISH_ONLY}, {VOCAB_MULTILINGUAL}, {VOCAB_V3}"
            )
        for state, head, side in (
            (self.n_audio_state, self.n_audio_head, "audio"),
            (self.n_text_state, self.n_text_head, "text"),
        ):
            if state % head:
                raise ValueError(
                    f"ModelDims: n_{side}_state {state} is not divisible by n_{side}_head {head}"
                )
        if self.n_audio_state != self.n_text_state:
            # cross-attention projects encoder states with the decoder's width
            raise ValueError(
                f"ModelDims: n_audio_state {self.n_audio_state} != n_text_state {self.n_text_state}; "
                "Whisper's cross-attention needs them equal"
            )

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= VOCAB_MULTILINGUAL

    @property
    def text_head_dim(self) -> int:
        return self.n_text_state // self.n_text_head

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelDims":
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise ValueError(f"model dims: missing {missing}; received keys {sorted(d)}")
        return cls(**{k: int(d[k]) for k in names})
