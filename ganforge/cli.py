"""The command line: ``ganforge [train] RECIPE [overrides]``, ``validate``, ``plugins``.

Everything goes through :func:`main`, which returns the exit status: 0 on success, 2 for any
mistake in what the user gave (recipe, path, plugin, data), printed as one message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ganforge import __version__
from ganforge.errors import GanforgeError

COMMANDS = ("train", "validate", "plugins")
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one line and exit status 2, no traceback
        raise GanforgeError(f"{message}\n{self.format_usage().strip()}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganforge", description="Train GANs from TOML recipes with plugins.")
    parser.add_argument("--version", action="version", version=f"ganforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,validate,plugins}")
    for name, help_ in (
        ("train", "train a recipe (the default command)"),
        ("validate", "check a recipe and print ok, or every problem"),
    ):
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.add_argument("recipe", help="path to a TOML recipe")
        cmd.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="override recipe keys at any depth, e.g. train.steps=100",
        )
    plugins = sub.add_parser("plugins", help="list plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["train", *argv]  # `ganforge RECIPE.toml` and `python -m ganforge RECIPE.toml`
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help and --version
            return int(exit_.code or 0)
        if args.command is None:
            parser.print_help()
            return USAGE_ERROR
        return {"train": _train, "validate": _validate, "plugins": _plugins}[args.command](args)
    except GanforgeError as err:
        print(f"ganforge: error: {err}", file=sys.stderr)
        return USAGE_ERROR


def console_main() -> None:
    sys.exit(main())


def _load(args):
    from ganforge.plugins import Plugins
    from ganforge.recipe import load_recipe

    plugins = Plugins()
    return plugins, load_recipe(args.recipe, args.overrides, plugins.registry)


def _validate(args) -> int:
    _load(args)
    print("ok")
    return 0


def _train(args) -> int:
    plugins, recipe = _load(args)
    from ganforge.trainer import Trainer  # torch-heavy; imported only to train

    trainer = Trainer(recipe, plugins)
    path = trainer.fit()
    if path is not None:
        trainer.acc.print(f"ganforge: exported {path}")
    return 0


def _plugins(args) -> int:
    from ganforge.plugins import Plugins

    described = Plugins().describe()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for plugin in described:
        origin = plugin["distribution"] or "registered directly"
        version = f" {plugin['version']}" if plugin["version"] else ""
        print(f"{plugin['name']}  ({origin}{version})")
        for kind, names in plugin["registers"].items():
            print(f"    {kind}: {', '.join(names)}")
    return 0
