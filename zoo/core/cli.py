"""``python -m zoo COMMAND ...``: one table of commands; each imports only what it needs.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI (``zoo.core.lightning_cli``); the
zoo's own commands are plain argparse programs. ``python -m zoo`` or ``python -m zoo --help`` lists
them all; ``python -m zoo COMMAND --help`` shows one.
"""

from __future__ import annotations

import importlib
import sys

from zoo.core.errors import ZooError

LIGHTNING = "zoo.core.lightning_cli"

#: name -> (module whose ``main(args)`` runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": (LIGHTNING, "train a model: --config configs/<paper>/<experiment>.yaml [--ckpt_path last]"),
    "validate": (LIGHTNING, "evaluate on the validation split (--ckpt_path FILE|last|best)"),
    "test": (LIGHTNING, "evaluate on the test split (--ckpt_path FILE|last|best)"),
    "predict": (LIGHTNING, "run predict_step and write its files (samples, predictions) to the run folder"),
    "register": ("zoo.core.register", "fit a config, test it and ship its checkpoint in checkpoints/manifest.json"),
    "pretrained": ("zoo.core.registry", "list the shipped checkpoints with their metrics (or show one)"),
    "seeds": ("zoo.core.seeds", "fit and test one config under several seeds: mean +/- std of the metrics"),
    "deal": ("zoo.deal.cli", "decoupled alignment: trace a teacher, ddmin-search and transplant its MLPs into a student"),
    "dp-strings": ("zoo.dp_strings.cli", "build / query a differentially private string-distance index (numpy only)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: python -m zoo COMMAND [ARGS ...]   (python -m zoo COMMAND --help for one command)",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()),
        "",
        "example: python -m zoo fit --config configs/ndlinear/digits_ndlinear.yaml",
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m zoo`` (and the ``zoo`` console script)."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)}\n")
        sys.exit(2)
    module = COMMANDS[command][0]
    try:
        if module == LIGHTNING:
            importlib.import_module(module).run(None if args is None else argv)  # None: LightningCLI reads sys.argv
        else:
            importlib.import_module(module).main(rest)
    except ZooError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
