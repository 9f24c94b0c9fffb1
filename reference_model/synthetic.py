"""Random-weight checkpoints at the dims of published Whisper variants, written as their publishers write them.

No real weights beyond tiny.en and base are available here, so large-v3, turbo and distil checkpoints are made:
a Hugging Face directory by transformers itself (``WhisperConfig`` + ``save_pretrained``, its own random
initialisation, no tokenizer files, a generation config like the published ones), then from it an OpenAI ``.pt``
(fp16, as OpenAI ships) and CTranslate2 directories by ctranslate2's converter. Tests use the same writers at small
widths with the published structure (128 mels, vocabulary 51866, few decoder layers under many encoder layers).

Needs transformers, and ctranslate2 for ``write_ctranslate2`` (the test and bench extras).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from reference_model.checkpoint import CheckpointError
from whisper_export.dims import VOCAB_ENGLISH_ONLY, VOCAB_MULTILINGUAL, VOCAB_V3, ModelDims


def _dims(n_mels: int, n_vocab: int, width: int, heads: int, encoder_layers: int, decoder_layers: int) -> ModelDims:
    return ModelDims(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads,
                     n_audio_layer=encoder_layers, n_vocab=n_vocab, n_text_ctx=448, n_text_state=width,
                     n_text_head=heads, n_text_layer=decoder_layers)


# the published sizes (openai-whisper's model card and ModelDimensions, the distil-whisper configs)
VARIANTS: dict[str, ModelDims] = {
    "small.en": _dims(80, VOCAB_ENGLISH_ONLY, 768, 12, 12, 12),
    "small": _dims(80, VOCAB_MULTILINGUAL, 768, 12, 12, 12),
    "medium.en": _dims(80, VOCAB_ENGLISH_ONLY, 1024, 16, 24, 24),
    "medium": _dims(80, VOCAB_MULTILINGUAL, 1024, 16, 24, 24),
    "large-v1": _dims(80, VOCAB_MULTILINGUAL, 1280, 20, 32, 32),
    "large-v2": _dims(80, VOCAB_MULTILINGUAL, 1280, 20, 32, 32),
    "large-v3": _dims(128, VOCAB_V3, 1280, 20, 32, 32),
    "large-v3-turbo": _dims(128, VOCAB_V3, 1280, 20, 32, 4),
    "distil-large-v2": _dims(80, VOCAB_MULTILINGUAL, 1280, 20, 32, 2),
    "distil-large-v3": _dims(128, VOCAB_V3, 1280, 20, 32, 2),
    "distil-large-v3.5": _dims(128, VOCAB_V3, 1280, 20, 32, 2),
    "distil-medium.en": _dims(80, VOCAB_ENGLISH_ONLY, 1024, 16, 24, 2),
    "distil-small.en": _dims(80, VOCAB_ENGLISH_ONLY, 768, 12, 12, 4),
}


def narrow(dims: ModelDims, width: int = 64, heads: int = 4, max_encoder_layers: int = 6) -> ModelDims:
    """The variant's structure (mels, vocabulary, decoder layers, encoder layers up to a cap) at a test's width."""
    return dataclasses.replace(dims, n_audio_state=width, n_text_state=width, n_audio_head=heads, n_text_head=heads,
                               n_audio_layer=min(dims.n_audio_layer, max_encoder_layers))


def generation_config(dims: ModelDims) -> dict:
    """The generation settings a published checkpoint of these dims carries (ids from Whisper's vocabulary)."""
    from whisper_export.tokenizer import WhisperTokenizer

    tok = WhisperTokenizer.builtin(dims.n_vocab)
    s = tok.special
    config = {
        "decoder_start_token_id": s.sot, "bos_token_id": s.eot, "eos_token_id": s.eot, "pad_token_id": s.eot,
        "begin_suppress_tokens": [tok.encode(" ")[0], s.eot], "suppress_tokens": list(tok.non_speech_tokens),
        "no_timestamps_token_id": s.no_timestamps, "prev_sot_token_id": s.sot_prev, "max_initial_timestamp_index": 50,
        "max_length": dims.n_text_ctx, "is_multilingual": dims.is_multilingual,
    }
    if dims.is_multilingual:
        config["task_to_id"] = {"transcribe": s.transcribe, "translate": s.translate}
        config["lang_to_id"] = {f"<|{c}|>": t for c, t in zip(s.language_codes, s.language_tokens)}
    return config


def write_huggingface(dims: ModelDims, directory: Path, dtype: str = "float16", seed: int = 0,
                      max_shard_size: str | None = None) -> Path:
    """A Hugging Face directory from transformers: WhisperConfig at dims, transformers' random initialisation in
    dtype ("float16" or "float32"), save_pretrained (safetensors; sharded when max_shard_size is given)."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    if Path(directory).exists():
        raise CheckpointError(f"{directory}: already exists; expected a new directory")
    generation = generation_config(dims)
    config = WhisperConfig(
        vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels, d_model=dims.n_audio_state,
        encoder_layers=dims.n_audio_layer, encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer, decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx, max_target_positions=dims.n_text_ctx,
        **{k: generation[k] for k in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
                                      "begin_suppress_tokens")},
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration._from_config(config, dtype=getattr(torch, dtype)).eval()
    model.generation_config = GenerationConfig(**generation)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return Path(directory)


def write_openai(directory_or_ckpt, path: Path) -> Path:
    """An OpenAI .pt ({"dims", "model_state_dict"}) of a checkpoint (or a checkpoint's path), in its precision."""
    import torch

    from reference_model.sources import load_checkpoint

    ckpt = directory_or_ckpt if hasattr(directory_or_ckpt, "state") else load_checkpoint(directory_or_ckpt)
    state = {k: torch.from_numpy(np.array(v)) for k, v in ckpt.state.items()}
    torch.save({"dims": ckpt.dims.to_dict(), "model_state_dict": state}, path)
    return Path(path)


def write_ctranslate2(hf_dir: Path, out_dir: Path, quantization: str = "float16") -> Path:
    """A CTranslate2 directory made by ctranslate2's TransformersConverter from a Hugging Face directory; a directory
    without tokenizer files gets Whisper's built-in vocabulary for the conversion (the converter needs one), and the
    result has no tokenizer.json either (what ct2-transformers-converter writes without --copy_files)."""
    import transformers
    from ctranslate2.converters import TransformersConverter

    from whisper_export.tokenizer import WhisperTokenizer

    n_vocab = json.loads((Path(hf_dir) / "config.json").read_text())["vocab_size"]

    class _Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            if (Path(model_name_or_path) / "tokenizer.json").is_file():
                return super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "tokenizer.json"
                path.write_text(WhisperTokenizer.builtin(n_vocab).to_json_str())
                return transformers.WhisperTokenizerFast(tokenizer_file=str(path))

    _Converter(str(hf_dir), low_cpu_mem_usage=True).convert(str(out_dir), quantization=quantization)
    return Path(out_dir)
