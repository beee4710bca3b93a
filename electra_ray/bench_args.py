"""`bench`'s command line, read before torch and Ray load (a mistyped flag answers at once)."""

from __future__ import annotations

import argparse
import os

from electra_ray.cli import verb_parser
from electra_ray.config import SHIPPED_CONFIGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {name: os.path.join(SHIPPED_CONFIGS, f"{name}.yaml") for name in ("tiny", "small")}
LOOPS = ("plain", "compiled", "naive", "peer")  # the single-process loops of the step comparison


def bench_parser(doc: str) -> argparse.ArgumentParser:
    parser = verb_parser("bench", doc)
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the step comparison")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="steps of our path left out before timing")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench"))
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also the memory section: model state per worker under ZeRO 0-3, 2 workers (about 3 minutes)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the suite's smoke test: every arm once on the tiny config, 2 timed steps, compile traced only (its "
        "eager backend), no memory section",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU check instead (electra_ray.bench_gpu): one GPU, <= 8 minutes, OUT/gpu.json and gpu.md",
    )
    parser.add_argument("--dry-run", action="store_true", help="with --gpu: the same code on the CPU, tiny shapes")
    parser.add_argument("--budget", type=float, default=450.0, help="with --gpu: seconds it may take (start-up aside)")
    # One measurement in a process of its own (run_measure): the loops (comma-separated, of
    # LOOPS), the model (a config of configs/: tiny or small) and the tokenizer directory.
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="small", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # --quick: eager
    return parser
