"""Names, shapes and dtypes of the two graphs: the single contract between exporter, bundle and backends.

encoder.onnx
    in_mel            (batch, n_mels, 3000)        float32
    out_cross_k_{i}   (batch, n_head, 1500, hd)    precision   one pair per decoder layer
    out_cross_v_{i}   (batch, n_head, 1500, hd)    precision

decoder.onnx (one graph for the prompt step and every later step)
    in_tokens           (rows, n_new)               int64     rows = n_audio x beams, audio-major
    in_offsets          (rows,)                     int64     cache position of each row's first new token
    in_cache_index      (rows,)                     int64     which input cache row each row continues
    in_logit_positions  (n_logits,)                 int64     which of the n_new positions get logits
    in_self_k_{i}       (rows, n_head, capacity, hd) precision fixed-capacity self-attention cache
    in_self_v_{i}       (rows, n_head, capacity, hd) precision
    in_cross_k_{i}      (n_audio, n_head, 1500, hd)  precision shared by the rows // n_audio rows of an audio
    in_cross_v_{i}      (n_audio, n_head, 1500, hd)  precision
    out_logits          (rows, n_logits, n_vocab)   float32
    out_self_k_{i}      (rows, n_head, capacity, hd) precision the input cache, reordered by in_cache_index,
    out_self_v_{i}      (rows, n_head, capacity, hd) precision with the new keys/values written at the offsets
"""

from __future__ import annotations

import numpy as np

GRAPH_IO_VERSION = 1
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
METADATA_KEY = "whisper_export.config"

MEL = "in_mel"
TOKENS = "in_tokens"
OFFSETS = "in_offsets"
CACHE_INDEX = "in_cache_index"
LOGIT_POSITIONS = "in_logit_positions"
LOGITS = "out_logits"

PRECISIONS = {"fp32": np.float32, "fp16": np.float16}


def cross_outputs(n_layer: int) -> list[str]:
    return [f"out_cross_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def cross_inputs(n_layer: int) -> list[str]:
    return [f"in_cross_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def self_inputs(n_layer: int) -> list[str]:
    return [f"in_self_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def self_outputs(n_layer: int) -> list[str]:
    return [f"out_self_{kv}_{i}" for i in range(n_layer) for kv in "kv"]


def decoder_inputs(n_layer: int) -> list[str]:
    return [TOKENS, OFFSETS, CACHE_INDEX, LOGIT_POSITIONS, *self_inputs(n_layer), *cross_inputs(n_layer)]


def decoder_outputs(n_layer: int) -> list[str]:
    return [LOGITS, *self_outputs(n_layer)]
