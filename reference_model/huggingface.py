"""Hugging Face Whisper directories (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``), both ways."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from reference_model.checkpoint import Checkpoint, CheckpointError, expected_shapes, read_json
from reference_model.checkpoint import verify_state
from reference_model.weight_files import read_safetensors, read_torch_file, sharded_files, tensor_as_numpy
from whisper_export.dims import ModelDims

# canonical (openai-whisper) name fragment -> transformers name fragment, applied in order
_RENAMES = [
    (r"^encoder\.blocks\.", "model.encoder.layers."),
    (r"^decoder\.blocks\.", "model.decoder.layers."),
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.", "model.decoder.embed_tokens."),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^decoder\.ln\.", "model.decoder.layer_norm."),
    (r"^encoder\.conv", "model.encoder.conv"),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn\.", ".self_attn."),
    (r"\.query\.", ".q_proj."),
    (r"\.key\.", ".k_proj."),
    (r"\.value\.", ".v_proj."),
    (r"\.out\.", ".out_proj."),
    (r"\.mlp\.0\.", ".fc1."),
    (r"\.mlp\.2\.", ".fc2."),
]


def canonical_to_hf(name: str) -> str:
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def _dims_from_config(cfg: dict, source: str) -> ModelDims:
    keys = {
        "n_mels": "num_mel_bins",
        "n_audio_ctx": "max_source_positions",
        "n_audio_state": "d_model",
        "n_audio_head": "encoder_attention_heads",
        "n_audio_layer": "encoder_layers",
        "n_vocab": "vocab_size",
        "n_text_ctx": "max_target_positions",
        "n_text_state": "d_model",
        "n_text_head": "decoder_attention_heads",
        "n_text_layer": "decoder_layers",
    }
    missing = sorted({v for v in keys.values() if v not in cfg})
    if missing:
        raise CheckpointError(f"{source}/config.json: missing {missing}; is this a Whisper config?")
    try:
        return ModelDims(**{k: int(cfg[v]) for k, v in keys.items()})
    except ValueError as e:
        raise CheckpointError(f"{source}/config.json: inconsistent model dims: {e}") from e


# a directory's weights, first match wins: one file, or a shard index naming several
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _weight_files(directory: Path) -> list[Path]:
    for name in _WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            return sharded_files(path) if name.endswith(".index.json") else [path]
    return []


def _read_weights(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the directory's weight files, in its stored precision and memory-mapped (weight_files.py)."""
    weights: dict[str, np.ndarray] = {}
    for path in _weight_files(directory):
        if path.suffix == ".safetensors":
            weights.update(read_safetensors(path))
        else:
            raw = read_torch_file(path)
            if not isinstance(raw, dict):
                raise CheckpointError(f"{path}: received a {type(raw).__name__}, expected a dict of tensors")
            weights.update({k: tensor_as_numpy(v) for k, v in raw.items()})
    return weights


def is_hf_dir(directory: Path) -> bool:
    return (directory / "config.json").is_file() and bool(_weight_files(directory))


def load_huggingface(directory: Path, name: str | None = None) -> Checkpoint:
    source = str(directory)
    cfg = read_json(directory / "config.json")
    dims = _dims_from_config(cfg, source)
    weights = _read_weights(directory)
    # transformers ties proj_out to the token embedding; some files store the copy
    weights.pop("proj_out.weight", None)
    to_hf = {k: canonical_to_hf(k) for k in expected_shapes(dims)}
    from_hf = {v: k for k, v in to_hf.items()}
    unexpected = sorted(set(weights) - set(from_hf))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {unexpected[:10]}")
    state = {from_hf[k]: v for k, v in weights.items()}
    verify_state(dims, state, source)
    tok = directory / "tokenizer.json"
    return Checkpoint(
        dims, state, name or cfg.get("_name_or_path") or directory.name, "huggingface", source,
        tok if tok.is_file() else None, _generation_extra(directory),
    )


def _generation_extra(directory: Path) -> dict:
    """What generation_config.json carries that export needs: the alignment heads ([layer, head] pairs)."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return {}
    heads = read_json(path).get("alignment_heads")
    return {"alignment_heads": heads} if heads else {}


def hf_config(dims: ModelDims, eot: int, sot: int) -> dict:
    """A config.json that transformers' WhisperForConditionalGeneration accepts."""
    return {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "num_mel_bins": dims.n_mels,
        "max_source_positions": dims.n_audio_ctx,
        "d_model": dims.n_audio_state,
        "encoder_attention_heads": dims.n_audio_head,
        "encoder_layers": dims.n_audio_layer,
        "encoder_ffn_dim": 4 * dims.n_audio_state,
        "vocab_size": dims.n_vocab,
        "max_target_positions": dims.n_text_ctx,
        "decoder_attention_heads": dims.n_text_head,
        "decoder_layers": dims.n_text_layer,
        "decoder_ffn_dim": 4 * dims.n_text_state,
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "torch_dtype": "float32",
    }


def save_huggingface(ckpt: Checkpoint, out_dir: Path) -> Path:
    """Write ckpt as a Hugging Face directory (fp32 safetensors); atomic: a temp dir renamed into place."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise CheckpointError(f"{out_dir}: already exists; expected a new directory")
    eot = 50256 if not ckpt.dims.is_multilingual else 50257
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-hf-", dir=out_dir.parent))
    try:
        weights = {canonical_to_hf(k): np.ascontiguousarray(v, np.float32) for k, v in ckpt.state.items()}
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(hf_config(ckpt.dims, eot, eot + 1), indent=2))
        if ckpt.extra.get("alignment_heads"):
            # transformers reads its generation settings from this file once it exists: the tokens config.json has
            # must be here too, or generate() cannot start
            tokens = {k: v for k, v in hf_config(ckpt.dims, eot, eot + 1).items() if k.endswith("_token_id")}
            (tmp / "generation_config.json").write_text(
                json.dumps({**tokens, "alignment_heads": ckpt.extra["alignment_heads"]}, indent=2))
        if ckpt.tokenizer_json:
            shutil.copy(ckpt.tokenizer_json, tmp / "tokenizer.json")
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
