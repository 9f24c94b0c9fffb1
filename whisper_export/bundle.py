"""The self-describing bundle: two graphs, tokenizer.json and a manifest listing every file with its sha256.

The runtime needs nothing else: dims, special tokens and precision travel in manifest.json and, identically,
in each ONNX file's metadata (key ``whisper_export.config``).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from whisper_export import graph_io
from whisper_export.atomic import write_text_atomic
from whisper_export.dims import ModelDims
from whisper_export.hashing import HashCache, sha256_file

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "whisper-export-bundle"
BUNDLE_FORMAT_VERSION = 1
WORD_TIMESTAMPS_SINCE = "0.2.0"  # the first whisper-export whose bundles have align.onnx
# a real manifest is a few KB; a larger one is not ours and is not read into memory
MANIFEST_MAX_BYTES = 1 << 20
REQUIRED_FILES = (graph_io.ENCODER_FILE, graph_io.DECODER_FILE, graph_io.REORDER_FILE, graph_io.SELECT_FILE,
                  "tokenizer.json")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UPGRADE = "upgrade whisper-export (pip install -U whisper-export) to read it"


class BundleError(ValueError):
    """A bundle that is missing, incomplete, corrupt or from an incompatible exporter."""


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def confined_path(directory: Path, name: object) -> Path:
    """directory/name, resolved, after checking that the name stays inside the bundle: a relative POSIX path
    without '..', a backslash or a drive, that does not lead out through a symlink."""
    where = f"bundle {str(directory)!r}: {MANIFEST} lists {name!r}"
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BundleError(f"{where}, expected a file name relative to the bundle")
    parts = PurePosixPath(name).parts
    if "\\" in name or name.startswith("/") or ".." in parts or re.match(r"[A-Za-z]:", name):
        raise BundleError(f"{where}, which is outside the bundle; expected a relative path inside it")
    root = os.path.realpath(directory)
    real = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, real]) != root:
        raise BundleError(f"{where}, which is outside the bundle (a symlink leads out of it); expected a file inside it")
    return Path(real)


def read_manifest(directory: Path) -> dict:
    """manifest.json, checked field by field: a one-line BundleError names the first wrong field."""
    path = directory / MANIFEST
    if not os.path.lexists(path):
        raise BundleError(f"bundle {str(directory)!r}: {MANIFEST} is missing; expected an exported bundle")
    try:
        real = confined_path(directory, MANIFEST)
    except BundleError:
        raise BundleError(f"bundle {str(directory)!r}: {MANIFEST} is a symlink to a file outside the bundle; "
                          "expected the bundle's own manifest") from None
    try:
        with open(real, "rb") as f:
            data = f.read(MANIFEST_MAX_BYTES + 1)
    except OSError as e:
        raise BundleError(f"bundle {str(directory)!r}: {MANIFEST} is unreadable ({e.strerror})") from None
    if len(data) > MANIFEST_MAX_BYTES:
        raise BundleError(f"{path}: received more than {MANIFEST_MAX_BYTES} bytes, expected a small JSON manifest")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{path}: not UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); expected the "
                          "JSON written by 'whisper-export export'") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: not valid JSON ({str(e) or 'nested too deeply'})") from None
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: Path, manifest: object) -> None:
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: received {_json_type(manifest)}, expected an object with "
                          "'format', 'format_version', 'config' and 'files'")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    version = manifest.get("format_version")
    if not _is_int(version):
        raise BundleError(f"{path}: format_version {version!r}, expected {BUNDLE_FORMAT_VERSION}")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {version} is newer than this whisper-export reads "
                          f"({BUNDLE_FORMAT_VERSION}); {_UPGRADE}")
    if version < BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {version}, expected {BUNDLE_FORMAT_VERSION}; "
                          "re-export the bundle with this version of whisper-export")
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise BundleError(f"{path}: config is {_json_type(config)}, expected an object")
    _check_config(path, config)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: files is {_json_type(files)}, expected an object {{file name: sha256}}")
    for name, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"{path}: files[{name!r}] is {digest!r}, expected a sha256 (64 lowercase hex digits)")
    for required in REQUIRED_FILES:
        if required not in files:
            raise BundleError(f"{path}: files does not list {required!r}; received {sorted(files)[:10]}")


def _check_config(path: Path, config: dict) -> None:
    io_version = config.get("graph_io_version")
    if not _is_int(io_version):
        raise BundleError(f"{path}: config.graph_io_version {io_version!r}, expected {graph_io.GRAPH_IO_VERSION}")
    if io_version > graph_io.GRAPH_IO_VERSION:
        raise BundleError(f"{path}: graph I/O version {io_version} is newer than this whisper-export reads "
                          f"({graph_io.GRAPH_IO_VERSION}); {_UPGRADE}")
    if io_version < graph_io.GRAPH_IO_VERSION:
        raise BundleError(f"{path}: graph I/O version {io_version}, expected {graph_io.GRAPH_IO_VERSION}; "
                          "re-export the bundle with this version of whisper-export")
    dims = config.get("dims")
    if not isinstance(dims, dict):
        raise BundleError(f"{path}: config.dims is {_json_type(dims)}, expected an object of model sizes")
    bad = [k for k, v in dims.items() if not _is_int(v)]
    if bad:
        raise BundleError(f"{path}: config.dims.{bad[0]} is {dims[bad[0]]!r}, expected an int")
    try:
        ModelDims.from_dict(dims)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: config.dims: {e}") from None
    if not isinstance(config.get("precision"), str) or config["precision"] not in graph_io.PRECISIONS:
        raise BundleError(f"{path}: config.precision {config.get('precision')!r}, "
                          f"expected one of {sorted(graph_io.PRECISIONS)}")
    if not isinstance(config.get("special_tokens", {}), dict):
        raise BundleError(f"{path}: config.special_tokens is {_json_type(config['special_tokens'])}, expected an object")


def is_bundle_directory(directory: Path) -> bool:
    """Whether directory holds a manifest.json of this format (any version): what export --overwrite may replace."""
    try:
        with open(Path(directory) / MANIFEST, "rb") as f:
            manifest = json.loads(f.read(MANIFEST_MAX_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT


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
    write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=2))
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
        """timestamp_rules.onnx, or None for a bundle exported before it existed (a timestamp_select.onnx, which
        took limits instead of the state, is never used)."""
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

        try:
            return WhisperTokenizer.from_file(self.tokenizer_path, self.dims.n_vocab)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception for malformed JSON
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BundleError(f"{str(self.tokenizer_path)!r}: received a tokenizer that cannot be used ({reason}), "
                              f"expected a tokenizers JSON file with Whisper's {self.dims.n_vocab}-token vocabulary "
                              "(re-export the bundle)") from None

    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> "Bundle":
        """Read and check manifest.json; with verify, check that every listed file has its sha256.

        Every listed name is checked to lie inside the bundle (no '..', absolute path, backslash, or symlink
        leading out) before any listed file is opened or hashed.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise BundleError(f"bundle {str(directory)!r}: not a directory; expected the output of 'whisper-export export'")
        manifest = read_manifest(directory)
        config, files = manifest["config"], manifest["files"]
        resolved = {name: confined_path(directory, name) for name in files}
        for name, path in resolved.items():
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except FileNotFoundError:
                raise BundleError(f"bundle {str(directory)!r}: file {name!r} is missing (listed in {MANIFEST})") from None
            except OSError as e:
                raise BundleError(f"bundle {str(directory)!r}: file {name!r} cannot be read ({e.strerror})") from None
            if not regular:
                raise BundleError(f"bundle {str(directory)!r}: {name!r} is not a regular file (listed in {MANIFEST})")
        if verify:
            _verify_hashes(directory, files, resolved)
        return cls(directory, config, files)


def _verify_hashes(directory: Path, files: dict[str, str], resolved: dict[str, Path]) -> None:
    hashes = HashCache()
    try:
        for name, digest in files.items():
            try:
                actual = hashes.sha256(resolved[name])
            except OSError as e:
                raise BundleError(f"bundle {str(directory)!r}: file {name!r} cannot be read ({e.strerror})") from None
            if actual != digest:
                hashes.forget(resolved[name])
                raise BundleError(
                    f"bundle {str(directory)!r}: {name} has sha256 {actual}, expected {digest} "
                    "(the file changed after export; re-export)"
                )
    finally:
        hashes.save()
