"""Names, shapes and dtypes of the bundle's graphs: the single contract between exporter, bundle and backends.

encoder.onnx
    in_mel            (batch, n_mels, 3000)        float32
    out_cross_k_{i}   (batch, n_head, 1500, hd)    precision   one pair per decoder layer
    out_cross_v_{i}   (batch, n_head, 1500, hd)    precision

decoder.onnx (one graph for the prompt step and every later step)
    in_tokens           (rows, n_new)               int64     rows = n_audio x beams, audio-major
    in_offsets          (rows,)                     int64     cache position of each row's first new token
    in_logit_positions  (n_logits,)                 int64     which of the n_new positions get logits
    in_self_k_{i}       (rows, n_head, capacity, hd) precision fixed-capacity self-attention cache
    in_self_v_{i}       (rows, n_head, capacity, hd) precision
    in_cross_k_{i}      (n_audio, n_head, 1500, hd)  precision shared by the rows // n_audio rows of an audio
    in_cross_v_{i}      (n_audio, n_head, 1500, hd)  precision
    out_logits          (rows, n_logits, n_vocab)   float32
    out_self_k_{i}      (rows, n_head, capacity, hd) precision the input cache with the new keys/values
    out_self_v_{i}      (rows, n_head, capacity, hd) precision written at the offsets

cache_reorder.onnx (a beam search's cache reorder, for backends that keep caches on a device)
    in_self_k_{i}, in_self_v_{i}    (rows, n_head, capacity, hd) precision
    in_cache_index                  (rows,)      int64     which input row each output row copies
    out_self_k_{i}, out_self_v_{i}  (rows, n_head, capacity, hd) precision

decoder.onnx exported with attention="onnxruntime" (graphs_ort.py) also chooses greedily, as greedy_select.onnx
does, so that a greedy step is one run:
    in_logit_bias     (n_vocab,)                  float32
    out_best_token    (rows, n_logits)            int64
    out_best_logprob  (rows, n_logits)            float32
and its multi-token steps must start every row at offset 0 (a prompt).

greedy_select.onnx (greedy decoding without timestamps on a device: the chosen token, not the logits, to the host)
    in_logits         (rows, n_logits, n_vocab)   float32   the decoder's out_logits
    in_logit_bias     (n_vocab,)                  float32   0, or -inf for tokens the logit filters suppress
    out_best_token    (rows, n_logits)            int64     argmax(logits + bias), the first on ties
    out_best_logprob  (rows, n_logits)            float32   log_softmax(logits + bias) at that token

top_select.onnx (beam search without timestamps on a device: each row's candidates; optional*)
    in_logits         (rows, n_logits, n_vocab)   float32
    in_logit_bias     (n_vocab,)                  float32
    out_top_tokens    (rows, n_logits, TOP_K)     int64     the TOP_K best of logits + bias, best first, ties by id
    out_top_logprobs  (rows, n_logits, TOP_K)     float32   log_softmax(logits + bias) at them

timestamp_rules.onnx (greedy with timestamps on a device, after the first sampled step; optional*)
    in_logits            (rows, n_logits, n_vocab)   float32
    in_logit_bias        (n_vocab,)                  float32
    in_timestamp_state   (rows, 3)                   int64     sampling.ApplyTimestampRules.state: last is a
                                                               timestamp, the one before is, the last timestamp
    out_best_token       (rows, n_logits)            int64     the greedy token under the timestamp rules
    out_best_logprob     (rows, n_logits)            float32   its log-probability under the filtered logits
    out_timestamp_state  (rows, 3)                   int64     the state after the token (of the last logit
                                                               position): ApplyTimestampRules.next_state

timestamp_top.onnx (beam search with timestamps on a device: each row's candidates under the timestamp rules;
optional*)
    in_logits, in_logit_bias, in_timestamp_state   as timestamp_rules.onnx
    out_top_tokens    (rows, n_logits, TOP_K)     int64     the TOP_K best of the filtered logits, best first
    out_top_logprobs  (rows, n_logits, TOP_K)     float32   their log-probabilities under the filtered logits

* optional: a version-3 bundle may lack the file (written before the exporter made it); the backend then
  picks from host logits. A `timestamp_select.onnx` in such a bundle (limits instead of the state) is never read.

align.onnx (word timestamps: the decoder run once over a finished window's tokens; optional, a bundle without it
cannot give word timestamps; standard MatMul/Softmax attention in every bundle kind, no contrib operators)
    in_tokens          (rows, n_tokens)               int64     sot sequence, <|notimestamps|>, text, eot; rows
                                                                shorter than n_tokens padded at the end (causal:
                                                                padding never changes the positions before it)
    in_audio_rows      (rows,)                        int64     which row of the cross K/V each row attends to
    in_cross_k_{i}     (n_audio, n_head, 1500, hd)    precision as the encoder emits them
    in_cross_v_{i}     (n_audio, n_head, 1500, hd)    precision
    out_alignment_qk   (rows, n_heads, n_tokens, 1500) float32  the config's alignment heads' raw cross-attention
                                                                scores q.k / sqrt(hd), in config order
    out_text_probs     (rows, n_tokens - 1)           float32   softmax over the text tokens (ids < eot) of
                                                                position t's logits, at token t + 1; 0 where
                                                                token t + 1 is not text

Cache positions at or beyond a row's offset + n_new are unspecified in out_self_* (never read).

Row i of the caches is row i of the step: a beam search that reorders its rows reorders the caches before the
step (Backend.decode's cache_index, openai-whisper's rearrange_kv_cache), so greedy steps -- most steps -- do
not copy the caches through a gather.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GRAPH_IO_VERSION = 3
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
REORDER_FILE = "cache_reorder.onnx"
SELECT_FILE = "greedy_select.onnx"
TOP_FILE = "top_select.onnx"  # optional: without it, beam candidates come from host logits
LIMITED_FILE = "timestamp_rules.onnx"  # optional: without it, greedy with timestamps uses host logits
TOP_LIMITED_FILE = "timestamp_top.onnx"  # optional: without it, beam search with timestamps uses host logits
METADATA_KEY = "whisper_export.config"

MEL = "in_mel"
N_FRAMES = 3000  # mel frames of a 30 s window: the encoder's fixed input length
TOKENS = "in_tokens"
OFFSETS = "in_offsets"
CACHE_INDEX = "in_cache_index"  # not a graph input since version 2: the name backends give their reorder
LOGIT_POSITIONS = "in_logit_positions"
LOGITS = "out_logits"
SELECT_LOGITS = "in_logits"
LOGIT_BIAS = "in_logit_bias"
BEST_TOKEN = "out_best_token"
BEST_LOGPROB = "out_best_logprob"
TIMESTAMP_STATE = "in_timestamp_state"  # (rows, 3) int64: sampling.ApplyTimestampRules.state
NEXT_TIMESTAMP_STATE = "out_timestamp_state"
TOP_TOKENS = "out_top_tokens"
TOP_LOGPROBS = "out_top_logprobs"
TOP_K = 16  # top_select.onnx's candidates per row, best first: a beam search of up to TOP_K - 1 beams
# the timestamp rules' ts_min when every timestamp is forbidden (a segment just closed): above any token id
ALL_TIMESTAMPS = 1 << 40

PRECISIONS = {"fp32": np.float32, "fp16": np.float16}


def cross_outputs(n_layer: int) -> list[str]:
    return [f"out_cross_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def cross_inputs(n_layer: int) -> list[str]:
    return [f"in_cross_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def self_inputs(n_layer: int) -> list[str]:
    return [f"in_self_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def self_outputs(n_layer: int) -> list[str]:
    return [f"out_self_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def decoder_inputs(n_layer: int, selects: bool = False) -> list[str]:
    """selects: the decoder that also chooses greedily (attention="onnxruntime")."""
    return [TOKENS, OFFSETS, LOGIT_POSITIONS, *self_inputs(n_layer), *cross_inputs(n_layer), *([LOGIT_BIAS] * selects)]


def decoder_outputs(n_layer: int, selects: bool = False) -> list[str]:
    """The logits, the caches in self_outputs order, then (selects) the greedy choice."""
    return [LOGITS, *self_outputs(n_layer), *([BEST_TOKEN, BEST_LOGPROB] if selects else [])]


def reorder_inputs(n_layer: int) -> list[str]:
    return [*self_inputs(n_layer), CACHE_INDEX]


# align.onnx (see the module docstring): word timestamps
ALIGN_FILE = "align.onnx"
AUDIO_ROWS = "in_audio_rows"
ALIGNMENT_QK = "out_alignment_qk"
TEXT_PROBS = "out_text_probs"


# alignment_matrix.onnx (export/alignment_matrix_graph.py; shipped in whisper_export/assets/): align.onnx's scores
# -> openai's alignment matrix (softmax, normalisation, median filter, heads' mean) where the scores lie
ALIGNMENT_MATRIX_FILE = "alignment_matrix.onnx"
ALIGNMENT_MATRIX_PATH = Path(__file__).resolve().parent / "assets" / ALIGNMENT_MATRIX_FILE
IN_ALIGNMENT_QK = "in_alignment_qk"  # (rows, n_heads, n_tokens, n_frames) float32: align.onnx's out_alignment_qk
IN_LENGTHS = "in_lengths"  # (rows,) int64: each row's real token count
IN_FRAMES = "in_frames"  # (rows,) int64: each row's audio positions (the window's mel frames // 2)
ALIGNMENT_MATRIX = "out_alignment_matrix"  # (rows, n_tokens, n_frames) float32; unspecified past lengths/frames


def align_inputs(n_layer: int) -> list[str]:
    return [TOKENS, AUDIO_ROWS, *cross_inputs(n_layer)]


def align_outputs() -> list[str]:
    return [ALIGNMENT_QK, TEXT_PROBS]


def alignment_matrix_inputs() -> list[str]:
    return [IN_ALIGNMENT_QK, IN_LENGTHS, IN_FRAMES]
