"""int8 bundles on CPUs whose integer dot products are exact for u8 x s8: the weights given to MLAS as int8.

An int8 bundle (export/quantize.py, form matmul_integer) stores its MatMulInteger weights as uint8 around zero
point 128, because MLAS's u8 x s8 kernel on x86 without VNNI adds pairs of products in int16 (vpmaddubsw), which
saturates for 8-bit weights, while its u8 x u8 kernel widens first and is exact everywhere. On CPUs with VNNI
(AVX512-VNNI, AVX-VNNI) or AMX, MLAS multiplies u8 x s8 with instructions that sum into int32 without
saturating, and that kernel is several times faster than u8 x u8 (1500 x 384 x 1536, one thread: 1.75 ms against
11.3). Stored value q and zero point 128 become q - 128 and zero point 0: the same integers are multiplied, so the
int32 products, and every output, are bit-identical. The graph is rewritten in memory when its session opens;
the bundle on disk is not touched (its checksums stay valid, and it still runs exactly on any CPU).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import numpy as np

from whisper_export.onnx_wire import (
    GRAPH_INITIALIZER,
    GRAPH_INPUT,
    GRAPH_NODE,
    GRAPH_OUTPUT,
    LENGTH,
    MODEL_GRAPH,
    NODE_DOMAIN,
    NODE_INPUT,
    NODE_OP_TYPE,
    TENSOR_DATA_LOCATION,
    TENSOR_DATA_TYPE,
    TENSOR_DIMS,
    TENSOR_NAME,
    TENSOR_RAW_DATA,
    VALUE_INFO_NAME,
    VARINT,
    Field,
    encode,
    fields,
    first_string,
    model_graph,
    raw,
    text,
)

# /proc/cpuinfo flags of the x86 extensions whose u8 x s8 dot products accumulate in int32 (MLAS picks its
# VNNI or AMX kernels from cpuid on the same features)
EXACT_U8S8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ZERO_POINT = 128  # export/quantize.py's storage of symmetric 8-bit weights
UINT8, INT8 = 2, 3  # TensorProto.DataType
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
# protobuf cannot serialise a model of 2 GiB or more: larger graphs keep their uint8 weights
MAX_REWRITTEN_BYTES = 2**31 - 2**26


@functools.lru_cache(maxsize=1)
def cpu_multiplies_u8s8_exactly(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True on an x86-64 Linux CPU listing one of EXACT_U8S8_FLAGS; False elsewhere (other systems are not
    inspected, and keep the exact u8 x u8 form)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(EXACT_U8S8_FLAGS & set(line.partition(":")[2].split()))
    except OSError:
        pass
    return False


def signed_weights(model: bytes) -> tuple[bytes, int]:
    """(the model with every MatMulInteger whose B is a uint8 initializer held in the model (raw_data) and whose B
    zero point is a uint8 128 rewritten onto int8 weights and zero point 0, how many were rewritten). A weight
    whose values other nodes also read (the tied token embedding, which a Gather reads as uint8) keeps its uint8
    form beside an int8 copy; one that only the rewritten MatMulIntegers (and Shapes) read is replaced. Weights
    in external data files (graphs over 1 GB of weights) keep their uint8 form. Works on the protobuf bytes
    (onnx_wire.py): the runtime has no onnx package."""
    top = fields(model)
    graph = model_graph(top)
    tensors = {first_string(raw(f), TENSOR_NAME): raw(f) for f in graph if f.number == GRAPH_INITIALIZER}
    nodes = [raw(f) for f in graph if f.number == GRAPH_NODE]
    parsed = [_parse(node) for node in nodes]
    if any(op in SUBGRAPH_OPS for (_, op), _ in parsed):
        return model, 0  # readers inside subgraphs are not counted here: left as exported
    # what reads a tensor's values: nodes (a Shape reads only its dims), the graph's inputs and outputs by name
    readers = {first_string(raw(f), VALUE_INFO_NAME): 1 for f in graph if f.number in (GRAPH_INPUT, GRAPH_OUTPUT)}
    for op, inputs in parsed:
        if op != ("", "Shape"):
            for name in set(inputs):
                readers[name] = readers.get(name, 0) + 1
    targets = [k for k, (op, inputs) in enumerate(parsed) if _signable(op, inputs, tensors)]
    if not targets:
        return model, 0
    weight_readers: dict[str, int] = {}
    for k in targets:
        name = parsed[k][1][1]
        weight_readers[name] = weight_readers.get(name, 0) + 1
    zero = _unused_name(tensors, "signed_int8_zero_point")
    renamed = {w: w if readers[w] == n else _unused_name(tensors, f"{w}_int8") for w, n in weight_readers.items()}
    for k in targets:
        nodes[k] = _with_inputs(nodes[k], {1: renamed[parsed[k][1][1]], 3: zero})
    added = [_int8_tensor(zero, [], b"\x00")]
    added += [_signed(tensors[w], name) for w, name in renamed.items() if name != w]
    in_place = {w for w, name in renamed.items() if name == w}
    body, node_iter = [], iter(nodes)
    for f in graph:
        if f.number == GRAPH_NODE:
            f = Field(GRAPH_NODE, LENGTH, next(node_iter))
        elif f.number == GRAPH_INITIALIZER and (name := first_string(raw(f), TENSOR_NAME)) in in_place:
            f = Field(GRAPH_INITIALIZER, LENGTH, _signed(raw(f), name))
        body.append(f)
    body += [Field(GRAPH_INITIALIZER, LENGTH, t) for t in added]
    graph_bytes = encode(body)
    return encode([Field(MODEL_GRAPH, LENGTH, graph_bytes) if f.number == MODEL_GRAPH else f for f in top]), len(targets)


def signed_model_bytes(path: Path) -> bytes | None:
    """The graph at `path` with its MatMulInteger weights signed (signed_weights); None when it has none to
    rewrite or is too large to serialise."""
    model = path.read_bytes()
    if len(model) > MAX_REWRITTEN_BYTES:
        return None
    signed, rewritten = signed_weights(model)
    return signed if rewritten and len(signed) <= MAX_REWRITTEN_BYTES else None


def _parse(node: bytes | memoryview) -> tuple[tuple[str, str], list[str]]:
    """((domain, op_type), inputs) of a node; the default domain is ""."""
    node_fields = fields(node)
    op = [text(f) for f in node_fields if f.number == NODE_OP_TYPE]
    domain = [text(f) for f in node_fields if f.number == NODE_DOMAIN]
    inputs = [text(f) for f in node_fields if f.number == NODE_INPUT]
    return (domain[0] if domain else "", op[0] if op else ""), inputs


def _signable(op: tuple[str, str], inputs: list[str], tensors: dict[str, bytes | memoryview]) -> bool:
    if op != ("", "MatMulInteger") or len(inputs) < 4:
        return False
    weights, zero_point = tensors.get(inputs[1]), tensors.get(inputs[3])
    return (weights is not None and zero_point is not None and _uint8_data(weights) is not None
            and _uint8_data(zero_point) == bytes([ZERO_POINT]))


def _uint8_data(tensor: bytes) -> bytes | None:
    """A uint8 initializer's values held in raw_data; None for any other type or storage (external data,
    int32_data), which stays as it is."""
    tensor_fields = fields(tensor)
    types = [f.payload for f in tensor_fields if f.number == TENSOR_DATA_TYPE]
    data = [raw(f) for f in tensor_fields if f.number == TENSOR_RAW_DATA]
    external = any(f.number == TENSOR_DATA_LOCATION and f.payload for f in tensor_fields)
    return data[0] if types == [UINT8] and len(data) == 1 and not external else None


def _signed(tensor: bytes, name: str) -> bytes:
    """The uint8 tensor's values minus 128 as int8 (flipping the top bit maps 128 + v to v in two's complement),
    named `name`; its dims kept."""
    values = np.frombuffer(_uint8_data(tensor) or b"", np.uint8) ^ np.uint8(0x80)
    dims = [f for f in fields(tensor) if f.number == TENSOR_DIMS]
    return _int8_tensor(name, dims, values.tobytes())


def _int8_tensor(name: str, dims: list[Field], data: bytes) -> bytes:
    return encode([*dims, Field(TENSOR_DATA_TYPE, VARINT, INT8), Field(TENSOR_NAME, LENGTH, name.encode()),
                   Field(TENSOR_RAW_DATA, LENGTH, data)])


def _with_inputs(node: bytes, replaced: dict[int, str]) -> bytes:
    """The node with its k-th input renamed to replaced[k]."""
    out, k = [], 0
    for f in fields(node):
        if f.number == NODE_INPUT:
            f = Field(NODE_INPUT, LENGTH, replaced.get(k, text(f)).encode())
            k += 1
        out.append(f)
    return encode(out)


def _unused_name(taken, base: str) -> str:
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name
