"""A checkpoint's own word on its special tokens, checked against the vocabulary its n_vocab implies.

Whisper checkpoints describe their control tokens in their generation settings: Hugging Face's
``generation_config.json`` (``no_timestamps_token_id``, ``prev_sot_token_id``, ``task_to_id``, ``lang_to_id``,
``is_multilingual``) and CTranslate2's ``config.json`` (``lang_ids``). The runtime takes every id from the
tokenizer (the checkpoint's tokenizer.json or the built-in vocabulary), so a checkpoint whose settings name other
ids has a vocabulary this package does not know: loading it is an error naming both ids, not wrong text later.

Deliberately not compared: ``config.json``'s ``bos/eos/pad/decoder_start_token_id``, which transformers'
``WhisperConfig`` fills with GPT-2's English-only ids whatever the vocabulary (a multilingual config made with the
defaults says eos 50256 where the model's <|endoftext|> is 50257; large-v3's own config has pad 50256), and the
language tokens of English-only models, which were never trained (tiny.en's CTranslate2 config lists 98 of them,
shifted by one).
"""

from __future__ import annotations

from pathlib import Path

from reference_model.checkpoint import Checkpoint, CheckpointError, read_json


def declared_ids(directory: Path) -> dict[str, int]:
    """{token name: id} as the directory's generation settings give them (empty when it has none)."""
    declared: dict[str, int] = {}
    hf = directory / "generation_config.json"
    if hf.is_file():
        cfg = read_json(hf)
        for key, name in (("no_timestamps_token_id", "<|notimestamps|>"), ("prev_sot_token_id", "<|startofprev|>")):
            if isinstance(cfg.get(key), int):
                declared[name] = cfg[key]
        for task, token_id in (cfg.get("task_to_id") or {}).items():
            declared[f"<|{task}|>"] = token_id
        declared.update(cfg.get("lang_to_id") or {})
    return declared


def check_generation_settings(ckpt: Checkpoint, directory: Path) -> None:
    """CheckpointError when the directory's generation settings contradict the checkpoint's vocabulary."""
    declared = declared_ids(directory)
    ct2 = directory / "config.json"
    lang_ids = read_json(ct2).get("lang_ids") if ckpt.format == "ctranslate2" and ct2.is_file() else None
    hf = directory / "generation_config.json"
    multilingual = read_json(hf).get("is_multilingual") if hf.is_file() else None
    if not declared and lang_ids is None and multilingual is None:
        return
    if multilingual is not None and bool(multilingual) != ckpt.dims.is_multilingual:
        raise CheckpointError(
            f"{hf}: received is_multilingual={multilingual}, expected {ckpt.dims.is_multilingual} for "
            f"n_vocab={ckpt.dims.n_vocab}")
    tokenizer = ckpt.tokenizer()
    special = tokenizer.special
    ours = {"<|notimestamps|>": special.no_timestamps, "<|startofprev|>": special.sot_prev,
            "<|transcribe|>": special.transcribe, "<|translate|>": special.translate}
    if ckpt.dims.is_multilingual:
        ours.update({f"<|{code}|>": token for code, token in zip(special.language_codes, special.language_tokens)})
        ours["<|iw|>"] = ours["<|he|>"]  # Hebrew's retired code, used by some files
        if lang_ids is not None and sorted(lang_ids) != sorted(special.language_tokens):
            raise CheckpointError(
                f"{ct2}: received {len(lang_ids)} lang_ids {min(lang_ids, default=None)}..{max(lang_ids, default=None)}"
                f", expected the vocabulary's {len(special.language_tokens)} language tokens "
                f"{special.language_tokens[0]}..{special.language_tokens[-1]}")
    where = ckpt.tokenizer_json or "the built-in vocabulary"
    for name, token_id in declared.items():
        if name in ours and ours[name] != token_id:
            raise CheckpointError(
                f"{hf}: received {name}={token_id}, expected {ours[name]} as in {where} (n_vocab="
                f"{ckpt.dims.n_vocab}); the checkpoint's vocabulary is not Whisper's: add its tokenizer.json")
