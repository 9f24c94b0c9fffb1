"""The typer commands that cli.py registers (transcribe, bench); each imports its heavy modules inside."""
