"""Where the int8 logit error comes from (issue 17): teacher-forced logits of the PyTorch reference with some
groups of matrices quantized, against fp32, on many clips.

    python benchmarks/int8_error.py --model tiny.en --clips 'tests/data/*.wav' --clips 'DIR/*.wav' \
        [--schemes 'all,only logits,...'] [--calibration WAV ...] [--out int8_error.json]

The quantization is simulated in PyTorch (fake quantization: weights and activations rounded to their 8-bit
grids, then multiplied in float), which computes what export/quantize.py's MatMulInteger graphs compute up to the
float rounding of the products. The clip sets are interleaved (one of each, then what is left), and the table
(int8_error.txt beside --out) is rewritten after every clip, so a long run can be read early. For each clip, the
fp32 model's greedy tokens (argmax, no suppression, up to 200) are fed to both models at once, and every position's
logits compared: mean and max |difference|, cosine, KL(fp32 || quantized) of the softmax, top-1 agreement, and the
fp32 top-1 margin at the positions whose top-1 differs.

Groups (Whisper module names): enc.attn (encoder self-attention q/k/v/out), enc.mlp, cross.kv (the decoder's
cross-attention key/value projections, computed once per window in the encoder graph), dec.self (decoder
self-attention q/k/v/out), dec.cross.qo (cross-attention query/out), dec.mlp, emb (the token embedding table as
the Gather reads it), logits (the tied table and the activations of the logits matmul).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

GROUPS = ("enc.attn", "enc.mlp", "cross.kv", "dec.self", "dec.cross.qo", "dec.mlp", "emb", "logits")


def group_of(name: str) -> str:
    """The group of a Linear's module name."""
    if name.startswith("encoder."):
        return "enc.mlp" if ".mlp." in name else "enc.attn"
    if ".cross_attn." in name:
        return "cross.kv" if name.endswith((".key", ".value")) else "dec.cross.qo"
    return "dec.mlp" if ".mlp." in name else "dec.self"


# --- quantizers (torch fake quantization) -------------------------------------------------------------------

def weight_rows(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric per output channel (rows of w (N, K)): export/quantize.quantize_rows."""
    top = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / top
    return torch.clamp(torch.round(w / scale), -top, top) * scale


def weight_blocks(w: torch.Tensor, block: int, bits: int = 8) -> torch.Tensor:
    """Symmetric per block of ``block`` values along K."""
    n, k = w.shape
    pad = -k % block
    padded = F.pad(w, (0, pad)).reshape(n, -1, block)
    top = 2 ** (bits - 1) - 1
    scale = padded.abs().amax(dim=2, keepdim=True).clamp_min(1e-30) / top
    return (torch.clamp(torch.round(padded / scale), -top, top) * scale).reshape(n, -1)[:, :k]


def act_rows(x: torch.Tensor) -> torch.Tensor:
    """Symmetric per row (last axis): the current graphs' QuantizeLinear with max |row| / 127."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def act_rows_asym(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric per row: uint8 with a zero point over [min(row, 0), max(row, 0)] (all 256 levels used)."""
    lo, hi = x.amin(dim=-1, keepdim=True).clamp_max(0), x.amax(dim=-1, keepdim=True).clamp_min(0)
    scale = (hi - lo).clamp_min(1e-30) / 255
    zero = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def act_above_floor(x: torch.Tensor, floor: float = -0.17) -> torch.Tensor:
    """x - floor unsigned per row over [0, max(row - floor)] (export/quantize.py's form after a GELU)."""
    shifted = x - floor
    scale = shifted.amax(dim=-1, keepdim=True).clamp_min(1e-30) / 255
    return torch.clamp(torch.round(shifted / scale), 0, 255) * scale + floor


def act_tensor(x: torch.Tensor) -> torch.Tensor:
    """Symmetric, one scale for the whole tensor (DynamicQuantizeLinear's granularity)."""
    scale = x.abs().amax().clamp_min(1e-30) / 127
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def act_blocks(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Symmetric per block of ``block`` values of a row (MatMulNBits' accuracy_level 4 input quantization)."""
    k = x.shape[-1]
    padded = F.pad(x, (0, -k % block))
    b = padded.reshape(*x.shape[:-1], -1, block)
    scale = b.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127
    return (torch.clamp(torch.round(b / scale), -128, 127) * scale).reshape(padded.shape)[..., :k]


ACTS = {"above_floor": act_above_floor, "blocks32": act_blocks, "rows": act_rows, "rows_asym": act_rows_asym, "tensor": act_tensor, "float": lambda x: x}


@dataclass(frozen=True)
class Scheme:
    """Which groups are quantized and how: weights ``rows`` (per channel) or ``blockN``; activations per ACTS;
    ``act_override`` maps a group to another activation quantizer (e.g. the MLP's second matmul)."""

    groups: tuple[str, ...] = GROUPS
    weights: str = "rows"
    acts: str = "rows"
    act_override: dict = field(default_factory=dict)
    weight_override: dict = field(default_factory=dict)
    smooth: str = ""  # "", "gamma" (data-free: |LN weight| * 4 + |LN bias|) or "calib" (measured maxima)
    alpha: float = 0.5

    def weight(self, group: str, w: torch.Tensor) -> torch.Tensor:
        kind = self.weight_override.get(group, self.weights)
        return weight_rows(w) if kind == "rows" else weight_blocks(w, int(kind.removeprefix("block")))

    def act(self, group: str):
        return ACTS[self.act_override.get(group, self.acts)]


class FakeLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear, weight: torch.Tensor, act):
        super().__init__()
        self.weight, self.bias, self.act = weight, linear.bias, act

    def forward(self, x):
        return F.linear(self.act(x), self.weight, self.bias)


def ln_consumers(model) -> list[tuple[str, list[str]]]:
    """(LayerNorm, the Linear modules reading its output) pairs; decoder.ln feeds the tied logits ("logits")."""
    pairs = []
    for stack in ("encoder", "decoder"):
        for i, block in enumerate(getattr(model, stack).blocks):
            p = f"{stack}.blocks.{i}"
            pairs.append((f"{p}.attn_ln", [f"{p}.attn.{n}" for n in ("query", "key", "value")]))
            if stack == "decoder":
                pairs.append((f"{p}.cross_attn_ln", [f"{p}.cross_attn.query"]))
            pairs.append((f"{p}.mlp_ln", [f"{p}.mlp.0"]))
    pairs.append(("encoder.ln_post", [f"decoder.blocks.{i}.cross_attn.{n}" for i in range(len(model.decoder.blocks))
                                      for n in ("key", "value")]))
    pairs.append(("decoder.ln", ["logits"]))
    return pairs


def smoothed(model, scheme: Scheme, calib: dict | None):
    """A copy of model with each LayerNorm's output channels divided by s and its consumers' input channels
    multiplied by s (the same function; SmoothQuant's migration of activation range into the weights):
    s = act_max^alpha / weight_max^(1 - alpha). Returns (model, s of decoder.ln for the tied table or None)."""
    import copy

    table = model.decoder.token_embedding.weight
    m = copy.deepcopy(model, memo={id(table): table})
    if not scheme.smooth:
        return m, None
    mods = dict(m.named_modules())
    logits_s = None
    with torch.no_grad():
        for ln_name, consumers in ln_consumers(m):
            ln = mods[ln_name]
            if scheme.smooth == "gamma":
                act = ln.weight.abs() * 4 + ln.bias.abs()
            else:
                act = calib[ln_name]
            weights = [table if c == "logits" else mods[c].weight for c in consumers]
            wmax = torch.stack([w.abs().amax(0) for w in weights]).amax(0)
            sv = (act.clamp_min(1e-5) ** scheme.alpha / wmax.clamp_min(1e-5) ** (1 - scheme.alpha))
            ln.weight.div_(sv)
            ln.bias.div_(sv)
            for c in consumers:
                if c == "logits":
                    logits_s = sv.clone()
                else:
                    mods[c].weight.mul_(sv)
    return m, logits_s


def calibration(model, files: list[str]) -> dict:
    """Per-channel max |output| of every LayerNorm over the files (fp32 greedy decode)."""
    from whisper_export.runtime.audio import load_audio, log_mel_batch

    found: dict = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith(("_ln", "ln_post")) or name == "decoder.ln":
            def keep(mod, inp, out, name=name):
                a = out.detach().reshape(-1, out.shape[-1]).abs().amax(0)
                found[name] = torch.maximum(found.get(name, a), a)
            hooks.append(mod.register_forward_hook(keep))
    with torch.inference_mode():
        for path in files:
            mel = torch.from_numpy(log_mel_batch([load_audio(path)], model.dims.n_mels))
            k, v = model.encode(mel)
            greedy(model, k, v, [50257, 50362], 50256, limit=60)
    for h in hooks:
        h.remove()
    return found


def fake_quantized(model, scheme: Scheme, calib: dict | None = None):
    """A copy of model with scheme's groups quantized; the Linear modules' names say their group. The MLP's
    second matmul (mlp.2, after the GELU) is its own subgroup for act_override: ``<group>.out``."""
    q, logits_s = smoothed(model, scheme, calib)
    q.logits_s = logits_s
    for name, module in list(q.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            full = f"{name}.{child_name}" if name else child_name
            group = group_of(full)
            if group not in scheme.groups:
                continue
            sub = f"{group}.out" if full.endswith("mlp.2") else group
            act = scheme.act(sub) if sub in scheme.act_override else scheme.act(group)
            w = scheme.weight(sub if sub in scheme.weight_override else group, child.weight.detach())
            setattr(module, child_name, FakeLinear(child, w, act))
    return q


# --- teacher forcing ------------------------------------------------------------------------------------------

def decoder_logits(model, tokens: torch.Tensor, cross_k, cross_v, gather_table, logits_table, logits_act,
                   last: bool = False):
    """Logits (n, V) at every position of tokens (n,) on one window, with separate tables for the Gather and the
    logits matmul (the tied table quantized for one group and not the other)."""
    dec = model.decoder
    n = tokens.shape[0]
    positions = torch.arange(n)[None]
    x = gather_table[tokens][None] + dec.positional_embedding[:n][None]
    mask = (torch.arange(n) <= positions[:, :, None])[:, None]
    hd = model.dims.n_text_state // model.dims.n_text_head
    for block, ck, cv in zip(dec.blocks, cross_k, cross_v):
        empty = torch.zeros(1, model.dims.n_text_head, n, hd)
        x, _, _ = block(x, empty, empty.clone(), positions, mask, ck, cv)
    x = dec.ln(x)[0, -1:] if last else dec.ln(x)[0]
    return (logits_act(x) @ logits_table.T).float()


def greedy(model, cross_k, cross_v, prompt: list[int], eot: int, limit: int = 200) -> list[int]:
    table = model.decoder.token_embedding.weight
    tokens = list(prompt)
    for _ in range(limit):
        nxt = int(decoder_logits(model, torch.tensor(tokens), cross_k, cross_v, table, table, ACTS["float"],
                                 last=True)[-1].argmax())
        if nxt == eot:
            break
        tokens.append(nxt)
    return tokens


def tables(model, scheme: Scheme):
    """(Gather table, logits table, logits activation quantizer); model: the scheme's fake-quantized copy (its
    logits_s: the smoothing of the tied table's columns, undone on the Gather side)."""
    w = model.decoder.token_embedding.weight.detach()
    s = model.logits_s
    scaled = w if s is None else w * s
    quantized = weight_rows(scaled)
    gather = (quantized if s is None else quantized / s) if "emb" in scheme.groups else w
    logits = quantized if "logits" in scheme.groups else scaled
    act = scheme.act("logits") if "logits" in scheme.groups else ACTS["float"]
    return gather, logits, act


ENCODER_GROUPS = ("enc.attn", "enc.mlp", "cross.kv")


def encoder_key(scheme: Scheme) -> tuple:
    """What of a scheme the encoder graph's outputs depend on."""
    def only(d):
        return tuple(sorted((k, v) for k, v in d.items() if k.split(".out")[0] in ENCODER_GROUPS))
    return (tuple(g for g in scheme.groups if g in ENCODER_GROUPS), scheme.weights, scheme.acts,
            only(scheme.act_override), only(scheme.weight_override))


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """a: fp32 logits (n, V), b: quantized; per-position statistics summed for the caller to pool."""
    diff = (b - a).abs()
    cos = F.cosine_similarity(a, b, dim=-1)
    kl = (F.softmax(a, -1) * (F.log_softmax(a, -1) - F.log_softmax(b, -1))).sum(-1)
    top_a, top_b = a.argmax(-1), b.argmax(-1)
    two = a.topk(2, dim=-1).values
    flips = (top_a != top_b)
    return {"n": a.shape[0], "abs_sum": float(diff.mean(-1).sum()), "max": float(diff.max()),
            "cos_sum": float(cos.sum()), "cos_min": float(cos.min()), "kl_sum": float(kl.sum()),
            "kl_max": float(kl.max()), "agree": int((~flips).sum()),
            "flip_margins": [float(m) for m in (two[:, 0] - two[:, 1])[flips]]}


def pool(rows: list[dict]) -> dict:
    n = sum(r["n"] for r in rows)
    return {"positions": n, "mean_abs": sum(r["abs_sum"] for r in rows) / n, "max_abs": max(r["max"] for r in rows),
            "mean_cos": sum(r["cos_sum"] for r in rows) / n, "min_cos": min(r["cos_min"] for r in rows),
            "mean_kl": sum(r["kl_sum"] for r in rows) / n, "max_kl": max(r["kl_max"] for r in rows),
            "top1": sum(r["agree"] for r in rows) / n,
            "flip_margins": sorted(m for r in rows for m in r["flip_margins"])}


DECODER_LAYERS = ("dec.self", "dec.cross.qo", "dec.mlp", "dec.mlp.out")  # the decoder blocks' Linear modules
BUNDLE_ACTS = {"enc.mlp.out": "rows_asym", "dec.mlp.out": "rows_asym"}  # what export --int8 does after the GELUs


def _float_acts(*groups: str) -> Scheme:
    """The int8 bundle's scheme with float activations into the named groups (weight-only int8 there)."""
    return Scheme(act_override={**BUNDLE_ACTS, **{g: "float" for g in groups}})


SCHEMES = {
    "all": Scheme(),
    **{f"only {g}": Scheme(groups=(g,)) for g in GROUPS},
    "all but logits": Scheme(groups=tuple(g for g in GROUPS if g != "logits")),
    "all but emb+logits": Scheme(groups=tuple(g for g in GROUPS if g not in ("emb", "logits"))),
    "encoder only (enc+cross.kv)": Scheme(groups=("enc.attn", "enc.mlp", "cross.kv")),
    "decoder only": Scheme(groups=("dec.self", "dec.cross.qo", "dec.mlp", "emb", "logits")),
    "weights only (float acts)": Scheme(acts="float"),
    "acts asym": Scheme(acts="rows_asym"),
    "acts per tensor": Scheme(acts="tensor"),
    "mlp.2 acts asym": Scheme(act_override=BUNDLE_ACTS),
    "weights block32": Scheme(weights="block32"),
    "weights block64": Scheme(weights="block64"),
    "weights block128": Scheme(weights="block128"),
    "block32 w+acts (nbits level 4)": Scheme(weights="block32", acts="blocks32"),
    "mlp.2 above GELU floor": Scheme(act_override={"enc.mlp.out": "above_floor", "dec.mlp.out": "above_floor"}),
    "dec float acts": _float_acts(*DECODER_LAYERS),
    "dec+logits float acts": _float_acts(*DECODER_LAYERS, "logits"),
    "dec+logits+cross.kv float acts": _float_acts(*DECODER_LAYERS, "logits", "cross.kv"),
    "smooth gamma": Scheme(smooth="gamma"),
    "smooth calib": Scheme(smooth="calib"),
    "smooth gamma + mlp.2 asym": Scheme(smooth="gamma", act_override=BUNDLE_ACTS),
}


def main() -> None:
    from reference_model import load_checkpoint
    from reference_model.model import Whisper
    from whisper_export.runtime.audio import load_audio, log_mel_batch
    from whisper_export.tokenizer import WhisperTokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--clips", action="append", required=True, help="a glob of WAV files (repeatable)")
    p.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated names of SCHEMES")
    p.add_argument("--out", type=Path, default=Path("int8_error.json"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calibration", nargs="*", default=[], help="WAVs for the 'calib' smoothing's maxima")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = [s for s in args.schemes.split(",") if s]
    unknown = [s for s in names if s not in SCHEMES]
    if unknown:
        p.error(f"--schemes: received {unknown}, expected names from {list(SCHEMES)}")
    sets = [sorted(glob.glob(pattern)) for pattern in args.clips]
    files = [f for group in zip(*sets) for f in group]  # the sets interleaved, then what is left of each
    files += [f for group in sets for f in group[min(map(len, sets)):]]
    ckpt = load_checkpoint(args.model)
    model = Whisper.from_state_dict(ckpt.dims, ckpt.state)
    tok = WhisperTokenizer.builtin(ckpt.dims.n_vocab)
    prompt = [*tok.sot_sequence(None if not tok.is_multilingual else "en"), tok.special.no_timestamps]
    calib = calibration(model, args.calibration) if any(SCHEMES[s].smooth == "calib" for s in names) else None
    models = {s: fake_quantized(model, SCHEMES[s], calib) for s in names}
    rows: dict[str, list[dict]] = {s: [] for s in names}
    started = time.time()
    with torch.inference_mode():
        for i, path in enumerate(files):
            mel = torch.from_numpy(log_mel_batch([load_audio(path)], ckpt.dims.n_mels))
            ck, cv = model.encode(mel)
            tokens = torch.tensor(greedy(model, ck, cv, prompt, tok.special.eot))
            w = model.decoder.token_embedding.weight
            ref = decoder_logits(model, tokens, ck, cv, w, w, ACTS["float"])
            encoded = {}  # schemes that quantize the encoder alike share its output
            for s in names:
                q = models[s]
                key = encoder_key(SCHEMES[s])
                if key not in encoded:
                    encoded[key] = q.encode(mel) if key[0] else (ck, cv)
                qk, qv = encoded[key]
                got = decoder_logits(q, tokens, qk, qv, *tables(q, SCHEMES[s]))
                rows[s].append(compare(ref, got))
            print(f"[{i + 1}/{len(files)}] {Path(path).name} {len(tokens)} tokens, {time.time() - started:.0f} s",
                  file=sys.stderr, flush=True)
            report(rows, files[: i + 1], args)


def report(rows: dict[str, list[dict]], files: list[str], args) -> None:
    """The table so far (rewritten after every clip: a long run can be read before it ends)."""
    result = {s: pool(r) for s, r in rows.items()}
    args.out.write_text(json.dumps({"model": args.model, "clips": files, "schemes": result}, indent=1))
    lines = [f"{len(files)} clips, {args.model}",
             f"{'scheme':32} {'mean|d|':>8} {'max|d|':>7} {'mean cos':>9} {'min cos':>8} {'mean KL':>9} "
             f"{'top-1':>7} flips (fp32 margin)"]
    for s, r in result.items():
        margins = ", ".join(f"{m:.2f}" for m in r["flip_margins"][:6])
        lines.append(f"{s:32} {r['mean_abs']:8.4f} {r['max_abs']:7.3f} {r['mean_cos']:9.6f} {r['min_cos']:8.5f} "
                     f"{r['mean_kl']:9.2e} {r['top1']:7.4f} {len(r['flip_margins'])} ({margins})")
    args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
