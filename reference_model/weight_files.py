"""Weights read in their stored precision and memory-mapped: safetensors files and torch checkpoints.

A large-v3 checkpoint holds 1.55 B parameters (3.1 GB in fp16). Reading it with ``safetensors.numpy.load_file`` or
``torch.load`` + ``.float()`` puts one or two full copies in memory; here every array is a read-only view of the
file's pages (``np.memmap``, ``torch.load(mmap=True)``), so the loaded state costs page cache the kernel can drop,
and fp16 stays fp16 until a consumer asks for another type. bfloat16, which numpy lacks, is widened to float32
(exactly: a bfloat16 is the high half of a float32).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from reference_model.checkpoint import CheckpointError

# safetensors dtype names -> numpy; BF16 is widened by _bfloat16_as_float32
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_MAX_HEADER_BYTES = 100_000_000  # the format's own limit


def _bfloat16_as_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """{name: array} of one .safetensors file, each array a read-only view of the mapped file (BF16 widened)."""
    try:
        with open(path, "rb") as f:
            (n_header,) = struct.unpack("<Q", f.read(8))
            if n_header > _MAX_HEADER_BYTES:
                raise ValueError(f"header of {n_header} bytes, expected at most {_MAX_HEADER_BYTES}")
            header = json.loads(f.read(n_header))
        n_data = path.stat().st_size - 8 - n_header
        # np.memmap refuses an empty mapping: a file of empty tensors only has no data section
        data = np.memmap(path, np.uint8, mode="r", offset=8 + n_header) if n_data > 0 else np.zeros(0, np.uint8)
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path}: cannot read safetensors ({e})") from e
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (start, end) = info.get("dtype"), tuple(info.get("shape", ())), info.get("data_offsets", (0, -1))
        if dtype != "BF16" and dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, expected one of "
                                  f"{', '.join(sorted([*_SAFETENSORS_DTYPES, 'BF16']))}")
        itemsize = 2 if dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        if not 0 <= start <= end <= len(data) or end - start != itemsize * int(np.prod(shape)):
            raise CheckpointError(f"{path}: tensor {name!r}: bytes {start}..{end} of {len(data)} for shape {shape} "
                                  f"{dtype}, expected {itemsize * int(np.prod(shape))} bytes inside the file")
        raw = data[start:end]
        array = _bfloat16_as_float32(raw) if dtype == "BF16" else raw.view(_SAFETENSORS_DTYPES[dtype])
        arrays[name] = array.reshape(shape)
    return arrays


def read_torch_file(path: Path) -> object:
    """torch.load of a checkpoint, memory-mapped when the file is in the zip format (every torch >= 1.6 file)."""
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "zip" not in str(e).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({_torch_reason(e)}), expected an "
                              "OpenAI .pt or another PyTorch state dict of tensors") from e


def _torch_reason(error: Exception) -> str:
    """What torch.load says went wrong, without its advice to load with weights_only=False (which would run the
    file's code): for the weights-only unpickler, the unpickler's own line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        detail = [line for line in lines[1:] if not line.startswith(("Please file an issue", "Check the documentation"))]
        return f"weights-only unpickling failed: {detail[0]}" if detail else "weights-only unpickling failed"
    return " ".join(lines) or type(error).__name__


def tensor_as_numpy(tensor) -> np.ndarray:
    """A tensor's values as numpy without a copy where numpy has its dtype (bfloat16 is widened to float32)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.float().numpy()
    return tensor.numpy()


def sharded_files(index_json: Path) -> list[Path]:
    """The shard files a Hugging Face ``*.index.json`` names (its weight_map's values), in first-use order."""
    try:
        weight_map = json.loads(index_json.read_text())["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index_json}: cannot read the shard index ({e!r}), expected a weight_map") from e
    missing = [n for n in names if not (index_json.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{index_json}: shard files {missing} are missing")
    return [index_json.parent / n for n in names]
