"""Seeded fuzzing of what users hand the CLI: damaged manifest.json (check, transcribe --bundle) and hostile audio
headers (transcribe). Every case: exit code 1 or 2, exactly one 'error:' line on stderr, no traceback, nothing
written outside the output directory, no file outside the bundle hashed."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from whisper_export.bundle import MANIFEST

runner = CliRunner()
N_MANIFESTS = 30
N_AUDIO = 12
SHA256 = re.compile(r"\b[0-9a-f]{64}\b")


def snapshot(root: Path, skip: set[Path]) -> set[Path]:
    return {p for p in root.rglob("*") if not any(p == s or s in p.parents for s in skip)}


def assert_clean_failure(result, label: str) -> None:
    assert result.exit_code in (1, 2), (label, result.exit_code, result.stderr, repr(result.exception))
    assert isinstance(result.exception, SystemExit), (label, repr(result.exception))
    assert "Traceback" not in result.stderr, label
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, (label, result.stderr)
    others = [line for line in result.stderr.splitlines() if line and not line.startswith(("error:", "["))]
    assert not others, (label, result.stderr)  # progress lines start with "[", nothing else is printed


# -- manifest.json ---------------------------------------------------------------------------------------


def _paths(node, prefix=()):
    """Every (key path) in a JSON tree."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    if value is _DELETE:
        del tree[path[-1]]
    else:
        tree[path[-1]] = value


_DELETE = object()
_VALUES = [None, 0, -1, 2**70, 1.5, float("nan"), True, "", "x", [], {}, [1, "a"], {"a": {"b": []}}, "ü" * 3,
           [[[[[]]]]]]


def damaged_manifest(rng: np.random.Generator, manifest: dict, canary: Path, kind: int) -> bytes:
    m = copy.deepcopy(manifest)
    paths = [p for p in _paths(m) if p]
    if kind == 0:  # delete a key
        _set(m, paths[rng.integers(len(paths))], _DELETE)
    elif kind == 1:  # a value of another type
        _set(m, paths[rng.integers(len(paths))], _VALUES[rng.integers(len(_VALUES))])
    elif kind == 2:  # a listed name that leads out of the bundle
        hostile = [f"../{canary.name}", str(canary), f"..\\{canary.name}", f"a/../../{canary.name}",
                   f"./../{canary.name}", "/etc/passwd", "C:\\Windows\\win.ini"]
        m["files"][hostile[rng.integers(len(hostile))]] = "0" * 64
    text = json.dumps(m).encode()
    if kind == 3:  # byte damage: truncation, a flipped byte, invalid UTF-8
        cut = int(rng.integers(0, len(text)))
        text = [text[:cut], text[:cut] + bytes([rng.integers(128, 256)]) + text[cut + 1:],
                b"\xef\xbb\xbf" + text][int(rng.integers(3))]
    elif kind == 4:  # a different top-level shape
        text = [b"[]", b"null", b"42", b'"manifest"', json.dumps([m]).encode(), b"{" * 5000][int(rng.integers(6))]
    return text


@pytest.fixture(scope="module")
def good_manifest(tiny_bundle) -> dict:
    return json.loads((tiny_bundle / MANIFEST).read_text())


def test_damaged_manifests(good_manifest, tmp_path, clips, monkeypatch):
    rng = np.random.default_rng(13)
    canary = tmp_path / "canary.txt"
    canary.write_text("outside the bundle\n")
    cache = tmp_path / "cache"
    monkeypatch.setenv("WHISPER_EXPORT_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    for i in range(N_MANIFESTS):
        bundle = tmp_path / f"bundle{i}"
        bundle.mkdir()
        (bundle / MANIFEST).write_bytes(damaged_manifest(rng, good_manifest, canary, kind=i % 5))
        before = snapshot(tmp_path, {cache, out})
        for args in (["check", "--bundle", bundle],
                     ["transcribe", clips["en_fox.wav"]["path"], "--bundle", bundle, "-o", out]):
            result = runner.invoke(cli.app, [str(a) for a in args])
            assert_clean_failure(result, f"case {i}: {args[0]} {(bundle / MANIFEST).read_bytes()[:200]!r}")
            assert not SHA256.search(result.stdout + result.stderr)
        assert snapshot(tmp_path, {cache, out}) == before
        assert not out.exists() or not any(out.iterdir())
    hashed = (cache / "verified-sha256.json").read_text() if (cache / "verified-sha256.json").exists() else ""
    assert "canary" not in hashed and "passwd" not in hashed


# -- audio headers ---------------------------------------------------------------------------------------


def hostile_wav(rng: np.random.Generator, wav_bytes, kind: int) -> bytes:
    """One property surely wrong (which one: kind), the others random."""
    rate = int(rng.choice([8000, 16000, 22050, 44100, 48000]))
    channels = int(rng.integers(1, 3))
    data = rng.integers(0, 256, int(rng.integers(0, 20000)), dtype=np.uint8).tobytes()
    data = data[: len(data) - len(data) % (2 * channels)]
    if kind == 0:
        rate = int(rng.choice([0, 1, 999, 768_001, 2**31 - 1, 2**32 - 1]))
    elif kind == 1:
        channels = int(rng.choice([0, 1025, 5000, 65535]))
    elif kind == 2:  # the header cut short
        return wav_bytes(rate=rate, channels=channels, data=data)[: int(rng.integers(0, 44))]
    elif kind == 3:
        return rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
    elif kind == 4:  # no samples, whatever the header claims
        return wav_bytes(rate=rate, channels=channels, data=b"", claimed=int(rng.integers(0, 2**31)))
    else:  # a format tag nobody knows
        return wav_bytes(rate=rate, channels=channels, data=data, tag=int(rng.integers(0x3000, 0xFFFF)))
    return wav_bytes(rate=rate, channels=channels, data=data, claimed=int(rng.integers(0, 2**32)))


def test_hostile_audio_headers(tiny_bundle, tmp_path, wav_bytes, monkeypatch, no_ffmpeg):
    rng = np.random.default_rng(14)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    for i in range(N_AUDIO):
        path = tmp_path / f"fuzz{i}.wav"
        path.write_bytes(hostile_wav(rng, wav_bytes, kind=i % 6))
        before = snapshot(tmp_path, {out})
        result = runner.invoke(cli.app, ["transcribe", str(path), "--bundle", str(tiny_bundle), "-o", str(out)])
        assert_clean_failure(result, f"case {i}: {path.read_bytes()[:48]!r}")
        assert str(path) in result.stderr
        assert snapshot(tmp_path, {out}) == before
