"""The GPU benchmark's comparisons, breakdowns and profiles (benchmarks/gpu_bench.py runs them as sections): greedy
queue depths, onnxruntime's attention kernel choices, one CUDA stream against a stream per session, beam search
with timestamps on the device against host logits, where a beam step's time goes, the kernels of a step
(torch.profiler) and the operators onnxruntime's CUDA EP runs. Two configurations are measured
side by side in alternating rounds where the machine's drift could decide the comparison."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from whisper_export.bench.ours import ours_decode, ours_step_loop


def gpu_backend(bundle_dir, cuda_graph: bool, **options):
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend

    t = time.perf_counter()
    backend = OnnxRuntimeBackend(bundle_dir, device="cuda", cuda_graph=cuda_graph, **options)
    return backend, time.perf_counter() - t


GREEDY_QUEUES = (0, 1, 2, 4, 8)


def queue_sweep(backend, mel, prompt, batch_sizes, steps: int, repeats: int) -> list[dict]:
    """The step loop at each greedy queue depth (a decoder that chooses greedily in its graph; ort_greedy.py;
    0: decode_best step by step)."""
    default = backend.greedy_queue
    rows = []
    for queue in GREEDY_QUEUES:
        backend.greedy_queue = queue
        rows += [ours_step_loop(backend, mel[:1], b, prompt, steps, repeats) for b in batch_sizes]
    backend.greedy_queue = default
    return rows


def attention_kernels(bundle_dir: Path, mel, prompt, steps: int, repeats: int) -> dict:
    """The decoder step under each choice of onnxruntime's attention kernels (CUDA EP option sdpa_kernel, a bit
    mask: 1 flash, 2 memory-efficient, 4 TensorRT fused, 8 cuDNN flash, 16 unfused; 0 = onnxruntime's default),
    batch 1 and 16, streamed greedy steps; and whether the greedy tokens of the first clip stay the same."""
    from whisper_export.runtime.decoding import decode
    from whisper_export.runtime.options import DecodingOptions

    out: dict = {}
    reference = None
    for sdpa in ("0", "1", "2", "3", "8", "16"):
        try:
            backend, _ = gpu_backend(bundle_dir, True, provider_options={"sdpa_kernel": sdpa}, greedy_queue=2)
            loop = [ours_step_loop(backend, mel[:1], b, prompt, steps, repeats) for b in (1, 16)]
            tokens = decode(backend, backend.bundle.tokenizer(), mel[:1], DecodingOptions(without_timestamps=True))[0].tokens
            reference = reference if reference is not None else tokens
            out[sdpa] = {"step_loop": loop, "same_tokens_as_default": tokens == reference, "mode": backend.graph_mode}
            backend.close()
        except Exception as e:  # noqa: BLE001 - a kernel set onnxruntime cannot run: recorded
            out[sdpa] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(f"[gpu_bench] sdpa_kernel={sdpa}: {out[sdpa].get('step_loop', out[sdpa].get('error'))}", flush=True)
    return out


def beam_breakdown(bundle_dir: Path, mel) -> dict:
    """Where a beam-5 decode's time goes: the prompts, the beam steps (decode_top: cache reorder, decoder step
    and the candidates' selection, the first two also timed alone), the rest (host bookkeeping)."""
    from whisper_export.runtime.decoding import decode
    from whisper_export.runtime.options import DecodingOptions

    backend, _ = gpu_backend(bundle_dir, True)
    tok = backend.bundle.tokenizer()
    spent: dict[str, list[float]] = {"_reorder": [], "_step": [], "_prompt": [], "decode_top": []}
    for name in spent:
        def timed(*args, _f=getattr(backend, name), _n=name, **kwargs):
            t = time.perf_counter()
            out = _f(*args, **kwargs)
            spent[_n].append(time.perf_counter() - t)
            return out
        setattr(backend, name, timed)  # instance attribute: times this backend's own calls only
    options = DecodingOptions(beam_size=5, without_timestamps=True)
    decode(backend, tok, mel[:1], options)  # warm-up and captures
    for v in spent.values():
        v.clear()
    t = time.perf_counter()
    for i in range(len(mel)):
        decode(backend, tok, mel[i : i + 1], options)
    total = time.perf_counter() - t
    out = {name.strip("_"): {"calls": len(v), "ms_each": 1e3 * sum(v) / max(len(v), 1), "s": sum(v)} for name, v in spent.items()}
    out["total_s"] = total
    out["rest_s"] = total - sum(spent["_prompt"]) - sum(spent["decode_top"])  # decode_top holds the others
    aux = backend._aux
    for name in ("reorder", "top"):
        runs = aux.opened(name) if aux is not None else None
        out[f"{name}_graphs"] = runs.graphs if runs is not None else None
    backend.close()
    return out


def stream_compare(bundle_dir: Path, mel, repeats: int, rounds: int = 3) -> dict:
    """Beam 5 and greedy with timestamps, batch 1, the clips one at a time: every session on the backend's one
    CUDA stream ("shared": greedy with timestamps streamed through the ring; "shared_queue0": one step at a time,
    a step and the graph picking from its logits waited for once) and on onnxruntime's own streams ("own":
    waited for after each run). Two backends open side by side, measured in alternating rounds (ms/token per
    round, and their median); same tokens?"""
    from whisper_export.runtime.options import DecodingOptions

    out: dict = {}
    tokens: dict = {}
    shared, _ = gpu_backend(bundle_dir, True, shared_stream=True)
    own, _ = gpu_backend(bundle_dir, True, shared_stream=False)
    default_queue = shared.greedy_queue
    configs = (("shared", shared, default_queue), ("shared_queue0", shared, 0), ("own", own, default_queue))
    for label, backend, _ in configs:
        out[f"{label}_stream"] = {"shared_stream": backend.shared_stream, "stream_error": backend.stream_error}
    tok = shared.bundle.tokenizer()
    cases = (("beam5_b1", DecodingOptions(without_timestamps=True, beam_size=5)),
             ("greedy_timestamps_b1", DecodingOptions()))
    for _ in range(rounds):
        for label, backend, queue in configs:
            backend.greedy_queue = queue
            for key, options in cases:
                d = ours_decode(backend, tok, mel, options, repeats, one_by_one=True)
                tokens[(label, key)] = d.pop("token_ids")
                out.setdefault(f"{label}:{key}:ms_per_token_rounds", []).append(d["ms_per_token"])
    shared.greedy_queue = default_queue
    for label, _, _ in configs:
        for key, _ in cases:
            out[f"{label}:{key}:ms_per_token"] = float(np.median(out[f"{label}:{key}:ms_per_token_rounds"]))
    for key, _ in cases:
        out[f"same_tokens:{key}"] = all(tokens[(label, key)] == tokens[("own", key)] for label, _, _ in configs)
    out["greedy_error"] = shared.greedy_error
    aux = shared._aux
    out["limited_ring_bindings"] = sum(1 for k in aux.opened("limited")._bindings if k[0] == "limited-ring") \
        if aux is not None and aux.opened("limited") is not None else 0
    out["limited_graphs"] = aux.opened("limited").graphs if aux is not None and aux.opened("limited") else None
    shared.close()
    own.close()
    return out


def step_loop_streams(bundle_dir: Path, mel, prompt, batch_sizes, steps: int, repeats: int, rounds: int = 3) -> dict:
    """The greedy step loop with every session on the backend's one CUDA stream and on onnxruntime's own
    streams: two backends side by side, alternating rounds, ms/step per round and the median."""
    out: dict = {}
    backends = {label: gpu_backend(bundle_dir, True, shared_stream=shared)[0]
                for label, shared in (("shared", True), ("own", False))}
    for _ in range(rounds):
        for label, backend in backends.items():
            for b in batch_sizes:
                loop = ours_step_loop(backend, mel[:1], b, prompt, steps, repeats)
                out.setdefault(f"{label}:b{b}:ms_per_step_rounds", []).append(loop["ms_per_step"])
    for key in list(out):
        out[key.replace("_rounds", "")] = float(np.median(out[key]))
    for label, backend in backends.items():
        out[f"{label}_stream"] = backend.shared_stream
        backend.close()
    return out


def beam_timestamps_compare(bundle_dir: Path, mel, repeats: int, rounds: int = 3) -> dict:
    """Beam 5 with timestamps (the transcribe CLI's default), batch 1, the clips one at a time: candidates from
    timestamp_top.onnx on the device against the same bundle without it (the rules on host logits, every step's
    logits copied to the host), two backends side by side in alternating rounds; same tokens?"""
    import dataclasses

    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.bundle import Bundle
    from whisper_export.runtime.options import DecodingOptions

    bundle = Bundle.open(bundle_dir)
    without = dataclasses.replace(bundle, files={k: v for k, v in bundle.files.items() if k != "timestamp_top.onnx"})
    backends = {"device": OnnxRuntimeBackend(bundle, device="cuda"), "host": OnnxRuntimeBackend(without, device="cuda")}
    out: dict = {}
    tokens: dict = {}
    tok = bundle.tokenizer()
    for _ in range(rounds):
        for label, backend in backends.items():
            d = ours_decode(backend, tok, mel, DecodingOptions(beam_size=5), repeats, one_by_one=True)
            tokens[label] = d.pop("token_ids")
            out.setdefault(f"{label}:ms_per_token_rounds", []).append(d["ms_per_token"])
    for label in backends:
        out[f"{label}:ms_per_token"] = float(np.median(out[f"{label}:ms_per_token_rounds"]))
    out["same_tokens"] = tokens["device"] == tokens["host"]
    aux = backends["device"]._aux
    out["top_limited_graphs"] = getattr(aux.opened("top_limited") if aux is not None else None, "graphs", None)
    for backend in backends.values():
        backend.close()
    return out


def optimized_ops(bundle_dir: Path, work: Path) -> dict:
    """Op types of the decoder after the CUDA EP's graph optimizations (what onnxruntime fused, what is left)."""
    import collections

    import onnx
    import onnxruntime as ort

    out = work / f"optimized-{bundle_dir.name}.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(bundle_dir / "decoder.onnx"), opts, providers=["CUDAExecutionProvider"])
    model = onnx.load(str(out), load_external_data=False)
    before = onnx.load(str(bundle_dir / "decoder.onnx"), load_external_data=False)
    return {"exported": dict(collections.Counter(n.op_type for n in before.graph.node)),
            "optimized": dict(collections.Counter(n.op_type for n in model.graph.node))}


def kernel_profile(step, n: int) -> dict:
    """CUDA kernels per step and their GPU time (torch.profiler/CUPTI sees onnxruntime's kernels too)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    kernels: dict[str, list[float]] = {}
    count = 0
    busy = 0.0
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA") and not e.name.startswith(("cudaMemcpy", "Memcpy", "Memset")):
            dt = float(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0) or 0)  # us
            if dt <= 0:
                continue
            count += 1
            busy += dt
            kernels.setdefault(e.name[:80], []).append(dt)
    top = sorted(((sum(v), len(v), k) for k, v in kernels.items()), reverse=True)[:40]
    return {"steps": n, "kernels_per_step": count / n, "gpu_busy_us_per_step": busy / n,
            "wall_us_per_step_profiled": wall / n * 1e6,
            "top": [{"kernel": k, "us_per_step": s / n, "calls_per_step": c / n} for s, c, k in top]}


def ours_profile(backend, mel_row, rows: int, prompt: list[int], n: int = 30) -> dict:
    rows_mel = np.ascontiguousarray(np.repeat(mel_row, rows, 0))
    cross = backend.encode(rows_mel)
    cache = backend.new_cache(rows, backend.dims.n_text_ctx)
    index = np.arange(rows, dtype=np.int64)
    start = np.asarray([prompt] * rows, np.int64)
    logits, cache = backend.decode(start, np.zeros(rows, np.int64), index, np.asarray([len(prompt) - 1]), cache, cross)
    state = {"cache": cache, "i": 0, "token": logits[:, -1].argmax(-1)[:, None].astype(np.int64)}

    no_bias = np.zeros(backend.dims.n_vocab, np.float32)

    def step():  # as ours_step_loop: the greedy path (decode_best)
        offsets = np.full(rows, len(prompt) + state["i"], np.int64)
        best, _, state["cache"] = backend.decode_best(state["token"], offsets, index, no_bias, state["cache"], cross)
        state["token"] = best[:, None].astype(np.int64)
        state["i"] += 1

    for _ in range(4):  # capture before profiling
        step()
    return kernel_profile(step, n)
