"""The batch run as a Ray Data pipeline:

    from_items(paths) -> map(decode_input) in CPU tasks -> map_batches(RuntimeActor) over an actor pool -> driver

Each actor of the pool holds one WhisperRuntime (one GPU each with device cuda, else cpus_per_actor CPUs and as
many threads). The rows stream back to the driver, whose RowSink writes them as atomic part files (job.py): one
writer, so a path is written once even when a batch is retried, and a killed run leaves only complete parts.
An actor that dies (a crash, a lost node, ray.kill) is restarted by Ray and the batches it held are run again: Ray
Data gives its pool actors max_restarts=-1 and max_task_retries=-1 (the kill test shows it); a failed decoding task
is retried as Ray Data retries every task.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from whisper_export.batch.job import BatchJob, RowSink
from whisper_export.batch.rows import decode_input, transcribe_rows
from whisper_export.batch.store import schema

# CPUs a decoding task reserves: reading and resampling is light next to a runtime, and a whole CPU per task
# would keep them waiting behind the actors on a small node
DECODE_CPUS = 0.5


class RuntimeActor:
    """One runtime; called with a batch of decoded inputs (columns path, audio, error), returns their rows."""

    def __init__(self, load: dict[str, Any], options: dict[str, Any], words: bool):
        from whisper_export.runtime.api import WhisperRuntime

        load = dict(load)
        self.runtime = WhisperRuntime.load(load.pop("bundle_dir", None), **load)
        self.options, self.words = options, words
        self.schema = schema(words)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        # a column with no error in a block comes as nulls Ray may hand over as NaN: only a string is an error
        decoded = [{"path": str(p), "audio": a if isinstance(a, bytes) else b"",
                    "error": e if isinstance(e, str) else None}
                   for p, a, e in zip(batch["path"], batch["audio"], batch["error"])]
        return pa.Table.from_pylist(transcribe_rows(self.runtime, decoded, self.options, self.words),
                                    schema=self.schema)


def _decode(row: dict[str, Any], max_duration: float | None) -> dict[str, Any]:
    return decode_input(row["path"], max_duration)


def actor_resources(job: BatchJob, cluster: dict[str, float]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(actors, map_batches resource keywords, WhisperRuntime.load keywords) for this cluster; ValueError when
    the cluster has none of what the job needs."""
    load = dict(job.load)
    cpus = int(cluster.get("CPU", 0))
    if load.get("device") == "cuda":
        gpus = int(cluster.get("GPU", 0))
        if gpus < 1:
            raise ValueError(f"--device cuda: received a Ray cluster with {cluster.get('GPU', 0):g} GPUs, expected "
                             "at least one (or --device cpu)")
        return job.actors or gpus, {"num_gpus": 1, "num_cpus": 1}, load
    if cpus < 1:
        raise ValueError(f"--ray: received a cluster with {cluster.get('CPU', 0):g} CPUs, expected at least one")
    per_actor = min(job.cpus_per_actor, cpus)
    load["threads"] = load.get("threads") or per_actor
    return job.actors or max(1, (cpus - 1) // per_actor), {"num_cpus": per_actor}, load


def run_on_ray(todo: list[str], job: BatchJob, sink: RowSink) -> None:
    """todo through the pipeline into sink; connects to job.ray (or uses the Ray this process already joined)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=None if job.ray == "local" else job.ray, logging_level="warning")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours are the progress lines
        actors, resources, load = actor_resources(job, ray.cluster_resources())
        dataset = ray.data.from_items([{"path": p} for p in todo],
                                      override_num_blocks=max(1, len(todo) // job.files_per_batch))
        dataset = dataset.map(_decode, fn_kwargs={"max_duration": job.max_duration}, num_cpus=DECODE_CPUS)
        dataset = dataset.map_batches(
            RuntimeActor, fn_constructor_kwargs={"load": load, "options": job.options, "words": job.words},
            batch_size=job.files_per_batch, batch_format="numpy", zero_copy_batch=True, compute=ray.data.ActorPoolStrategy(size=actors),
            **resources)
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            sink.add(table.to_pylist())
    finally:
        if started_here:
            ray.shutdown()
