"""Engines are built in a staging copy of the bundle beside --out and swapped in when every file is written, so
that a failing or killed build never leaves --out half-built: it holds the old bundle or the new one.

The copy of an existing bundle (--engines-only) is made of hard links where the file system allows (the bundle's
gigabytes of ONNX weights are not copied): every file the build writes is written to a new name and renamed over
the link (engines, sidecars, manifest: whisper_export.atomic) or unlinked first (the builder logs), so the
original files are never written through a link.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from whisper_export.export.siblings import remove_stale_siblings, sibling_directory


def staged_copy(bundle_dir: Path) -> Path:
    """A sibling directory holding bundle_dir's files (hard links, or copies where linking fails)."""
    remove_stale_siblings(bundle_dir)
    staging = sibling_directory(bundle_dir, "build")
    try:
        for path in bundle_dir.iterdir():
            if not path.is_file() or path.is_symlink():
                raise OSError(f"{path}: expected a regular file in the bundle")
            try:
                os.link(path, staging / path.name)
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copy2(path, staging / path.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def staging_target(out: Path) -> Path:
    """A free sibling name for a new bundle to be exported into (export_bundle creates it)."""
    remove_stale_siblings(out)
    staging = sibling_directory(out, "build")
    staging.rmdir()
    return staging
