"""The DeepSpeed engine a worker trains: the DeepSpeed config (ds_config: generated, with the
user's train.deepspeed file merged over it), the optimizer and the learning-rate schedule, wrapped
around the pre-training model."""

from __future__ import annotations

import torch

from electra_ray.config import Config
from electra_ray.ds_config import deepspeed_config
from electra_ray.initial_weights import load_initial_state
from electra_ray.model import build_pretraining_model, compile_networks
from electra_ray.optim import AdamWNoBiasCorrection, electra_lr_lambda, lr_lambda, param_groups


def client_optimizer(cfg: Config, model: torch.nn.Module):
    """(optimizer for deepspeed.initialize, LR factor per step for LambdaLR). train.optimizer=adamw:
    None (DeepSpeed builds torch's AdamW from its config) and lr_lambda; electra:
    google-research/electra's optimizer (optim.AdamWNoBiasCorrection) and schedule."""
    t = cfg.train
    if t.optimizer == "electra":
        optimizer = AdamWNoBiasCorrection(
            param_groups(model, t.weight_decay),
            lr=t.lr,
            betas=tuple(t.adam_betas),
            eps=t.adam_eps,
            weight_decay=t.weight_decay,
        )
        return optimizer, electra_lr_lambda(t.warmup_steps, t.max_steps)
    return None, lr_lambda(t.warmup_steps, t.max_steps)


def build_engine(
    cfg: Config,
    vocab_size: int,
    pad_id: int,
    world: int,
    initial_state: dict | None = None,
    ds_config: dict | None = None,
):
    """(DeepSpeed engine, LR scheduler) around a new pre-training model, identical on every rank;
    `initial_state`: model.init_from's weights (initial_weights.initial_state), loaded first;
    `ds_config`: the DeepSpeed config the driver merged (ds_config.deepspeed_config), else generated here."""
    # Imported here: DeepSpeed picks its accelerator at import, from DS_ACCELERATOR, which the
    # worker sets first.
    import deepspeed

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_pretraining_model(cfg, vocab_size, pad_id)
    if initial_state is not None:
        load_initial_state(model, initial_state)
    if cfg.train.compile:
        compile_networks(model)
    optimizer, schedule = client_optimizer(cfg, model)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, cfg.train.weight_decay),
        optimizer=optimizer,
        config=ds_config if ds_config is not None else deepspeed_config(cfg),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
    )
    if world == 1 and cfg.train.zero_stage == 0:
        # One rank has nothing to all-reduce; DeepSpeed would still copy every gradient into a
        # bucket and back (3% of a CPU step for ELECTRA-Small).
        engine.enable_backward_allreduce = False
    return engine, scheduler
