"""The self-describing bundle: two graphs, tokenizer.json and a manifest listing every file with its sha256.

The runtime needs nothing else: dims, special tokens and precision travel in manifest.json and, identically,
in each ONNX file's metadata (key ``whisper_export.config``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from whisper_export import graph_io
from whisper_export.dims import ModelDims

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "whisper-export-bundle"
BUNDLE_FORMAT_VERSION = 1


class BundleError(ValueError):
    """A bundle that is missing, incomplete, corrupt or from an incompatible exporter."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- verified-hash cache ------------------------------------------------------------------------------
# Hashing a tiny.en bundle (150 MB) costs ~0.13 s, a large one seconds: a tenth of a short transcription.
# A file whose identity and metadata (device, inode, size, mtime_ns, ctime_ns) are those it had when its
# sha256 was last computed has that sha256 still: writing to a file changes its mtime and ctime, and ctime
# cannot be set back by a user (touch -d, cp -p, rsync -t restore mtime only), so the check still catches
# every changed file. WHISPER_EXPORT_HASH_CACHE=0 turns the cache off; WHISPER_EXPORT_CACHE_DIR moves it.
HASH_CACHE_FILE = "verified-sha256.json"
HASH_CACHE_MAX_ENTRIES = 512
# a file changed this recently may change again within the same timestamp tick (file times are coarse,
# a jiffy): like git's "racily clean" entries, it is hashed every time until it has been left alone a while
HASH_CACHE_MIN_AGE_NS = 2_000_000_000


def cache_dir() -> Path:
    """The user cache directory of whisper-export (XDG_CACHE_HOME or ~/.cache, or WHISPER_EXPORT_CACHE_DIR)."""
    explicit = os.environ.get("WHISPER_EXPORT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "whisper-export"


def _hash_cache_enabled() -> bool:
    return os.environ.get("WHISPER_EXPORT_HASH_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def _file_key(path: Path) -> tuple[str, list[int]]:
    """(real path, [dev, inode, size, mtime_ns, ctime_ns]) of the file a path leads to (links followed)."""
    st = os.stat(path)
    return os.path.realpath(path), [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class _HashCache:
    """{real path: {"stat": [...], "sha256": hex}} in one JSON file; unreadable or absent = empty."""

    def __init__(self) -> None:
        self.enabled = _hash_cache_enabled()
        self.path = cache_dir() / HASH_CACHE_FILE
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if self.enabled:
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict):
                    self.entries = {k: v for k, v in data.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                pass

    def sha256(self, path: Path) -> str:
        """The file's sha256: from the cache when its stat is unchanged, else computed (and remembered)."""
        if not self.enabled:
            return sha256_file(path)
        real, stat = _file_key(path)
        entry = self.entries.get(real)
        if entry is not None and entry.get("stat") == stat and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = sha256_file(path)
        settled = time.time_ns() - max(stat[3], stat[4]) > HASH_CACHE_MIN_AGE_NS
        if settled and _file_key(path)[1] == stat:  # not written to while it was read
            self.entries.pop(real, None)
            self.entries[real] = {"stat": stat, "sha256": digest}
            self.dirty = True
        return digest

    def forget(self, path: Path) -> None:
        if self.enabled and self.entries.pop(os.path.realpath(path), None) is not None:
            self.dirty = True

    def save(self) -> None:
        """Write atomically (temp file + rename); a cache that cannot be written is simply not kept."""
        if not (self.enabled and self.dirty):
            return
        entries = list(self.entries.items())[-HASH_CACHE_MAX_ENTRIES:]  # insertion order: oldest first
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(dict(entries), f)
            os.replace(tmp, self.path)
        except OSError:
            pass


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
            hashes = _HashCache()
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
