"""Single-op micro-benchmarks on onnxruntime's CUDA EP, for choices in the decoder graph (NOTES.md, issue 6).

    PYTHONPATH=/tmp/site:$PWD python benchmarks/gpu_microbench.py --out $OUT/micro.json

- gemm: a decoder step's M = rows GEMMs in fp16, weights stored as MatMul's (K, N) or as Gemm's transB (N, K).
- select: the greedy choice over n_vocab logits: TopK(k=1) over the vocabulary, and two stages (TopK over
  blocks of the padded vocabulary, then over the blocks' winners).
Each graph repeats the op `copies` times on independent weights (one Run, captured in a CUDA graph and
replayed), so the per-op time excludes onnxruntime's per-Run overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

COPIES = 32


def _session(nodes, inputs, outputs, inits):
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]
    return ort.InferenceSession(model.SerializeToString(), providers=providers)


def _time(session, feeds: dict[str, np.ndarray], repeats: int = 200) -> float:
    """us per Run, replayed from a CUDA graph, all tensors on the device."""
    binding = session.io_binding()
    keep = []
    for name, value in feeds.items():
        v = ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0)
        keep.append(v)
        binding.bind_ortvalue_input(name, v)
    for o in session.get_outputs():
        binding.bind_output(o.name, "cuda")
    for _ in range(3):
        session.run_with_iobinding(binding)
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeats):
            session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()
        samples.append((time.perf_counter() - t) / repeats * 1e6)
    return statistics.median(samples)


def gemm(rows: int, k: int, n: int, layout: str) -> float:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [rows, k])
    nodes, inits, outs = [], [], []
    for i in range(COPIES):
        w = (rng.standard_normal((k, n)) * 0.02).astype(np.float16)
        if layout == "matmul":
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]))
        else:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"))
            nodes.append(helper.make_node("Gemm", ["x", f"w{i}"], [f"y{i}"], transB=1))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT16, [rows, n]))
    s = _session(nodes, [x], outs, inits)
    return _time(s, {"x": rng.standard_normal((rows, k)).astype(np.float16)}) / COPIES


def select(rows: int, vocab: int, blocks: int) -> float:
    """TopK(k=1) of (rows, vocab) logits, in one stage (blocks=1) or two."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, vocab])
    nodes, inits, outs = [], [], []
    width = -(-vocab // blocks)
    inits += [numpy_helper.from_array(np.array([1], np.int64), "one"),
              numpy_helper.from_array(np.array([0, 0, 0, width * blocks - vocab], np.int64), "pads"),
              numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf"),
              numpy_helper.from_array(np.array([rows, blocks, width], np.int64), "blocked"),
              numpy_helper.from_array(np.array(width, np.int64), "width")]
    for i in range(COPIES):
        if blocks == 1:
            nodes.append(helper.make_node("TopK", ["x", "one"], [f"v{i}", f"y{i}"], axis=-1))
        else:
            nodes += [helper.make_node("Pad", ["x", "pads", "ninf"], [f"p{i}"]),
                      helper.make_node("Reshape", [f"p{i}", "blocked"], [f"r{i}"]),
                      helper.make_node("TopK", [f"r{i}", "one"], [f"bv{i}", f"bi{i}"], axis=-1),  # (R, B, 1)
                      helper.make_node("TopK", [f"bv{i}", "one"], [f"v{i}", f"j{i}"], axis=1),  # (R, 1, 1)
                      helper.make_node("GatherElements", [f"bi{i}", f"j{i}"], [f"w{i}"], axis=1),
                      helper.make_node("Mul", [f"j{i}", "width"], [f"o{i}"]),
                      helper.make_node("Add", [f"o{i}", f"w{i}"], [f"y{i}"])]
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.INT64, None))
    s = _session(nodes, [x], outs, inits)
    logits = np.random.default_rng(1).standard_normal((rows, vocab)).astype(np.float32)
    return _time(s, {"x": logits}) / COPIES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    result: dict = {"onnxruntime": ort.__version__, "copies": COPIES, "gemm": [], "select": []}
    for d in (384, 1280):
        for k, n in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)):
            for rows in (1, 16):
                row = {"rows": rows, "k": k, "n": n}
                for layout in ("matmul", "gemm_transB"):
                    row[layout + "_us"] = gemm(rows, k, n, layout)
                row["GB_per_s_best"] = k * n * 2 / min(row["matmul_us"], row["gemm_transB_us"]) / 1e3
                result["gemm"].append(row)
                print(row, flush=True)
    for vocab in (51864, 51866):
        for rows in (1, 16):
            row = {"rows": rows, "vocab": vocab}
            for blocks in (1, 16, 64, 256):
                row[f"blocks_{blocks}_us"] = select(rows, vocab, blocks)
            result["select"].append(row)
            print(row, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
