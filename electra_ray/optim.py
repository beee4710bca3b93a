"""Optimizers and learning-rate schedules: parameter groups, the default linear warm-up/decay
(`train.optimizer=adamw`, torch's AdamW), and google-research/electra's own optimizer and
schedule (`train.optimizer=electra`).

ELECTRA was pre-trained with BERT's `AdamWeightDecayOptimizer` (model/optimization.py), which is
not torch's AdamW: it has no bias correction. m and v are plain exponential moving averages,

    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g^2
    p <- p - lr * (m / (sqrt(v) + eps) + weight_decay * p)

(weight decay only for parameters other than LayerNorm weights and biases). Early in training
m / sqrt(v) is larger than torch's bias-corrected m_hat / sqrt(v_hat) by
(1 - beta1^t) / sqrt(1 - beta2^t) where the gradient is steady (beta1 0.9, beta2 0.999): 3.2x at
update 1, 6.6x at its peak near update 12, 3.2x at 100, 2.7x at 150, 1.26x at 1,000, within 1%
after 3,900: larger early updates, which warm-up then tempers. electra_pytorch (richarddwang),
reproducing the paper's GLUE scores in PyTorch, found this optimizer indispensable for parity.

The schedule differs too: a linear (power 1) decay from the peak to 0 over all of
num_train_steps, starting at step 0, multiplied by min(1, step / warmup_steps), so warm-up and
decay overlap (the peak is never quite reached) and the first update has learning rate 0 (m and
v still move).
"""

from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (as google-research/electra's AdamW)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():  # shared embeddings appear once
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup_steps: int, max_steps: int):
    """Linear warm-up to the peak, then linear decay to 0 at max_steps (ELECTRA's schedule, with
    warm-up and decay one after the other)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    return factor


def electra_lr_lambda(warmup_steps: int, max_steps: int):
    """google-research/electra's learning-rate factor for the update taken at global step `step`
    (0 for the first update; LambdaLR's `last_epoch` counts the same way):
    (1 - min(step, max_steps) / max_steps) * min(1, step / warmup_steps). warmup_steps 0: no warm-up."""

    def factor(step: int) -> float:
        decay = 1.0 - min(step, max_steps) / max_steps
        return decay * (min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0)

    return factor


class AdamWNoBiasCorrection(torch.optim.Optimizer):
    """Adam with decoupled weight decay and no bias correction, google-research/electra's
    `AdamWeightDecayOptimizer` (see the module docstring for the update).

    Each parameter group carries its own `weight_decay` (0 for LayerNorm weights and biases).
    State per parameter, float32 whatever the parameter's dtype, under torch Adam's names (as
    DeepSpeed's checkpoint tools expect): `exp_avg` (m), `exp_avg_sq` (v), `step` (updates taken).

    Skipping a step: like torch's fused Adam under a GradScaler, the attribute `found_inf` (None,
    a number or a 0-d tensor, set by the caller before `step()`) makes a step with a nonzero value
    change nothing, neither parameters nor state. A tensor is honoured on its device, without a
    host sync; the gradients of such a step may be NaN or inf.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas}")
        if not eps > 0.0:
            raise ValueError(f"invalid epsilon: {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight decay: {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.found_inf = None

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, then the state back to float32 on each parameter's device (torch casts it to
        the parameter's dtype and leaves `step` where it was saved)."""
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = value.to(device=param.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and not torch.is_tensor(found_inf):
            if found_inf:
                return loss
            found_inf = None
        for group in self.param_groups:
            self._update_group(group, found_inf)
        return loss

    def _update_group(self, group: dict, found_inf: torch.Tensor | None) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("AdamWNoBiasCorrection does not support sparse gradients")
            state = self.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
            params.append(param)
            grads.append(param.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        # The update is computed in float32 (.float() returns float32 parameters and gradients themselves).
        params32 = [p.float() for p in params]
        grads = [g.float() for g in grads]
        if found_inf is None:
            keep = 1.0
        else:
            # 1 for a step to take, 0 for one to skip; a skipped step's gradients become 0 (they may
            # be NaN, and NaN * 0 is NaN) and every change below is multiplied by `keep`.
            keep_bool = found_inf.to(params[0].device) == 0
            keep = keep_bool.float()
            grads = [torch.where(keep_bool, g, 0.0) for g in grads]

        # m <- beta1 m + (1 - beta1) g, written as m + (1 - beta1) (g - m) so that keep = 0 leaves m.
        delta = torch._foreach_sub(grads, exp_avgs)
        torch._foreach_mul_(delta, keep * (1.0 - beta1))
        torch._foreach_add_(exp_avgs, delta)
        # v <- beta2 v + (1 - beta2) g^2, likewise.
        delta = torch._foreach_mul(grads, grads)
        torch._foreach_sub_(delta, exp_avg_sqs)
        torch._foreach_mul_(delta, keep * (1.0 - beta2))
        torch._foreach_add_(exp_avg_sqs, delta)
        del delta
        # update = m / (sqrt(v) + eps) + weight_decay * p; p <- p - lr * update.
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps)
        update = torch._foreach_div(exp_avgs, denom)
        del denom
        if weight_decay != 0.0:
            torch._foreach_add_(update, params32, alpha=weight_decay)
        torch._foreach_mul_(update, keep * -lr)
        torch._foreach_add_(params32, update)
        torch._foreach_add_(steps, keep)
        for param, param32 in zip(params, params32):
            if param32 is not param:
                param.copy_(param32)
