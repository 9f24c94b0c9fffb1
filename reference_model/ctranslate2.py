"""Read CTranslate2 Whisper checkpoints (``model.bin`` version 6, or ``model.bin.part1`` + ``.part2``)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from reference_model.checkpoint import Checkpoint, CheckpointError, read_json, verify_state
from whisper_export.dims import ModelDims

SUPPORTED_VERSION = 6
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bfloat16


class _Reader:
    """Sequential little-endian reader over a byte buffer that reports truncation by offset."""

    def __init__(self, data: memoryview, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise CheckpointError(
                f"{self.source}: truncated model.bin: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {len(self.data)} bytes"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.uint("H", what)  # the length counts a trailing NUL
        return bytes(self.take(n, what)).rstrip(b"\0").decode("utf-8")


def read_model_bin(data: bytes | memoryview, source: str) -> dict[str, np.ndarray]:
    """Parse a model.bin into {name: array}; aliases resolve to their targets."""
    r = _Reader(memoryview(data), source)
    version = r.uint("I", "version")
    if version != SUPPORTED_VERSION:
        raise CheckpointError(
            f"{source}: model.bin version {version}, expected {SUPPORTED_VERSION} "
            "(re-convert with a current ct2-transformers-converter)"
        )
    spec = r.string("spec name")
    if spec != "WhisperSpec":
        raise CheckpointError(f"{source}: model spec {spec!r}, expected 'WhisperSpec'")
    r.uint("I", "revision")
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.uint("I", "variable count")):
        name = r.string("variable name")
        rank = r.uint("B", f"{name} rank")
        shape = tuple(r.uint("I", f"{name} dims") for _ in range(rank))
        code = r.uint("B", f"{name} dtype")
        nbytes = r.uint("I", f"{name} byte count")
        raw = r.take(nbytes, f"variable {name!r}")
        dtype = _DTYPES.get(code)
        if code == 5:
            # bfloat16: widen to float32 by placing the 16 bits in the high half
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype is None:
            raise CheckpointError(f"{source}: variable {name!r} has dtype code {code}, expected 0..5")
        else:
            arr = np.frombuffer(raw, dtype)
        if arr.size != int(np.prod(shape)):
            raise CheckpointError(f"{source}: variable {name!r}: {arr.size} values for shape {shape}")
        variables[name] = arr.reshape(shape)
    for _ in range(r.uint("I", "alias count")):
        alias, target = r.string("alias"), r.string("alias target")
        variables[alias] = variables[target]
    return variables


def dequantize(variables: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Integer weights (the int8, int8_float16, int8_float32, int8_bfloat16 and int16 layouts) as float32.

    CTranslate2 stores ``W`` as ``round(W * scale)`` with ``W_scale`` beside it, one scale per output channel
    (row) or one for the tensor, so ``W = stored / scale``. Tied weights are aliases of one array (the decoder's
    projection is its embedding), so each is dequantized once.
    """
    out = dict(variables)
    done: dict[int, np.ndarray] = {}
    for name, array in variables.items():
        scale = variables.get(f"{name}_scale")
        if scale is None or not np.issubdtype(array.dtype, np.integer):
            continue
        scale = np.asarray(scale, np.float32)
        if scale.size not in (1, array.shape[0]) or not np.all(np.isfinite(scale)) or np.any(scale == 0):
            raise CheckpointError(
                f"{source}: {name}_scale: received shape {scale.shape} (finite, nonzero: "
                f"{bool(np.all(np.isfinite(scale)) and not np.any(scale == 0))}), expected {array.shape[0]} or 1 "
                "finite nonzero values for the integer weight"
            )
        if id(array) not in done:
            per_row = scale.reshape((-1,) + (1,) * (array.ndim - 1)) if scale.size > 1 else scale.reshape(())
            done[id(array)] = array.astype(np.float32) / per_row
        out[name] = done[id(array)]
    for name, array in variables.items():  # aliases of a dequantized weight (no scale of their own)
        if id(array) in done:
            out[name] = done[id(array)]
    return out


def _linear(v: dict, prefix: str) -> tuple[np.ndarray, np.ndarray | None]:
    return v[f"{prefix}/weight"], v.get(f"{prefix}/bias")


def _attention(v: dict, src: str, dst: str, out: dict, cross: bool) -> None:
    """Split CTranslate2's fused projections into query/key/value/out (the key has no bias)."""
    d = v[f"{src}/layer_norm/gamma"].shape[0]
    names = ("query", "key", "value")
    if cross:
        wq, bq = _linear(v, f"{src}/linear_0")
        wkv, bkv = _linear(v, f"{src}/linear_1")
        w, b = np.concatenate([wq, wkv]), np.concatenate([bq, bkv])
        wo, bo = _linear(v, f"{src}/linear_2")
    else:
        w, b = _linear(v, f"{src}/linear_0")
        wo, bo = _linear(v, f"{src}/linear_1")
    if w.shape != (3 * d, d):
        raise CheckpointError(f"{src}: fused q,k,v weight {w.shape}, expected {(3 * d, d)}")
    for i, name in enumerate(names):
        out[f"{dst}.{name}.weight"] = w[i * d : (i + 1) * d]
        if name != "key":
            out[f"{dst}.{name}.bias"] = b[i * d : (i + 1) * d]
    out[f"{dst}.out.weight"], out[f"{dst}.out.bias"] = wo, bo


def _norm(v: dict, src: str, dst: str, out: dict) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]


def _ffn(v: dict, src: str, dst: str, out: dict) -> None:
    _norm(v, f"{src}/layer_norm", f"{dst}.mlp_ln", out)
    for i, j in ((0, 0), (1, 2)):
        out[f"{dst}.mlp.{j}.weight"], out[f"{dst}.mlp.{j}.bias"] = _linear(v, f"{src}/linear_{i}")


def _count_layers(v: dict, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def _scalar(v: dict, name: str, source: str) -> int:
    if name not in v:
        raise CheckpointError(f"{source}: scalar {name!r} is missing")
    return int(np.asarray(v[name]).reshape(-1)[0])


def to_canonical(v: dict[str, np.ndarray], source: str) -> tuple[ModelDims, dict[str, np.ndarray]]:
    try:
        n_enc, n_dec = _count_layers(v, "encoder"), _count_layers(v, "decoder")
        conv1 = v["encoder/conv1/weight"]
        dims = ModelDims(
            n_mels=conv1.shape[1],
            n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
            n_audio_state=conv1.shape[0],
            n_audio_head=_scalar(v, "encoder/num_heads", source),
            n_audio_layer=n_enc,
            n_vocab=v["decoder/embeddings/weight"].shape[0],
            n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
            n_text_state=v["decoder/embeddings/weight"].shape[1],
            n_text_head=_scalar(v, "decoder/num_heads", source),
            n_text_layer=n_dec,
        )
        s: dict[str, np.ndarray] = {}
        for i in (1, 2):
            s[f"encoder.conv{i}.weight"] = v[f"encoder/conv{i}/weight"]
            s[f"encoder.conv{i}.bias"] = v[f"encoder/conv{i}/bias"]
        s["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
        for i in range(n_enc):
            src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
            _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", s)
            _attention(v, f"{src}/self_attention", f"{dst}.attn", s, cross=False)
            _ffn(v, f"{src}/ffn", dst, s)
        _norm(v, "encoder/layer_norm", "encoder.ln_post", s)
        s["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
        s["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
        for i in range(n_dec):
            src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
            _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", s)
            _attention(v, f"{src}/self_attention", f"{dst}.attn", s, cross=False)
            _norm(v, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln", s)
            _attention(v, f"{src}/attention", f"{dst}.cross_attn", s, cross=True)
            _ffn(v, f"{src}/ffn", dst, s)
        _norm(v, "decoder/layer_norm", "decoder.ln", s)
    except KeyError as e:
        raise CheckpointError(f"{source}: CTranslate2 variable {e.args[0]!r} is missing") from e
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{source}: inconsistent model dims: {e}") from e
    verify_state(dims, s, source)
    return dims, s


def ctranslate2_files(directory: Path) -> list[Path] | None:
    """The weight files of a CTranslate2 directory, or None when it is not one."""
    if (directory / "model.bin").is_file():
        return [directory / "model.bin"]
    parts = sorted(directory.glob("model.bin.part*"), key=lambda p: int(p.suffix[5:] or 0))
    return parts or None


def load_ctranslate2(
    weight_files: list[Path], name: str, tokenizer_json: Path | None, config_json: Path | None
) -> Checkpoint:
    """Load a CTranslate2 checkpoint whose weights may be split across files (concatenated in order)."""
    source = str(weight_files[0].parent if len(weight_files) == 1 else weight_files[0])
    data = b"".join(p.read_bytes() for p in weight_files)
    dims, state = to_canonical(dequantize(read_model_bin(data, source), source), source)
    extra = read_json(config_json) if config_json and config_json.is_file() else {}
    return Checkpoint(dims, state, name, "ctranslate2", source, tokenizer_json, extra)
