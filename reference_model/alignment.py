"""The reference of align.onnx: the PyTorch decoder run over whole token rows, its cross-attention queries taken
by forward hooks (as openai-whisper's find_alignment hooks its cross-attention), the alignment heads' scores
q.k / sqrt(hd) computed from them, and the probability of each next text token."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reference_model.model import Whisper


@torch.no_grad()
def alignment_outputs(
    model: Whisper,
    tokens: torch.Tensor,
    cross_k: Sequence[torch.Tensor],
    cross_v: Sequence[torch.Tensor],
    heads: Sequence[Sequence[int]],
    eot: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (A, T) int64 and each layer's cross K/V of those rows (A, H, n_audio_ctx, hd) -> (the heads' scores
    (A, len(heads), T, n_audio_ctx) float32, text probabilities (A, T - 1) float32: softmax(logits[:, t, :eot]) at
    tokens[:, t + 1], 0 where that token is not text)."""
    rows, n_tokens = tokens.shape
    queries: dict[int, torch.Tensor] = {}
    hooks = [
        block.cross_attn.query.register_forward_hook(lambda _m, _i, out, layer=layer: queries.__setitem__(layer, out))
        for layer, block in enumerate(model.decoder.blocks)
    ]
    try:
        self_k, self_v = model.empty_cache(rows, n_tokens)
        zeros = torch.zeros(rows, dtype=torch.long)
        logits, _, _ = model.decoder(tokens, zeros, torch.arange(rows), self_k, self_v, list(cross_k), list(cross_v))
    finally:
        for hook in hooks:
            hook.remove()
    scale = model.dims.text_head_dim ** -0.5
    scores = []
    for layer, head in heads:
        q = model.decoder.blocks[layer].cross_attn.split_heads(queries[layer])  # (A, H, T, hd)
        scores.append((q[:, head] @ cross_k[layer][:, head].transpose(-1, -2)).float() * scale)  # (A, T, S)
    logprobs = torch.log_softmax(logits[:, :-1, :eot].float(), dim=-1)  # (A, T - 1, eot)
    following = tokens[:, 1:]
    probs = logprobs.gather(-1, following.clamp(max=eot - 1)[..., None])[..., 0].exp()
    return torch.stack(scores, dim=1), torch.where(following < eot, probs, torch.zeros_like(probs))
