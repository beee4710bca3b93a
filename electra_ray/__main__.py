"""python -m electra_ray <verb> [options]: one entry point for every verb (each is also
`python -m electra_ray.<verb>`). `python -m electra_ray <verb> --help` shows a verb's options."""

from __future__ import annotations

import importlib
import sys

from electra_ray import cli


def usage() -> str:
    width = max(map(len, cli.VERBS))
    verbs = "\n".join(f"  {verb:<{width}}  {what}" for verb, what in cli.VERBS.items())
    return (
        f"usage: python -m electra_ray <verb> [options]\n\nverbs:\n{verbs}\n\n"
        "`python -m electra_ray <verb> --help` shows a verb's options; `python -m electra_ray.<verb>` is the same."
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    verb, rest = argv[0], argv[1:]
    if verb not in cli.VERBS:
        print(f"error: unknown verb '{verb}' (known: {', '.join(cli.VERBS)})", file=sys.stderr)
        sys.exit(2)
    cli.dispatched = True
    # Imported on demand: each verb brings its own heavy dependencies (Ray, torch, transformers).
    importlib.import_module(f"electra_ray.{verb}").main(rest)


if __name__ == "__main__":
    main()
