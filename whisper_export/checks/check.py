"""The release gate: every graph output of a bundle against the PyTorch reference, plus greedy tokens.

Graph checks draw fresh random inputs (the seed is printed so a failure can be replayed); token checks use
real speech. Tolerances are per precision: fp32 must match to ~1e-4 on logits, fp16 is looser but its greedy
tokens must be identical to the fp32 reference; a bundle of int8 weights is held to a cosine floor and a greedy
token agreement instead (tolerances.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whisper_export import graph_io as io
from whisper_export.backends.picking import TimestampRules, chosen_logprobs, top_candidates
from whisper_export.bundle import Bundle, BundleError
from whisper_export.checks.tolerances import TOLERANCES, Tolerance, bundle_tolerance
from whisper_export.checks.tokens import check_tokens


@dataclass(frozen=True)
class CheckOptions:
    """What a check covers. The defaults are the release gate; ``quick()`` bounds the cost for large models, where
    every encoder window costs seconds and the fp32 reference several GB: one window, fewer decoder steps, a few
    greedy tokens per clip."""

    batch: int = 3  # random mel windows through the encoder; decoder rows start at offsets 0, 3, 6, ...
    steps: int = 20  # teacher-forced decoder steps compared one by one
    max_tokens: int | None = None  # new tokens per clip in the greedy-token check; None: n_text_ctx // 2

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        bounded = {"batch": self.batch, "steps": self.steps}
        if self.max_tokens is not None:
            bounded["max_tokens"] = self.max_tokens
        for name, value in bounded.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"check {name}: received {value!r}, expected a positive integer")

    @classmethod
    def quick(cls, steps: int = 4) -> CheckOptions:
        return cls(batch=1, steps=steps, max_tokens=16)


@dataclass
class Row:
    graph: str
    output: str
    max_abs: float
    max_rel: float
    cosine: float
    tolerance: float
    min_cosine: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance and self.cosine >= self.min_cosine


@dataclass
class CheckReport:
    seed: int
    precision: str
    rows: list[Row] = field(default_factory=list)
    tokens: list[dict] = field(default_factory=list)  # {audio, reference, bundle, identical, agreement, ok}
    weights: str = "float"

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and all(t["ok"] for t in self.tokens)

    def table(self) -> str:
        lines = [f"bundle precision {self.precision}, {self.weights} weights, random seed {self.seed}",
                 f"{'graph':<8} {'output':<18} {'max_abs':>10} {'max_rel':>10} {'cosine':>10} {'tol':>8}  ok"]
        for r in self.rows:
            lines.append(f"{r.graph:<8} {r.output:<18} {r.max_abs:>10.2e} {r.max_rel:>10.2e} {r.cosine:>10.6f} "
                         f"{r.tolerance:>8.1e}  {'yes' if r.ok else 'NO'}")
        for t in self.tokens:
            verdict = "identical" if t["identical"] else f"DIFFERENT, agreement {t['agreement']:.3f}"
            lines.append(f"tokens  {t['audio']}: {verdict} ({len(t['reference'])} reference, {len(t['bundle'])} "
                         f"bundle){'' if t['ok'] else '  NO'}")
            if not t["identical"]:
                lines.append(f"  reference: {t['reference']}\n  bundle:    {t['bundle']}")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def compare(graph: str, output: str, actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> Row:
    a, e = np.asarray(actual, np.float64).ravel(), np.asarray(expected, np.float64).ravel()
    if a.shape != e.shape:
        raise ValueError(f"{graph}/{output}: received shape {np.shape(actual)}, expected {np.shape(expected)}")
    diff = np.abs(a - e)
    cos = float(a @ e / max(np.linalg.norm(a) * np.linalg.norm(e), 1e-30))
    rel = float((diff / np.maximum(np.abs(e), 1e-3)).max())
    return Row(graph, output, float(diff.max()), rel, cos, tol.bound(e), tol.min_cosine)


def _merge(rows: list[Row], graph: str, output: str) -> list[Row]:
    """Collapse per-step rows of one output into its worst case."""
    if not rows:
        return []
    worst = max(rows, key=lambda r: r.max_abs / r.tolerance)
    return [Row(graph, output, worst.max_abs, max(r.max_rel for r in rows),
                min(r.cosine for r in rows), worst.tolerance, worst.min_cosine)]


def _session(path: Path, options=None):
    """An onnxruntime CPU session; a graph onnxruntime cannot load is a bad bundle (one-line BundleError)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's error classes derive from Exception only
        reason = " ".join(str(e).split()) or type(e).__name__
        raise BundleError(f"bundle {str(path.parent)!r}: onnxruntime cannot load {path.name} ({reason}); "
                          "re-export the bundle") from None


def check_graphs(bundle: Bundle, model, seed: int, batch: int = 3, steps: int = 20) -> list[Row]:
    """Encoder on random mel; decoder over a teacher-forced greedy rollout from different offsets."""
    import onnxruntime as ort

    tol = bundle_tolerance(bundle.config)
    rng = np.random.default_rng(seed)
    opts = ort.SessionOptions()
    enc = _session(bundle.encoder_path, opts)
    dec = _session(bundle.decoder_path, opts)
    rows, ck, cv = _check_encoder(bundle, model, enc, rng, batch, tol)
    decoder_rows, logits = _check_decoder(bundle, model, dec, ck, cv, rng, batch, steps, tol)
    rows += decoder_rows
    picking = (check_select, check_top, check_limited, check_top_limited)  # the weightless graphs, on these logits
    rows += [row for check in picking for row in check(bundle, logits, rng)]
    return rows + check_align(bundle, model, ck, cv, rng)


def _check_encoder(bundle: Bundle, model, enc, rng: np.random.Generator, batch: int, tol: Tolerance):
    """The encoder on random mel: (its rows, the reference's cross keys, its cross values)."""
    import torch

    dims, L = bundle.dims, bundle.dims.n_text_layer
    mel = rng.standard_normal((batch, dims.n_mels, 2 * dims.n_audio_ctx)).astype(np.float32)
    got = enc.run(io.cross_outputs(L), {io.MEL: mel})
    with torch.no_grad():
        ck, cv = model.encode(torch.from_numpy(mel))
    ref_cross = [t for pair in zip(ck, cv) for t in pair]
    rows = [compare("encoder", name, g, r.numpy(), tol)
            for name, g, r in zip(io.cross_outputs(L), got, ref_cross)]
    return rows, ck, cv


def _check_decoder(bundle: Bundle, model, dec, ck: list, cv: list, rng: np.random.Generator, batch: int,
                   steps: int, tol: Tolerance) -> tuple[list[Row], np.ndarray]:
    """The decoder over a teacher-forced greedy rollout: (its rows, merged over the steps; its last step's logits)."""
    import torch

    dims, L = bundle.dims, bundle.dims.n_text_layer
    dtype = io.PRECISIONS[bundle.precision]
    # each row starts at its own offset; its earlier cache slots hold the reference decoder's own keys/values
    # for random tokens (prefilled row by row), so both sides continue from a cache the model could have made.
    # attention="onnxruntime" (GroupQueryAttention) takes several tokens only as a prompt at offset 0
    spread = 0 if bundle.config.get("attention") == "onnxruntime" else 3
    offsets = np.array([spread * r for r in range(batch)], np.int64)
    ref_cache = _prefilled_cache(model, dims, offsets, int(offsets.max()) + 4 + steps, ck, cv, rng)
    onnx_cache = [c.numpy().astype(dtype) for c in ref_cache]
    onnx_cross = [c.numpy().astype(dtype) for pair in zip(ck, cv) for c in pair]
    tokens = rng.integers(0, dims.n_vocab, (batch, 4))
    rows_idx = np.arange(batch)
    selects = bundle.config.get("attention") == "onnxruntime"  # the decoder also chooses greedily (graph_io)
    bias = _suppression(rng, dims.n_vocab)
    logit_rows, cache_rows = [], []
    for step in range(steps):
        positions = np.arange(tokens.shape[1])
        feeds = {io.TOKENS: tokens, io.OFFSETS: offsets, io.LOGIT_POSITIONS: positions,
                 **dict(zip(io.self_inputs(L), onnx_cache)), **dict(zip(io.cross_inputs(L), onnx_cross)),
                 **({io.LOGIT_BIAS: bias} if selects else {})}
        out = dec.run(io.decoder_outputs(L, selects), feeds)
        with torch.no_grad():
            logits, k, v = model.decoder(
                torch.from_numpy(tokens), torch.from_numpy(offsets), torch.from_numpy(rows_idx),
                ref_cache[0::2], ref_cache[1::2], ck, cv, torch.from_numpy(positions))
        ref_cache = [t for pair in zip(k, v) for t in pair]
        logit_rows.append(compare("decoder", io.LOGITS, out[0], logits.numpy(), tol))
        # the written part of each row only: slots beyond offset + n_new are unspecified (graph_io)
        written = offsets + tokens.shape[1]
        cache_rows += [compare("decoder", "out_self_*", _written(o, written), _written(r.numpy(), written), tol)
                       for o, r in zip(out[1 : 1 + 2 * L], ref_cache)]
        onnx_cache = out[1 : 1 + 2 * L]
        offsets = offsets + tokens.shape[1]
        tokens = logits[:, -1].argmax(-1).numpy()[:, None]  # teacher-forced by the reference
    rows = _merge(logit_rows, "decoder", f"{io.LOGITS} x{steps}") + _merge(cache_rows, "decoder", "out_self_*")
    if selects:  # the decoder's own choice on its last step's logits
        rows += _select_rows("decoder", out[0], bias, *out[1 + 2 * L :])
    return rows, out[0]


def _prefilled_cache(model, dims, offsets: np.ndarray, capacity: int, ck: list, cv: list,
                     rng: np.random.Generator) -> list:
    """The reference's self-attention cache (k, v per layer): row r's first offsets[r] slots from random tokens."""
    import torch

    L = dims.n_text_layer
    shape = (len(offsets), dims.n_text_head, capacity, dims.text_head_dim)
    ref_cache = [torch.zeros(shape) for _ in range(2 * L)]
    with torch.no_grad():
        for r in np.flatnonzero(offsets):
            prefix = torch.from_numpy(rng.integers(0, dims.n_vocab, (1, int(offsets[r]))))
            _, k, v = model.decoder(
                prefix, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                [c[r : r + 1] for c in ref_cache[0::2]], [c[r : r + 1] for c in ref_cache[1::2]],
                [c[r : r + 1] for c in ck], [c[r : r + 1] for c in cv], torch.tensor([0]))
            for i in range(L):
                ref_cache[2 * i][r], ref_cache[2 * i + 1][r] = k[i][0], v[i][0]
    return ref_cache


def check_align(bundle: Bundle, model, cross_k: list, cross_v: list, rng: np.random.Generator) -> list[Row]:
    """align.onnx (when the bundle has it) against reference_model.alignment (the PyTorch decoder, its cross-attention
    queries taken by hooks): the alignment heads' scores and the log of the text probabilities within the
    precision's tolerance, on rows of sot sequence + <|notimestamps|> + random text + eot of different lengths
    (padded with eot), each row attending to a chosen audio of the reference cross K/V (rows repeated and out of
    order); positions whose next token is not text must give probability 0 exactly."""
    if bundle.align_path is None:
        return []
    import onnxruntime as ort
    import torch

    from reference_model.alignment import alignment_outputs

    tol, dtype, special = bundle_tolerance(bundle.config), io.PRECISIONS[bundle.precision], bundle.special_tokens
    prefix = [special["sot"], special["no_timestamps"]]
    if bundle.dims.is_multilingual:
        prefix = [special["sot"], special["language_tokens"][0], special["transcribe"], special["no_timestamps"]]
    lengths = [len(prefix) + 1 + n for n in (9, 3, 14)]
    tokens = np.full((len(lengths), max(lengths)), special["eot"], np.int64)
    for r, n in enumerate(lengths):
        tokens[r, : len(prefix)] = prefix
        tokens[r, len(prefix) : n - 1] = rng.integers(0, special["eot"], n - 1 - len(prefix))
    audio_rows = np.array([cross_k[0].shape[0] - 1, 0, cross_k[0].shape[0] - 1], np.int64)
    session = ort.InferenceSession(str(bundle.align_path), providers=["CPUExecutionProvider"])
    cross = [t.numpy().astype(dtype) for pair in zip(cross_k, cross_v) for t in pair]
    feeds = {io.TOKENS: tokens, io.AUDIO_ROWS: audio_rows, **dict(zip(io.cross_inputs(bundle.dims.n_text_layer), cross))}
    qk, probs = session.run(io.align_outputs(), feeds)
    index = torch.from_numpy(audio_rows)
    want_qk, want_probs = alignment_outputs(model, torch.from_numpy(tokens), [k[index] for k in cross_k],
                                            [v[index] for v in cross_v], bundle.alignment_heads, special["eot"])
    text = tokens[:, 1:] < special["eot"]
    return [compare("align", io.ALIGNMENT_QK, qk, want_qk.numpy(), tol),
            compare("align", f"log {io.TEXT_PROBS}", np.log(probs[text]), np.log(want_probs.numpy()[text]), tol),
            compare("align", f"{io.TEXT_PROBS} not text", probs[~text], np.zeros((~text).sum()), Tolerance(0.0, 0.0, 0.0))]


def _suppression(rng: np.random.Generator, n_vocab: int) -> np.ndarray:
    """A logit bias like the filters': -inf for a random 1% of the vocabulary, else 0."""
    return np.where(rng.random(n_vocab) < 0.01, -np.inf, 0.0).astype(np.float32)


def _select_rows(graph: str, logits: np.ndarray, bias: np.ndarray, best: np.ndarray, logprob: np.ndarray) -> list[Row]:
    """A greedy choice against numpy's: the token exactly, its log-probability to fp32 rounding."""
    biased = (logits + bias).reshape(-1, logits.shape[-1])
    want = biased.argmax(-1)
    return [compare(graph, io.BEST_TOKEN, best.ravel(), want, Tolerance(0.0, 0.0, 0.0)),
            compare(graph, io.BEST_LOGPROB, logprob.ravel(), chosen_logprobs(biased, want), TOLERANCES["fp32"])]


def _written(cache: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The first lengths[r] positions of every row of a (R, H, capacity, hd) cache, flattened."""
    return np.concatenate([cache[r, :, : int(n)].ravel() for r, n in enumerate(lengths)])


def check_select(bundle: Bundle, logits: np.ndarray, rng: np.random.Generator) -> list[Row]:
    """greedy_select.onnx on decoder logits (R, P, V) with a random suppression bias: its token must be numpy's
    argmax exactly, its log-probability picking.chosen_logprobs' to fp32 rounding."""
    select = _session(bundle.select_path)
    bias = _suppression(rng, logits.shape[-1])
    best, logprob = select.run([io.BEST_TOKEN, io.BEST_LOGPROB], {io.SELECT_LOGITS: logits, io.LOGIT_BIAS: bias})
    return _select_rows("select", logits, bias, best, logprob)


def check_top(bundle: Bundle, logits: np.ndarray, rng: np.random.Generator) -> list[Row]:
    """top_select.onnx (when the bundle has it) on decoder logits (R, P, V) with a random suppression bias: its
    candidates must be picking.top_candidates' exactly (order and ties too), their log-probabilities to fp32
    rounding."""
    if bundle.top_path is None:
        return []
    top = _session(bundle.top_path)
    bias = _suppression(rng, logits.shape[-1])
    tokens, logprobs = top.run([io.TOP_TOKENS, io.TOP_LOGPROBS], {io.SELECT_LOGITS: logits, io.LOGIT_BIAS: bias})
    want, want_logprobs = top_candidates((logits + bias).reshape(-1, logits.shape[-1]), io.TOP_K)
    return [compare("top", io.TOP_TOKENS, tokens.ravel(), want.ravel(), Tolerance(0.0, 0.0, 0.0)),
            compare("top", io.TOP_LOGPROBS, logprobs.ravel(), want_logprobs.ravel(), TOLERANCES["fp32"])]


def check_limited(bundle: Bundle, logits: np.ndarray, rng: np.random.Generator) -> list[Row]:
    """timestamp_rules.onnx (when the bundle has it) on decoder logits (R, 1, V) with a random suppression bias
    and random timestamp states: its token must be the host rules' (TimestampRules.filter of the state, then the
    argmax) exactly, its log-probability to fp32 rounding, and its next state TimestampRules.next_state's exactly."""
    if bundle.limited_path is None:
        return []

    rules, feeds, biased = _timestamp_case(bundle, logits, rng)
    limited = _session(bundle.limited_path)
    best, logprob, after = limited.run([io.BEST_TOKEN, io.BEST_LOGPROB, io.NEXT_TIMESTAMP_STATE], feeds)
    state = feeds[io.TIMESTAMP_STATE]
    want = biased.argmax(-1)
    exact = Tolerance(0.0, 0.0, 0.0)
    return [compare("limited", io.BEST_TOKEN, best.ravel(), want, exact),
            compare("limited", io.BEST_LOGPROB, logprob.ravel(), chosen_logprobs(biased, want), TOLERANCES["fp32"]),
            compare("limited", io.NEXT_TIMESTAMP_STATE, after.ravel(), rules.next_state(state, want).ravel(), exact)]


def check_top_limited(bundle: Bundle, logits: np.ndarray, rng: np.random.Generator) -> list[Row]:
    """timestamp_top.onnx (when the bundle has it) on decoder logits (R, 1, V) with a random suppression bias and
    random timestamp states: its candidates must be picking.top_candidates' of the host rules' filtered logits
    exactly, their log-probabilities to fp32 rounding."""
    if bundle.top_limited_path is None:
        return []

    _, feeds, biased = _timestamp_case(bundle, logits, rng)
    top = _session(bundle.top_limited_path)
    tokens, logprobs = top.run([io.TOP_TOKENS, io.TOP_LOGPROBS], feeds)
    # compared up to the allowed ones: past them the ties among -inf logits are the graph's own order
    want, want_logprobs = top_candidates(biased, io.TOP_K)
    allowed = np.isfinite(want_logprobs)
    return [compare("top_limited", io.TOP_TOKENS, tokens[:, 0][allowed], want[allowed], Tolerance(0.0, 0.0, 0.0)),
            compare("top_limited", io.TOP_LOGPROBS, logprobs[:, 0][allowed], want_logprobs[allowed], TOLERANCES["fp32"])]


def _timestamp_case(bundle: Bundle, logits: np.ndarray, rng: np.random.Generator):
    """(rules, the feeds of a timestamp graph: the first logit position of logits (R, P, V), a random suppression
    bias and random timestamp states, those logits filtered by the host rules (R, V))."""
    special = bundle.tokenizer().special
    rules = TimestampRules(special.timestamp_begin, special.eot, special.no_timestamps)
    rows, n_vocab, ts_begin = logits.shape[0], logits.shape[-1], special.timestamp_begin
    last = rng.integers(0, 2, rows)
    stamp = np.where(last | (rng.random(rows) < 0.5), ts_begin + rng.integers(0, 200, rows), -1)
    state = np.stack([last, rng.integers(0, 2, rows), stamp], axis=1).astype(np.int64)
    bias = _suppression(rng, n_vocab)
    first = np.ascontiguousarray(logits[:, :1])
    biased = first[:, 0] + bias
    rules.filter(biased, state)
    return rules, {io.SELECT_LOGITS: first, io.LOGIT_BIAS: bias, io.TIMESTAMP_STATE: state}, biased


def require_same_dims(spec: str, dims, bundle: Bundle) -> None:
    """ValueError naming the fields where the checkpoint's dims and the bundle's differ."""
    ours, theirs = dims.to_dict(), bundle.dims.to_dict()
    differ = [f"{k} {ours[k]} vs {theirs.get(k)}" for k in ours if ours[k] != theirs.get(k)]
    if differ:
        raise ValueError(f"checkpoint {spec!r} and bundle {str(bundle.directory)!r} differ: {', '.join(differ)} "
                         "(checkpoint vs bundle); expected the checkpoint the bundle was exported from (--model)")


def check_bundle(bundle_dir: str | Path, audio: list[Path] = (), model_spec: str | None = None,
                 seed: int | None = None, options: CheckOptions = CheckOptions()) -> CheckReport:
    """Compare a bundle with the fp32 PyTorch reference built from the checkpoint it was exported from."""
    from reference_model import load_checkpoint
    from reference_model.model import Whisper

    bundle = Bundle.open(bundle_dir)
    spec = model_spec or bundle.config.get("model_spec") or bundle.config.get("model_source")
    if not isinstance(spec, str) or not spec:
        raise BundleError(f"bundle {str(bundle.directory)!r}: config.model_spec is {spec!r}, expected the name or "
                          "path of the checkpoint it was exported from; pass --model")
    ckpt = load_checkpoint(spec)
    require_same_dims(spec, ckpt.dims, bundle)
    # fp16 weights stay fp16, widened at each use: the same fp32 reference in half the memory (large-v3: 3.1 GB)
    model = Whisper.from_state_dict(ckpt.dims, ckpt.state, keep_fp16=True)
    del ckpt  # the reference holds its own copy of the weights
    seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else seed
    quantize = bundle.config.get("quantize")
    report = CheckReport(seed, bundle.precision, check_graphs(bundle, model, seed, options.batch, options.steps),
                         weights=f"int{quantize['bits']}" if quantize else "float")
    report.tokens = check_tokens(bundle, model, list(audio), options.max_tokens)
    return report
