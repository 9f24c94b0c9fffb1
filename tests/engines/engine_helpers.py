"""Helpers shared by the engine tests (imported as a top-level module: pytest puts this folder on sys.path)."""

from __future__ import annotations

import importlib.util

import pytest

HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not HAVE_RTX, reason="tensorrt_rtx is not installed (pip install tensorrt-rtx)")
TARGET_CC = "8.9"


def run_build_cli(args: list[str]):
    """Invoke engines.build_cli.build through typer, in process; returns click's Result."""
    import typer
    from typer.testing import CliRunner

    from engines.build_cli import build

    app = typer.Typer(add_completion=False)
    app.command("build")(build)
    app.command("noop", hidden=True)(lambda: None)  # two commands: typer keeps "build" as a subcommand
    return CliRunner().invoke(app, ["build", *args], catch_exceptions=False)
