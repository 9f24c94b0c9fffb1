"""align.onnx: the decoder run once over a finished window's tokens, for word timestamps (graph_io has the I/O).

What openai-whisper's find_alignment takes from its model: the raw cross-attention scores q.k / sqrt(hd) of the
alignment heads (before the softmax: the host cuts them to the window's frames first) and the probability of
each next text token under a softmax over the text vocabulary, gathered here so that no (n_tokens, n_vocab)
logits reach the host. No cache: the causal mask covers every position.

The attention is always plain MatMul/Softmax (scores and softmax in float32) whatever the bundle's decoder
uses: the graph has no contrib operator, so onnxruntime (CPU, CUDA) and TensorRT take the same file for every
bundle kind.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto

from whisper_export import graph_io as io
from whisper_export.dims import ModelDims
from whisper_export.export.onnx_builder import GraphBuilder, Layers
from whisper_export.export.quantize import quantizer_for


def align_graph(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, attention: str, opset: int, metadata: dict
) -> onnx.ModelProto:
    """attention is ignored (always MatMul/Softmax); the alignment heads and eot come from the bundle config in
    metadata."""
    config = json.loads(metadata[io.METADATA_KEY])
    heads = [tuple(pair) for pair in config["alignment_heads"]]
    eot = int(config["special_tokens"]["eot"])
    g = GraphBuilder("whisper_align", dtype, quantizer_for(metadata))  # int8 bundles: int8 weights here too
    nn = Layers(g, state, "matmul", dims.n_text_state)
    n_head, hd, n_layer = dims.n_text_head, dims.text_head_dim, dims.n_text_layer
    i64 = TensorProto.INT64
    tokens = g.input(io.TOKENS, i64, ["rows", "n_tokens"])
    audio_rows = g.input(io.AUDIO_ROWS, i64, ["rows"])
    cross_shape = ["n_audio", n_head, dims.n_audio_ctx, hd]
    cross = [g.input(name, g.elem, cross_shape) for name in io.cross_inputs(n_layer)]

    n_tokens = g.op("Squeeze", [g.op("Shape", [tokens], start=1, end=2), g.const([0])])
    positions = g.op("Range", [g.const(0), n_tokens, g.const(1)])  # (T,)
    table = state["decoder.token_embedding.weight"]
    if g.quantizer is not None:
        tok, emb = g.quantizer.embedding(g, "decoder.token_embedding.weight", table, tokens)
    else:
        emb = g.weight("decoder.token_embedding.weight", table)
        tok = g.op("Gather", [emb, tokens])
    pos_emb = g.weight("decoder.positional_embedding", state["decoder.positional_embedding"])
    x = g.op("Add", [tok, g.op("Gather", [pos_emb, positions])])  # (A, T, D)
    causal = g.op("LessOrEqual", [positions, g.op("Unsqueeze", [positions, g.const([1])])])  # (T, T): key <= query

    qk_parts = []
    for i in range(n_layer):
        p = f"decoder.blocks.{i}"
        q, k, v = nn.qkv_heads(nn.layer_norm(x, f"{p}.attn_ln"), f"{p}.attn", n_head)
        x = g.op("Add", [x, nn.linear(nn.merge_heads(nn.attend(q, k, v, causal, hd)), f"{p}.attn.out")])
        q = nn.split_heads(nn.linear(nn.layer_norm(x, f"{p}.cross_attn_ln"), f"{p}.cross_attn.query",
                                     nn.folded_scale(hd)), n_head)  # (A, H, T, hd)
        ck, cv = (g.op("Gather", [c, audio_rows], axis=0) for c in cross[2 * i : 2 * i + 2])  # (A, H, 1500, hd)
        scores = _scores(g, nn, q, ck, hd)  # (A, H, T, 1500) float32
        layer_heads = [h for layer, h in heads if layer == i]
        if layer_heads:
            qk_parts.append(g.op("Gather", [scores, g.const(layer_heads)], axis=1))
        weights = g.op("Softmax", [scores], axis=-1)
        if g.elem != TensorProto.FLOAT:
            weights = g.op("Cast", [weights], to=g.elem)
        a = nn.merge_heads(g.op("MatMul", [weights, cv]))
        x = g.op("Add", [x, nn.linear(a, f"{p}.cross_attn.out")])
        x = g.op("Add", [x, nn.mlp(nn.layer_norm(x, f"{p}.mlp_ln"), p)])
    qk = qk_parts[0] if len(qk_parts) == 1 else g.op("Concat", qk_parts, axis=1)
    g.output(io.ALIGNMENT_QK, qk, TensorProto.FLOAT, ["rows", len(heads), "n_tokens", dims.n_audio_ctx])
    probs = _text_probs(g, nn.layer_norm(x, "decoder.ln"), emb, tokens, dims, eot)
    g.output(io.TEXT_PROBS, probs, TensorProto.FLOAT, ["rows", "n_probs"])
    return g.model(opset, metadata)


def _scores(g: GraphBuilder, nn: Layers, q: str, k: str, head_dim: int) -> str:
    """q (A, H, T, hd) . k (A, H, S, hd) -> (A, H, T, S) float32, scaled by 1 / sqrt(hd) (the part of the scale
    not folded into the query weights)."""
    scale = nn.remaining_scale(head_dim)
    if scale != 1.0:
        q = g.op("Mul", [q, g.const(scale, g.dtype)])
    s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    return s if g.elem == TensorProto.FLOAT else g.op("Cast", [s], to=TensorProto.FLOAT)


def _text_probs(g: GraphBuilder, x: str, emb, tokens: str, dims: ModelDims, eot: int) -> str:
    """(A, T - 1) float32: softmax(logits[:, t, :eot])[tokens[:, t + 1]], 0 where that token is not text."""
    before_last = g.op("Slice", [x, g.const([0]), g.const([-1]), g.const([1])])  # (A, T - 1, D)
    flat = g.op("Reshape", [before_last, g.const([-1, dims.n_text_state])])
    if g.quantizer is not None:  # emb: the quantized embedding's handle
        logits = g.quantizer.logits(g, flat, emb)
    else:
        logits = g.op("Gemm", [flat, emb], transB=1)  # the tied projection, (A * (T - 1), V)
    logits = g.op("Slice", [logits, g.const([0]), g.const([eot]), g.const([1])])  # the text vocabulary
    if g.elem != TensorProto.FLOAT:
        logits = g.op("Cast", [logits], to=TensorProto.FLOAT)
    logprobs = g.op("LogSoftmax", [logits], axis=-1)  # (A * (T - 1), eot)
    following = g.op("Slice", [tokens, g.const([1]), g.const([1 << 62]), g.const([1])])  # (A, T - 1)
    is_text = g.op("Less", [following, g.const(eot)])
    index = g.op("Reshape", [g.op("Min", [following, g.const(eot - 1)]), g.const([-1, 1])])  # (A * (T - 1), 1)
    picked = g.op("Exp", [g.op("GatherElements", [logprobs, index], axis=1)])  # (A * (T - 1), 1)
    picked = g.op("Reshape", [picked, g.op("Shape", [following])])  # (A, T - 1)
    return g.op("Where", [is_text, picked, g.const(0.0, np.float32)])
