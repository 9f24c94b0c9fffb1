"""Cut an ONNX model in two at one tensor, working on its protobuf bytes.

The runtime has onnxruntime but not the onnx package, and the Silero VAD model (runtime/vad.py) is faster in
two parts: its convolutions see each 32 ms frame alone, so they can run on many frames in parallel, while its
LSTM must walk the frames in order. This module splits a model's node list (as protobuf bytes, onnx_wire.py) at
the first node that reads a tensor, and writes each half back as a model of its own.
"""

from __future__ import annotations

from whisper_export.onnx_wire import (
    GRAPH_INITIALIZER,
    GRAPH_INPUT,
    GRAPH_NODE,
    GRAPH_OUTPUT,
    GRAPH_VALUE_INFO,
    LENGTH,
    MODEL_GRAPH,
    NODE_INPUT,
    NODE_OUTPUT,
    TENSOR_NAME,
    VALUE_INFO_NAME,
    Field,
    WireError,
    encode,
    fields,
    first_string,
    model_graph,
    raw,
    strings,
)

__all__ = ["CutError", "cut", "encode", "fields"]

# a model that cannot be cut where asked, or bytes that are not a model
CutError = WireError


def cut(model: bytes, tensor: str) -> tuple[bytes, bytes]:
    """(front, back): front computes `tensor` from the model's inputs; back takes `tensor` (and the other model
    inputs its nodes read) and computes the model's outputs. The cut is before the first node reading `tensor`;
    no node of the back half may read anything else the front half makes."""
    top = fields(model)
    graph = model_graph(top)
    nodes = [raw(f) for f in graph if f.number == GRAPH_NODE]
    at = next((k for k, n in enumerate(nodes) if tensor in strings(n, NODE_INPUT)), None)
    if at is None:
        raise CutError(f"onnx cut: received tensor {tensor!r}, expected a tensor that a node of the model reads")
    front, back = nodes[:at], nodes[at:]
    made_front = {o for n in front for o in strings(n, NODE_OUTPUT)}
    read_back = {i for n in back for i in strings(n, NODE_INPUT)}
    if tensor not in made_front or (read_back & made_front) - {tensor}:
        raise CutError(f"onnx cut: received tensor {tensor!r}, expected the one tensor passing from front to back")
    infos = [raw(f) for f in graph if f.number == GRAPH_VALUE_INFO and first_string(raw(f), VALUE_INFO_NAME) == tensor]
    if not infos:
        raise CutError(f"onnx cut: tensor {tensor!r} has no value_info (type), expected one in the model")
    info = infos[0]
    return _half(top, graph, front, tensor, [], [info]), _half(top, graph, back, tensor, [info], None)


def _half(top: list[Field], graph: list[Field], nodes: list[bytes], tensor: str, extra_inputs: list[bytes],
          outputs: list[bytes] | None) -> bytes:
    """A model of `nodes`: extra_inputs, the graph inputs and initializers the nodes read, the value_info of what
    they make (`tensor` aside), and `outputs` (None: the model's own)."""
    read = {i for n in nodes for i in strings(n, NODE_INPUT)}
    made = {o for n in nodes for o in strings(n, NODE_OUTPUT)} - {tensor}

    def keep(f: Field) -> bool:
        payload = raw(f) if f.wire == LENGTH else b""
        if f.number == GRAPH_INITIALIZER:
            return first_string(payload, TENSOR_NAME) in read
        if f.number == GRAPH_INPUT:
            return first_string(payload, VALUE_INFO_NAME) in read
        if f.number == GRAPH_VALUE_INFO:
            return first_string(payload, VALUE_INFO_NAME) in made
        if f.number == GRAPH_OUTPUT:
            return outputs is None
        return f.number != GRAPH_NODE

    body = [Field(GRAPH_NODE, LENGTH, n) for n in nodes] + [Field(GRAPH_INPUT, LENGTH, p) for p in extra_inputs]
    body += [f for f in graph if keep(f)] + [Field(GRAPH_OUTPUT, LENGTH, p) for p in outputs or []]
    return encode([Field(MODEL_GRAPH, LENGTH, encode(body)) if f.number == MODEL_GRAPH else f for f in top])
