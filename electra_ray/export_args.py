"""`export`'s command line, read and checked before torch, transformers and DeepSpeed load: the
paths' cheap checks (a missing checkpoint, an output that is not an earlier export) answer in
about a second."""

from __future__ import annotations

import argparse
import os

from electra_ray import storage
from electra_ray.cli import verb_parser
from electra_ray.errors import UserError


def checked_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    """checkpoint, out, overwrite, verify (argparse exits 2 on a malformed line; a bad path raises
    UserError). With an S3 path, export() checks both."""
    parser = verb_parser("export", doc)
    parser.add_argument(
        "checkpoint", nargs="?", help="a checkpoint directory written by electra_ray.pretrain (or s3://...)"
    )
    parser.add_argument("out", nargs="?", help="output directory, or s3://bucket/prefix")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export at OUT (only the files its manifest lists are removed)",
    )
    parser.add_argument("--verify", metavar="EXPORT", help="check every file of an export against its manifest")
    args = parser.parse_args(argv)
    if args.verify:
        return args
    if not (args.checkpoint and args.out):
        raise UserError("give CHECKPOINT and OUT (or --verify EXPORT)")
    if storage.is_remote(args.checkpoint) or storage.is_remote(args.out):
        return args  # export() checks them in its order, S3 with its retries
    storage.check_output(args.out, "export", args.overwrite)  # export()'s order: the output first
    if not os.path.isdir(args.checkpoint):
        raise UserError(f"no checkpoint directory at {args.checkpoint}")
    return args
