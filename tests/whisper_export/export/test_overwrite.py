"""export --overwrite replaces only a bundle; new bundles get ordinary directory permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from whisper_export.bundle import MANIFEST
from whisper_export.export.exporter import ExportError, check_destination


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_fresh_bundle_directory_has_ordinary_permissions(tiny_bundle):
    """Not tempfile.mkdtemp's 0700: the directory is made with 0777 less the umask, as mkdir would."""
    assert stat.S_IMODE(tiny_bundle.stat().st_mode) == 0o777 & ~_umask()
    assert stat.S_IMODE((tiny_bundle / MANIFEST).stat().st_mode) == 0o666 & ~_umask()


@pytest.mark.parametrize("content", [None, "", "{}", '{"format": "other"}', "[1]", "\xff garbage"])
def test_overwrite_refuses_what_is_not_a_bundle(tmp_path, content):
    target = tmp_path / "out"
    target.mkdir()
    if content is not None:
        (target / MANIFEST).write_text(content, encoding="latin-1")
    with pytest.raises(ExportError, match=f"output '{target}' is not a bundle"):
        check_destination(target, overwrite=True)


def test_overwrite_refuses_a_symlink_and_a_file(tmp_path, tiny_bundle):
    link = tmp_path / "link"
    link.symlink_to(tiny_bundle)
    with pytest.raises(ExportError, match="is a symlink"):
        check_destination(link, overwrite=True)
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(ExportError, match="is a file, expected a directory"):
        check_destination(plain, overwrite=True)


def test_overwrite_accepts_a_bundle_of_any_version(tmp_path, tiny_bundle):
    check_destination(tiny_bundle, overwrite=True)
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((tiny_bundle / MANIFEST).read_text())
    manifest["format_version"] = 0
    (old / MANIFEST).write_text(json.dumps(manifest))
    check_destination(old, overwrite=True)  # an old bundle is what one re-exports over
    with pytest.raises(ExportError, match="already exists; pass --overwrite"):
        check_destination(old, overwrite=False)
