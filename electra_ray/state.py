"""A worker's training state and the schedule it follows: where it is (step, epoch, micro-batches
consumed, random streams), which steps log, checkpoint and end (`cadence`), and the micro-batches
it trains on across epochs (`micro_batches`), resumed exactly where a checkpoint left off."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from electra_ray.errors import TrainingError

Batch = TypeVar("Batch")


@dataclass
class TrainState:
    step: int  # optimizer steps taken
    epoch: int
    consumed: int  # micro-batches of this epoch already trained on
    mask_rng: np.random.Generator  # masking: differs per rank (different data)
    sample_rng: torch.Generator  # the generator's sampling of replacements, per rank
    last_checkpoint: int | None = None  # the step of the latest checkpoint, None before the first

    @classmethod
    def new(cls, seed: int, rank: int, device: torch.device) -> TrainState:
        return cls(
            step=0,
            epoch=0,
            consumed=0,
            mask_rng=np.random.default_rng([seed, rank]),
            sample_rng=torch.Generator(device=device).manual_seed(seed * 1000 + rank),
        )

    def restore(self, saved: dict) -> None:
        """Continue from a checkpoint's run state (checkpoint.restore), this rank's RNG streams included."""
        self.step, self.epoch, self.consumed = saved["step"], saved["epoch"], saved.get("consumed", 0)
        self.mask_rng.bit_generator.state = saved["rng"]["mask"]
        self.sample_rng.set_state(saved["rng"]["sample"])
        torch.set_rng_state(saved["rng"]["torch"])
        self.last_checkpoint = self.step

    def position(self) -> dict:
        """What a checkpoint's run state records of it."""
        return {"step": self.step, "epoch": self.epoch, "consumed": self.consumed}

    def rng_state(self) -> dict:
        return {
            "mask": self.mask_rng.bit_generator.state,
            "sample": self.sample_rng.get_state(),
            "torch": torch.get_rng_state(),
        }


@dataclass(frozen=True)
class When:
    """What happens after an optimizer step."""

    log: bool  # report metrics (and check the divergence guard, read the stop flag)
    evaluate: bool  # measure heldout_auc
    checkpoint: bool
    last: bool


def cadence(step: int, max_steps: int, log_every: int, checkpoint_every: int, eval_every: int = 0) -> When:
    """For the step about to complete (1-based). Every checkpoint step is also a logging step, so a
    checkpoint's metrics are its own step's; evaluation happens at logging steps only."""
    last = step >= max_steps
    checkpoint = step % checkpoint_every == 0 or last
    log = step % log_every == 0 or checkpoint
    evaluate = log and bool(eval_every) and (step % eval_every == 0 or last)
    return When(log=log, evaluate=evaluate, checkpoint=checkpoint, last=last)


def micro_batches(
    epoch_batches: Callable[[int, int], Iterable[Batch]], state: TrainState, rank: int, micro_batch: int
) -> Iterator[Batch]:
    """Micro-batches across epochs, without end: `epoch_batches(epoch, skip)` yields one epoch's,
    after the `skip` already consumed. Counts `state.consumed`; an epoch that yields nothing is a
    TrainingError (the shard cannot fill one micro-batch)."""
    while True:
        for batch in epoch_batches(state.epoch, state.consumed):
            state.consumed += 1
            yield batch
        if state.consumed == 0:
            raise TrainingError(
                f"worker {rank} got no full batch of {micro_batch} sequences from the corpus: "
                f"lower train.batch_size or data.seq_len, or use a larger corpus"
            )
        state.epoch, state.consumed = state.epoch + 1, 0
