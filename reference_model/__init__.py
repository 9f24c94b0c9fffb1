"""The PyTorch reference Whisper and checkpoint loading (CTranslate2, Hugging Face, OpenAI)."""

from reference_model.checkpoint import Checkpoint, CheckpointError
from reference_model.sources import DEFAULT_MODEL, load_checkpoint

__all__ = ["Checkpoint", "CheckpointError", "DEFAULT_MODEL", "load_checkpoint"]
