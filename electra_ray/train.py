"""The per-worker training loop (Ray Train `train_loop_per_worker`) on a DeepSpeed engine.

Fixed step order on every rank: mask -> forward -> backward -> step; every `log_every` steps the
counters are all-reduced and reported; every `checkpoint_every` steps (and at the end) every rank
saves its ZeRO shard into one directory that Ray Train persists as a checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import time

import numpy as np
import torch

from electra_ray import checkpoint as checkpoints
from electra_ray.config import Config
from electra_ray.errors import TrainingError  # noqa: F401  (re-exported: pretrain and tests import it here)
from electra_ray.objective import STAT_NAMES, sampling_temperature, summarize

# Dense bf16 peak FLOP/s from the datasheets, for MFU on GPUs.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def lr_lambda(warmup_steps: int, max_steps: int):
    """Linear warm-up to the peak, then linear decay to 0 at max_steps (ELECTRA's schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (as google-research/electra's AdamW)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():  # shared embeddings appear once
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def deepspeed_config(cfg: Config, use_bf16: bool) -> dict:
    t, world = cfg.train, cfg.scaling.num_workers
    config = {
        "train_batch_size": t.batch_size,
        "train_micro_batch_size_per_gpu": t.batch_size // (world * t.grad_accum),
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage, "stage3_gather_16bit_weights_on_model_save": False},
        "bf16": {"enabled": use_bf16},
        # torch's fused AdamW (one kernel for all tensors, on CPU and GPU): DeepSpeed's FusedAdam
        # would be JIT-compiled and needs CUDA.
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": list(t.adam_betas),
                "eps": t.adam_eps,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
                "fused": True,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if t.optimizer == "electra":
        # The optimizer is handed to deepspeed.initialize (client_optimizer): DeepSpeed refuses one
        # there and one in its config, and wraps an optimizer it does not know in ZeRO only if told.
        del config["optimizer"]
        config["zero_allow_untested_optimizer"] = True
    return config


def client_optimizer(cfg: Config, model: torch.nn.Module):
    """(optimizer for deepspeed.initialize, LR factor per step for LambdaLR). train.optimizer=adamw:
    None (DeepSpeed builds torch's AdamW from its config) and lr_lambda; electra:
    google-research/electra's optimizer (optim.AdamWNoBiasCorrection) and schedule."""
    from electra_ray.optim import AdamWNoBiasCorrection, electra_lr_lambda

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


def peak_flops(device: torch.device, threads: int = 0) -> float:
    """The device's peak FLOP/s: datasheet bf16 on GPU, a measured fp32 matmul on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((flops for key, flops in GPU_PEAK_FLOPS.items() if key in name), 989e12)
    return cpu_matmul_flops(threads or torch.get_num_threads())


@functools.cache
def cpu_matmul_flops(threads: int) -> float:
    """FLOP/s of a 2048x2048 fp32 matmul over one second, measured once per process and thread count
    (each run of a sweep or test would otherwise spend a second of its cores on it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        a @ b
        n += 1
    torch.set_num_threads(previous)
    return n * 2 * 2048**3 / (time.perf_counter() - start)


def model_state_bytes(engine) -> int:
    """Bytes of model state this rank holds: parameters (or their ZeRO partitions), gradients
    (or partitions and reduction buckets), optimizer state and any fp32 master copies. Walks the
    engine's tensors and counts each storage once."""
    seen: set[int] = set()

    def size(value, depth: int = 0) -> int:
        if torch.is_tensor(value):
            if value.device.type == "meta":  # shape-only bookkeeping (ZeRO's round-robin metadata)
                return 0
            storage = value.untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() == 0:
                return 0
            seen.add(storage.data_ptr())
            return storage.nbytes()
        if depth < 3 and isinstance(value, (list, tuple)):
            return sum(size(v, depth + 1) for v in value)
        if depth < 3 and isinstance(value, dict):
            return sum(size(v, depth + 1) for v in value.values())
        return 0

    total = 0
    for param in engine.module.parameters():
        total += size(getattr(param, "ds_tensor", param.data)) + size(param.grad)
    optimizer = engine.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)
    total += sum(size(state) for state in inner.state.values())
    if optimizer is not inner:  # a ZeRO wrapper: flat fp32 partitions, gradient partitions, buckets
        total += sum(size(value) for value in vars(optimizer).values())
    return total


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _format_eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class StopRequest:
    """A flag the driver raises on SIGTERM / Ctrl-C (a Ray actor); workers read it at logging
    steps, agree on it, save a checkpoint and return."""

    def __init__(self):
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def is_requested(self) -> bool:
        return self.requested


def stop_requested(actor, world: int, device: torch.device) -> bool:
    if actor is None:
        return False
    import ray
    import torch.distributed as dist

    flag = torch.tensor([float(ray.get(actor.is_requested.remote()))], device=device)
    if world > 1:  # ranks may read the flag on either side of its change: agree on one answer
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _quiet_report_logging() -> None:
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
    import ray.train

    try:
        _train(loop_config)
    except TrainingError as error:
        ray.train.report({"training_error": str(error)})


def _train(loop_config: dict) -> None:
    import ray.train
    import torch.distributed as dist

    # A failure here (a config or tokenizer the workers cannot use) is the same on every attempt:
    # reported as a training error, never retried train.max_failures times.
    with setup_errors():
        cfg = Config.from_dict(loop_config["config"])
        _quiet_report_logging()
        tokenizer_json: str = loop_config["tokenizer_json"]
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        use_gpu = cfg.scaling.use_gpu
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")
        import deepspeed
        from ray.train.torch import get_device

        from electra_ray.data import masked_batches, tokenizer_from_json
        from electra_ray.evaluate import detection_auc
        from electra_ray.model import build_pretraining_model, run_flops_per_token

        if not use_gpu and loop_config.get("num_threads"):
            torch.set_num_threads(loop_config["num_threads"])
        device = get_device() if use_gpu else torch.device("cpu")
        use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and use_gpu)
        _, special = tokenizer_from_json(tokenizer_json)
        vocab_size = loop_config["vocab_size"]

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_pretraining_model(cfg, vocab_size, special["[PAD]"])
        optimizer, schedule = client_optimizer(cfg, model)
        engine, _, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(model, cfg.train.weight_decay),
            optimizer=optimizer,
            config=deepspeed_config(cfg, use_bf16),
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        )

    if world == 1 and cfg.train.zero_stage == 0:
        # One rank has nothing to all-reduce; DeepSpeed would still copy every gradient into a
        # bucket and back (3% of a CPU step for ELECTRA-Small).
        engine.enable_backward_allreduce = False

    # Masking and sampling streams differ per rank (different data) and are part of a checkpoint.
    mask_rng = np.random.default_rng([cfg.train.seed, rank])
    sample_rng = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + rank)
    step, epoch, consumed = 0, 0, 0  # consumed: micro-batches of this epoch already trained on
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = checkpoints.restore(engine, checkpoint, rank, world, device)
        step, epoch, consumed = state["step"], state["epoch"], state.get("consumed", 0)
        mask_rng.bit_generator.state = state["rng"]["mask"]
        sample_rng.set_state(state["rng"]["sample"])
        torch.set_rng_state(state["rng"]["torch"])
        if rank == 0:
            print(f"resumed from step {step} (epoch {epoch}, {consumed} batches into it)", flush=True)

    def save_checkpoint(metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as directory:
            checkpoints.save(
                directory,
                engine,
                rank=rank,
                tokenizer_json=tokenizer_json,
                run_state={
                    "config": cfg.to_dict(),
                    "step": step,
                    "epoch": epoch,
                    "consumed": consumed,
                    "vocab_size": vocab_size,
                    "zero_stage": cfg.train.zero_stage,
                    "world_size": world,
                },
                rng_state={
                    "mask": mask_rng.bit_generator.state,
                    "sample": sample_rng.get_state(),
                    "torch": torch.get_rng_state(),
                },
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    shard = ray.train.get_dataset_shard("train")
    micro_batch = cfg.train.batch_size // (world * cfg.train.grad_accum)
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    flops_token = run_flops_per_token(cfg, vocab_size)
    peak = loop_config.get("peak_flops") or peak_flops(device)
    stats = torch.zeros(len(STAT_NAMES), device=device)
    interval_start, interval_steps, run_start, start_step = time.perf_counter(), 0, time.perf_counter(), step
    metrics: dict = {}
    micro_steps, nan_steps = 0, set(cfg.train.inject_nan_steps)
    # Divergence guard, on the device: a step whose loss is not finite on any rank leaves the
    # weights and optimizer state as they were (fused AdamW's found_inf, the flag AMP's GradScaler
    # sets). The counters are read at logging steps only, so the hot loop has no host sync.
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # inside a ZeRO / bf16 wrapper
    step_finite = torch.ones((), dtype=torch.bool, device=device)
    skipped, bad_in_a_row, bad_loss = (torch.zeros((), device=device) for _ in range(3))
    reported_skipped = 0
    checkpoint_step = step if checkpoint else None
    stop_request = loop_config.get("stop_actor")  # the driver's StopRequest actor
    heldout = loop_config.get("heldout")  # evaluate.FixedCorruption of held-out text, for heldout_auc

    t = cfg.train
    while step < cfg.train.max_steps:
        for batch in masked_batches(
            shard,
            cfg.data,
            micro_batch,
            special,
            vocab_size,
            mask_rng,
            shuffle_seed=cfg.train.seed + 1000 * epoch + rank,
            skip=consumed,
        ):
            consumed += 1
            inputs = {
                name: torch.from_numpy(value).to(device, non_blocking=True)
                for name, value in vars(batch).items()
                if value is not None
            }
            if t.temperature_steps:
                engine.module.temperature = sampling_temperature(
                    step, t.temperature_start, t.temperature, t.temperature_steps
                )
            output = engine(**inputs, generator_rng=sample_rng)
            loss = output.loss
            if step + 1 in nan_steps:  # injected once per listed step (see train.inject_nan_steps)
                nan_steps.remove(step + 1)
                loss = loss * float("nan")
            finite = torch.isfinite(loss.detach())
            step_finite *= finite
            bad_loss = torch.where(finite, bad_loss, loss.detach())
            engine.backward(loss)
            stats += torch.where(finite, output.stats, 0.0)
            micro_steps += 1
            boundary = micro_steps % cfg.train.grad_accum == 0
            last = boundary and step + 1 >= cfg.train.max_steps
            log_now = boundary and ((step + 1) % cfg.train.log_every == 0 or last)
            if log_now:  # gradients are still held here; the step frees them
                state_bytes = model_state_bytes(engine)
            if boundary:
                if world > 1:
                    dist.all_reduce(step_finite, op=dist.ReduceOp.MIN)
                optimizer.found_inf = 1.0 - step_finite.float()
            engine.step()
            if not boundary:
                continue
            skipped += optimizer.found_inf
            bad_in_a_row = (bad_in_a_row + 1) * optimizer.found_inf
            step_finite.fill_(True)
            step += 1
            interval_steps += 1
            stop = False
            checkpoint_now = step % cfg.train.checkpoint_every == 0 or last
            if log_now or checkpoint_now:
                in_a_row = int(bad_in_a_row.item())
                if in_a_row > cfg.train.max_bad_steps:
                    last_good = f"step {checkpoint_step}" if checkpoint_step is not None else "none yet"
                    raise TrainingError(
                        f"loss is {bad_loss.item()} at step {step} for {in_a_row} steps in a row; last good "
                        f"checkpoint: {last_good}; lower train.lr or raise train.warmup_steps"
                    )
            if log_now:
                if rank == 0 and skipped.item() > reported_skipped:
                    print(
                        f"warning: {int(skipped.item()) - reported_skipped} step(s) skipped for a non-finite loss "
                        f"since the last report ({int(skipped.item())} in all, {in_a_row} in a row)",
                        flush=True,
                    )
                reported_skipped = int(skipped.item())
                if world > 1:
                    dist.all_reduce(stats)
                elapsed = time.perf_counter() - interval_start
                tokens_per_s = interval_steps * tokens_per_step / elapsed
                summary = summarize(stats.tolist())
                metrics = {
                    "step": step,
                    "epoch": epoch,
                    "loss": summary["mlm_loss"] + cfg.train.rtd_weight * summary["rtd_loss"],
                    **summary,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens_per_s,
                    "mfu": flops_token * tokens_per_s / (peak * world),
                    "skipped_steps": reported_skipped,
                    "model_state_mb": state_bytes / 2**20,
                    "peak_rss_mb": peak_rss_bytes() / 2**20,
                }
                if heldout is not None and (step % cfg.train.eval_every == 0 or last):
                    # Every rank runs it: under ZeRO-3 the forward pass gathers parameters from all.
                    delta = engine.module.embedding_delta  # read outside the model's forward: ZeRO-3 must gather it
                    with deepspeed.zero.GatheredParameters([delta]) if delta is not None else contextlib.nullcontext():
                        metrics["heldout_auc"] = detection_auc(
                            engine.module.discriminator, heldout, device=device, embedding_delta=delta
                        )
                if rank == 0:
                    rate = (step - start_step) / (time.perf_counter() - run_start)
                    losses = (
                        f"| mlm acc {summary['gen_accuracy']:.3f}"
                        if cfg.train.objective == "mlm"
                        else (
                            f"(mlm {summary['mlm_loss']:.3f}, rtd {summary['rtd_loss']:.4f}) | "
                            f"gen acc {summary['gen_accuracy']:.3f} | disc acc {summary['disc_accuracy']:.3f}"
                        )
                    )
                    if "heldout_auc" in metrics:
                        losses += f" | held-out AUC {metrics['heldout_auc']:.3f}"
                    print(
                        f"step {step}/{cfg.train.max_steps} | loss {metrics['loss']:.3f} {losses} | "
                        f"{tokens_per_s:,.0f} tok/s | MFU {metrics['mfu']:.1%} | "
                        f"ETA {_format_eta((cfg.train.max_steps - step) / rate)}",
                        flush=True,
                    )
                stats.zero_()
                interval_start, interval_steps = time.perf_counter(), 0
                stop = stop_requested(stop_request, world, device)
                if not (checkpoint_now or stop):
                    ray.train.report(metrics)
            if checkpoint_now or stop:
                save_checkpoint(metrics)
                checkpoint_step = step
            if last or stop:
                break
        else:
            if consumed == 0:
                raise TrainingError(
                    f"worker {rank} got no full batch of {micro_batch} sequences from the corpus: "
                    f"lower train.batch_size or data.seq_len, or use a larger corpus"
                )
            epoch, consumed = epoch + 1, 0
            continue
        break
