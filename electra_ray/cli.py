"""Shared plumbing of the `python -m electra_ray.<verb>` commands."""

import sys
from collections.abc import Callable

from electra_ray.errors import UserError


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
