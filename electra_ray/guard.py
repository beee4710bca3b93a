"""The divergence guard: a step whose loss is not finite on any rank is skipped, and too many
skipped in a row end the run.

Everything stays on the device: a skipped step leaves the weights and optimizer state as they
were through the optimizer's `found_inf` (the flag AMP's GradScaler sets for torch's fused Adam,
and optim.AdamWNoBiasCorrection reads), and the counters are read on the host at logging steps
only, so the hot loop has no host sync.

fp16's loss-scale overflows are not divergence, and the guard never sees them as such: it watches
the loss itself, which DeepSpeed scales only inside `engine.backward` (loss x 2**k), while an
overflow is an inf/nan in those *scaled gradients*, found by DeepSpeed's fp16 optimizer, which
then skips the step and halves the scale (expected, most often in the first steps). So a finite
loss whose gradients overflow is counted as an overflow step (`overflows`, from DeepSpeed's own
host flag), not a skipped one; a non-finite loss is the guard's in every precision (fp16's
activations overflowing in the forward pass is divergence too) and counts toward max_bad_steps.
DeepSpeed also sees that step's gradients as an overflow: it is counted once, as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from electra_ray.errors import TrainingError


class DivergenceGuard:
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_bad_steps: int,
        world: int,
        device: torch.device,
        inject_nan_steps: Iterable[int] = (),
    ):
        self.optimizer = optimizer  # the torch optimizer itself, inside any ZeRO / bf16 wrapper
        self.max_bad_steps, self.world = max_bad_steps, world
        self.nan_steps = set(inject_nan_steps)  # train.inject_nan_steps: a test's NaN, once per listed step
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # of the latest micro-batch
        self.step_finite = torch.ones((), dtype=torch.bool, device=device)  # of every micro-batch of the step
        self.skipped, self.in_a_row, self.bad_loss = (torch.zeros((), device=device) for _ in range(3))
        self.overflows = torch.zeros((), device=device)  # fp16 steps DeepSpeed skipped with a finite loss
        self.reported_skipped = self.reported_overflows = 0

    def observe(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The loss to backpropagate for a micro-batch of step `step` (0-based); notes whether it is finite."""
        if step + 1 in self.nan_steps:
            self.nan_steps.remove(step + 1)
            loss = loss * float("nan")
        self.finite = torch.isfinite(loss.detach())
        self.step_finite *= self.finite
        self.bad_loss = torch.where(self.finite, self.bad_loss, loss.detach())
        return loss

    def arm(self) -> None:
        """Before the optimizer step: skip it on every rank if any rank saw a non-finite loss."""
        if self.world > 1:
            dist.all_reduce(self.step_finite, op=dist.ReduceOp.MIN)
        self.optimizer.found_inf = 1.0 - self.step_finite.float()

    def after_step(self, overflow: bool = False) -> None:
        """After the optimizer step. `overflow`: DeepSpeed's fp16 optimizer skipped it for overflowing
        scaled gradients (not engine.was_step_applied(): a host flag DeepSpeed has synced already)."""
        found_inf = self.optimizer.found_inf
        self.skipped += found_inf
        self.in_a_row = (self.in_a_row + 1) * found_inf
        if overflow:
            self.overflows += 1.0 - found_inf  # a non-finite loss's step is counted as skipped only
        self.step_finite.fill_(True)

    def check(self, step: int, last_checkpoint: int | None) -> str | None:
        """At a logging step (a host sync): raise TrainingError after more than max_bad_steps
        skipped steps in a row; else a warning for the steps skipped since the last check, or None."""
        in_a_row = int(self.in_a_row.item())
        if in_a_row > self.max_bad_steps:
            last_good = f"step {last_checkpoint}" if last_checkpoint is not None else "none yet"
            raise TrainingError(
                f"loss is {self.bad_loss.item()} at step {step} for {in_a_row} steps in a row; last good "
                f"checkpoint: {last_good}; lower train.lr or raise train.warmup_steps"
            )
        self.reported_overflows = int(self.overflows.item())
        skipped = int(self.skipped.item())
        new, self.reported_skipped = skipped - self.reported_skipped, skipped
        if not new:
            return None
        return (
            f"warning: {new} step(s) skipped for a non-finite loss since the last report "
            f"({skipped} in all, {in_a_row} in a row)"
        )
