"""The per-worker training loop (Ray Train's `train_loop_per_worker`) on a DeepSpeed engine.

Fixed step order on every rank: forward -> backward -> optimizer step; at logging steps the
counters are all-reduced and reported, the held-out AUC measured, the stop flag read, and at
checkpoint steps (and at the end) every rank saves its ZeRO shard into one directory that Ray
Train persists as a checkpoint. The pieces with state of their own (DivergenceGuard, Meter,
TrainState, cadence, micro_batches) live in their own modules and are unit-tested without Ray.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from electra_ray import checkpoint as checkpoints
from electra_ray.config import Config
from electra_ray.data import epoch_shuffle_seed, masked_batches, tokenizer_from_json
from electra_ray.ds_config import compute_precision
from electra_ray.engine import build_engine
from electra_ray.errors import TrainingError
from electra_ray.guard import DivergenceGuard
from electra_ray.heldout import FixedCorruption, detection_auc
from electra_ray.meter import Meter, peak_flops, unknown_peak_warning
from electra_ray.model import run_flops_per_token
from electra_ray.objective import sampling_temperature
from electra_ray.state import TrainState, cadence, micro_batches


@dataclass
class WorkerArgs:
    """What the driver hands every worker (Ray Train's train_loop_config, as `vars(args)`)."""

    config: Config
    tokenizer_json: str
    vocab_size: int
    num_threads: int = 0  # torch threads per worker on a single-node Ray; 0: Ray's setting
    peak_flops: float = 0.0  # measured on the driver (CPU); 0: the worker's device peak
    stop_actor: Any = None  # the driver's StopRequest actor; None: no graceful stop
    heldout: FixedCorruption | None = None  # held-out text for heldout_auc (train.eval_every)
    initial_weights: Any = None  # model.init_from's weights (an ObjectRef of initial_weights.initial_state)
    # The DeepSpeed config, train.deepspeed's file merged in on the driver (ds_config.deepspeed_config);
    # None: generated from `config` in the worker.
    deepspeed_config: dict | None = None


@dataclass
class Worker:
    """One rank's view of the run."""

    cfg: Config
    args: WorkerArgs
    rank: int
    world: int
    device: torch.device
    special: dict[str, int]

    @property
    def micro_batch(self) -> int:
        return self.cfg.train.batch_size // (self.world * self.cfg.train.grad_accum)


def stop_requested(actor, world: int, device: torch.device) -> bool:
    if actor is None:
        return False
    flag = torch.tensor([float(ray.get(actor.is_requested.remote()))], device=device)
    if world > 1:  # ranks may read the flag on either side of its change: agree on one answer
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def quiet_report_logging() -> None:
    """Train logs one INFO line per report, metrics dict included; the progress line says it
    better. That logger is named after its module's file path."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


# Python errors of a worker's set-up that would recur on every retry.
SETUP_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, ImportError)


@contextlib.contextmanager
def setup_errors():
    try:
        yield
    except SETUP_ERRORS as error:
        first_line = (str(error).splitlines() or [""])[0]
        raise TrainingError(f"worker set-up failed: {type(error).__name__}: {first_line}") from error


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point. A TrainingError is reported, not raised: Ray Train would restart
    the workers (train.max_failures) for an error that would only happen again. Every rank
    raises it at the same step (the ranks agree on what causes one), so every rank reports it."""
    try:
        train_loop(WorkerArgs(**loop_config))
    except TrainingError as error:
        ray.train.report({"training_error": str(error)})


def setup_worker(args: WorkerArgs) -> Worker:
    context = ray.train.get_context()
    cfg = args.config
    quiet_report_logging()
    if cfg.scaling.use_gpu:
        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cfg.scaling.use_gpu else "cpu")  # before DeepSpeed's import
    special = tokenizer_from_json(args.tokenizer_json)[1]
    return Worker(cfg, args, context.get_world_rank(), context.get_world_size(), device, special)


def train_loop(args: WorkerArgs) -> None:
    # A failure in set-up (a config or tokenizer the workers cannot use) is the same on every
    # attempt: a training error, never retried train.max_failures times.
    with setup_errors():
        run = setup_worker(args)
        initial_state = ray.get(args.initial_weights) if args.initial_weights is not None else None
        engine, scheduler = build_engine(
            run.cfg, args.vocab_size, run.special["[PAD]"], run.world, initial_state, args.deepspeed_config
        )
    t = run.cfg.train
    state = resume_or_new(run, engine)
    guard = new_guard(run, engine)
    meter = new_meter(run, state)
    if state.step >= t.max_steps:
        return
    batches = micro_batches(functools.partial(device_batches, run, state), state, run.rank, run.micro_batch)
    for micro_step, inputs in enumerate(batches, start=1):
        # 1. forward / backward (a non-finite loss is noted on the device, and its step skipped)
        if t.temperature_steps:
            engine.module.temperature = sampling_temperature(
                state.step, t.temperature_start, t.temperature, t.temperature_steps
            )
        output = engine(**inputs, generator_rng=state.sample_rng)
        engine.backward(guard.observe(output.loss, state.step))
        meter.accumulate(output.stats, guard.finite)
        if micro_step % t.grad_accum:
            engine.step()  # accumulates; DeepSpeed steps the optimizer at the boundary only
            continue
        # 2. optimizer step, on every rank, skipped on all if any saw a non-finite loss (or fp16 overflowed)
        when = cadence(state.step + 1, t.max_steps, t.log_every, t.checkpoint_every, t.eval_every)
        if when.log:
            meter.probe_memory(engine)  # gradients are still held here; the step frees them
        optimizer_step(engine, guard, state.step)
        state.step += 1
        meter.step()
        # 3. at logging steps only (they sync with the host): report, evaluate, checkpoint, stop
        if not when.log:
            continue
        stop = log_step(run, engine, scheduler, state, guard, meter, when)
        if when.last or stop:
            return


def optimizer_step(engine, guard: DivergenceGuard, step: int) -> None:
    """The optimizer step of step `step` (0-based): skipped on every rank if any saw a non-finite
    loss (the guard), or under fp16 by DeepSpeed for overflowing scaled gradients (counted apart)."""
    guard.arm()
    try:
        engine.step()
    except Exception as error:  # DeepSpeed's ZeRO loss scaler raises a bare Exception for this
        if "loss scale already at minimum" not in str(error):
            raise
        # Every rank overflows at the same steps (DeepSpeed all-reduces the flag): all raise it.
        raise TrainingError(
            f"fp16 gradients still overflow at the minimum loss scale at step {step + 1}: lower train.lr, "
            f"or use train.precision=bf16 (or fp32)"
        ) from error
    guard.after_step(overflow=not engine.was_step_applied())


def loss_scale(engine) -> float | None:
    """fp16's current dynamic loss scale; None in other precisions."""
    return float(engine.optimizer.loss_scale) if engine.fp16_enabled() else None


def log_step(run: Worker, engine, scheduler, state: TrainState, guard: DivergenceGuard, meter: Meter, when) -> bool:
    """Check the guard, report the interval's metrics (with a checkpoint at checkpoint steps and
    on a stop request); returns whether the driver asked to stop."""
    warning = guard.check(state.step, state.last_checkpoint)
    metrics = meter.report(
        state.step,
        state.epoch,
        scheduler.get_last_lr()[0],
        guard.reported_skipped,
        guard.reported_overflows,
        loss_scale(engine),
    )
    if when.evaluate and run.args.heldout is not None:
        metrics["heldout_auc"] = heldout_auc(engine, run.args.heldout, run.device)
    if run.rank == 0:
        if warning:
            print(warning, flush=True)
        print(meter.progress_line(metrics), flush=True)
    meter.restart()
    stop = stop_requested(run.args.stop_actor, run.world, run.device)
    if when.checkpoint or stop:
        save_checkpoint(run, engine, state, metrics)
    else:
        ray.train.report(metrics)
    return stop


def resume_or_new(run: Worker, engine) -> TrainState:
    state = TrainState.new(run.cfg.train.seed, run.rank, run.device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state.restore(checkpoints.restore(engine, checkpoint, run.rank, run.world, run.device))
        if run.rank == 0:
            print(f"resumed from step {state.step} (epoch {state.epoch}, {state.consumed} batches into it)", flush=True)
    return state


def new_guard(run: Worker, engine) -> DivergenceGuard:
    t = run.cfg.train
    return DivergenceGuard(
        getattr(engine.optimizer, "optimizer", engine.optimizer),  # inside a ZeRO / bf16 wrapper
        max_bad_steps=t.max_bad_steps,
        world=run.world,
        device=run.device,
        inject_nan_steps=t.inject_nan_steps,
    )


def new_meter(run: Worker, state: TrainState) -> Meter:
    t = run.cfg.train
    peak = run.args.peak_flops or peak_flops(run.device, precision=compute_precision(run.cfg))
    if peak is None and run.rank == 0:
        print(unknown_peak_warning(run.device, compute_precision(run.cfg)), flush=True)
    return Meter(
        objective=t.objective,
        rtd_weight=t.rtd_weight,
        max_steps=t.max_steps,
        tokens_per_step=t.batch_size * run.cfg.data.seq_len,
        flops_per_token=run_flops_per_token(run.cfg, run.args.vocab_size),
        peak_flops=peak,
        world=run.world,
        device=run.device,
        start_step=state.step,
    )


def device_batches(run: Worker, state: TrainState, epoch: int, skip: int):
    """One epoch of this worker's shard, masked, as tensors on its device."""
    batches = masked_batches(
        ray.train.get_dataset_shard("train"),
        run.cfg.data,
        run.micro_batch,
        run.special,
        run.args.vocab_size,
        state.mask_rng,
        shuffle_seed=epoch_shuffle_seed(run.cfg.train.seed, epoch, run.rank),
        skip=skip,
    )
    for batch in batches:
        yield {
            name: torch.from_numpy(value).to(run.device, non_blocking=True)
            for name, value in vars(batch).items()
            if value is not None
        }


def heldout_auc(engine, heldout: FixedCorruption, device: torch.device) -> float:
    """The discriminator's ROC-AUC on held-out text. Every rank runs it: under ZeRO-3 the forward
    pass gathers parameters from all."""
    import deepspeed  # imported by build_engine already, after DS_ACCELERATOR was set

    delta = engine.module.embedding_delta  # read outside the model's forward: ZeRO-3 must gather it
    with deepspeed.zero.GatheredParameters([delta]) if delta is not None else contextlib.nullcontext():
        return detection_auc(engine.module.discriminator, heldout, device=device, embedding_delta=delta)


def save_checkpoint(run: Worker, engine, state: TrainState, metrics: dict) -> None:
    """Every rank saves its shard (and its random streams) into one directory; Ray Train persists it."""
    cfg = run.cfg
    run_state = {
        "config": cfg.to_dict(),
        **state.position(),
        "vocab_size": run.args.vocab_size,
        "zero_stage": cfg.train.zero_stage,
        "world_size": run.world,
    }
    with tempfile.TemporaryDirectory() as directory:
        checkpoints.save(
            directory,
            engine,
            rank=run.rank,
            tokenizer_json=run.args.tokenizer_json,
            run_state=run_state,
            rng_state=state.rng_state(),
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    state.last_checkpoint = state.step
