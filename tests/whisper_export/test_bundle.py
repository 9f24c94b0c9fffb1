"""Bundle.open refuses hostile and broken manifests with one-line BundleErrors, before any listed file is read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_export import graph_io
from whisper_export.bundle import MANIFEST, Bundle, BundleError, write_manifest

ROOT = Path(__file__).resolve().parents[2]


def bundle_copy(src: Path, dst: Path) -> Path:
    """Hard links to the big graphs (inside the copy, unlike symlinks), a fresh copy of the manifest."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name == MANIFEST:
            shutil.copy(f, dst / f.name)
        else:
            (dst / f.name).hardlink_to(f)
    return dst


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def write(bundle: Path, manifest) -> None:
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def outside(tmp_path) -> Path:
    """A secret beside the bundle; its contents or hash must never appear anywhere."""
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    return secret


def _open_in_subprocess(bundle: Path, cache: Path) -> subprocess.CompletedProcess:
    code = "import sys; from whisper_export.bundle import Bundle; Bundle.open(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WHISPER_EXPORT_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("name", ["../secret.txt", "sub/../../secret.txt", "{outside}", "..\\secret.txt",
                                  "C:/secret.txt"])
def test_names_outside_the_bundle_are_refused_before_anything_is_read(tiny_bundle, tmp_path, outside, name):
    bundle = bundle_copy(tiny_bundle, tmp_path / "b")
    manifest = manifest_of(bundle)
    name = name.format(outside=outside)
    manifest["files"][name] = hashlib.sha256(outside.read_bytes()).hexdigest()  # a consistent, hostile manifest
    write(bundle, manifest)
    with pytest.raises(BundleError, match="outside the bundle") as info:
        Bundle.open(bundle)
    assert repr(name) in str(info.value) and "\n" not in str(info.value)


def test_a_symlink_out_of_the_bundle_is_refused_and_never_opened(tiny_bundle, tmp_path):
    """tokenizer.json replaced by a symlink to a FIFO outside: opening or hashing it would hang the process."""
    bundle = bundle_copy(tiny_bundle, tmp_path / "b")
    fifo = tmp_path / "trap"
    os.mkfifo(fifo)
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(fifo)
    cache = tmp_path / "cache"
    result = _open_in_subprocess(bundle, cache)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("whisper_export.bundle.BundleError:") and "'tokenizer.json'" in last
    assert "outside the bundle" in last
    cached = (cache / "verified-sha256.json").read_text() if (cache / "verified-sha256.json").exists() else ""
    assert "trap" not in cached


def test_a_symlinked_directory_leading_out_is_refused(tiny_bundle, tmp_path, outside):
    bundle = bundle_copy(tiny_bundle, tmp_path / "b")
    (bundle / "extra").symlink_to(tmp_path)
    manifest = manifest_of(bundle)
    manifest["files"]["extra/secret.txt"] = hashlib.sha256(outside.read_bytes()).hexdigest()
    write(bundle, manifest)
    with pytest.raises(BundleError, match="'extra/secret.txt', which is outside the bundle"):
        Bundle.open(bundle)


def test_a_symlink_inside_the_bundle_is_followed(tiny_bundle, tmp_path):
    bundle = bundle_copy(tiny_bundle, tmp_path / "b")
    (bundle / "real-tokenizer.json").write_bytes((bundle / "tokenizer.json").read_bytes())
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to("real-tokenizer.json")
    write_manifest(bundle, manifest_of(bundle)["config"])
    assert Bundle.open(bundle).tokenizer().n_vocab == 51864


def test_the_manifest_as_a_symlink_out_is_refused(tiny_bundle, tmp_path):
    bundle = bundle_copy(tiny_bundle, tmp_path / "b")
    elsewhere = tmp_path / "elsewhere.json"
    (bundle / MANIFEST).rename(elsewhere)
    (bundle / MANIFEST).symlink_to(elsewhere)
    with pytest.raises(BundleError, match="manifest.json is a symlink to a file outside the bundle"):
        Bundle.open(bundle)


def _structural_cases(m: dict) -> list[tuple[object, str]]:
    """(damaged manifest, the field its error must name)."""
    no_dims = json.loads(json.dumps(m))
    del no_dims["config"]["dims"]
    str_dims = json.loads(json.dumps(m))
    str_dims["config"]["dims"]["n_mels"] = "80"
    files_list = {**m, "files": list(m["files"])}
    bad_hash = {**m, "files": {**m["files"], "tokenizer.json": 7}}
    newer_io = {**m, "config": {**m["config"], "graph_io_version": graph_io.GRAPH_IO_VERSION + 1}}
    return [
        ([m], "received an array, expected an object"),
        ("manifest", "received a string, expected an object"),
        ({k: v for k, v in m.items() if k != "files"}, "files is null, expected an object"),
        (files_list, "files is an array, expected an object"),
        ({k: v for k, v in m.items() if k != "config"}, "config is null, expected an object"),
        (no_dims, "config.dims is null, expected an object"),
        (str_dims, "config.dims.n_mels is '80', expected an int"),
        ({**m, "format_version": "1"}, "format_version '1', expected 1"),
        ({**m, "format_version": 99}, "format_version 99 is newer than this whisper-export reads (1); upgrade"),
        (newer_io, f"graph I/O version {graph_io.GRAPH_IO_VERSION + 1} is newer than this whisper-export reads"),
        (bad_hash, "files['tokenizer.json'] is 7, expected a sha256"),
        ({**m, "config": {**m["config"], "precision": ["fp32"]}}, "config.precision ['fp32'], expected one of"),
    ]


def test_structurally_wrong_manifests_name_the_field(tiny_bundle, tmp_path):
    manifest = manifest_of(tiny_bundle)
    for i, (damaged, message) in enumerate(_structural_cases(manifest)):
        bundle = tmp_path / f"b{i}"
        bundle.mkdir()
        write(bundle, damaged)
        with pytest.raises(BundleError) as info:
            Bundle.open(bundle)
        assert message in str(info.value), (message, str(info.value))
        assert "\n" not in str(info.value)


def test_newer_graph_io_says_upgrade_not_reexport(tiny_bundle, tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    m = manifest_of(tiny_bundle)
    m["config"]["graph_io_version"] = graph_io.GRAPH_IO_VERSION + 1
    write(bundle, m)
    with pytest.raises(BundleError, match="pip install -U whisper-export") as info:
        Bundle.open(bundle)
    assert "re-export" not in str(info.value)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{\x00}\x00", "not UTF-8 (byte 0xff at offset 0)"),
    (b'{"format": ', "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b" " * (1 << 20) + b"{}", "expected a small JSON manifest"),
])
def test_unreadable_manifests(tmp_path, content, message):
    (tmp_path / MANIFEST).write_bytes(content)
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Bundle.open(tmp_path)


@pytest.mark.parametrize("text", ['{"x":', "[]", '{"model": {}}'])
def test_a_malformed_tokenizer_with_a_consistent_manifest_is_a_bundle_error(tiny_bundle, tmp_path, text):
    """tokenizer.json replaced and its sha256 updated to match: opening passes, loading the tokenizer is one
    BundleError naming the file (not the tokenizers library's own exception)."""
    bundle = bundle_copy(tiny_bundle, tmp_path / "b")
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").write_text(text)
    manifest = manifest_of(bundle)
    manifest["files"]["tokenizer.json"] = hashlib.sha256(text.encode()).hexdigest()
    write(bundle, manifest)
    opened = Bundle.open(bundle)
    with pytest.raises(BundleError, match="tokenizer.json': received a tokenizer that cannot be used") as e:
        opened.tokenizer()
    assert "\n" not in str(e.value) and "re-export" in str(e.value)
