"""alignment_matrix.onnx: openai-whisper's find_alignment between the model and the DTW, as a graph of no weights.

From align.onnx's scores of the alignment heads, one window per row: softmax over the window's frames, normalised
over the row's tokens (population std), median-filtered along time (width 7, the window's edges reflected, as
openai's median_filter), averaged over the heads. runtime/words.py's alignment_matrix is the same arithmetic in
numpy, and the graph's test holds the two together. It depends on no model (any number of heads, tokens and
frames), so the package ships it once (whisper_export/assets/) and every bundle with align.onnx uses it: on a GPU
the scores never leave the device and the host gets (tokens, frames) instead of (heads, tokens, frames).

NaN semantics as openai's: a frame whose softmax is equal over the tokens normalises to 0 / 0; openai's sort puts
NaN above every number, so it is +inf through the median filter (min/max keep an infinity exact) and NaN again
after the heads' mean.

    python -m whisper_export.export.alignment_matrix_graph   # rewrites the asset (tests/ checks it is current)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from whisper_export import graph_io as io

ASSET = io.ALIGNMENT_MATRIX_PATH
OPSET = 17
MEDIAN_WIDTH = 7
# Knuth's 16-comparator sorting network of 7 inputs (layers of independent comparators); the median is output 3
SORT7 = ((0, 6), (2, 3), (4, 5), (0, 2), (1, 4), (3, 6), (0, 1), (2, 5), (3, 4), (1, 2), (4, 6), (2, 3), (4, 5),
         (1, 2), (3, 4), (5, 6))


class _Graph:
    """Nodes with generated names, constants as initializers."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value, dtype=np.int64) -> str:
        name = f"const_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name


def median_comparators(network=SORT7, output: int = MEDIAN_WIDTH // 2) -> list[tuple[int, int, bool, bool]]:
    """The comparators of a sorting network that its output wire depends on: (low wire, high wire, whether the
    minimum is needed, whether the maximum is), in network order."""
    needed, kept = {output}, []
    for low, high in reversed(network):
        need_min, need_max = low in needed, high in needed
        if need_min or need_max:
            needed |= {low, high}
            kept.append((low, high, need_min, need_max))
    return kept[::-1]


def _normalised(g: _Graph, qk: str, lengths: str, frames: str) -> str:
    """(A, H, T, F) scores -> softmax over each row's first `frames` positions, normalised over its first
    `lengths` tokens; +inf where that is 0 / 0 (openai's NaN, sorted above every number)."""
    shape = g.op("Shape", [qk])
    n_tokens = g.op("Squeeze", [g.op("Slice", [shape, g.const([2]), g.const([3])]), g.const([0])])
    n_frames = g.op("Squeeze", [g.op("Slice", [shape, g.const([3]), g.const([4])]), g.const([0])])
    frame_ok = g.op("Less", [g.op("Range", [g.const(0), n_frames, g.const(1)]),
                             g.op("Unsqueeze", [frames, g.const([1])])])  # (A, F)
    frame_ok = g.op("Unsqueeze", [frame_ok, g.const([1, 2])])  # (A, 1, 1, F)
    weights = g.op("Softmax", [g.op("Where", [frame_ok, qk, g.const(-np.inf, np.float32)])], axis=-1)
    token_ok = g.op("Less", [g.op("Range", [g.const(0), n_tokens, g.const(1)]),
                             g.op("Unsqueeze", [lengths, g.const([1])])])  # (A, T)
    token_mask = g.op("Unsqueeze", [g.op("Cast", [token_ok], to=TensorProto.FLOAT), g.const([1, 3])])  # (A,1,T,1)
    count = g.op("Reshape", [g.op("Cast", [lengths], to=TensorProto.FLOAT), g.const([-1, 1, 1, 1])])
    mean = g.op("Div", [g.op("ReduceSum", [g.op("Mul", [weights, token_mask]), g.const([2])], keepdims=1), count])
    centered = g.op("Sub", [weights, mean])
    masked = g.op("Mul", [centered, token_mask])
    std = g.op("Sqrt", [g.op("Div", [g.op("ReduceSum", [g.op("Mul", [masked, masked]), g.const([2])], keepdims=1),
                                     count])])  # (A, H, 1, F)
    return g.op("Where", [g.op("Greater", [std, g.const(0.0, np.float32)]), g.op("Div", [centered, std]),
                          g.const(np.inf, np.float32)])


def _median_filtered(g: _Graph, x: str, frames: str) -> str:
    """(A, H, T, F) -> (A, F, H, T): the width-7 median along F, each row's signal its first `frames` values,
    reflected at both ends (np.pad's "reflect"); rows of <= 3 frames unfiltered (openai's median_filter)."""
    pad = MEDIAN_WIDTH // 2
    by_frame = g.op("Transpose", [x], perm=[0, 3, 1, 2])  # (A, F, H, T): frames gathered per row
    n_frames = g.op("Squeeze", [g.op("Slice", [g.op("Shape", [x]), g.const([3]), g.const([4])]), g.const([0])])
    source = g.op("Abs", [g.op("Range", [g.const(-pad), g.op("Add", [n_frames, g.const(pad)]), g.const(1)])])
    last = g.op("Sub", [g.op("Unsqueeze", [frames, g.const([1])]), g.const(1)])  # (A, 1)
    reflected = g.op("Where", [g.op("Greater", [source, last]),
                               g.op("Sub", [g.op("Mul", [last, g.const(2)]), source]), source])  # (A, F + 6)
    # positions past a row's frames are never read back; clamped into the tensor
    index = g.op("Max", [g.op("Min", [reflected, g.op("Sub", [n_frames, g.const(1)])]), g.const(0)])
    padded = g.op("GatherND", [by_frame, g.op("Unsqueeze", [index, g.const([2])])], batch_dims=1)  # (A, F+6, H, T)
    stop = g.op("Unsqueeze", [n_frames, g.const([0])])
    wires = [g.op("Slice", [padded, g.const([k]), g.op("Add", [stop, g.const([k])]), g.const([1])])
             for k in range(MEDIAN_WIDTH)]
    for low, high, need_min, need_max in median_comparators():
        smaller = g.op("Min", [wires[low], wires[high]]) if need_min else wires[low]
        if need_max:
            wires[high] = g.op("Max", [wires[low], wires[high]])
        wires[low] = smaller
    long_enough = g.op("Reshape", [g.op("Greater", [frames, g.const(pad)]), g.const([-1, 1, 1, 1])])
    return g.op("Where", [long_enough, wires[pad], by_frame])


def alignment_matrix_graph() -> onnx.ModelProto:
    g = _Graph()
    qk = helper.make_tensor_value_info(io.IN_ALIGNMENT_QK, TensorProto.FLOAT,
                                       ["rows", "n_heads", "n_tokens", "n_frames"])
    lengths = helper.make_tensor_value_info(io.IN_LENGTHS, TensorProto.INT64, ["rows"])
    frames = helper.make_tensor_value_info(io.IN_FRAMES, TensorProto.INT64, ["rows"])
    filtered = _median_filtered(g, _normalised(g, io.IN_ALIGNMENT_QK, io.IN_LENGTHS, io.IN_FRAMES), io.IN_FRAMES)
    mean = g.op("ReduceMean", [filtered], axes=[2], keepdims=0)  # (A, F, T): the heads' mean
    mean = g.op("Where", [g.op("IsInf", [mean]), g.const(np.nan, np.float32), mean])
    g.nodes.append(helper.make_node("Transpose", [mean], [io.ALIGNMENT_MATRIX], perm=[0, 2, 1], name="matrix"))
    out = helper.make_tensor_value_info(io.ALIGNMENT_MATRIX, TensorProto.FLOAT, ["rows", "n_tokens", "n_frames"])
    graph = helper.make_graph(g.nodes, "whisper_alignment_matrix", [qk, lengths, frames], [out], g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="whisper-export")
    model.ir_version = 8  # onnxruntime >= 1.14 reads it
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    ASSET.write_bytes(alignment_matrix_graph().SerializeToString())
    print(f"wrote {ASSET}")


if __name__ == "__main__":
    main()
