"""The self-describing bundle: two graphs, tokenizer.json and a manifest listing every file with its sha256.

The runtime needs nothing else: dims, special tokens and precision travel in manifest.json and, identically,
in each ONNX file's metadata (key ``whisper_export.config``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from whisper_export import graph_io
from whisper_export.dims import ModelDims
from whisper_export.hashing import HashCache, sha256_file

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "whisper-export-bundle"
BUNDLE_FORMAT_VERSION = 1
WORD_TIMESTAMPS_SINCE = "0.2.0"  # the first whisper-export whose bundles have align.onnx


class BundleError(ValueError):
    """A bundle that is missing, incomplete, corrupt or from an incompatible exporter."""


def write_manifest(directory: Path, config: dict) -> dict:
    """Hash every file in directory (recursively, manifest excluded) and write manifest.json."""
    files = {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "config": config,
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


@dataclass(frozen=True)
class Bundle:
    directory: Path
    config: dict = field(repr=False)
    files: dict[str, str] = field(repr=False)

    @property
    def dims(self) -> ModelDims:
        return ModelDims.from_dict(self.config["dims"])

    @property
    def precision(self) -> str:
        return self.config["precision"]

    @property
    def special_tokens(self) -> dict:
        return self.config["special_tokens"]

    @property
    def encoder_path(self) -> Path:
        return self.directory / graph_io.ENCODER_FILE

    @property
    def decoder_path(self) -> Path:
        return self.directory / graph_io.DECODER_FILE

    @property
    def reorder_path(self) -> Path:
        return self.directory / graph_io.REORDER_FILE

    @property
    def select_path(self) -> Path:
        return self.directory / graph_io.SELECT_FILE

    @property
    def top_path(self) -> Path | None:
        """top_select.onnx, or None for a bundle exported before it existed."""
        return self.directory / graph_io.TOP_FILE if graph_io.TOP_FILE in self.files else None

    @property
    def limited_path(self) -> Path | None:
        """timestamp_rules.onnx, or None for a bundle exported before it existed (session 4's
        timestamp_select.onnx, which took limits instead of the state, is not used)."""
        return self.directory / graph_io.LIMITED_FILE if graph_io.LIMITED_FILE in self.files else None

    @property
    def top_limited_path(self) -> Path | None:
        """timestamp_top.onnx, or None for a bundle exported before it existed."""
        return self.directory / graph_io.TOP_LIMITED_FILE if graph_io.TOP_LIMITED_FILE in self.files else None

    @property
    def align_path(self) -> Path | None:
        """align.onnx (word timestamps), or None for a bundle exported before it existed."""
        return self.directory / graph_io.ALIGN_FILE if graph_io.ALIGN_FILE in self.files else None

    def require_align(self) -> Path:
        """align.onnx, or BundleError saying how to get it."""
        if self.align_path is None:
            raise BundleError(
                f"bundle {str(self.directory)!r} has no {graph_io.ALIGN_FILE} (exported by whisper-export "
                f"{self.config.get('exporter_version', '?')}), expected one for word timestamps: re-export the bundle "
                f"with whisper-export >= {WORD_TIMESTAMPS_SINCE}")
        return self.align_path

    @property
    def alignment_heads(self) -> list[list[int]]:
        """[[layer, head], ...] of the decoder cross-attention heads align.onnx returns."""
        return [list(pair) for pair in self.config.get("alignment_heads") or []]

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"

    def tokenizer(self):
        from whisper_export.tokenizer import WhisperTokenizer

        return WhisperTokenizer.from_file(self.tokenizer_path, self.dims.n_vocab)

    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> "Bundle":
        """Read manifest.json; with verify, check that every listed file exists with its sha256."""
        directory = Path(directory)
        if not directory.is_dir():
            raise BundleError(f"bundle {str(directory)!r}: not a directory; expected the output of 'whisper-export export'")
        path = directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise BundleError(f"bundle {str(directory)!r}: {MANIFEST} is missing; expected an exported bundle") from None
        except (OSError, json.JSONDecodeError) as e:
            raise BundleError(f"bundle {str(directory)!r}: {MANIFEST} is unreadable ({e})") from e
        if manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{path}: format_version {manifest.get('format_version')!r}, expected {BUNDLE_FORMAT_VERSION}; "
                "re-export the bundle with this version of whisper-export"
            )
        config, files = manifest["config"], manifest["files"]
        io_version = config.get("graph_io_version")
        if io_version != graph_io.GRAPH_IO_VERSION:
            raise BundleError(
                f"{path}: graph I/O version {io_version!r}, expected {graph_io.GRAPH_IO_VERSION}; re-export"
            )
        for required in (graph_io.ENCODER_FILE, graph_io.DECODER_FILE, graph_io.REORDER_FILE, graph_io.SELECT_FILE,
                         "tokenizer.json"):
            if required not in files:
                raise BundleError(f"{path}: does not list {required!r}; received {sorted(files)}")
        for name in files:
            if not (directory / name).is_file():
                raise BundleError(f"bundle {str(directory)!r}: file {name!r} is missing (listed in {MANIFEST})")
        if verify:
            hashes = HashCache()
            try:
                for name, digest in files.items():
                    actual = hashes.sha256(directory / name)
                    if actual != digest:
                        hashes.forget(directory / name)
                        raise BundleError(
                            f"bundle {str(directory)!r}: {name} has sha256 {actual}, expected {digest} "
                            "(the file changed after export; re-export)"
                        )
            finally:
                hashes.save()
        return cls(directory, config, files)
