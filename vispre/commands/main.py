"""The ``vispre`` command: one table of subcommands, one error boundary.

    vispre fit --config configs/mae/vit_tiny_fashion_mnist.yaml [--trainer.max_epochs=2 ...]
    vispre eval RUN_DIR --config configs/eval/fashion_mnist.yaml
    vispre export RUN_DIR OUT.safetensors
    vispre shards | grow | bench ...          (each: vispre NAME --help)

Errors: bad input (a config value, a missing file, a checkpoint of another architecture: ``VispreError`` or
``FileNotFoundError``) prints one line ``vispre <command>: error: ...`` and exits 2. Any other exception is
a bug or a resource failure (out of memory, ...) and keeps its traceback. ``--traceback`` (anywhere on the
command line) or ``VISPRE_DEBUG=1`` re-raises bad-input errors with their traceback too.
"""

from __future__ import annotations

import importlib
import os
import sys

from vispre.errors import VispreError

COMMANDS = {
    # name -> module with `main(argv: list[str]) -> int`; imported only when its command runs
    "fit": "vispre.commands.fit",
    "eval": "vispre.commands.eval",
    "export": "vispre.commands.export",
    "shards": "vispre.commands.shards",
    "grow": "vispre.commands.grow",
    "bench": "vispre.commands.bench",
}
USER_ERRORS = (VispreError, FileNotFoundError)
"""What the boundary prints as one line; everything else is not the user's input and keeps its traceback."""
TRACEBACK_FLAG = "--traceback"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vispre`` console script: dispatch ``argv[0]`` to its command module.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).

    Returns:
        The command's exit code; 2 for bad input or an unknown command.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, show_traceback = strip_traceback_flag(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("commands:", ", ".join(COMMANDS))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vispre: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(COMMANDS[command]).main(rest) or 0)
    except USER_ERRORS as err:
        if show_traceback or debug_enabled():
            raise
        print(f"vispre {command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def strip_traceback_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Remove ``--traceback`` (before a bare ``--``) so no parser sees it; returns (argv, whether it was there)."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != TRACEBACK_FLAG] + argv[end:]
    return kept, len(kept) != len(argv)


def debug_enabled() -> bool:
    """``VISPRE_DEBUG`` set to anything but empty or ``0``."""
    return os.environ.get("VISPRE_DEBUG", "") not in ("", "0")


def one_line(err: BaseException) -> str:
    """The error's message with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
