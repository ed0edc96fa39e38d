"""Layer 7: the click application. Parsing, output formats, exit codes; no logic of its own."""
from .app import main
from . import buildkit, check, gc, inspect, repair, startup  # noqa: F401  (registers the commands)

__all__ = ["main"]
