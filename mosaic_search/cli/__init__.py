"""The command line: the only code that imports typer and rich (commands, views, terminal plumbing, plots)."""

from .commands import app, main

__all__ = ["app", "main"]
