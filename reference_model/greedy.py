"""The plain torch greedy decode every token check compares against."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reference_model.model import Whisper


@torch.no_grad()
def greedy_decode(
    model: Whisper,
    mel: torch.Tensor,
    prompt: Sequence[int],
    eot: int,
    max_new_tokens: int = 224,
    suppress_tokens: Sequence[int] = (),
    suppress_at_begin: Sequence[int] = (),
) -> list[list[int]]:
    """mel (B, n_mels, 3000) -> the new tokens of each audio, without the prompt or the final eot.

    suppress_tokens are masked at every step, suppress_at_begin only at the first sampled position
    (openai-whisper's suppress_blank uses [space, eot]).
    """
    batch = mel.shape[0]
    cross_k, cross_v = model.encode(mel)
    self_k, self_v = model.empty_cache(batch, min(model.dims.n_text_ctx, len(prompt) + max_new_tokens))
    tokens = torch.tensor([list(prompt)] * batch)  # (B, n_prompt)
    offsets = torch.zeros(batch, dtype=torch.long)
    rows = torch.arange(batch)
    last = torch.tensor([-1])
    out: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(max_new_tokens):
        logits, self_k, self_v = model.decoder(tokens, offsets, rows, self_k, self_v, cross_k, cross_v, last)
        logits = logits[:, -1]  # (B, n_vocab)
        if suppress_tokens:
            logits[:, list(suppress_tokens)] = -torch.inf
        if step == 0 and suppress_at_begin:
            logits[:, list(suppress_at_begin)] = -torch.inf
        next_tokens = logits.argmax(-1)  # (B,)
        for b in range(batch):
            if not done[b]:
                if next_tokens[b] == eot:
                    done[b] = True
                else:
                    out[b].append(int(next_tokens[b]))
        if bool(done.all()) or offsets[0] + tokens.shape[1] >= self_k[0].shape[2]:
            break
        offsets = offsets + tokens.shape[1]
        tokens = next_tokens[:, None]
    return out
