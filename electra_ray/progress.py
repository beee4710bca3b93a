"""Progress of a loop of known length, with an ETA: a bar where a terminal is attached, plain lines
(about ten a run, at most one per `every_s`) in logs and on Ray workers, whose output is a log."""

from __future__ import annotations

import sys
import time


def format_eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class StepProgress:
    """`update(loss)` after each of `total` steps; `close()` at the end (or use it as a context)."""

    def __init__(self, total: int, label: str, every_s: float = 30.0, stream=None):
        self.total, self.label, self.every_s = total, label, every_s
        self.stream = stream or sys.stdout
        self.done, self.start = 0, time.perf_counter()
        self.last_line, self.next_fraction = self.start, 0.1
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm  # installed with transformers

            self.bar = tqdm(total=total, desc=label, unit="step", file=self.stream, dynamic_ncols=True)

    def update(self, loss: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(1)
            return
        now = time.perf_counter()
        fraction = self.done / self.total
        # Lines at each tenth of the run, and at least every `every_s` on a long one.
        if fraction >= self.next_fraction or now - self.last_line >= self.every_s or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            print(
                f"{self.label}: step {self.done}/{self.total} | loss {loss:.4f} | "
                f"{rate:.2f} steps/s | ETA {format_eta((self.total - self.done) / rate)}",
                file=self.stream,
                flush=True,
            )
            self.last_line = now
            while self.next_fraction <= fraction:
                self.next_fraction += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
