"""The decoder graph on onnxruntime's fused contrib operators (export attention="onnxruntime").

Same contract as graphs.decoder_graph (graph_io), fewer and larger kernels per layer for a GPU step:
- GroupQueryAttention (num_heads = kv_num_heads) takes the fused QKV projection as it is, appends the new keys and
  values to the fixed-capacity cache at each row's offset and attends causally up to it: no mask, no scatter, no
  head transposes. When a backend binds in_self_* and out_self_* to the same buffer, the append is in place
  (onnxruntime's past/present buffer sharing); otherwise the valid part of the cache is copied first.
- MultiHeadAttention attends the folded queries to the encoder's cross K/V as they are (B, H, 1500, hd).
- SkipLayerNormalization adds the previous projection's bias and the residual, normalises, and hands the new
  residual on: one kernel where the standard graph has bias Add, residual Add and LayerNormalization.
- BiasGelu adds the first MLP bias inside the activation.
- The greedy choice (graphs.greedy_choice, greedy_select.onnx's) is part of the graph, so a greedy step is one
  run instead of two (in_logit_bias in, out_best_token / out_best_logprob out; graph_io).

GroupQueryAttention's limits become the variant's: a step of several tokens must start every row at offset 0
(a prompt; what the runtime does), and cache positions at or beyond a row's offset + n_new are unspecified
(they are never read). Only onnxruntime runs this graph; TensorRT builds refuse it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from whisper_export import graph_io as io
from whisper_export.dims import ModelDims
from whisper_export.export.graphs import DecoderIO, greedy_choice
from whisper_export.export.onnx_builder import GraphBuilder, Layers
from whisper_export.export.quantize import quantizer_for


class _Residual:
    """The residual stream with a pending projection: each LayerNorm first adds (projection + bias) to it (bias
    "": none)."""

    def __init__(self, g: GraphBuilder, nn: Layers, x: str):
        self.g, self.nn, self.x = g, nn, x
        self.pending: tuple[str, str] | None = None

    def add(self, projection: tuple[str, str]) -> None:
        self.pending = projection

    def norm(self, prefix: str) -> str:
        if self.pending is None:
            return self.nn.layer_norm(self.x, prefix)
        skip, bias = self.pending
        gamma = self.g.weight(f"{prefix}.weight", self.nn.state[f"{prefix}.weight"])
        beta = self.g.weight(f"{prefix}.bias", self.nn.state[f"{prefix}.bias"])
        inputs = [self.x, skip, gamma, beta, bias] if bias else [self.x, skip, gamma, beta]
        out, _, _, self.x = self.g.ort_op("SkipLayerNormalization", inputs, n_out=4, epsilon=1e-5)
        self.pending = None
        return out


def decoder_graph_ort(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, opset: int, metadata: dict
) -> onnx.ModelProto:
    g = GraphBuilder("whisper_decoder", dtype, quantizer_for(metadata))
    nn = Layers(g, state, "onnxruntime", dims.n_text_state)
    n_head, hd = dims.n_text_head, dims.text_head_dim
    io_ = DecoderIO(g, dims)

    # GroupQueryAttention's per-row "cache length after this step - 1", and its bound on it: the step's length
    # for a prompt (so that it is treated as one), the capacity for a one-token step (shape arithmetic only,
    # which onnxruntime keeps on the CPU where the operator wants this input)
    last = g.op("ReduceMax", [io_.positions, g.const([1])], keepdims=0)  # (R,)
    seqlens = g.op("Cast", [last], to=TensorProto.INT32)
    one_token = g.op("Equal", [io_.n_new, g.const(1)])
    total = g.op("Cast", [g.op("Where", [one_token, io_.capacity, io_.n_new])], to=TensorProto.INT32)

    tok, pos, emb = io_.embeddings(g, state)
    stream = _Residual(g, nn, tok)
    stream.add((pos, ""))  # the first SkipLayerNormalization adds the positional embedding (no bias)
    self_out = io.self_outputs(dims.n_text_layer)
    scale = nn.remaining_scale(hd)
    for i in range(dims.n_text_layer):
        p = f"decoder.blocks.{i}"
        qkv = nn.fused_linear(stream.norm(f"{p}.attn_ln"), [f"{p}.attn.{n}" for n in ("query", "key", "value")],
                              nn.folded_scale(hd))  # (R, n, 3D)
        a, _, _ = g.ort_op(
            "GroupQueryAttention",
            [qkv, "", "", io_.self_in[2 * i], io_.self_in[2 * i + 1], seqlens, total],
            outs=[g.fresh("gqa_out"), self_out[2 * i], self_out[2 * i + 1]],
            num_heads=n_head, kv_num_heads=n_head, scale=scale)
        stream.add(nn.projection(a, f"{p}.attn.out"))

        q = g.op("Reshape", [nn.linear(stream.norm(f"{p}.cross_attn_ln"), f"{p}.cross_attn.query", nn.folded_scale(hd)),
                             io_.fold])  # (A, beams * n, D)
        a = nn.multi_head(q, io_.cross_in[2 * i], io_.cross_in[2 * i + 1], n_head)
        stream.add(nn.projection(g.op("Reshape", [a, io_.unfold]), f"{p}.cross_attn.out"))  # (R, n, D)

        h, b1 = nn.projection(stream.norm(f"{p}.mlp_ln"), f"{p}.mlp.0")
        stream.add(nn.projection(g.ort_op("BiasGelu", [h, b1]), f"{p}.mlp.2", one_sided=True))

    logits = io_.finish(g, dims, stream.norm("decoder.ln"), emb)
    # the greedy choice in the same graph: a greedy step is one run (graph_io)
    best, logprob = greedy_choice(g, logits, g.input(io.LOGIT_BIAS, TensorProto.FLOAT, [dims.n_vocab]), dims.n_vocab)
    g.output(io.BEST_TOKEN, best, TensorProto.INT64, ["rows", "n_logits"])
    g.output(io.BEST_LOGPROB, logprob, TensorProto.FLOAT, ["rows", "n_logits"])
    return g.model(opset, metadata)
