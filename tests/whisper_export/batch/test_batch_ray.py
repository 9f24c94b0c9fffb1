"""The batch run on a real local Ray cluster (2 CPUs, loopback): one row per input, a corrupt input as an error row,
an actor killed mid-run, texts equal to WhisperRuntime.transcribe's with the same options."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile

from batch_helpers import CLIPS, clip_of, make_inputs
from whisper_export.batch import read_output
from whisper_export.batch.job import BatchJob, run_batch
from whisper_export.runtime import WhisperRuntime

REPO = Path(__file__).resolve().parents[3]
# transcribe()'s own defaults (greedy, the fallback temperatures), as the reference is run with
OPTIONS: dict = {}


@pytest.fixture(scope="module")
def reference_texts(tiny_bundle, clips) -> dict[str, str]:
    with WhisperRuntime.load(tiny_bundle) as runtime:
        return {name: runtime.transcribe(clips[name]["path"], **OPTIONS).text for name in CLIPS}


def _job(out: Path, bundle: Path, address: str, **kw) -> BatchJob:
    return BatchJob(out=out, load={"bundle_dir": bundle}, options=OPTIONS, ray=address, actors=1,
                    cpus_per_actor=1, **kw)


@pytest.mark.slow
def test_a_hundred_inputs_and_a_corrupt_one_give_one_row_each(tmp_path, ray_cluster, tiny_bundle, clips,
                                                              reference_texts):
    """The command with --ray ADDRESS (a driver of its own on the session's cluster), a JSONL of 102 clips, a
    corrupt file and a missing one."""
    made = make_inputs(tmp_path / "in", clips, copies=34)  # 102 clips and a corrupt file
    missing = tmp_path / "in" / "never-recorded.wav"
    listing = tmp_path / "inputs.jsonl"
    listing.write_text("".join(json.dumps({"path": str(p), "speaker": i}) + "\n"
                               for i, p in enumerate([*made, missing])))
    paths = [str(p) for p in [*made, missing]]

    # --beam-size 1 --best-of None: transcribe()'s defaults, which the reference ran with
    done = subprocess.run([sys.executable, "-m", "cli", "batch", str(listing), "--out", str(tmp_path / "out"),
                           "--ray", ray_cluster, "--bundle", str(tiny_bundle), "--actors", "1", "--cpus-per-actor",
                           "1", "--files-per-batch", "8", "--rows-per-part", "32", "--beam-size", "1", "--best-of",
                           "None"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert re.search(r"\[batch\] 104/104 rows \(2 errors\), [0-9.]+ h of audio in \d+ s: [0-9.]+ audio h/h",
                     done.stderr), done.stderr

    rows = read_output(tmp_path / "out").to_pylist()
    written = [p for part in (tmp_path / "out").glob("part-*.parquet") for p in pq.read_table(part)["path"].to_pylist()]
    assert sorted(written) == sorted(paths)  # each input once in the files: none lost, none twice
    by_path = {r["path"]: r for r in rows}
    for bad in (made[-1], missing):
        row = by_path[str(bad)]
        assert row["text"] is None and row["segments"] is None and str(bad) in row["error"]
    for path in map(str, made[:-1]):
        row, clip = by_path[path], clip_of(path)
        assert row["error"] is None, row["error"]
        assert row["text"] == reference_texts[clip]
        assert row["language"] == "en"
        assert row["duration"] == pytest.approx(soundfile.info(clips[clip]["path"]).duration, abs=1e-3)
        segments = json.loads(row["segments"])
        assert "".join(s["text"] for s in segments).strip() == row["text"].strip()
        assert 0 <= segments[0]["start"] < segments[-1]["end"] <= row["duration"] + 0.02


def _runtime_actors() -> dict[str, dict]:
    from ray._private import state

    return {actor_id: info for actor_id, info in state.actors().items()
            if "RuntimeActor" in info["ActorClassName"]}


def _kill_first_actor_once_rows_are_written(out: Path, killed: list[str], stop: threading.Event) -> None:
    """When the first part file appears: ray.kill (restart allowed) the pool's live actor."""
    import ray
    from ray._raylet import ActorID

    while not stop.is_set():
        live = [a for a, info in _runtime_actors().items() if info["State"] == "ALIVE"]
        if live and list(out.glob("part-*.parquet")):
            handle = ray._private.worker.global_worker.core_worker.get_actor_handle(ActorID.from_hex(live[0]))
            ray.kill(handle, no_restart=False)
            killed.append(live[0])
            return
        time.sleep(0.05)


def test_an_actor_killed_mid_run_is_restarted_and_every_input_written_once(tmp_path, ray_cluster, tiny_bundle,
                                                                           clips, reference_texts):
    paths = [str(p) for p in make_inputs(tmp_path / "in", clips, copies=5, corrupt=False)]  # 15 inputs
    out = tmp_path / "out"
    killed: list[str] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_actor_once_rows_are_written, args=(out, killed, stop))
    killer.start()
    try:
        run_batch(paths, _job(out, tiny_bundle, ray_cluster, files_per_batch=2, rows_per_part=2))
    finally:
        stop.set()
        killer.join()

    assert len(killed) == 1, "the actor was not killed while the run went on"
    assert _runtime_actors()[killed[0]]["NumRestarts"] >= 1  # Ray restarted it, and the run went on
    rows = read_output(out).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(paths)
    written = [path for part in sorted(out.glob("part-*.parquet")) for path in pq.read_table(part)["path"].to_pylist()]
    assert sorted(written) == sorted(paths)  # exactly once in the files themselves, not only after read_output
    assert all(r["error"] is None and r["text"] == reference_texts[clip_of(r["path"])] for r in rows)
