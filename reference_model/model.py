"""Whisper in PyTorch, shaped for export.

The math follows Hugging Face's ``modeling_whisper.py`` (pre-LayerNorm blocks, a key projection without bias,
sinusoidal encoder positions, learned decoder positions, a tied output projection). The shape follows what the
ONNX graphs need: the encoder hands out every decoder layer's cross-attention K/V, and the decoder takes and
returns explicit self-attention caches instead of hooks, so one module call is one decoder step.

Self-attention caches have a fixed capacity (rows, n_head, capacity, head_dim); a step writes its new keys and
values at each row's offset and masks every position after it. See NOTES.md for why.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from whisper_export.dims import ModelDims

AttentionImpl = Literal["eager", "sdpa"]


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's encoder positions: (length, channels), sines then cosines."""
    if channels % 2:
        raise ValueError(f"sinusoids: received {channels} channels, expected an even number")
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class LayerNorm(nn.LayerNorm):
    """LayerNorm that always normalises in fp32, whatever the activations' dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).type(x.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, impl: AttentionImpl) -> Tensor:
    """(B, H, Tq, hd) x (B, H, Tk, hd) -> (B, H, Tq, hd); mask is boolean, True where a key may be seen."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).type(v.dtype) @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int, impl: AttentionImpl):
        super().__init__()
        self.n_head = n_head
        self.impl = impl
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)  # (B, H, T, hd)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, D) -> keys and values, each (B, H, T, hd)."""
        return self.split_heads(self.key(x)), self.split_heads(self.value(x))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Queries from x (B, T, D) against prepared keys/values; returns (B, T, D)."""
        q = self.split_heads(self.query(x))  # (B, H, T, hd)
        o = attention(q, k, v, mask, self.impl)  # (B, H, T, hd)
        return self.out(o.transpose(1, 2).flatten(2))  # (B, T, D)


class MLP(nn.Sequential):
    def __init__(self, n_state: int):
        # the 0/1/2 indices are openai-whisper's state-dict names (mlp.0, mlp.2)
        super().__init__(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))


class EncoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, impl: AttentionImpl):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head, impl)
        self.attn_ln = LayerNorm(n_state)
        self.mlp = MLP(n_state)
        self.mlp_ln = LayerNorm(n_state)

    def forward(self, x: Tensor) -> Tensor:
        h = self.attn_ln(x)
        x = x + self.attn.attend(h, *self.attn.project_kv(h))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, dims: ModelDims, impl: AttentionImpl):
        super().__init__()
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(
            EncoderBlock(d, dims.n_audio_head, impl) for _ in range(dims.n_audio_layer)
        )
        self.ln_post = LayerNorm(d)

    def forward(self, mel: Tensor) -> Tensor:
        """(B, n_mels, 2 * n_audio_ctx) -> (B, n_audio_ctx, D)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T, D)
        x = x + self.positional_embedding.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class DecoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, impl: AttentionImpl):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head, impl)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head, impl)
        self.cross_attn_ln = LayerNorm(n_state)
        self.mlp = MLP(n_state)
        self.mlp_ln = LayerNorm(n_state)

    def forward(
        self,
        x: Tensor,
        self_k: Tensor,
        self_v: Tensor,
        positions: Tensor,
        mask: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (R, n, D); caches (R, H, cap, hd); positions (R, n); mask (R, 1, n, cap); cross (R, H, Ta, hd)."""
        h = self.attn_ln(x)
        k, v = self.attn.project_kv(h)  # (R, H, n, hd)
        write_at = positions[:, None, :, None].expand_as(k)  # (R, H, n, hd)
        self_k = self_k.scatter(2, write_at, k)
        self_v = self_v.scatter(2, write_at, v)
        x = x + self.attn.attend(h, self_k, self_v, mask)
        x = x + self.cross_attn.attend(self.cross_attn_ln(x), cross_k, cross_v)
        x = x + self.mlp(self.mlp_ln(x))
        return x, self_k, self_v


class TextDecoder(nn.Module):
    def __init__(self, dims: ModelDims, impl: AttentionImpl):
        super().__init__()
        d = dims.n_text_state
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.empty(dims.n_text_ctx, d))
        self.blocks = nn.ModuleList(
            DecoderBlock(d, dims.n_text_head, impl) for _ in range(dims.n_text_layer)
        )
        self.ln = LayerNorm(d)

    def forward(
        self,
        tokens: Tensor,
        offsets: Tensor,
        cache_index: Tensor,
        self_k: list[Tensor],
        self_v: list[Tensor],
        cross_k: list[Tensor],
        cross_v: list[Tensor],
        logit_positions: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """One decoder step over rows = n_audio x beams.

        tokens (R, n) int64; offsets (R,) where each row's new tokens start; cache_index (R,) which cache row
        each row continues (beam reordering); self caches (R, H, cap, hd); cross K/V (n_audio, H, Ta, hd),
        shared by the R // n_audio consecutive rows of each audio; logit_positions (P,) which of the n new
        positions get logits (default: all). Returns fp32 logits (R, P, n_vocab) and the updated caches.
        """
        n = tokens.shape[1]
        positions = offsets[:, None] + torch.arange(n, device=tokens.device)  # (R, n)
        x = self.token_embedding(tokens) + self.positional_embedding[positions]  # (R, n, D)
        capacity = self_k[0].shape[2]
        mask = torch.arange(capacity, device=tokens.device) <= positions[:, :, None]  # (R, n, cap)
        mask = mask[:, None]  # (R, 1, n, cap)
        beams = tokens.shape[0] // cross_k[0].shape[0]
        new_k, new_v = [], []
        for block, sk, sv, ck, cv in zip(self.blocks, self_k, self_v, cross_k, cross_v):
            x, sk, sv = block(
                x,
                sk.index_select(0, cache_index),
                sv.index_select(0, cache_index),
                positions,
                mask,
                ck.repeat_interleave(beams, 0),
                cv.repeat_interleave(beams, 0),
            )
            new_k.append(sk)
            new_v.append(sv)
        x = self.ln(x)
        if logit_positions is not None:
            x = x[:, logit_positions]  # (R, P, D)
        logits = (x @ self.token_embedding.weight.to(x.dtype).T).float()  # (R, P, n_vocab)
        return logits, new_k, new_v


class Whisper(nn.Module):
    def __init__(self, dims: ModelDims, attn_impl: AttentionImpl = "sdpa"):
        super().__init__()
        if attn_impl not in ("eager", "sdpa"):
            raise ValueError(f"attn_impl: received {attn_impl!r}, expected 'eager' or 'sdpa'")
        self.dims = dims
        self.encoder = AudioEncoder(dims, attn_impl)
        self.decoder = TextDecoder(dims, attn_impl)

    def cross_kv(self, audio_features: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(B, Ta, D) -> each decoder layer's cross-attention keys and values, (B, H, Ta, hd)."""
        pairs = [block.cross_attn.project_kv(audio_features) for block in self.decoder.blocks]
        return [k for k, _ in pairs], [v for _, v in pairs]

    def encode(self, mel: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(B, n_mels, 2 * n_audio_ctx) -> cross K/V of every decoder layer."""
        return self.cross_kv(self.encoder(mel))

    def empty_cache(self, rows: int, capacity: int | None = None) -> tuple[list[Tensor], list[Tensor]]:
        d = self.dims
        p = self.decoder.token_embedding.weight
        shape = (rows, d.n_text_head, capacity or d.n_text_ctx, d.text_head_dim)
        return (
            [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(d.n_text_layer)],
            [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(d.n_text_layer)],
        )

    @classmethod
    def from_state_dict(
        cls, dims: ModelDims, state: dict, attn_impl: AttentionImpl = "sdpa", keep_fp16: bool = False
    ) -> "Whisper":
        """Build from a canonical state dict of numpy arrays or tensors (any float dtype), computing in fp32.

        The module is made on the meta device and takes copies of the state as its parameters, so a large-v3 costs
        one fp32 copy of its weights (6.2 GB), not two, and no time in random initialisation. keep_fp16: fp16
        weights stay fp16 and are widened to fp32 at each use (exact: every fp16 value is an fp32 value), so the
        module computes exactly what the fp32 one computes in half the memory (check.py on large checkpoints).
        """
        with torch.device("meta"):
            model = cls(dims, attn_impl)

        def stored(value) -> Tensor:
            array = np.asarray(value)
            dtype = np.float16 if keep_fp16 and array.dtype == np.float16 else np.float32
            return torch.from_numpy(np.array(array, dtype=dtype))

        model.load_state_dict({k: stored(v) for k, v in state.items()}, strict=True, assign=True)
        for module in list(model.modules()):  # a parametrization adds modules
            for name, param in list(module.named_parameters(recurse=False)):
                if param.dtype != torch.float32:
                    parametrize.register_parametrization(module, name, _WidenedToFloat32(), unsafe=True)
        return model.eval()


class _WidenedToFloat32(nn.Module):
    """A parametrization: the parameter is stored in fp16 and read as fp32."""

    def forward(self, stored: Tensor) -> Tensor:
        return stored.float()
