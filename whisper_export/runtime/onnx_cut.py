"""Cut an ONNX model in two at one tensor, working on its protobuf bytes.

The runtime has onnxruntime but not the onnx package, and the Silero VAD model (runtime/vad.py) is faster in
two parts: its convolutions see each 32 ms frame alone, so they can run on many frames in parallel, while its
LSTM must walk the frames in order. This module reads just enough of the protobuf wire format (field number,
wire type, payload) to split a model's node list at the first node that reads a tensor, and writes each half
back as a model of its own. Everything it does not need (opsets, attributes, tensors) is copied byte for byte.

Field numbers are onnx.proto's: ModelProto.graph = 7; GraphProto node = 1, initializer = 5, input = 11,
output = 12, value_info = 13; NodeProto input = 1, output = 2; TensorProto name = 8; ValueInfoProto name = 1.
"""

from __future__ import annotations

from typing import NamedTuple

MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
NODE_INPUT, NODE_OUTPUT = 1, 2
TENSOR_NAME = 8
VALUE_INFO_NAME = 1
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class Field(NamedTuple):
    number: int
    wire: int
    payload: bytes | int  # int for varints, the raw bytes otherwise


class CutError(ValueError):
    """The model cannot be cut where asked."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise CutError("onnx cut: a protobuf varint runs past the end of the model, expected a whole model file")
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


def fields(buf: bytes) -> list[Field]:
    """The fields of one protobuf message, in order."""
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
                raise CutError(f"onnx cut: received protobuf wire type {wire}, expected 0, 1, 2 or 5")
            size, pos = _varint(buf, pos)
        if pos + size > len(buf):
            raise CutError("onnx cut: a protobuf field runs past the end of the model, expected a whole model file")
        out.append(Field(number, wire, buf[pos : pos + size]))
        pos += size
    return out


def encode(message: list[Field]) -> bytes:
    out = bytearray()
    for f in message:
        out += _put_varint(f.number << 3 | f.wire)
        if f.wire == VARINT:
            out += _put_varint(int(f.payload))
            continue
        payload = _raw(f)
        if f.wire == LENGTH:
            out += _put_varint(len(payload))
        out += payload
    return bytes(out)


def _raw(f: Field) -> bytes:
    assert isinstance(f.payload, bytes), f
    return f.payload


def _strings(message: bytes, number: int) -> list[str]:
    return [_raw(f).decode() for f in fields(message) if f.number == number]


def _name(message: bytes, number: int) -> str:
    names = _strings(message, number)
    return names[0] if names else ""


def cut(model: bytes, tensor: str) -> tuple[bytes, bytes]:
    """(front, back): front computes `tensor` from the model's inputs; back takes `tensor` (and the other model
    inputs its nodes read) and computes the model's outputs. The cut is before the first node reading `tensor`;
    no node of the back half may read anything else the front half makes."""
    top = fields(model)
    graphs = [f for f in top if f.number == MODEL_GRAPH]
    if len(graphs) != 1:
        raise CutError(f"onnx cut: received a model with {len(graphs)} graphs, expected 1")
    graph = fields(_raw(graphs[0]))
    nodes = [_raw(f) for f in graph if f.number == GRAPH_NODE]
    at = next((k for k, n in enumerate(nodes) if tensor in _strings(n, NODE_INPUT)), None)
    if at is None:
        raise CutError(f"onnx cut: received tensor {tensor!r}, expected a tensor that a node of the model reads")
    front, back = nodes[:at], nodes[at:]
    made_front = {o for n in front for o in _strings(n, NODE_OUTPUT)}
    read_back = {i for n in back for i in _strings(n, NODE_INPUT)}
    if tensor not in made_front or (read_back & made_front) - {tensor}:
        raise CutError(f"onnx cut: received tensor {tensor!r}, expected the one tensor passing from front to back")
    infos = [_raw(f) for f in graph if f.number == GRAPH_VALUE_INFO and _name(_raw(f), VALUE_INFO_NAME) == tensor]
    if not infos:
        raise CutError(f"onnx cut: tensor {tensor!r} has no value_info (type), expected one in the model")
    info = infos[0]
    return _half(top, graph, front, tensor, [], [info]), _half(top, graph, back, tensor, [info], None)


def _half(top: list[Field], graph: list[Field], nodes: list[bytes], tensor: str, extra_inputs: list[bytes],
          outputs: list[bytes] | None) -> bytes:
    """A model of `nodes`: extra_inputs, the graph inputs and initializers the nodes read, the value_info of what
    they make (`tensor` aside), and `outputs` (None: the model's own)."""
    read = {i for n in nodes for i in _strings(n, NODE_INPUT)}
    made = {o for n in nodes for o in _strings(n, NODE_OUTPUT)} - {tensor}

    def keep(f: Field) -> bool:
        payload = _raw(f) if f.wire == LENGTH else b""
        if f.number == GRAPH_INITIALIZER:
            return _name(payload, TENSOR_NAME) in read
        if f.number == GRAPH_INPUT:
            return _name(payload, VALUE_INFO_NAME) in read
        if f.number == GRAPH_VALUE_INFO:
            return _name(payload, VALUE_INFO_NAME) in made
        if f.number == GRAPH_OUTPUT:
            return outputs is None
        return f.number != GRAPH_NODE

    body = [Field(GRAPH_NODE, LENGTH, n) for n in nodes] + [Field(GRAPH_INPUT, LENGTH, p) for p in extra_inputs]
    body += [f for f in graph if keep(f)] + [Field(GRAPH_OUTPUT, LENGTH, p) for p in outputs or []]
    return encode([Field(MODEL_GRAPH, LENGTH, encode(body)) if f.number == MODEL_GRAPH else f for f in top])
