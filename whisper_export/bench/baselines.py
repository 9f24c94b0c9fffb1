"""Measurements of the baselines in-process: transformers generate and faster-whisper (CTranslate2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whisper_export.bench.common import timed

# -- transformers ---------------------------------------------------------------------------------------------


def hf_dir_for(checkpoint, cache: Path) -> Path:
    """The checkpoint saved once as a Hugging Face directory (reference_model.huggingface.save_huggingface)."""
    from reference_model.huggingface import save_huggingface

    target = cache / f"hf-{checkpoint.name}"
    if not (target / "config.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        save_huggingface(checkpoint, target)
    return target


def hf_window_features(audio, n_mels: int):
    """What openai-whisper/faster-whisper/our transcribe() feed the encoder for a clip under 30 s: the log-mel of
    the audio followed by 30 s of zeros, cut to the audio's frames and padded with 0.0 (not the log-mel of
    silence, as WhisperFeatureExtractor's padding gives). Same input, same tokens."""
    import numpy as np
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels)
    padded = np.concatenate([audio, np.zeros(480000, np.float32)])
    full = fe(padded, sampling_rate=16000, padding="longest", truncation=False, return_tensors="np").input_features[0]
    frames = len(audio) // 160
    out = np.zeros((n_mels, 3000), np.float32)
    out[:, : min(frames, 3000)] = full[:, : min(frames, 3000)]
    return out


def hf_generate_tokens(model, feats, eot: int, **kwargs) -> list[list[int]]:
    """Whisper generate (English-only: no language/task tokens), greedy unless num_beams is given."""
    import torch

    with torch.inference_mode():
        out = model.generate(feats, **kwargs)
    seqs = out.sequences if hasattr(out, "sequences") else out
    # the prompt (<|notimestamps|> ...), eot and padding are all ids >= eot
    return [[t for t in row if t < eot] for row in seqs.tolist()]


def hf_decode(model, feats, eot: int, repeats: int, one_by_one: bool, num_beams: int = 1) -> dict[str, Any]:
    """Like ours_decode: Whisper generate from encoder outputs computed once, outside the timing."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    groups = [feats[i : i + 1] for i in range(len(feats))] if one_by_one else [feats]
    with torch.inference_mode():
        encoded = [BaseModelOutput(last_hidden_state=model.model.encoder(g).last_hidden_state) for g in groups]

    def run():
        out = []
        for e in encoded:
            with torch.inference_mode():
                seqs = model.generate(encoder_outputs=e, num_beams=num_beams, do_sample=False)
            seqs = seqs.sequences if hasattr(seqs, "sequences") else seqs
            out.append([[t for t in row if t < eot] for row in seqs.tolist()])
        if feats.is_cuda:
            torch.cuda.synchronize()
        return out

    stats, results = timed(run, repeats)
    flat = [t for g in results for t in g]
    n_tokens = sum(len(t) + 1 for t in flat)
    seconds = stats["median"]
    return {"ms_per_token": seconds / n_tokens * 1e3, "tokens_per_s": n_tokens / seconds, "tokens": n_tokens,
            "seconds": stats, "token_ids": flat}


def hf_fixed_steps(model, feats, prompt: list[int], n_steps: int, repeats: int, eot: int) -> dict[str, float]:
    """ms per decoder step with plain GenerationMixin.generate forced to n_steps tokens (min_new_tokens): the
    loop cost without Whisper's extras; (t(1 + n) - t(1)) / n, so encoder and prompt cancel out."""
    import torch
    from transformers import GenerationMixin

    ids = torch.tensor([prompt] * feats.shape[0], device=feats.device)

    def gen(n):
        def run():
            with torch.inference_mode():
                GenerationMixin.generate(model, input_features=feats, decoder_input_ids=ids, max_new_tokens=n,
                                         min_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=eot, pad_token_id=eot)
            if feats.is_cuda:
                torch.cuda.synchronize()
        return run

    one, _ = timed(gen(1), repeats)
    many, _ = timed(gen(1 + n_steps), repeats)
    ms = max(many["median"] - one["median"], 1e-9) / n_steps * 1e3
    rows = feats.shape[0]
    return {"rows": rows, "ms_per_step": ms, "ms_per_token": ms / rows, "tokens_per_s": rows / ms * 1e3}


# -- faster-whisper (CTranslate2) ----------------------------------------------------------------------------


def ct2_decode(model, feats, prompt: list[int], repeats: int, one_by_one: bool, beam_size: int = 1) -> dict[str, Any]:
    """CTranslate2's Whisper.generate from its own encoder output (encode() once, outside the timing)."""
    import ctranslate2
    import numpy as np

    groups = [feats[i : i + 1] for i in range(len(feats))] if one_by_one else [feats]
    encoded = [model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(g))) for g in groups]

    def run():
        return [model.model.generate(e, [prompt] * g.shape[0], beam_size=beam_size, max_length=224,
                                     suppress_blank=True, suppress_tokens=[-1]) for e, g in zip(encoded, groups)]

    stats, results = timed(run, repeats)
    flat = [r.sequences_ids[0] for group in results for r in group]
    n_tokens = sum(len(t) + 1 for t in flat)
    return {"ms_per_token": stats["median"] / n_tokens * 1e3, "tokens_per_s": n_tokens / stats["median"],
            "tokens": n_tokens, "seconds": stats, "token_ids": flat}
