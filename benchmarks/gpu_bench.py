"""GPU benchmark (issue 6 H100 targets, issue 4 GPU must-show): ours on onnxruntime-gpu (CUDA EP, fp16 bundle,
IO binding + CUDA graphs) against transformers fp16 on the same GPU, in one run.

    # on the GPU machine, onnxruntime-gpu unpacked in /tmp/site (see NOTES.md "Benchmarks"):
    export PYTHONPATH=/tmp/site:$PWD
    python benchmarks/gpu_bench.py tiny --checkpoint /tmp/tinyen --out $OUT/gpu_tiny.json
    python benchmarks/gpu_bench.py large-v3 --tokenizer /tmp/v3_tokenizer.json --work /tmp/lv3 --out $OUT/gpu_large.json

tiny: the carried tiny.en CTranslate2 checkpoint (the packaged model.bin, config.json, tokenizer.json), exported
on the machine to fp16 bundles with each of --attentions (matmul, onnx, onnxruntime), and given to transformers.
large-v3: random weights with large-v3 dims, exported on the machine (timing only; tokens are meaningless).
Each bundle's decoder is also loaded once with the CUDA EP's optimized graph written out, and its op types
counted ("optimized_ops"), which shows what onnxruntime fused.

The comparisons (queue depths, attention kernels, streams, beam with timestamps), the beam breakdown and the
profiles are in gpu_compare.py. Every section is guarded: a failure is recorded in the JSON ("errors") and the next section runs; the JSON is
rewritten after each section so a timeout still leaves the finished ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from whisper_export.bench.baselines import hf_fixed_steps  # noqa: E402
from whisper_export.bench.common import summary  # noqa: E402
from whisper_export.bench.ours import ours_decode, ours_encoder_ms, ours_step_loop, prompt_for  # noqa: E402
from gpu_compare import (  # noqa: E402
    attention_kernels,
    beam_breakdown,
    optimized_ops,
    ours_profile,
    beam_timestamps_compare,
    gpu_backend,
    queue_sweep,
    step_loop_streams,
    stream_compare,
)

CLIPS = sorted((REPO / "tests" / "data").glob("en_*.wav"))
PROFILE = True
LARGE_V3 = dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32, n_vocab=51866,
                n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32)


class Report:
    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"errors": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.t0 = time.perf_counter()

    def section(self, name: str, fn, *args, **kwargs):
        print(f"[gpu_bench] {name} (t={time.perf_counter() - self.t0:.0f}s)", flush=True)
        t = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
            self.data[name] = value
            return value
        except Exception as e:  # noqa: BLE001 - record and go on
            self.data["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"
            print(f"[gpu_bench] {name} FAILED: {e}", flush=True)
            return None
        finally:
            self.data.setdefault("section_seconds", {})[name] = time.perf_counter() - t
            self.save()

    def save(self):
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def read_wav(path: Path) -> np.ndarray:
    """16-bit PCM mono 16 kHz (the committed clips) without soundfile, which the GPU image lacks."""
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def environment() -> dict:
    import onnxruntime as ort
    import torch

    info = {"onnxruntime": ort.__version__, "onnxruntime_file": ort.__file__, "providers": ort.get_available_providers(),
            "torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


def export_variant(ckpt, target: Path, attention: str) -> Path:
    from whisper_export.export.exporter import ExportOptions, export_bundle

    if not (target / "manifest.json").exists():
        export_bundle(ckpt, target, ExportOptions(precision="fp16", attention=attention), progress=lambda _: None)
    return target


def export_tiny(ckpt, work: Path, attention: str) -> Path:
    return export_variant(ckpt, work / f"tiny-b16-{attention}", attention)


def tokens_check(bundle_dir: Path, mel, audios, attention: str) -> dict:
    """Greedy / beam 5 / timestamps on the 5 clips: GPU (graphs, no graphs) against the CPU of this machine and
    against the dev machine's CPU tokens (benchmarks/data/cpu_tokens_tiny_en.json)."""
    from whisper_export.backends.onnxruntime import OnnxRuntimeBackend
    from whisper_export.bundle import Bundle
    from whisper_export.runtime.decoding import decode
    from whisper_export.runtime.options import DecodingOptions
    from whisper_export.runtime.api import WhisperRuntime

    expected = json.loads((REPO / "benchmarks" / "data" / "cpu_tokens_tiny_en.json").read_text())
    bundle = Bundle.open(bundle_dir)
    tok = bundle.tokenizer()
    cpu = OnnxRuntimeBackend(bundle)
    out: dict = {}
    options = {"greedy": DecodingOptions(without_timestamps=True), "beam5": DecodingOptions(beam_size=5, without_timestamps=True),
               "greedy_ts": DecodingOptions(), "beam5_ts": DecodingOptions(beam_size=5)}
    cpu_tokens = {k: [r.tokens for r in decode(cpu, tok, mel, o)] for k, o in options.items()}
    for graph in (True, False):
        gpu, _ = gpu_backend(bundle_dir, graph)
        label = "graph" if graph else "nograph"
        out[f"{label}_mode"] = gpu.graph_mode
        out[f"{label}_graph_error"] = gpu.graph_error
        for k, o in options.items():
            batched = [r.tokens for r in decode(gpu, tok, mel, o)]
            alone = [decode(gpu, tok, mel[i : i + 1], o)[0].tokens for i in range(len(mel))]
            out[f"{label}:{k}:same_as_this_cpu"] = batched == cpu_tokens[k] and alone == cpu_tokens[k]
            for precision, variant in (("fp16", attention), ("fp32", "onnx")):  # None: no dev-machine tokens kept
                dev = expected.get(f"{precision}-{variant}-{k}")
                out[f"{label}:{k}:same_as_dev_cpu_{precision}"] = None if dev is None else batched == dev
            if not out[f"{label}:{k}:same_as_this_cpu"]:
                out[f"{label}:{k}:gpu_tokens"] = batched
                out[f"{label}:{k}:cpu_tokens"] = cpu_tokens[k]
        gpu.close()
    # the whole runtime (long-form transcribe) on one clip: GPU and CPU
    with WhisperRuntime.load(bundle_dir, device="cuda") as rt_gpu, WhisperRuntime.load(bundle_dir) as rt_cpu:
        g = rt_gpu.transcribe(audios[1], beam_size=5)
        c = rt_cpu.transcribe(audios[1], beam_size=5)
        out["runtime_transcribe_en_fox"] = {"gpu_text": g.text, "cpu_text": c.text,
                                            "same_tokens": [s.tokens for s in g.segments] == [s.tokens for s in c.segments],
                                            "gpu_segment_tokens": [s.tokens for s in g.segments]}
    out["cpu_greedy_tokens_en_fox"] = cpu_tokens["greedy"][1]
    return out


class NeverSeen(set):
    """A prompt-shape set that never holds the shape asked for: every prompt runs as is (no graph)."""

    def __contains__(self, item) -> bool:
        return False


def ours_suite(bundle_dir: Path, mel, graph: bool, batch_sizes, steps: int, repeats: int) -> dict:
    from whisper_export.runtime.options import DecodingOptions

    backend, load_s = gpu_backend(bundle_dir, graph)
    tok = backend.bundle.tokenizer()
    prompt = prompt_for(tok)
    r = {"load_s": load_s, "mode": backend.graph_mode, "graph_error": backend.graph_error, "repr": repr(backend),
         "shared_stream": backend.shared_stream, "stream_error": backend.stream_error}
    r["encoder_b1"] = ours_encoder_ms(backend, mel[:1], repeats * 5)
    mel16 = np.ascontiguousarray(mel[[i % len(mel) for i in range(16)]])

    def enc16():
        backend.encode(mel16)

    for _ in range(2):
        enc16()
    samples = []
    for _ in range(repeats * 3):
        t0 = time.perf_counter()
        enc16()
        samples.append(time.perf_counter() - t0)
    r["encoder_b16_ms"] = summary([s * 1e3 for s in samples])
    greedy = DecodingOptions(without_timestamps=True)
    beam5 = DecodingOptions(without_timestamps=True, beam_size=5)
    # greedy with timestamps: the rules depend on the tokens, so every step's logits go to the host
    decodes = (("greedy_b1", mel, greedy, True), ("beam5_b1", mel, beam5, True), ("greedy_b16", mel16, greedy, False),
               ("greedy_timestamps_b1", mel, DecodingOptions(), True))
    for key, m, o, one in decodes:
        d = ours_decode(backend, tok, m, o, repeats, one_by_one=one)
        d.pop("token_ids")
        r[key] = d
    r["step_loop"] = [ours_step_loop(backend, mel[:1], b, prompt, steps, repeats) for b in batch_sizes]
    if backend.selects:  # the decoder chooses in its graph: greedy steps streamed on the device (ort_greedy.py)
        r["step_loop_queues"] = queue_sweep(backend, mel, prompt, (1, 16), steps, repeats)
        default = backend.greedy_queue
        for queue in (0, 2, 4, 8):  # real decodes with eot stops: steps queued past an eot are wasted
            backend.greedy_queue = queue
            d = ours_decode(backend, tok, mel, greedy, repeats, one_by_one=True)
            d.pop("token_ids")
            r[f"greedy_b1_queue{queue}"] = d
        backend.greedy_queue = default
        r["greedy_error"] = backend.greedy_error
    else:
        default_min = getattr(backend, "select_min_rows", None)
        for label, min_rows in (("device_select", 1), ("host_select", 10**9)):  # both sides of the crossover
            backend.select_min_rows = min_rows
            r[f"step_loop_{label}"] = [ours_step_loop(backend, mel[:1], b, prompt, steps, repeats) for b in (1, 2, 4, 8, 16)]
        backend.select_min_rows = default_min
    # the same real decodes with every prompt run as is (no graph), as before prompts were captured
    captured_prompts, backend._prompt_shapes = backend._prompt_shapes, NeverSeen()
    d = ours_decode(backend, tok, mel, greedy, repeats, one_by_one=True)
    d.pop("token_ids")
    r["greedy_b1_plain_prompts"] = d
    backend._prompt_shapes = captured_prompts
    r["prompts_captured"] = sorted({key[-3:] for key in backend._steps._bindings if "prompt" in key})
    r["graphs_captured_keys"] = len(backend._steps) if backend._steps is not None else 0
    try:
        if PROFILE:
            r["profile_b1"] = ours_profile(backend, mel[:1], 1, prompt)
            r["profile_b16"] = ours_profile(backend, mel[:1], 16, prompt)
    except Exception as e:  # noqa: BLE001
        r["profile_error"] = f"{type(e).__name__}: {e}"
    r["mode_after"] = backend.graph_mode
    r["graph_error_after"] = backend.graph_error
    aux = backend._aux
    r["aux_captured"] = {name: getattr(aux.opened(name) if aux is not None else None, "graphs", None)
                         for name in ("reorder", "select", "top", "limited")}
    backend.close()
    return r


def transformers_suite(ckpt, mel, prompt, batch_sizes, steps: int, repeats: int, work: Path, random_init: bool) -> dict:
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from reference_model.huggingface import hf_config

    t = time.perf_counter()
    eot = 50256 if not ckpt.dims.is_multilingual else 50257
    if random_init:
        cfg = WhisperConfig(**{k: v for k, v in hf_config(ckpt.dims, eot, eot + 1).items() if k not in ("architectures", "model_type")})
        with torch.device("cuda"):  # random init on the GPU: seconds, not a minute of CPU init for 1.5 B weights
            model = WhisperForConditionalGeneration(cfg)
        model = model.to(torch.float16).eval()
    else:
        from reference_model.huggingface import save_huggingface

        target = work / "hf"
        if not target.exists():
            save_huggingface(ckpt, target)
        model = WhisperForConditionalGeneration.from_pretrained(str(target), torch_dtype=torch.float16).cuda().eval()
    r = {"load_s": time.perf_counter() - t, "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    feats = torch.from_numpy(mel).to("cuda", torch.float16)

    def enc():
        with torch.inference_mode():
            model.model.encoder(feats[:1])
        torch.cuda.synchronize()

    for _ in range(3):
        enc()
    samples = []
    for _ in range(repeats * 5):
        t0 = time.perf_counter()
        enc()
        samples.append((time.perf_counter() - t0) * 1e3)
    r["encoder_b1_ms"] = summary(samples)
    r["step_loop"] = []
    for b in batch_sizes:
        f = feats[:1].repeat(b, 1, 1)
        r["step_loop"].append(hf_fixed_steps(model, f, prompt, steps, repeats, eot))
    if not random_init:
        from whisper_export.bench.baselines import hf_decode

        d = hf_decode(model, feats, eot, repeats, one_by_one=True)
        r["greedy_b1_tokens"] = d.pop("token_ids")
        r["greedy_b1"] = d
    del model
    torch.cuda.empty_cache()
    return r


def random_large_v3(tokenizer_json: Path, dims_dict: dict | None = None):
    from reference_model.checkpoint import Checkpoint, expected_shapes
    from whisper_export.dims import ModelDims

    dims = ModelDims(**(dims_dict or LARGE_V3))
    rng = np.random.default_rng(0)
    state = {}
    for name, shape in expected_shapes(dims).items():
        if name.endswith("ln.weight") or name.endswith("_ln.weight") or name.endswith("ln_post.weight"):
            state[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            state[name] = np.zeros(shape, np.float32)
        else:
            state[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return Checkpoint(dims, state, "large-v3-random", "random", "random", tokenizer_json, {}, "random")


def simulate_on_cpu() -> None:
    """GPU_BENCH_SIMULATE=1: run the CUDA code path of the backend on the CPU provider (no graphs), to check this
    script before spending GPU time. Use with --skip transformers,profile."""
    import onnxruntime as ort

    from whisper_export.backends import onnxruntime as ob

    ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    ob.OnnxRuntimeBackend._ort_device = "cpu"

    original = ob.OnnxRuntimeBackend._session

    def session(self, *a, **k):
        if k.get("graph"):
            raise ob.BackendError("simulated: no graph capture on the CPU")
        device, self.device = self.device, "cpu"
        try:
            return original(self, *a, **k)
        finally:
            self.device = device

    ob.OnnxRuntimeBackend._session = session


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["tiny", "large-v3"])
    ap.add_argument("--checkpoint", type=Path, help="tiny: the tiny.en checkpoint directory")
    ap.add_argument("--tokenizer", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_bench"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    ap.add_argument("--attentions", default="matmul,onnx", help="fp16 exports to time, e.g. matmul,onnx")
    args = ap.parse_args()
    import os

    if os.environ.get("GPU_BENCH_SIMULATE") == "1":
        simulate_on_cpu()
    args.work.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    global PROFILE
    PROFILE = "profile" not in skip
    rep = Report(args.out)
    rep.section("environment", environment)
    from whisper_export.runtime.audio import log_mel_batch

    attentions = [a for a in args.attentions.split(",") if a]
    if args.model == "tiny":
        from reference_model import load_checkpoint

        audios = [read_wav(p) for p in CLIPS]
        rep.data["clips"] = [p.name for p in CLIPS]
        mel = log_mel_batch(audios)
        batch_sizes = [1, 2, 4, 8, 16, 32]
        ckpt = rep.section("checkpoint", load_checkpoint, str(args.checkpoint))
        for attention in attentions:
            bundle = rep.section(f"export_{attention}", export_tiny, ckpt, args.work, attention)
            if bundle is None:
                continue
            suffix = "" if attention == "matmul" else f"_{attention}"
            if "tokens" not in skip:
                rep.section(f"tokens{suffix}", tokens_check, bundle, mel, audios, attention)
            rep.section(f"optimized_ops{suffix}", optimized_ops, bundle, args.work)
            rep.section(f"beam_breakdown{suffix}", beam_breakdown, bundle, mel)
            if "streams" not in skip:
                rep.section(f"stream_compare{suffix}", stream_compare, bundle, mel, args.repeats)
                rep.section(f"beam_timestamps_compare{suffix}", beam_timestamps_compare, bundle, mel, args.repeats)
            rep.section(f"ours_graph{suffix}", ours_suite, bundle, mel, True, batch_sizes, args.steps, args.repeats)
            if "nograph" not in skip:
                rep.section(f"ours_nograph{suffix}", ours_suite, bundle, mel, False, [1, 16], args.steps, args.repeats)
        if ckpt is not None:
            from whisper_export.tokenizer import WhisperTokenizer

            prompt = prompt_for(WhisperTokenizer.from_file(ckpt.tokenizer_json, ckpt.dims.n_vocab))
        if ckpt is not None and "transformers" not in skip:
            rep.section("transformers", transformers_suite, ckpt, mel, prompt, batch_sizes, args.steps, args.repeats,
                        args.work, False)
        if "onnxruntime" in attentions and "kernels" not in skip and ckpt is not None:
            rep.section("attention_kernels_onnxruntime", attention_kernels, args.work / "tiny-b16-onnxruntime", mel,
                        prompt, args.steps, args.repeats)
    else:
        ckpt = rep.section("random_checkpoint", random_large_v3, args.tokenizer)

        def export(attention):
            target = export_variant(ckpt, args.work / f"lv3-b16-{attention}", attention)
            return {"bytes": sum(p.stat().st_size for p in target.iterdir())}

        for attention in attentions:
            rep.section(f"export_{attention}", export, attention)
        del ckpt
        import gc

        gc.collect()
        rng = np.random.default_rng(1)
        mel = (rng.standard_normal((2, 128, 3000)).astype(np.float32) * 0.5).astype(np.float32)
        from whisper_export.tokenizer import WhisperTokenizer

        tok = WhisperTokenizer.from_file(args.tokenizer, 51866)
        prompt = prompt_for(tok)

        def ours_large(graph: bool, batch_sizes, attention: str):
            backend, load_s = gpu_backend(args.work / f"lv3-b16-{attention}", graph)
            r = {"load_s": load_s, "mode": backend.graph_mode, "graph_error": backend.graph_error}
            r["encoder_b1"] = ours_encoder_ms(backend, mel[:1], args.repeats * 3)
            r["step_loop"] = [ours_step_loop(backend, mel[:1], b, prompt, args.steps, args.repeats) for b in batch_sizes]
            if graph and backend.selects:
                r["step_loop_queues"] = queue_sweep(backend, mel, prompt, (1, 16), args.steps, args.repeats)
            if graph and PROFILE:
                try:
                    r["profile_b1"] = ours_profile(backend, mel[:1], 1, prompt, 20)
                except Exception as e:  # noqa: BLE001
                    r["profile_error"] = str(e)
            r["mode_after"] = backend.graph_mode
            backend.close()
            return r

        for attention in attentions:
            suffix = "" if attention == "matmul" else f"_{attention}"
            rep.section(f"optimized_ops{suffix}", optimized_ops, args.work / f"lv3-b16-{attention}", args.work)
            rep.section(f"ours_graph{suffix}", ours_large, True, [1, 4, 16], attention)
            if "streams" not in skip:
                rep.section(f"step_loop_streams{suffix}", step_loop_streams, args.work / f"lv3-b16-{attention}", mel,
                            prompt, (1, 16), min(args.steps, 64), args.repeats)
            if "nograph" not in skip:
                rep.section(f"ours_nograph{suffix}", ours_large, False, [1, 16], attention)
        if "transformers" not in skip:
            from reference_model.checkpoint import Checkpoint
            from whisper_export.dims import ModelDims

            shell = Checkpoint(ModelDims(**LARGE_V3), {}, "large-v3-random", "random", "random", args.tokenizer)
            rep.section("transformers", transformers_suite, shell, mel, prompt, [1, 16], min(args.steps, 64),
                        args.repeats, args.work, True)
        if "onnxruntime" in attentions and "kernels" not in skip:
            rep.section("attention_kernels_onnxruntime", attention_kernels, args.work / "lv3-b16-onnxruntime", mel,
                        prompt, args.steps, args.repeats)
    rep.data["total_seconds"] = time.perf_counter() - rep.t0
    rep.save()
    print(json.dumps({k: v for k, v in rep.data.items() if k in ("errors", "section_seconds")}, indent=1, default=str))


if __name__ == "__main__":
    main()
