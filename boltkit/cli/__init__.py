"""Layer 7: the click application. Parsing, output formats, exit codes; no logic of its own."""
from .app import main
from .lazy import LazyCommands

# the commands register themselves as their modules are imported, which happens when one is first looked up
main.commands = LazyCommands(main.commands)

__all__ = ["main"]
