"""Driver-side metric sink: every report of the workers goes to `metrics.jsonl` and TensorBoard.

It runs as a Ray Train callback in the Train controller (not on the workers), so one process
writes each step once, whatever the number of workers. MLflow and W&B (output.trackers) follow
metrics.jsonl from the driver process (trackers.tracking).
"""

from __future__ import annotations

import json
import os
import sys
import time

import ray.train


class MetricsLogger(ray.train.UserCallback):
    def __init__(self, run_dir: str, tensorboard: bool = True):
        self.run_dir, self.tensorboard = run_dir, tensorboard
        self._writer = None

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        values = metrics[0]  # every rank reports the same all-reduced values
        os.makedirs(self.run_dir, exist_ok=True)
        record = dict(values, checkpoint=checkpoint.path if checkpoint else None, time=time.time())
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if "step" not in values or not self.tensorboard:  # {"training_error": ...}: the driver raises it
            return
        if self._writer is None:
            from tensorboardX import SummaryWriter  # at the first report: a run that never reports needs none

            self._writer = SummaryWriter(os.path.join(self.run_dir, "tensorboard"))
        for name, value in values.items():
            if name != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(f"train/{name}", value, values["step"])
        self._writer.flush()


def _records(run_dir: str) -> list[dict]:
    """The records of metrics.jsonl. A line that is not a JSON object (the last one, cut short when
    the process writing it was killed) is skipped with a warning: the history is still usable."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                print(f"warning: metrics.jsonl line {number} is not JSON (truncated?); skipped", file=sys.stderr)
                continue
            records.append(record)
    return records


def read_history(run_dir: str) -> list[dict]:
    """Every training report of the run (and of the runs it resumed), oldest first."""
    return [record for record in _records(run_dir) if "step" in record]


def training_error(run_dir: str) -> str | None:
    """The error that ended the latest attempt of the run, if one did."""
    records = _records(run_dir)
    return records[-1].get("training_error") if records else None
