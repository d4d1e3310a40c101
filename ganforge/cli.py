"""The command line: ``ganforge [train] RECIPE [overrides]``, ``validate``, ``plugins``,
``export``, ``generate`` (samples or ``--interpolate``), ``eval`` and ``report``.

Everything goes through :func:`main`, which returns the exit status: 0 on success, 2 for any
mistake in what the user gave (recipe, path, plugin, data), printed as one message; a training
run that stops early says why and exits 128 + the signal's number (130 Ctrl-C, 143 SIGTERM,
138 SIGUSR1, 140 SIGUSR2) or 3 (too many non-finite steps in a row); a process of a launch
whose peers went away exits 4 with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ganforge import __version__
from ganforge.errors import INTERRUPTED, PEER_LOST, GanforgeError, TrainingStopped

COMMANDS = ("train", "validate", "data", "plugins", "export", "generate", "eval", "report")
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one line and exit status 2, no traceback
        raise GanforgeError(f"{message}\n{self.format_usage().strip()}")


def build_parser() -> argparse.ArgumentParser:
    # Over 60 lines on purpose: every subcommand and option in one declaration, in the order
    # `--help` shows them.
    parser = _Parser(prog="ganforge", description="Train GANs from TOML recipes with plugins.")
    parser.add_argument("--version", action="version", version=f"ganforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, help_ in (
        ("train", "train a recipe (the default command)"),
        ("validate", "check a recipe and print ok, or every problem"),
    ):
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.add_argument(
            "recipe", help="path to a TOML recipe, or a plugin's recipe as PLUGIN:NAME"
        )
        cmd.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="override recipe keys at any depth, e.g. train.steps=100",
        )
        if name == "train":
            cmd.add_argument(
                "--no-resume",
                action="store_true",
                help="start a new run; an earlier run in the folder is moved aside "
                '(train.resume = "never")',
            )
    data = sub.add_parser(
        "data", help="prepare a recipe's data set ahead of training, or say what is cached"
    )
    actions = data.add_subparsers(dest="action", metavar="{prepare,info}", required=True)
    for name, help_ in (
        ("prepare", "decode the recipe's data (and its held-out split) into the data cache"),
        ("info", "what the data cache holds for the recipe: where, how big, its fingerprint"),
    ):
        action = actions.add_parser(name, help=help_, description=help_)
        action.add_argument("recipe", help="path to a TOML recipe, or PLUGIN:NAME")
        action.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as for train")
    plugins = sub.add_parser("plugins", help="list plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    export = sub.add_parser(
        "export", help="export a run's or checkpoint's generator to one safetensors file"
    )
    export.add_argument("source", help="a run folder (its newest checkpoint) or a checkpoint")
    export.add_argument("--out", required=True, help="the .safetensors file to write")
    export.add_argument("--no-ema", action="store_true", help="export G itself, not its EMA")

    generate = sub.add_parser("generate", help="sample an exported generator")
    generate.add_argument("model", help="a .safetensors file written by ganforge")
    generate.add_argument(
        "--num",
        type=at_most(100_000),
        help="number of samples (default 64); with --interpolate, rows (default: a row per "
        "class, or 4)",
    )
    generate.add_argument("--seed", type=SEED, default=0, help="latent seed (default 0)")
    where = generate.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="one grid .png (a scatter plot for points), or a .npy array")
    where.add_argument("--out-dir", help="a folder for one PNG per sample")
    generate.add_argument(
        "--input",
        metavar="FOLDER_OR_DATA",
        help="for generators that take an input: a folder of images (each at the input's "
        "size, or at the output's, made into an input as in training; outputs keep their "
        "names in --out-dir), or a data set or recipe whose held-out images are made into "
        "inputs (the first --num)",
    )
    generate.add_argument("--truncation", type=float, help="truncation ψ, where supported")
    generate.add_argument(
        "--class",
        dest="label",
        action="append",
        help="class index or name for conditional models, repeatable or comma-separated "
        "(e.g. --class 3 --class 7, or --class 3,7: a row each; default: every class)",
    )
    generate.add_argument(
        "--interpolate",
        type=int,
        metavar="N",
        help="spherical interpolation in N steps between pairs of latents, a pair per row: "
        "--out x.png writes the grid and x.gif (animated), --out x.gif only the GIF",
    )
    generate.add_argument("--device", default="cpu", help="torch device (default cpu)")
    generate.add_argument(
        "--full",
        action="store_true",
        help="the whole output, with the padding a data set was trained with (default: "
        "images at the data's own size, e.g. 28x28 Fashion-MNIST trained at 32)",
    )

    evaluate = sub.add_parser("eval", help="score an exported generator against a data set")
    evaluate.add_argument("model", help="a .safetensors file written by ganforge")
    evaluate.add_argument(
        "--data", required=True, help="a recipe (its [data] and [eval]) or a data set's name"
    )
    evaluate.add_argument(
        "--num", type=at_most(1_000_000), default=10_000, help="samples (default 10000)"
    )
    evaluate.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="a metric (repeatable; default: the data's defaults)",
    )
    evaluate.add_argument("--extractor", help="feature extractor (default: the data's choice)")
    evaluate.add_argument("--seed", type=SEED, default=0, help="sampling seed (default 0)")
    evaluate.add_argument("--device", default="cpu", help="torch device (default cpu)")
    evaluate.add_argument("--out", help="write the results as JSON")

    report = sub.add_parser(
        "report", help="(re)write a run's curves.png and self-contained report.html"
    )
    report.add_argument("run_dir", help="a run folder (one with metrics.jsonl)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["train", *argv]  # `ganforge RECIPE.toml` and `python -m ganforge RECIPE.toml`
    if argv and argv[0] == "train" and "--no-resume" in argv[1:]:
        # Overrides are one positional list, so argparse would stop at a flag among them.
        argv = ["train", "--no-resume", *[a for a in argv[1:] if a != "--no-resume"]]
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help and --version
            return int(exit_.code or 0)
        if args.command is None:
            parser.print_help()
            return USAGE_ERROR
        handlers = {
            "train": _train,
            "validate": _validate,
            "data": _data,
            "plugins": _plugins,
            "export": _export,
            "generate": _generate,
            "eval": _eval,
            "report": _report,
        }
        return handlers[args.command](args)
    except GanforgeError as err:
        print(f"ganforge: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as err:  # a path the user gave: missing, unwritable, a folder, a full disk
        print(f"ganforge: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except TrainingStopped as stop:
        print(f"ganforge: stopped: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:  # Ctrl-C outside the training loop, or a second one inside it
        print("ganforge: interrupted", file=sys.stderr)
        return INTERRUPTED
    except RuntimeError as err:  # a collective whose peers went away: one line, not gloo's
        from ganforge.distributed import lost_peer

        said = lost_peer(err)
        if said is None:
            raise
        print(f"ganforge: error: {said}", file=sys.stderr)
        return PEER_LOST


def at_most(high: int, low: int | None = None):
    """An argparse type: an integer up to ``high`` (a number beyond would exhaust memory),
    and from ``low`` when given (otherwise the command checks the lower end itself)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value > high or (low is not None and value < low):
            span = f"from {low:,} to {high:,}" if low is not None else f"at most {high:,}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {value:,}")
        return value

    return parse


#: Seeds are what torch.Generator.manual_seed takes: 0 to 2**64 - 1.
SEED = at_most(2**64 - 1, low=0)


def console_main() -> None:
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_launched(status)
    sys.exit(status)


def exit_launched(status: int) -> None:
    """Leave a launched process (one of several) once everything is written and flushed,
    without the interpreter's teardown: gloo's threads sometimes abort a process there
    ("terminate called without an active exception", about 1 launch in 90 on the CPU), and the
    launcher then reports a finished run as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _load(args):
    from ganforge.plugins import Plugins
    from ganforge.recipe import load_recipe

    plugins = Plugins()
    return plugins, load_recipe(args.recipe, args.overrides, plugins.registry)


def _validate(args) -> int:
    from ganforge.builder import data_source

    plugins, recipe = _load(args)
    # The data source's factory too: it checks paths and options without decoding images.
    source = data_source(recipe, plugins.registry)
    if source.metadata.get("note"):
        print(f"ganforge: note: {source.metadata['note']}", file=sys.stderr)
    print("ok")
    return 0


def _data(args) -> int:
    from ganforge.builder import data_source
    from ganforge.data import describe_store, open_store

    plugins, recipe = _load(args)
    resolution = recipe.get("data.resolution")
    source = data_source(recipe, plugins.registry)
    sources = [source] + ([source.scored_against()] if source.reference is not None else [])
    for each in sources:
        if args.action == "prepare":
            open_store(each, resolution)
        found = describe_store(each, resolution)
        print(f"ganforge: {found.pop('source')}")
        if "bytes" in found:
            found["bytes"] = f"{found['bytes'] / 2**20:,.1f} MiB on disk"
        for key, value in found.items():
            print(f"  {key:<12} {value}")
    return 0


def _train(args) -> int:
    if args.no_resume:
        args.overrides.append("train.resume=never")
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
    print(format_plugins(described))
    return 0


def format_plugins(described: list[dict]) -> str:
    """``ganforge plugins``: each plugin with its distribution, then what it registers."""
    lines = []
    for plugin in described:
        origin = plugin["distribution"] or "registered directly"
        version = f" {plugin['version']}" if plugin["version"] else ""
        lines.append(f"{plugin['name']}  ({origin}{version})")
        lines += [f"    {kind}: {', '.join(names)}" for kind, names in plugin["registers"].items()]
    return "\n".join(lines)


def _export(args) -> int:
    from ganforge.checkpoint import find_checkpoint
    from ganforge.export import export_checkpoint

    checkpoint = find_checkpoint(args.source)
    path = export_checkpoint(checkpoint, args.out, ema=not args.no_ema)
    print(f"ganforge: exported step {checkpoint.step} of {checkpoint.path} to {path}")
    return 0


def _generate(args) -> int:
    from ganforge.sampling import write_samples

    # --class may be repeated and comma-separated: one comma-separated list from here on.
    args.label = ",".join(args.label) if args.label else None
    if args.interpolate is not None:
        return _interpolate(args)
    if args.input is not None:
        return _generate_from_inputs(args)
    num = 64 if args.num is None else args.num
    paths = write_samples(
        args.model,
        num=num,
        seed=args.seed,
        out=args.out,
        out_dir=args.out_dir,
        truncation=args.truncation,
        label=args.label,
        device=args.device,
        full=args.full,
    )
    where = paths[0] if args.out else f"{len(paths)} files in {args.out_dir}"
    print(f"ganforge: wrote {num} samples (seed {args.seed}) to {where}")
    return 0


def _generate_from_inputs(args) -> int:
    from ganforge.sampling import write_from_inputs

    if args.out_dir is None:
        raise GanforgeError("--input writes one image per input: give --out-dir, not --out")
    if args.label or args.truncation is not None:
        raise GanforgeError("--input takes no --class or --truncation")
    paths = write_from_inputs(
        args.model, args.input, args.out_dir, num=args.num, seed=args.seed, device=args.device
    )
    print(f"ganforge: wrote {len(paths)} outputs for the inputs in {args.input} to {args.out_dir}")
    return 0


def _interpolate(args) -> int:
    from ganforge.interpolation import write_interpolation

    if args.out is None:
        raise GanforgeError("--interpolate writes one grid or GIF: give --out x.png or x.gif")
    paths = write_interpolation(
        args.model,
        steps=args.interpolate,
        out=args.out,
        rows=args.num,
        seed=args.seed,
        truncation=args.truncation,
        label=args.label,
        device=args.device,
        full=args.full,
    )
    shown = " and ".join(str(p) for p in paths)
    print(f"ganforge: wrote a {args.interpolate}-step interpolation (seed {args.seed}) to {shown}")
    return 0


def _eval(args) -> int:
    from ganforge.evaluation import table
    from ganforge.runfiles import write_text
    from ganforge.sampling import evaluate_model

    if args.num < 10:
        raise GanforgeError(f"--num must be at least 10, not {args.num}")
    result = evaluate_model(
        args.model,
        args.data,
        num=args.num,
        metrics=args.metrics,
        extractor=args.extractor,
        seed=args.seed,
        device=args.device,
    )
    print(f"{result['model']} vs {result['data']}: {result['num']} samples, {result['extractor']}")
    print(table(result["metrics"], result["legend"]))
    if args.out:
        write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
        print(f"ganforge: wrote {args.out}")
    return 0


def _report(args) -> int:
    from ganforge.report import write_report

    path = write_report(Path(args.run_dir))
    print(f"ganforge: wrote {path} and {path.with_name('curves.png')}")
    return 0
