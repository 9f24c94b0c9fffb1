"""Weight quantization of the exported graphs (``export --int8``): every MatMul/Gemm weight, the tied token
embedding included, stored as 8-bit integers with float scales; activations, LayerNorm, softmax, the logits and
the caches stay float, so the graph I/O contract and the runtime are those of a float bundle.

Two operator forms (NOTES.md, "int8 bundles", has the measurements behind them):
- ``matmul_integer`` (``quantize="int8"``, the CPU form): symmetric 8-bit weights per output channel, stored as
  uint8 with zero point 128; each row of an activation (a frame, a token) is quantized dynamically and
  symmetrically with its own scale (QuantizeLinear per row), as CTranslate2's int8 does, then MatMulInteger
  (MLAS integer GEMM) and the int32 products scaled back by row x channel scales. DynamicQuantizeLinear (one
  scale per tensor: what onnxruntime fuses into DynamicQuantizeMatMul) measured as fast and less accurate: a
  few loud frames set the scale of all 1500. uint8 weights, not int8: on x86 without VNNI, MLAS's u8 x s8
  kernel adds pairs of products in int16 (vpmaddubsw), which saturates for 8-bit weights (onnxruntime's own
  quantizer works around it with 7-bit weights, reduce_range); its u8 x u8 kernel widens to 16 bits first and
  measured as fast here. The MLP's second matmul reads GELU's output, which is >= -0.17 and mostly small: its
  rows are quantized asymmetrically (over [min, max] with a per-row zero point, 255 steps instead of 127),
  which cut the logit error against fp32 by 10-17% over many clips (benchmarks/int8_error.py); asymmetric rows
  everywhere measured no better at the worst positions.
- ``matmul_nbits`` (``quantize="int8-nbits"``, for onnxruntime's CUDA provider, which has no kernel for
  DynamicQuantizeLinear but runs com.microsoft.MatMulNBits): symmetric block-wise 8-bit weights (``block_size``
  values of K per scale), float activations on the GPU (fp16 or fp32); on the CPU, ``accuracy_level`` 4 lets
  the kernel quantize activations per block and compute in int8.

The token embedding is the largest weight; it is tied to the logits projection, so one integer copy serves both
the Gather (rows dequantized with their scales) and the logits (its rows are the projection's output channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

FORMS = ("matmul_integer", "matmul_nbits")
ZERO_POINT = 128  # uint8 storage of symmetric 8-bit values, and MatMulNBits' default zero point for 8 bits


@dataclass(frozen=True)
class WeightQuantization:
    """How the graphs store their MatMul/Gemm weights; written into the bundle config (``quantize``)."""

    bits: int = 8
    form: str = "matmul_integer"
    block_size: int = 0  # matmul_nbits: values of K per scale (0: one scale per output channel)
    accuracy_level: int = 0  # matmul_nbits: 4 = int8 compute on the CPU

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"quantize form: received {self.form!r}, expected one of {', '.join(FORMS)}")
        if self.bits != 8:
            raise ValueError(f"quantize bits: received {self.bits}, expected 8")
        if self.form == "matmul_nbits" and (self.block_size < 16 or self.block_size & (self.block_size - 1)):
            raise ValueError(f"quantize block_size: received {self.block_size}, expected a power of two >= 16")
        if self.accuracy_level not in range(5):
            raise ValueError(f"quantize accuracy_level: received {self.accuracy_level}, expected 0..4")

    def to_dict(self) -> dict:
        return {"bits": self.bits, "form": self.form, "block_size": self.block_size,
                "accuracy_level": self.accuracy_level}

    @classmethod
    def from_dict(cls, d: dict | None) -> "WeightQuantization | None":
        return None if not d else cls(**d)


# ExportOptions.quantize -> the weights it exports ("none": float)
QUANTIZE: dict[str, WeightQuantization | None] = {
    "none": None,
    "int8": WeightQuantization(form="matmul_integer"),
    "int8-nbits": WeightQuantization(form="matmul_nbits", block_size=32, accuracy_level=4),
}


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit per row of w (N, K): (q (N, K) uint8, q - 128 in [-127, 127]; scale (N,) float32), so
    that w ~ (q - 128) * scale."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int16) + ZERO_POINT
    return q.astype(np.uint8), scale


def quantize_blocks(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks of w (N, K) along K in MatMulNBits' layout: (q (N, blocks, block_size) uint8 with
    zero point 128, scales (N * blocks,) float32); K is padded with zeros to whole blocks."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    blocks = -(-k // block_size)
    padded = np.zeros((n, blocks * block_size), np.float32)
    padded[:, :k] = w
    q, scale = quantize_rows(padded.reshape(n * blocks, block_size))
    return q.reshape(n, blocks, block_size), scale


@dataclass(frozen=True)
class TiedEmbedding:
    """The quantized token embedding's initializers, shared by the Gather and the logits."""

    values: str
    scales: str
    rows: int
    width: int


class Quantizer:
    """Emits quantized MatMuls and the tied embedding on a GraphBuilder."""

    def __init__(self, spec: WeightQuantization):
        self.spec = spec

    def matmul(self, g, x: str, hint: str, w_t: np.ndarray, one_sided: bool = False) -> str:
        """x @ w_t for a float weight w_t (K, N): its output channels are the columns. ``one_sided``: x's rows are
        mostly on one side of 0 (GELU's output, >= -0.17): matmul_integer quantizes them asymmetrically."""
        w = np.asarray(w_t, np.float32).T  # (N, K), a row per output channel
        if self.spec.form == "matmul_nbits":
            q, scales = quantize_blocks(w, self.spec.block_size)
            return self._nbits(g, x, g.weight(hint, q, np.uint8), g.weight(f"{hint}_scale", scales), *w.shape)
        q, scale = quantize_rows(w)
        values, scales = g.weight(hint, q.T, np.uint8), g.weight(f"{hint}_scale", scale, np.float32)
        if not one_sided:
            return self._integer(g, x, values, scales)
        sums = (q.astype(np.float32) - ZERO_POINT).sum(axis=1)  # the integer weights' column sums (N,)
        return self._integer(g, x, values, scales, g.weight(f"{hint}_sums", sums, np.float32))

    def _integer(self, g, x: str, values: str, scales: str, sums: str | None = None) -> str:
        """x (..., K) @ the uint8 weights values (K, N) with channel scales (N,): each row of x quantized to uint8
        with its own scale, then MatMulInteger u8 x u8 and the int32 products scaled back by row scale x channel
        scale. Symmetric rows (sums None): around 128 with scale max |row| / 127. Asymmetric rows (sums: the
        weights' column sums): over [min(row, 0), max(row, 0)] in 255 steps with the row's own zero point z, so
        that a one-sided row gets twice the resolution and 0 stays exact; MatMulInteger takes one zero point for
        all rows, so it multiplies the rows as stored (zero point 0) and z x sums is taken off after."""
        if g.elem != TensorProto.FLOAT:
            raise ValueError(f"quantize form matmul_integer: received a {g.dtype} graph, expected float32")
        flat = g.op("Reshape", [x, g.op("Concat", [g.const([-1]), g.op("Shape", [x], start=-1)], axis=0)])  # (M, K)
        axis, tiny = g.const([1]), g.const(1e-30, np.float32)  # a row of zeros: a tiny scale, not a division by 0
        zero = g.const(np.uint8(ZERO_POINT), np.uint8)
        if sums is None:
            peak = g.op("ReduceMax", [g.op("Abs", [flat]), axis], keepdims=0)  # (M,)
            row_scales = g.op("Div", [g.op("Max", [peak, tiny]), g.const(127.0, np.float32)])
            rows_zero, x_zero = g.op("Expand", [zero, g.op("Shape", [row_scales])]), zero
        else:
            nought = g.const(0.0, np.float32)
            low = g.op("Min", [g.op("ReduceMin", [flat, axis], keepdims=0), nought])
            high = g.op("Max", [g.op("ReduceMax", [flat, axis], keepdims=0), nought])
            row_scales = g.op("Div", [g.op("Max", [g.op("Sub", [high, low]), tiny]), g.const(255.0, np.float32)])
            row_zeros = g.op("Round", [g.op("Div", [g.op("Neg", [low]), row_scales])])  # (M,) in 0..255
            rows_zero = g.op("Cast", [row_zeros], to=TensorProto.UINT8)
            x_zero = g.const(np.uint8(0), np.uint8)
        quantized = g.op("QuantizeLinear", [flat, row_scales, rows_zero], axis=0)  # (M, K) uint8
        product = g.op("Cast", [g.op("MatMulInteger", [quantized, values, x_zero, zero])], to=TensorProto.FLOAT)
        if sums is not None:
            product = g.op("Sub", [product, g.op("Mul", [g.op("Unsqueeze", [row_zeros, axis]), sums])])
        y = g.op("Mul", [g.op("Mul", [product, g.op("Unsqueeze", [row_scales, axis])]), scales])  # (M, N)
        out_shape = g.op("Concat", [g.op("Shape", [x], end=-1), g.op("Shape", [values], start=1)], axis=0)
        return g.op("Reshape", [y, out_shape])

    def _nbits(self, g, x: str, values: str, scales: str, n: int, k: int) -> str:
        return g.ort_op("MatMulNBits", [x, values, scales], K=k, N=n, bits=8, block_size=self.spec.block_size,
                        accuracy_level=self.spec.accuracy_level)

    def embedding(self, g, hint: str, table: np.ndarray, ids: str) -> tuple[str, TiedEmbedding]:
        """(table[ids] dequantized (R, n, D) in the graph's dtype for ids (R, n), the handle for logits())."""
        rows, width = table.shape
        if self.spec.form == "matmul_nbits":
            q, scales = quantize_blocks(table, self.spec.block_size)
            tied = TiedEmbedding(g.weight(hint, q, np.uint8), g.weight(f"{hint}_scale", scales), rows, width)
            blocks = q.shape[1]
            picked = self._centred(g, g.op("Gather", [tied.values, ids]))  # (R, n, blocks, block_size)
            block_scales = g.op("Reshape", [tied.scales, g.const([rows, blocks, 1])])
            x = g.op("Mul", [picked, g.op("Gather", [block_scales, ids])])
            x = g.op("Reshape", [x, g.const([0, 0, blocks * self.spec.block_size])])
            if blocks * self.spec.block_size != width:
                x = g.op("Slice", [x, g.const([0]), g.const([width]), g.const([2])])
            return x, tied
        # matmul_integer: stored (D, V), MatMulInteger's B for the logits; the Gather takes its columns
        q, scale = quantize_rows(table)
        tied = TiedEmbedding(g.weight(hint, q.T, np.uint8), g.weight(f"{hint}_scale", scale, np.float32), rows, width)
        picked = g.op("Transpose", [g.op("Gather", [tied.values, ids], axis=1)], perm=[1, 2, 0])  # (R, n, D)
        row_scales = g.op("Unsqueeze", [g.op("Gather", [tied.scales, ids]), g.const([-1])])  # (R, n, 1)
        return g.op("Mul", [self._centred(g, picked), row_scales]), tied

    @staticmethod
    def _centred(g, stored: str) -> str:
        """uint8 values with zero point 128 as the graph's floats."""
        return g.op("Sub", [g.op("Cast", [stored], to=g.elem), g.const(float(ZERO_POINT), g.dtype)])

    def logits(self, g, flat: str, tied: TiedEmbedding) -> str:
        """flat (M, D) @ table.T -> (M, V) on the quantized embedding."""
        if self.spec.form == "matmul_nbits":
            return self._nbits(g, flat, tied.values, tied.scales, tied.rows, tied.width)
        return self._integer(g, flat, tied.values, tied.scales)


def quantizer_for(metadata: dict) -> Quantizer | None:
    """The Quantizer of the bundle config that export writes into every graph's metadata (None: float)."""
    import json

    from whisper_export import graph_io

    config = json.loads(metadata.get(graph_io.METADATA_KEY, "{}"))
    spec = WeightQuantization.from_dict(config.get("quantize"))
    return Quantizer(spec) if spec is not None else None
