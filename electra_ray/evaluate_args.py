"""`evaluate`'s command line, read and checked before torch and transformers load (a bad flag
answers in about a second)."""

from __future__ import annotations

import argparse

from electra_ray.cli import verb_parser
from electra_ray.errors import UserError


def check_max_sequences(max_sequences) -> None:
    if max_sequences is None:
        return
    if isinstance(max_sequences, bool) or not isinstance(max_sequences, int) or max_sequences < 1:
        raise UserError(f"--max-sequences must be an integer >= 1, got {max_sequences!r}")


def checked_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    """export, max_sequences (an int, checked) and json (argparse exits 2 on a malformed line)."""
    parser = verb_parser("evaluate", doc)
    parser.add_argument("export", help="directory written by electra_ray.export / pretrain")
    # Read as text and checked here: a bad value is one `error:` line, not argparse's usage + error.
    parser.add_argument("--max-sequences", default="512", help="held-out sequences measured (default: 512)")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.max_sequences = int(args.max_sequences)
    except ValueError:
        raise UserError(f"--max-sequences must be an integer >= 1, got {args.max_sequences!r}") from None
    check_max_sequences(args.max_sequences)
    return args
