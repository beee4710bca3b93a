"""The plateau screen's table (docs/small-budget.md), from experiments/small_budget/screen/*.json:
each variant's flags and its held-out AUC on evaluate's fixed unigram corruption along the curve.

    python experiments/small_budget/screen_table.py
"""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def shown_flags(argv: list[str]) -> list[str]:
    """The variant's flags, without the curve's length and spacing (the curve shows them)."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--steps", "--curve-every"):
            skip = True
        else:
            shown.append(arg)
    return shown


def main() -> None:
    print("| variant | flags (over configs/tiny.yaml) | AUC by step |")
    print("|---|---|---|")
    for path in sorted(glob.glob(os.path.join(HERE, "screen", "*.json"))):
        with open(path) as f:
            run = json.load(f)
        flags = " ".join(shown_flags(run["argv"][1:]))
        curve = ", ".join(f"{p['step']}: {p['auc']:.3f}" for p in run["curve"])
        print(f"| {run['name']} | `{flags or '(none)'}` | {curve} |")


if __name__ == "__main__":
    main()
