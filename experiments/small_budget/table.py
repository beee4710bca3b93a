"""Markdown table of the harness results (experiments/small_budget/results/*.json), one row per variant.

python experiments/small_budget/table.py [NAME ...]
"""

import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    names = sys.argv[1:]
    paths = [os.path.join(HERE, "results", f"{n}.json") for n in names] or sorted(
        glob.glob(os.path.join(HERE, "results", "*.json")), key=os.path.getmtime
    )
    print(
        "| variant | settings | steps | unigram-corruption AUC | generator AUC | random AUC | RTD gap (nats) "
        "| generator MLM loss (unigram entropy) | train s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        m = r["metrics"]
        settings = " ".join(s.removeprefix("train.").removeprefix("model.") for s in r["set"])
        if r.get("disc_lr_mult", 1.0) != 1.0:
            settings += f" disc-lr x{r['disc_lr_mult']:g}"
        steps = r["curve"][-1]["step"] if r["curve"] else 0
        if "auc_fixed_corruption" in m:
            print(
                f"| {r['name']} | {settings or '(tiny.yaml)'} | {steps} | {m['auc_fixed_corruption']:.3f} | "
                f"{m['auc_generator_replacements']:.3f} | {m['auc_random_replacements']:.3f} | "
                f"{m['rtd_gap']:.4f} | {m['generator_mlm_loss']:.2f} ({m['unigram_entropy']:.2f}) | "
                f"{r['train_s']:.0f} |"
            )
        else:
            print(
                f"| {r['name']} | {settings} | {steps} | - | - | - | - | {m['mlm_loss']:.2f} "
                f"({m['unigram_entropy']:.2f}) | {r['train_s']:.0f} |"
            )


if __name__ == "__main__":
    main()
