"""Driver-side metric sink: every report of the workers goes to `metrics.jsonl` and TensorBoard.

It runs as a Ray Train callback in the Train controller (not on the workers), so one process
writes each step once, whatever the number of workers.
"""

from __future__ import annotations

import json
import os
import time

import ray.train


class MetricsLogger(ray.train.UserCallback):
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._writer = None

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        values = metrics[0]  # every rank reports the same all-reduced values
        if not values:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        record = dict(values, checkpoint=checkpoint.path if checkpoint else None, time=time.time())
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(os.path.join(self.run_dir, "tensorboard"))
        for name, value in values.items():
            if name != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(f"train/{name}", value, values["step"])
        self._writer.flush()


def read_history(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
