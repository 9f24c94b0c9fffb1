"""A small ONNX graph builder: unique names, typed initializers, and the layers both Whisper graphs share."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_DTYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}
ORT_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators (attention="onnxruntime")
ATTENTIONS = ("onnx", "matmul", "onnxruntime")


class WeightFile:
    """One ONNX external-data file written while a graph is built: each initializer's bytes are appended as it is
    made, and the graph keeps only a reference (location, offset, length), so a graph's weights are never all in
    memory and never serialised into a protobuf (large-v3's fp32 decoder alone is 3.6 GB, over protobuf's 2 GiB)."""

    ALIGNMENT = 65536  # offsets onnxruntime can memory-map (the allocation granularity on every platform)

    def __init__(self, path: Path, min_bytes: int = 1024):
        self.path, self.min_bytes, self.nbytes = Path(path), min_bytes, 0
        self._file = open(self.path, "wb")

    def write(self, name: str, arr: np.ndarray) -> onnx.TensorProto:
        offset = -(-self.nbytes // self.ALIGNMENT) * self.ALIGNMENT
        self._file.write(b"\0" * (offset - self.nbytes))
        self._file.write(memoryview(arr).cast("B"))  # C-contiguous (weight() makes it so): no copy
        self.nbytes = offset + arr.nbytes
        tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype), dims=arr.shape,
                                  data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(arr.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def close(self) -> None:
        self._file.close()


_WEIGHT_SINK: ContextVar[WeightFile | None] = ContextVar("whisper_export_weight_sink", default=None)


@contextmanager
def streamed_weights(path: Path, min_bytes: int = 1024) -> Iterator[WeightFile]:
    """Within the block, every GraphBuilder writes its initializers of at least min_bytes to the file at path
    (smaller ones, the shape constants shape inference reads, stay in the graph)."""
    sink = WeightFile(path, min_bytes)
    token = _WEIGHT_SINK.set(sink)
    try:
        yield sink
    finally:
        _WEIGHT_SINK.reset(token)
        sink.close()


class GraphBuilder:
    """Accumulates nodes and initializers; ``dtype`` is the activation/weight precision of the graph."""

    def __init__(self, name: str, dtype: type[np.floating], quantizer=None):
        """quantizer: an export.quantize.Quantizer for integer MatMul/Gemm weights, or None (float weights)."""
        self.name = name
        self.quantizer = quantizer
        self.dtype = np.dtype(dtype)
        self.elem = ONNX_DTYPE[self.dtype]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._used: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        n = self._used.get(hint, 0)
        self._used[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def weight(self, hint: str, array: np.ndarray, dtype: np.dtype | None = None) -> str:
        """A float initializer, stored in the graph precision unless dtype says otherwise; inside
        ``streamed_weights`` its bytes go to that data file at once (a reference stays in the graph)."""
        name = self.fresh(hint)
        arr = np.ascontiguousarray(np.asarray(array, dtype=dtype or self.dtype))
        sink = _WEIGHT_SINK.get()
        if sink is not None and arr.nbytes >= sink.min_bytes:
            self.initializers.append(sink.write(name, arr))
        else:
            self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A small constant, shared by value."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight("const", arr, arr.dtype)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], out: str | None = None, n_out: int = 1, **attrs):
        outs = [out] if out else [self.fresh(f"{op_type.lower()}_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def ort_op(self, op_type: str, inputs: list[str], outs: list[str] | None = None, n_out: int = 1, **attrs):
        """An onnxruntime contrib operator (domain com.microsoft); "" skips an optional input or output."""
        if outs is None:
            return self.op(op_type, inputs, n_out=n_out, domain=ORT_DOMAIN, **attrs)
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(op_type), domain=ORT_DOMAIN, **attrs))
        return outs

    def input(self, name: str, elem: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, value: str, elem: int, shape: list) -> None:
        if value != name:
            self.op("Identity", [value], out=name)
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self, opset: int, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        imports = [helper.make_opsetid("", opset)]
        if any(n.domain == ORT_DOMAIN for n in self.nodes):
            imports.append(helper.make_opsetid(ORT_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=imports, producer_name="whisper-export")
        # the lowest IR version that carries this opset keeps older runtimes able to load the file
        model.ir_version = onnx.helper.find_min_ir_version_for(imports[:1])
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        return model


class Layers:
    """Whisper's building blocks over a GraphBuilder, mirroring reference_model/model.py."""

    def __init__(self, g: GraphBuilder, state: dict[str, np.ndarray], attention: str, width: int):
        if attention not in ATTENTIONS:
            raise ValueError(f"attention: received {attention!r}, expected one of {', '.join(ATTENTIONS)}")
        self.g, self.state, self.attention, self.width = g, state, attention, width

    def linear(self, x: str, prefix: str, scale: float = 1.0, one_sided: bool = False) -> str:
        """x @ W.T + b; a power-of-two ``scale`` is folded into W and b, which is exact in binary floating point;
        ``one_sided``: x is mostly on one side of 0 (GELU's output), for a quantized matmul (Quantizer.matmul)."""
        return self.fused_linear(x, [prefix], scale, one_sided)

    def fused_linear(self, x: str, prefixes: list[str], q_scale: float = 1.0, one_sided: bool = False) -> str:
        """One MatMul (and one bias Add) for several projections of x, concatenated on the last axis.

        The first projection is multiplied by ``q_scale`` (the attention scale, folded into the query weights);
        a missing bias (Whisper's key projection) is zeros, so its outputs are unchanged by the shared Add.
        """
        g, state = self.g, self.state
        scales = [q_scale] + [1.0] * (len(prefixes) - 1)
        w = np.concatenate([state[f"{p}.weight"].T * s for p, s in zip(prefixes, scales)], axis=1)
        y = self.matmul(x, f"{'+'.join(prefixes)}.weight_t", w, one_sided)
        if any(f"{p}.bias" in state for p in prefixes):
            b = np.concatenate([state.get(f"{p}.bias", np.zeros(state[f"{p}.weight"].shape[0], np.float32)) * s
                                for p, s in zip(prefixes, scales)])
            y = g.op("Add", [y, g.weight(f"{'+'.join(prefixes)}.bias", b)])
        return y

    def projection(self, x: str, prefix: str, one_sided: bool = False) -> tuple[str, str]:
        """(x @ W.T, b): the bias left for a consumer that adds it in its own kernel (SkipLayerNormalization)."""
        y = self.matmul(x, f"{prefix}.weight_t", self.state[f"{prefix}.weight"].T, one_sided)
        return y, self.g.weight(f"{prefix}.bias", self.state[f"{prefix}.bias"])

    def matmul(self, x: str, hint: str, w_t: np.ndarray, one_sided: bool = False) -> str:
        """x @ w_t for a weight w_t (K, N): a float initializer, or the builder's quantized form (``one_sided``:
        see Quantizer.matmul)."""
        if self.g.quantizer is not None:
            return self.g.quantizer.matmul(self.g, x, hint, w_t, one_sided)
        return self.g.op("MatMul", [x, self.g.weight(hint, w_t)])

    def layer_norm(self, x: str, prefix: str) -> str:
        """LayerNormalization with fp32 statistics (stash_type=1) whatever the graph precision.

        On the fp16 graph this replaces the Cast -> fp32 LayerNorm -> Cast island: the mean, variance and
        normalisation are computed in fp32 by the kernel and only the result is rounded to fp16, which the Cast
        back did as well; one kernel instead of three per LayerNorm.
        """
        g = self.g
        w = g.weight(f"{prefix}.weight", self.state[f"{prefix}.weight"])
        b = g.weight(f"{prefix}.bias", self.state[f"{prefix}.bias"])
        return g.op("LayerNormalization", [x, w, b], axis=-1, epsilon=1e-5, stash_type=TensorProto.FLOAT)

    def mlp(self, x: str, prefix: str) -> str:
        h = self.g.op("Gelu", [self.linear(x, f"{prefix}.mlp.0")])
        return self.linear(h, f"{prefix}.mlp.2", one_sided=True)

    def self_attention(self, x: str, prefix: str, n_head: int) -> str:
        """The encoder's bidirectional self-attention, (B, T, D) -> (B, T, D), before the output projection."""
        hd = self.width // n_head
        qkv = [self.linear(x, f"{prefix}.{n}", self.folded_scale(hd) if n == "query" else 1.0)
               for n in ("query", "key", "value")]
        if self.attention == "onnxruntime":
            return self.multi_head(*qkv, n_head)
        # three MatMuls here, not qkv_heads: at 1500 rows they are compute-bound and the fused layout's 5-D
        # transpose measured slower on the CPU (NOTES.md, "Design decisions")
        q, k, v = (self.split_heads(t, n_head) for t in qkv)
        return self.merge_heads(self.attend(q, k, v, None, hd))

    def multi_head(self, q: str, k: str, v: str, n_head: int) -> str:
        """onnxruntime's MultiHeadAttention: q (B, Tq, D); k, v (B, Tk, D) or already split (B, H, Tk, hd)."""
        scale = self.remaining_scale(self.width // n_head)
        return self.g.ort_op("MultiHeadAttention", [q, k, v], num_heads=n_head, scale=scale)

    def split_heads(self, x: str, n_head: int) -> str:
        """(B, T, D) -> (B, H, T, hd)."""
        y = self.g.op("Reshape", [x, self.g.const([0, -1, n_head, self.width // n_head])])  # (B, T, H, hd)
        return self.g.op("Transpose", [y], perm=[0, 2, 1, 3])

    def qkv_heads(self, x: str, prefix: str, n_head: int) -> list[str]:
        """(B, T, D) -> q, k, v as (B, H, T, hd) from one fused projection; q carries the attention scale."""
        g, hd = self.g, self.width // n_head
        y = self.fused_linear(x, [f"{prefix}.{n}" for n in ("query", "key", "value")], self.folded_scale(hd))
        y = g.op("Reshape", [y, g.const([0, -1, 3, n_head, hd])])  # (B, T, 3, H, hd)
        y = g.op("Transpose", [y], perm=[2, 0, 3, 1, 4])  # (3, B, H, T, hd)
        parts = g.op("Split", [y, g.const([1, 1, 1])], n_out=3, axis=0)  # 3 x (1, B, H, T, hd)
        return [g.op("Squeeze", [p, g.const([0])]) for p in parts]

    @staticmethod
    def folded_scale(head_dim: int) -> float:
        """The attention scale if folding it into the query projection is exact (a power of two), else 1."""
        scale = float(head_dim) ** -0.5
        return scale if math.log2(scale).is_integer() else 1.0

    @classmethod
    def remaining_scale(cls, head_dim: int) -> float:
        """The attention scale still to apply: 1 where folded_scale put it into the query weights already."""
        return float(head_dim) ** -0.5 / cls.folded_scale(head_dim)

    def merge_heads(self, x: str) -> str:
        """(B, H, T, hd) -> (B, T, D)."""
        y = self.g.op("Transpose", [x], perm=[0, 2, 1, 3])  # (B, T, H, hd)
        return self.g.op("Reshape", [y, self.g.const([0, -1, self.width])])

    def attend(self, q: str, k: str, v: str, mask: str | None, head_dim: int) -> str:
        """(B, H, Tq, hd) x (B, H, Tk, hd) -> (B, H, Tq, hd); mask boolean, True where visible."""
        g = self.g
        scale = self.remaining_scale(head_dim)
        if self.attention == "onnx":
            inputs = [q, k, v] + ([mask] if mask else [])
            # softmax_precision=1: the softmax accumulates in fp32 even in the fp16 graph
            return g.op("Attention", inputs, scale=scale, softmax_precision=TensorProto.FLOAT)
        if scale != 1.0:
            q = g.op("Mul", [q, g.const(scale, g.dtype)])
        s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])  # (B, H, Tq, Tk)
        if g.elem != TensorProto.FLOAT:
            s = g.op("Cast", [s], to=TensorProto.FLOAT)
        if mask:
            s = g.op("Where", [mask, s, g.const(-np.inf, np.float32)])
        p = g.op("Softmax", [s], axis=-1)
        if g.elem != TensorProto.FLOAT:
            p = g.op("Cast", [p], to=g.elem)
        return g.op("MatMul", [p, v])
