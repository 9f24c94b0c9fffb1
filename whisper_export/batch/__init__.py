"""`whisper-export batch`: a large archive of audio files transcribed into Parquet, in-process or on a Ray cluster.

    inputs.py     the inputs: a directory (recursive), a text file of paths, or JSONL with a "path" field
    rows.py       one input as a Parquet row (path, text, language, duration, segments, words, error): the
                  decoding of a file and the transcription of decoded files, shared by both ways of running
    store.py      the output directory: part files written atomically, the paths already written (resume), the
                  rows read back one per path
    job.py        what a run is given (BatchJob), the sink that turns rows into parts, progress on stderr, and the
                  in-process run
    ray_job.py    the same run as a Ray Data pipeline: decoding in CPU tasks, one runtime per actor of a pool

Needs pyarrow (the `ray` extra); Ray itself is imported by ray_job.py only, so an in-process run never imports it.
"""

from whisper_export.batch.store import read_output

__all__ = ["read_output"]
