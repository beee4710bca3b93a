"""The command-line shape every verb shares: `python -m electra_ray <verb>` (see __main__) and the
equivalent `python -m electra_ray.<verb>`, the same `--config FILE --set KEY=VALUE` for every
config-driven verb, and a `UserError` as one line on stderr with exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from electra_ray.errors import UserError

# The verbs, their modules and what each does (the dispatcher's help lists them in this order).
VERBS = {
    "pretrain": "pre-train ELECTRA on Ray Train + DeepSpeed, then export and evaluate",
    "export": "write a checkpoint's generator and discriminator in Hugging Face format",
    "evaluate": "held-out measurements of an export (ROC-AUC of the discriminator, MLM loss)",
    "finetune": "fine-tune an export on a classification or regression task (seeds, median)",
    "tasks": "write labeled task files (movie reviews) for finetune",
    "prepare": "turn text files or JSON lines into a Parquet corpus",
    "tokenizer": "train a WordPiece tokenizer on a corpus",
    "tune": "a Ray Tune sweep of pre-training settings",
    "compare": "ELECTRA against MLM at equal compute, with a random-init control",
    "bench": "tokens/s, MFU and memory of our training path against plain loops",
}

# Set by `python -m electra_ray`: the help then shows `python -m electra_ray <verb>`.
dispatched = False


def prog(verb: str) -> str:
    return f"python -m electra_ray {verb}" if dispatched else f"python -m electra_ray.{verb}"


def verb_parser(verb: str, doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """A verb's parser: its prog as it was called, its module docstring as the description."""
    return argparse.ArgumentParser(
        prog=prog(verb), description=doc, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """`--config FILE` (YAML) and `--set KEY=VALUE ...` (repeatable), as every config-driven verb takes them."""
    parser.add_argument("--config", metavar="FILE", default=default, help=help)
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        action="extend",
        help="override config keys, e.g. --set train.max_steps=200 (repeatable)",
    )


def run_name(kind: str) -> str:
    """`<kind>-<date>-<time>`: the default name of a run of a verb."""
    return time.strftime(f"{kind}-%Y%m%d-%H%M%S")


def output_directory(out: str, kind: str) -> str:
    """The absolute output directory of a local verb: `out`, or runs/<kind>-<date>-<time>."""
    return os.path.abspath(out or os.path.join("runs", run_name(kind)))


def run_cli(main: Callable[[], object]) -> None:
    """Run a verb; a `UserError` becomes a one-line message on stderr and exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
