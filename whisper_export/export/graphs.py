"""The encoder and decoder-with-past graphs, built from a canonical state dict (see graph_io for the contract)."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto

from whisper_export import graph_io as io
from whisper_export.dims import ModelDims
from whisper_export.export.onnx_builder import GraphBuilder, Layers
from whisper_export.export.quantize import quantizer_for


def encoder_graph(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, attention: str, opset: int, metadata: dict
) -> onnx.ModelProto:
    g = GraphBuilder("whisper_encoder", dtype, quantizer_for(metadata))
    nn = Layers(g, state, attention, dims.n_audio_state)
    n_frames = 2 * dims.n_audio_ctx
    mel = g.input(io.MEL, TensorProto.FLOAT, ["batch", dims.n_mels, n_frames])
    x = mel if g.elem == TensorProto.FLOAT else g.op("Cast", [mel], to=g.elem)
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # (B, n_frames, n_mels)
    for i, stride in ((1, 1), (2, 2)):
        x = g.op("Gelu", [_conv3(g, x, state, f"encoder.conv{i}", n_frames, stride)])
    x = g.op("Add", [x, g.weight("encoder.positional_embedding", state["encoder.positional_embedding"])])
    for i in range(dims.n_audio_layer):
        p = f"encoder.blocks.{i}"
        a = nn.self_attention(nn.layer_norm(x, f"{p}.attn_ln"), f"{p}.attn", dims.n_audio_head)
        x = g.op("Add", [x, nn.linear(a, f"{p}.attn.out")])
        x = g.op("Add", [x, nn.mlp(nn.layer_norm(x, f"{p}.mlp_ln"), p)])
    x = nn.layer_norm(x, "encoder.ln_post")
    kv_shape = ["batch", dims.n_text_head, dims.n_audio_ctx, dims.text_head_dim]
    names = iter(io.cross_outputs(dims.n_text_layer))
    for i in range(dims.n_text_layer):
        for proj in ("key", "value"):
            kv = nn.split_heads(nn.linear(x, f"decoder.blocks.{i}.cross_attn.{proj}"), dims.n_text_head)
            g.output(next(names), kv, g.elem, kv_shape)
    return g.model(opset, metadata)


def _conv3(g: GraphBuilder, x: str, state: dict[str, np.ndarray], prefix: str, n_in: int, stride: int) -> str:
    """A kernel-3, padding-1 Conv1d over time-major x (B, n_in, C) as one MatMul: the three taps side by side
    (B, n_in / stride, 3C) times the kernel laid out tap-major (3C, O), so no convolution kernel (cuDNN's plan
    per input shape on CUDA) runs."""
    w = state[f"{prefix}.weight"]  # (O, C, 3)
    padded = g.op("Pad", [x, g.const([0, 1, 0, 0, 1, 0])])  # (B, n_in + 2, C)
    taps = [g.op("Slice", [padded, g.const([k]), g.const([k + n_in]), g.const([1]), g.const([stride])])
            for k in range(3)]  # 3 x (B, n_in / stride, C)
    kernel = g.weight(f"{prefix}.weight_taps", w.transpose(2, 1, 0).reshape(-1, w.shape[0]))  # (3C, O)
    y = g.op("MatMul", [g.op("Concat", taps, axis=2), kernel])
    return g.op("Add", [y, g.weight(f"{prefix}.bias", state[f"{prefix}.bias"])])


class DecoderIO:
    """The decoder contract's inputs (graph_io) declared on a builder, and the values every variant derives."""

    def __init__(self, g: GraphBuilder, dims: ModelDims):
        n_head, hd, i64 = dims.n_text_head, dims.text_head_dim, TensorProto.INT64
        self.tokens = g.input(io.TOKENS, i64, ["rows", "n_new"])
        self.offsets = g.input(io.OFFSETS, i64, ["rows"])
        self.logit_positions = g.input(io.LOGIT_POSITIONS, i64, ["n_logits"])
        self.self_shape = ["rows", n_head, "capacity", hd]
        self.self_in = [g.input(n, g.elem, self.self_shape) for n in io.self_inputs(dims.n_text_layer)]
        cross_shape = ["n_audio", n_head, dims.n_audio_ctx, hd]
        self.cross_in = [g.input(n, g.elem, cross_shape) for n in io.cross_inputs(dims.n_text_layer)]
        self.n_new = g.op("Squeeze", [g.op("Shape", [self.tokens], start=1, end=2), g.const([0])])
        self.capacity = g.op("Squeeze", [g.op("Shape", [self.self_in[0]], start=2, end=3), g.const([0])])
        steps = g.op("Range", [g.const(0), self.n_new, g.const(1)])  # (n,)
        self.positions = g.op("Add", [g.op("Unsqueeze", [self.offsets, g.const([1])]), steps])  # (R, n)
        # cross-attention folds each audio's beams into its query axis: (R, n, D) -> (A, beams * n, D)
        d = dims.n_text_state
        rows_shape = g.op("Shape", [self.tokens], start=0, end=1)
        audio_shape = g.op("Shape", [self.cross_in[0]], start=0, end=1)
        self.fold = g.op("Concat", [audio_shape, g.const([-1, d])], axis=0)
        self.unfold = g.op("Concat", [rows_shape, g.const([-1, d])], axis=0)

    def embeddings(self, g: GraphBuilder, state: dict[str, np.ndarray]) -> tuple[str, str, str]:
        """(token embeddings (R, n, D), positional embeddings (R, n, D), the token embedding's initializer for
        the tied logits; with a quantizer, its handle)."""
        table = state["decoder.token_embedding.weight"]
        if g.quantizer is not None:
            tok, emb = g.quantizer.embedding(g, "decoder.token_embedding.weight", table, self.tokens)
        else:
            emb = g.weight("decoder.token_embedding.weight", table)
            tok = g.op("Gather", [emb, self.tokens])
        pos_emb = g.weight("decoder.positional_embedding", state["decoder.positional_embedding"])
        return tok, g.op("Gather", [pos_emb, self.positions]), emb

    def embed(self, g: GraphBuilder, state: dict[str, np.ndarray]) -> tuple[str, str]:
        """(x (R, n, D): token + positional embedding, the token embedding's initializer for the tied logits)."""
        tok, pos, emb = self.embeddings(g, state)
        return g.op("Add", [tok, pos]), emb

    def finish(self, g: GraphBuilder, dims: ModelDims, x: str, emb: str) -> str:
        """out_logits from the final normalised x (R, n, D) at in_logit_positions (returned); the cache outputs'
        types."""
        x = g.op("Gather", [x, self.logit_positions], axis=1)  # (R, P, D)
        flat = g.op("Reshape", [x, g.const([-1, dims.n_text_state])])  # (R * P, D)
        if g.quantizer is not None:
            logits = g.quantizer.logits(g, flat, emb)
        else:
            logits = g.op("Gemm", [flat, emb], transB=1)  # tied projection, (R * P, V)
        out_shape = g.op("Concat", [g.op("Shape", [x], start=0, end=2), g.const([dims.n_vocab])], axis=0)
        logits = g.op("Reshape", [logits, out_shape])  # (R, P, V)
        if g.elem != TensorProto.FLOAT:
            logits = g.op("Cast", [logits], to=TensorProto.FLOAT)
        g.output(io.LOGITS, logits, TensorProto.FLOAT, ["rows", "n_logits", dims.n_vocab])
        for name in io.self_outputs(dims.n_text_layer):
            g.outputs.append(onnx.helper.make_tensor_value_info(name, g.elem, self.self_shape))
        return io.LOGITS


def decoder_graph(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, attention: str, opset: int, metadata: dict
) -> onnx.ModelProto:
    g = GraphBuilder("whisper_decoder", dtype, quantizer_for(metadata))
    nn = Layers(g, state, attention, dims.n_text_state)
    n_head, hd = dims.n_text_head, dims.text_head_dim
    io_ = DecoderIO(g, dims)

    # the (R, 1, n, capacity) mask of the keys each new token may see, and where its key/value is written
    key_pos = g.op("Range", [g.const(0), io_.capacity, g.const(1)])  # (capacity,)
    mask = g.op("LessOrEqual", [key_pos, g.op("Unsqueeze", [io_.positions, g.const([2])])])  # (R, n, cap)
    mask = g.op("Unsqueeze", [mask, g.const([1])])  # (R, 1, n, cap)
    write_at = g.op("Unsqueeze", [io_.positions, g.const([1, 3])])  # (R, 1, n, 1)

    x, emb = io_.embed(g, state)
    self_out = iter(io.self_outputs(dims.n_text_layer))
    for i in range(dims.n_text_layer):
        p = f"decoder.blocks.{i}"
        h = nn.layer_norm(x, f"{p}.attn_ln")
        q, k, v = nn.qkv_heads(h, f"{p}.attn", n_head)
        index = g.op("Expand", [write_at, g.op("Shape", [k])])  # (R, H, n, hd)
        caches = []
        for cache, new in ((io_.self_in[2 * i], k), (io_.self_in[2 * i + 1], v)):
            caches.append(g.op("ScatterElements", [cache, index, new], axis=2, out=next(self_out)))
        a = nn.merge_heads(nn.attend(q, caches[0], caches[1], mask, hd))
        x = g.op("Add", [x, nn.linear(a, f"{p}.attn.out")])

        h = nn.layer_norm(x, f"{p}.cross_attn_ln")
        q = g.op("Reshape", [nn.linear(h, f"{p}.cross_attn.query", nn.folded_scale(hd)), io_.fold])
        a = nn.merge_heads(nn.attend(nn.split_heads(q, n_head), io_.cross_in[2 * i], io_.cross_in[2 * i + 1], None, hd))
        a = g.op("Reshape", [a, io_.unfold])  # (A, beams*n, D) -> (R, n, D)
        x = g.op("Add", [x, nn.linear(a, f"{p}.cross_attn.out")])
        x = g.op("Add", [x, nn.mlp(nn.layer_norm(x, f"{p}.mlp_ln"), p)])

    io_.finish(g, dims, nn.layer_norm(x, "decoder.ln"), emb)
    return g.model(opset, metadata)


def cache_reorder_graph(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, attention: str, opset: int, metadata: dict
) -> onnx.ModelProto:
    """out_self_*[r] = in_self_*[in_cache_index[r]]: one Gather per cache (no weights; state is unused)."""
    g = GraphBuilder("whisper_cache_reorder", dtype)
    index = g.input(io.CACHE_INDEX, TensorProto.INT64, ["rows"])
    shape = ["rows", dims.n_text_head, "capacity", dims.text_head_dim]
    for name_in, name_out in zip(io.self_inputs(dims.n_text_layer), io.self_outputs(dims.n_text_layer)):
        g.output(name_out, g.op("Gather", [g.input(name_in, g.elem, shape), index], axis=0), g.elem, shape)
    return g.model(opset, metadata)


# the vocabulary is searched in blocks of this many values (padded with -inf), then the blocks' winners: at most 256
# values per TopK row is what onnxruntime's CUDA TopK sorts in one thread block (BitonicTopK); longer rows go to
# the far slower RadixTopK, and ReduceMax/ReduceMin over the vocabulary run as cuDNN reductions, slower still
# (NOTES.md, "Benchmarks", has the timings)
SELECT_WIDTH = 256


def greedy_choice(g: GraphBuilder, logits: str, bias: str | None, n_vocab: int) -> tuple[str, ...]:
    """(best token (R, P) int64, its log-probability (R, P) float32) of float32 logits (R, P, V) + bias (V,):
    argmax, the first index on ties, and -log(sum(exp(x - max))), which is sampling.chosen_logprobs' value to
    float32 rounding. 13 kernels after the logits' Cast (each costs a GPU step ~1.7 us at batch 1).

    TopK(k=1) in two stages: the best of each block of SELECT_WIDTH values, then the best block; both stages keep
    the lowest index on ties, so the result is the lowest index overall.
    """
    blocks_n = -(-n_vocab // SELECT_WIDTH)
    one = g.const([1])
    # (R, P, V); the bias is 0 or -inf, so x is the filtered logits exactly (None: logits already filtered)
    x = g.op("Add", [logits, bias]) if bias is not None else logits
    padded = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, blocks_n * SELECT_WIDTH - n_vocab]), g.const(-np.inf, np.float32)])
    blocks = g.op("Reshape", [padded, g.const([0, 0, blocks_n, SELECT_WIDTH])])  # (R, P, B, W)
    block_top, block_best = g.op("TopK", [blocks, one], n_out=2, axis=-1)  # (R, P, B, 1) each
    top, which = g.op("TopK", [block_top, one], n_out=2, axis=2)  # (R, P, 1, 1) each
    within = g.op("GatherElements", [block_best, which], axis=2)  # (R, P, 1, 1)
    # the outputs come out of kernels in their final shape (R, P), Squeeze only on the way in (it is a view
    # there, a copy at the end): a backend may bind them to host-mapped memory (backends/ort_greedy.py)
    which, within = (g.op("Squeeze", [t, g.const([2, 3])]) for t in (which, within))  # (R, P) each
    best = g.op("Add", [g.op("Mul", [which, g.const(SELECT_WIDTH)]), within])  # (R, P)
    logprob = g.op("Neg", [_log_total(g, blocks, top)])  # (R, P)
    return best, logprob


def _log_total(g: GraphBuilder, blocks: str, top: str) -> str:
    """log(sum(exp(x - max))) (R, P) of logits padded into blocks (R, P, B, W) with -inf, max (R, P, 1, 1).

    Summed per block, then over the blocks: one long running float32 sum (onnxruntime's CPU ReduceSum) would
    round the many tiny terms away against the best's exp(0) = 1 (~5e-5 lost); a block loses at most its 255
    others' rounding against it (< 2e-5, far less in practice)."""
    scaled = g.op("Exp", [g.op("Sub", [blocks, top])])  # (R, P, B, W), the padding exp(-inf) = 0
    total = g.op("ReduceSum", [g.op("ReduceSum", [scaled, g.const([-1])], keepdims=1), g.const([2, 3])], keepdims=0)
    return g.op("Log", [total])  # (R, P)


def greedy_select_graph(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, attention: str, opset: int, metadata: dict
) -> onnx.ModelProto:
    """The greedy choice (greedy_choice) from device-resident logits. No weights."""
    g = GraphBuilder("whisper_greedy_select", np.float32)
    logits = g.input(io.SELECT_LOGITS, TensorProto.FLOAT, ["rows", "n_logits", dims.n_vocab])
    bias = g.input(io.LOGIT_BIAS, TensorProto.FLOAT, [dims.n_vocab])
    best, logprob = greedy_choice(g, logits, bias, dims.n_vocab)
    g.output(io.BEST_TOKEN, best, TensorProto.INT64, ["rows", "n_logits"])
    g.output(io.BEST_LOGPROB, logprob, TensorProto.FLOAT, ["rows", "n_logits"])
    return g.model(opset, metadata)


def top_select_graph(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, attention: str, opset: int, metadata: dict
) -> onnx.ModelProto:
    """The TOP_K best tokens of device-resident logits + a logit bias, best first (the lowest id first on
    ties), and their log-probabilities under log_softmax(logits + bias), as sampling.chosen_logprobs computes
    them to float32 rounding: a beam search's candidates without the logits on the host (_top_k). No weights."""
    g = GraphBuilder("whisper_top_select", np.float32)
    logits = g.input(io.SELECT_LOGITS, TensorProto.FLOAT, ["rows", "n_logits", dims.n_vocab])
    bias = g.input(io.LOGIT_BIAS, TensorProto.FLOAT, [dims.n_vocab])
    # the bias is 0 or -inf, so x is the filtered logits exactly
    _top_k_outputs(g, g.op("Add", [logits, bias]), dims.n_vocab)
    return g.model(opset, metadata)


def _top_k_outputs(g: GraphBuilder, x: str, n_vocab: int) -> None:
    """out_top_tokens / out_top_logprobs (R, P, TOP_K): the TOP_K best of filtered logits x (R, P, V), best first,
    and their log_softmax values.

    TopK over rows of SELECT_WIDTH values only (see SELECT_WIDTH), in three stages: the vocabulary padded to 208
    blocks of 256 (a multiple of 256 / TOP_K blocks, so that the 208 x 16 winners fill 13 rows of 256 exactly:
    only the float values are ever padded, as onnxruntime's CUDA Pad takes no int64), then 13 x 16, then 16.
    Every stage keeps the lowest position on ties and the winners stay in position order, so ties go by id."""
    k, w = io.TOP_K, SELECT_WIDTH
    blocks = -(-(-(-n_vocab // w)) // (w // k)) * (w // k)  # ceil(V / w), rounded up to a multiple of w / k
    rows2 = blocks * k // w
    if rows2 * k > w:
        raise ValueError(f"n_vocab: received {n_vocab}, expected at most {w * w * w // (k * k)} for the top-k graphs")
    padded = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, blocks * w - n_vocab]), g.const(-np.inf, np.float32)])
    values = g.op("Reshape", [padded, g.const([0, 0, blocks, w])])  # (R, P, B, W)
    top, where = g.op("TopK", [values, g.const([k])], n_out=2, axis=-1)  # (R, P, B, k) each
    ids = g.op("Add", [where, g.const((np.arange(blocks, dtype=np.int64) * w)[:, None])])  # (R, P, B, k)
    second = g.const([0, 0, rows2, w])
    top, where = g.op("TopK", [g.op("Reshape", [top, second]), g.const([k])], n_out=2, axis=-1)  # (R, P, 13, k)
    ids = g.op("GatherElements", [g.op("Reshape", [ids, second]), where], axis=-1)  # (R, P, 13, k)
    flat = g.const([0, 0, -1])
    top, where = g.op("TopK", [g.op("Reshape", [top, flat]), g.const([k])], n_out=2, axis=-1)  # (R, P, k)
    tokens = g.op("GatherElements", [g.op("Reshape", [ids, flat]), where], axis=-1)  # (R, P, k), best first
    # (x[c] - max) - log(sum(exp(x - max)))
    best = g.op("Slice", [top, g.const([0]), g.const([1]), g.const([-1])])  # (R, P, 1): the max
    log_total = g.op("Unsqueeze", [_log_total(g, values, g.op("Unsqueeze", [best, g.const([3])])), g.const([2])])
    logprobs = g.op("Sub", [g.op("Sub", [top, best]), log_total])  # (R, P, k)
    g.output(io.TOP_TOKENS, tokens, TensorProto.INT64, ["rows", "n_logits", k])
    g.output(io.TOP_LOGPROBS, logprobs, TensorProto.FLOAT, ["rows", "n_logits", k])


def _row_max(g: GraphBuilder, x: str, n: int) -> str:
    """max over the last axis of x (R, P, n) float32 as (R, P, 1): TopK over blocks of SELECT_WIDTH, then over
    the blocks' winners (onnxruntime's CUDA ReduceMax is a slow cuDNN reduction; see SELECT_WIDTH)."""
    blocks = -(-n // SELECT_WIDTH)
    padded = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, blocks * SELECT_WIDTH - n]), g.const(-np.inf, np.float32)])
    top, _ = g.op("TopK", [g.op("Reshape", [padded, g.const([0, 0, blocks, SELECT_WIDTH])]), g.const([1])], n_out=2,
                  axis=-1)  # (R, P, B, 1)
    top, _ = g.op("TopK", [g.op("Reshape", [top, g.const([0, 0, -1])]), g.const([1])], n_out=2, axis=-1)
    return top  # (R, P, 1)


def _timestamp_limits(g: GraphBuilder, state: str, eot: int, ts_begin: int) -> tuple[str, str]:
    """(text_end, ts_min) (R, 1, 1) int64 of the timestamp state (R, 3): ApplyTimestampRules.limits_of."""
    def column(i: int) -> str:
        return g.op("Slice", [state, g.const([i]), g.const([i + 1]), g.const([1])])  # (R, 1)

    last, penultimate, stamp = column(0), column(1), column(2)
    text_ended = g.op("Mul", [last, g.op("Sub", [g.const(1), penultimate])])  # (R, 1)
    closed = g.op("Mul", [last, penultimate])
    floor = g.op("Add", [g.const(ts_begin), g.op("Mul", [closed, g.const(io.ALL_TIMESTAMPS - ts_begin)])])
    ts_min = g.op("Max", [floor, g.op("Sub", [g.op("Add", [stamp, g.const(1)]), text_ended])])
    text_end = g.op("Mul", [text_ended, g.const(eot)])
    return tuple(g.op("Unsqueeze", [x, g.const([2])]) for x in (text_end, ts_min))  # (R, 1, 1) each


def _next_timestamp_state(g: GraphBuilder, state: str, best: str, ts_begin: int) -> str:
    """The state (R, 3) after the token of the last logit position of best (R, P): ApplyTimestampRules.next_state."""
    chosen = g.op("Slice", [best, g.const([-1]), g.const([1 << 62]), g.const([1])])  # (R, 1)
    is_stamp = g.op("Cast", [g.op("Less", [g.const(ts_begin - 1), chosen])], to=TensorProto.INT64)  # (R, 1)
    last = g.op("Slice", [state, g.const([0]), g.const([1]), g.const([1])])
    stamp = g.op("Slice", [state, g.const([2]), g.const([3]), g.const([1])])
    new_stamp = g.op("Add", [stamp, g.op("Mul", [is_stamp, g.op("Sub", [chosen, stamp])])])
    return g.op("Concat", [is_stamp, last, new_stamp], axis=1)  # (R, 3)


def _timestamp_filtered(g: GraphBuilder, logits: str, bias: str, stamps_state: str, n_vocab: int,
                        special: dict) -> str:
    """logits (R, P, V) + bias under the timestamp rules of each row's state (R, 3): the limits of the state
    (ids below text_end and timestamps below ts_min forbidden), then the rule that prefers a timestamp when the
    timestamps together are likelier than the best text token: what ApplyTimestampRules.apply_limits +
    prefer_timestamps do on host logits (the preference compares log-sum-exps computed in another order, so a
    near tie could go the other way)."""
    ts_begin = special["timestamp_begin"]
    text_end, ts_min = _timestamp_limits(g, stamps_state, special["eot"], ts_begin)  # (R, 1, 1) each
    ids = g.const(np.arange(n_vocab, dtype=np.int64))  # (V,)
    is_timestamp = g.const(np.arange(n_vocab) >= ts_begin, np.bool_)  # (V,)
    forbidden = g.op("Or", [g.op("Less", [ids, text_end]), g.op("And", [is_timestamp, g.op("Less", [ids, ts_min])])])
    x = g.op("Where", [forbidden, g.const(-np.inf, np.float32), g.op("Add", [logits, bias])])  # (R, P, V)
    # log(sum(exp(timestamps))) > max(text): log_softmax's shift is the same on both sides
    text = g.op("Slice", [x, g.const([0]), g.const([ts_begin]), g.const([2])])  # (R, P, ts_begin)
    stamps = g.op("Slice", [x, g.const([ts_begin]), g.const([n_vocab]), g.const([2])])  # (R, P, V - ts_begin)
    stamp_max = _row_max(g, stamps, n_vocab - ts_begin)  # (R, P, 1)
    safe = g.op("Where", [g.op("IsInf", [stamp_max]), g.const(0.0, np.float32), stamp_max])  # numpy's guard
    stamp_sum = g.op("ReduceSum", [g.op("Exp", [g.op("Sub", [stamps, safe])]), g.const([2])], keepdims=1)
    stamp_lse = g.op("Add", [safe, g.op("Log", [stamp_sum])])  # (R, P, 1)
    prefer = g.op("Greater", [stamp_lse, _row_max(g, text, ts_begin)])  # (R, P, 1)
    return g.op("Where", [g.op("And", [prefer, g.op("Not", [is_timestamp])]), g.const(-np.inf, np.float32), x])


def _timestamp_inputs(g: GraphBuilder, n_vocab: int) -> tuple[str, str, str]:
    return (g.input(io.SELECT_LOGITS, TensorProto.FLOAT, ["rows", "n_logits", n_vocab]),
            g.input(io.LOGIT_BIAS, TensorProto.FLOAT, [n_vocab]),
            g.input(io.TIMESTAMP_STATE, TensorProto.INT64, ["rows", 3]))


def timestamp_rules_graph(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, attention: str, opset: int, metadata: dict
) -> onnx.ModelProto:
    """The greedy choice under openai's timestamp rules after the first sampled step, from device-resident
    logits + a logit bias and each row's timestamp state (sampling.ApplyTimestampRules.state;
    _timestamp_filtered), and the state after that choice, so that steps can follow one another on the device
    (ort_greedy.py). No weights; the timestamp range is the bundle's."""
    special = metadata_special(metadata)
    g = GraphBuilder("whisper_timestamp_rules", np.float32)
    logits, bias, stamps_state = _timestamp_inputs(g, dims.n_vocab)
    x = _timestamp_filtered(g, logits, bias, stamps_state, dims.n_vocab, special)
    best, logprob = greedy_choice(g, x, None, dims.n_vocab)
    g.output(io.BEST_TOKEN, best, TensorProto.INT64, ["rows", "n_logits"])
    g.output(io.BEST_LOGPROB, logprob, TensorProto.FLOAT, ["rows", "n_logits"])
    g.output(io.NEXT_TIMESTAMP_STATE, _next_timestamp_state(g, stamps_state, best, special["timestamp_begin"]),
             TensorProto.INT64, ["rows", 3])
    return g.model(opset, metadata)


def timestamp_top_graph(
    dims: ModelDims, state: dict[str, np.ndarray], dtype, attention: str, opset: int, metadata: dict
) -> onnx.ModelProto:
    """A beam search's candidates under the timestamp rules: top_select.onnx's TOP_K best tokens and their
    log-probabilities, of the logits + bias filtered by each row's timestamp state (_timestamp_filtered). No
    weights."""
    g = GraphBuilder("whisper_timestamp_top", np.float32)
    logits, bias, stamps_state = _timestamp_inputs(g, dims.n_vocab)
    _top_k_outputs(g, _timestamp_filtered(g, logits, bias, stamps_state, dims.n_vocab, metadata_special(metadata)),
                   dims.n_vocab)
    return g.model(opset, metadata)


def metadata_special(metadata: dict) -> dict:
    """The special token ids of the bundle config that export writes into every graph's metadata."""
    return json.loads(metadata[io.METADATA_KEY])["special_tokens"]
