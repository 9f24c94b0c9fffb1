"""Just enough of the protobuf wire format to edit ONNX models as bytes (field number, wire type, payload), for
the runtime, which has onnxruntime but not the onnx package (whose import alone takes ~0.7 s). Everything a
caller does not touch (opsets, attributes, tensors) is copied byte for byte.

Field numbers are onnx.proto's: ModelProto.graph = 7; GraphProto node = 1, initializer = 5, input = 11,
output = 12, value_info = 13; NodeProto input = 1, output = 2, op_type = 4, domain = 7; TensorProto dims = 1,
data_type = 2, name = 8, raw_data = 9, data_location = 14; ValueInfoProto name = 1.
"""

from __future__ import annotations

from typing import NamedTuple

MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
NODE_INPUT, NODE_OUTPUT, NODE_OP_TYPE, NODE_DOMAIN = 1, 2, 4, 7
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_DATA_LOCATION = 1, 2, 8, 9, 14
VALUE_INFO_NAME = 1
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class Field(NamedTuple):
    number: int
    wire: int
    payload: bytes | memoryview | int  # int for varints, the raw bytes otherwise


class WireError(ValueError):
    """The bytes are not a whole protobuf message."""


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("onnx model: a protobuf varint runs past the end of the model, expected a whole model file")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def fields(buf: bytes | memoryview) -> list[Field]:
    """The fields of one protobuf message, in order. Payloads are views into `buf`, not copies (a model's graph
    and its tensors would be copied once per level otherwise)."""
    buf = buf if isinstance(buf, memoryview) else memoryview(buf)
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
            out.append(Field(number, wire, value))
            continue
        size = {FIXED64: 8, FIXED32: 4}.get(wire)
        if size is None:
            if wire != LENGTH:
                raise WireError(f"onnx model: received protobuf wire type {wire}, expected 0, 1, 2 or 5")
            size, pos = _varint(buf, pos)
        if pos + size > len(buf):
            raise WireError("onnx model: a protobuf field runs past the end of the model, expected a whole model file")
        out.append(Field(number, wire, buf[pos : pos + size]))
        pos += size
    return out


def encode(message: list[Field]) -> bytes:
    parts: list[bytes | memoryview] = []
    for f in message:
        parts.append(_put_varint(f.number << 3 | f.wire))
        if f.wire == VARINT:
            parts.append(_put_varint(int(f.payload)))
            continue
        payload = raw(f)
        if f.wire == LENGTH:
            parts.append(_put_varint(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def raw(f: Field) -> bytes | memoryview:
    assert isinstance(f.payload, (bytes, memoryview)), f
    return f.payload


def text(f: Field) -> str:
    return bytes(raw(f)).decode()


def strings(message: bytes | memoryview, number: int) -> list[str]:
    return [text(f) for f in fields(message) if f.number == number]


def first_string(message: bytes | memoryview, number: int) -> str:
    names = strings(message, number)
    return names[0] if names else ""


def model_graph(top: list[Field]) -> list[Field]:
    """The fields of a model's one graph, from the model's own fields."""
    graphs = [f for f in top if f.number == MODEL_GRAPH]
    if len(graphs) != 1:
        raise WireError(f"onnx model: received a model with {len(graphs)} graphs, expected 1")
    return fields(raw(graphs[0]))
