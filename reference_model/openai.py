"""OpenAI ``.pt`` checkpoints: a dict with ``dims`` and ``model_state_dict`` (already canonical names)."""

from __future__ import annotations

from pathlib import Path

from reference_model.checkpoint import Checkpoint, CheckpointError, verify_state
from reference_model.weight_files import read_torch_file, tensor_as_numpy
from whisper_export.dims import ModelDims


def load_openai(path: Path, tokenizer_json: Path | None) -> Checkpoint:
    """The weights stay in the file's precision (OpenAI's are fp16) and memory-mapped (weight_files.py)."""
    raw = read_torch_file(path)
    if not isinstance(raw, dict) or "dims" not in raw or "model_state_dict" not in raw:
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: received keys {keys}, expected 'dims' and 'model_state_dict'")
    try:
        dims = ModelDims.from_dict(raw["dims"])
    except ValueError as e:
        raise CheckpointError(f"{path}: inconsistent model dims: {e}") from e
    state = {k: tensor_as_numpy(v) for k, v in raw["model_state_dict"].items()}
    if "encoder.positional_embedding" not in state:
        # openai-whisper recomputes this buffer; some exports drop it from the state dict
        from reference_model.model import sinusoids

        state["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state).numpy()
    verify_state(dims, state, str(path))
    return Checkpoint(dims, state, path.stem, "openai", str(path), tokenizer_json, {})


def save_openai(ckpt: Checkpoint, path: Path) -> Path:
    import torch

    torch.save(
        {
            "dims": ckpt.dims.to_dict(),
            "model_state_dict": {k: torch.from_numpy(v.copy()) for k, v in ckpt.state.items()},
        },
        path,
    )
    return path
