"""`whisper-export bench`: speed of this runtime against the reference and other Whisper runtimes (issue 6)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def bench(
    out: Annotated[Optional[str], typer.Option("--out", help="JSON results file")] = None,
) -> None:
    """Benchmark (placeholder while the full command is written)."""
    typer.echo("bench: not implemented yet", err=True)
    raise typer.Exit(1)
