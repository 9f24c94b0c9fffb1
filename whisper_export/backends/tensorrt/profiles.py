"""Optimization profiles of the two engines, their validation, and picking a profile for given shapes.

Everything here is pure Python (no TensorRT): the builder turns :class:`Profile` objects into
IOptimizationProfile, the sidecar stores them as JSON, and the runner selects one per call with
:func:`select_profile`.

Ranges (``EngineLimits`` defaults, tiny.en numbers in brackets):

encoder   in_mel             batch 1 .. max_batch (16), 3000 frames fixed
decoder   rows               1 .. max_rows = max_batch x max_beam (16 x 5 = 80), opt 1
          n_new (tokens)     1 .. max_tokens = n_text_ctx // 2 + 4 (228): the longest prompt the decoding
                             loop builds without a prefix, <|startofprev|> + 223 previous-text tokens +
                             <|startoftranscript|> <|lang|> <|task|> + <|notimestamps|>
          capacity           1 .. n_text_ctx (448), opt max_tokens (228 ~ SOT sequence + sample_len 224)
          n_audio            1 .. max_batch (16)
          n_logits           1 .. max_tokens (228)

The decoder gets two profiles by default: profile 0 "step" pins n_new = n_logits = 1 (every step after the
prompt: the hot path, for which TensorRT may pick GEMV-friendly kernels) and profile 1 "prompt" covers the
whole range. :func:`select_profile` takes the first profile that accepts the shapes, so steps run on
profile 0 and the prompt step on profile 1. ``split_step=False`` builds the single "prompt" profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from whisper_export import graph_io as io
from whisper_export.dims import ModelDims

N_FRAMES_PER_CTX = 2  # the encoder reads 2 x n_audio_ctx mel frames (3000 for 1500)
PROMPT_EXTRA = 4  # <|startofprev|>, and the SOT sequence beyond the n_text_ctx // 2 - 1 prompt tokens

Shape = tuple[int, ...]


class ProfileError(ValueError):
    """Profiles that cannot serve the requested sizes, or shapes that no profile accepts."""


@dataclass(frozen=True)
class ShapeRange:
    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        shape = tuple(shape)
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def verify(self, where: str) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ProfileError(f"{where}: received min {self.min}, opt {self.opt}, max {self.max}, expected equal ranks")
        for axis, (lo, opt, hi) in enumerate(zip(self.min, self.opt, self.max)):
            if lo < 1:
                raise ProfileError(f"{where}: axis {axis}: received min {lo}, expected >= 1")
            if not lo <= opt <= hi:
                raise ProfileError(
                    f"{where}: axis {axis}: received min {lo}, opt {opt}, max {hi}, expected min <= opt <= max"
                )

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, d: Mapping[str, Sequence[int]]) -> "ShapeRange":
        return cls(tuple(int(x) for x in d["min"]), tuple(int(x) for x in d["opt"]), tuple(int(x) for x in d["max"]))


@dataclass(frozen=True)
class Profile:
    name: str
    shapes: Mapping[str, ShapeRange]

    def accepts(self, shapes: Mapping[str, Sequence[int]]) -> str | None:
        """None if every given shape is within range; else why not (the first tensor out of range)."""
        for tensor, shape in shapes.items():
            rng = self.shapes.get(tensor)
            if rng is None:
                return f"{tensor} is not an input of this profile"
            if not rng.contains(shape):
                return f"{tensor} {tuple(shape)} is outside min {rng.min} .. max {rng.max}"
        return None

    def verify(self, graph: str) -> None:
        for tensor, rng in self.shapes.items():
            rng.verify(f"{graph} profile {self.name!r}, {tensor}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shapes": {k: v.to_json() for k, v in self.shapes.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Profile":
        return cls(str(d["name"]), {k: ShapeRange.from_json(v) for k, v in d["shapes"].items()})


@dataclass(frozen=True)
class EngineLimits:
    """The sizes engines must serve. None means the default derived from the model (module docstring)."""

    max_batch: int = 16  # audios per encoder call (and decoder n_audio)
    max_beam: int = 5  # beams (or best_of candidates) per audio
    max_rows: int | None = None  # decoder rows; default max_batch * max_beam
    max_tokens: int | None = None  # new tokens per decoder call; default n_text_ctx // 2 + PROMPT_EXTRA
    max_capacity: int | None = None  # self-attention cache positions; default n_text_ctx
    opt_batch: int = 1
    opt_rows: int = 1
    opt_capacity: int | None = None  # default min(max_tokens, max_capacity)
    split_step: bool = True  # a dedicated n_new = 1 decoder profile (see the module docstring)

    def resolved(self, dims: ModelDims) -> "EngineLimits":
        """Defaults filled in from dims, then verified; raises ProfileError before anything is built."""
        for name in ("max_batch", "max_beam", "opt_batch", "opt_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProfileError(f"{name}: received {value!r}, expected a positive int")
        if self.max_beam > io.TOP_K - 1:
            raise ProfileError(f"max_beam: received {self.max_beam}, expected at most {io.TOP_K - 1} (the "
                               "runtime's largest beam_size / best_of)")
        need_rows = self.max_batch * self.max_beam
        max_rows = need_rows if self.max_rows is None else self.max_rows
        max_capacity = dims.n_text_ctx if self.max_capacity is None else self.max_capacity
        default_tokens = min(dims.n_text_ctx // 2 + PROMPT_EXTRA, max_capacity)
        max_tokens = default_tokens if self.max_tokens is None else self.max_tokens
        opt_capacity = min(max_tokens, max_capacity) if self.opt_capacity is None else self.opt_capacity
        for name, value in (("max_rows", max_rows), ("max_tokens", max_tokens), ("max_capacity", max_capacity),
                            ("opt_capacity", opt_capacity)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProfileError(f"{name}: received {value!r}, expected a positive int")
        if max_rows < need_rows:
            raise ProfileError(
                f"decoder profile: max rows {max_rows} < max_batch {self.max_batch} x max_beam {self.max_beam} = "
                f"{need_rows}; the engine could not decode the requested batch. Raise max_rows (--max-rows) to "
                f">= {need_rows} or lower --max-batch/--max-beam"
            )
        # TensorRT indexes a tensor's elements with int32: the largest the profile makes is the cross K/V of
        # every row, (rows, n_audio_ctx, n_text_state)
        largest = max_rows * dims.n_audio_ctx * dims.n_text_state
        if largest >= 2**31:
            raise ProfileError(
                f"max_rows: received {max_rows} (max_batch x max_beam), expected at most "
                f"{(2**31 - 1) // (dims.n_audio_ctx * dims.n_text_state)} for this model (TensorRT's tensors hold "
                f"fewer than 2^31 elements; the cross K/V of {max_rows} rows would hold {largest})")
        if max_capacity > dims.n_text_ctx:
            raise ProfileError(
                f"max_capacity: received {max_capacity}, expected <= n_text_ctx {dims.n_text_ctx} "
                "(the decoder's positional embedding has n_text_ctx rows)"
            )
        if max_tokens > max_capacity:
            raise ProfileError(f"max_tokens: received {max_tokens}, expected <= max_capacity {max_capacity}")
        for opt_name, opt, max_name, hi in (("opt_batch", self.opt_batch, "max_batch", self.max_batch),
                                            ("opt_rows", self.opt_rows, "max_rows", max_rows),
                                            ("opt_capacity", opt_capacity, "max_capacity", max_capacity)):
            if opt > hi:
                raise ProfileError(f"{opt_name}: received {opt}, expected <= {max_name} {hi} (opt must lie within min..max)")
        return EngineLimits(self.max_batch, self.max_beam, max_rows, max_tokens, max_capacity, self.opt_batch,
                            self.opt_rows, opt_capacity, self.split_step)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _r(lo: Iterable[int], opt: Iterable[int], hi: Iterable[int]) -> ShapeRange:
    return ShapeRange(tuple(lo), tuple(opt), tuple(hi))


def encoder_profiles(dims: ModelDims, limits: EngineLimits) -> list[Profile]:
    lim = limits.resolved(dims)
    frames = N_FRAMES_PER_CTX * dims.n_audio_ctx
    mel = _r((1, dims.n_mels, frames), (lim.opt_batch, dims.n_mels, frames), (lim.max_batch, dims.n_mels, frames))
    profiles = [Profile("encoder", {io.MEL: mel})]
    for p in profiles:
        p.verify("encoder")
    return profiles


def decoder_profiles(dims: ModelDims, limits: EngineLimits) -> list[Profile]:
    lim = limits.resolved(dims)
    assert lim.max_rows is not None and lim.max_tokens is not None
    assert lim.max_capacity is not None and lim.opt_capacity is not None
    h, hd, ta, n_layer = dims.n_text_head, dims.text_head_dim, dims.n_audio_ctx, dims.n_text_layer
    rows, opt_rows = lim.max_rows, lim.opt_rows

    def shapes(max_new: int, opt_new: int, opt_logits: int) -> dict[str, ShapeRange]:
        out = {
            io.TOKENS: _r((1, 1), (opt_rows, opt_new), (rows, max_new)),
            io.OFFSETS: _r((1,), (opt_rows,), (rows,)),
            io.LOGIT_POSITIONS: _r((1,), (opt_logits,), (max_new,)),
        }
        cache = _r((1, h, 1, hd), (opt_rows, h, lim.opt_capacity or 1, hd), (rows, h, lim.max_capacity or 1, hd))
        cross = _r((1, h, ta, hd), (lim.opt_batch, h, ta, hd), (lim.max_batch, h, ta, hd))
        out.update({name: cache for name in io.self_inputs(n_layer)})
        out.update({name: cross for name in io.cross_inputs(n_layer)})
        return out

    # the prompt step of the decoding loop asks for 2 logit positions (after <|startoftranscript|>, and last)
    prompt_opt = min(PROMPT_EXTRA, lim.max_tokens)
    profiles = [Profile("prompt", shapes(lim.max_tokens, prompt_opt, min(2, lim.max_tokens)))]
    if lim.split_step:
        profiles.insert(0, Profile("step", shapes(1, 1, 1)))
    for p in profiles:
        p.verify("decoder")
    return profiles


def check_profiles_cover(profiles: Sequence[Profile], inputs: Mapping[str, Sequence[int]], graph: str) -> None:
    """Every network input has a range in every profile, and the range agrees with its static dims.

    inputs: {name: network shape with -1 for dynamic axes}. Raises ProfileError before the build starts.
    """
    for p in profiles:
        missing = sorted(set(inputs) - set(p.shapes))
        unknown = sorted(set(p.shapes) - set(inputs))
        if missing or unknown:
            raise ProfileError(
                f"{graph} profile {p.name!r}: received ranges for {sorted(p.shapes)}, expected exactly the network "
                f"inputs {sorted(inputs)} (missing {missing}, not inputs {unknown})"
            )
        for name, net_shape in inputs.items():
            rng = p.shapes[name]
            if len(net_shape) != len(rng.min):
                raise ProfileError(
                    f"{graph} profile {p.name!r}, {name}: received rank {len(rng.min)} ranges, expected rank "
                    f"{len(net_shape)} (network shape {tuple(net_shape)})"
                )
            for axis, dim in enumerate(net_shape):
                if dim >= 0 and not rng.min[axis] == rng.opt[axis] == rng.max[axis] == dim:
                    raise ProfileError(
                        f"{graph} profile {p.name!r}, {name}: axis {axis} is fixed at {dim} in the network, "
                        f"received min/opt/max {rng.min[axis]}/{rng.opt[axis]}/{rng.max[axis]}"
                    )


def select_profile(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]], graph: str = "engine") -> int:
    """Index of the first profile whose ranges hold every shape; ProfileError naming why each one refused."""
    reasons = []
    for index, profile in enumerate(profiles):
        why = profile.accepts(shapes)
        if why is None:
            return index
        reasons.append(f"profile {index} {profile.name!r}: {why}")
    raise ProfileError(
        f"{graph}: no optimization profile accepts these shapes ({'; '.join(reasons)}); "
        "rebuild the engine with larger limits (whisper-export build --max-batch/--max-beam/--max-tokens)"
    )
