"""What a worker measures between logging steps: the objective's counters, tokens/s, MFU, ETA,
memory, and the progress line. Counters stay on the device until a logging step reads them."""

from __future__ import annotations

import functools
import resource
import time

import torch
import torch.distributed as dist

from electra_ray.objective import STAT_NAMES, summarize

# Dense bf16 peak FLOP/s from the datasheets, for MFU on GPUs.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


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
    return measure_matmul_flops(threads)


def measure_matmul_flops(threads: int) -> float:
    """cpu_matmul_flops, measured afresh."""
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def format_eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Meter:
    """Counters and clocks of one worker between logging steps.

    `accumulate` adds a micro-batch's counters on the device (no host sync); `step` counts an
    optimizer step; `report` sums the counters over the workers and turns them into the metrics
    of the interval; `progress_line` is what rank 0 prints; `restart` opens the next interval.
    """

    def __init__(
        self,
        *,
        objective: str,
        rtd_weight: float,
        max_steps: int,
        tokens_per_step: int,
        flops_per_token: float,
        peak_flops: float,
        world: int,
        device: torch.device,
        start_step: int,
    ):
        self.objective, self.rtd_weight, self.max_steps = objective, rtd_weight, max_steps
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world = peak_flops, world
        self.stats = torch.zeros(len(STAT_NAMES), device=device)
        self.run_start, self.start_step = time.perf_counter(), start_step
        self.state_bytes = 0
        self.restart()

    def accumulate(self, stats: torch.Tensor, finite: torch.Tensor) -> None:
        """A micro-batch's counters; those of a non-finite loss are left out (its step is skipped)."""
        self.stats += torch.where(finite, stats, 0.0)

    def step(self) -> None:
        self.interval_steps += 1

    def probe_memory(self, engine) -> None:
        """Model state bytes, measured before the optimizer step frees the gradients."""
        self.state_bytes = model_state_bytes(engine)

    def report(self, step: int, epoch: int, lr: float, skipped_steps: int) -> dict:
        """The interval's metrics (a collective: every rank calls it at the same step)."""
        if self.world > 1:
            dist.all_reduce(self.stats)
        tokens_per_s = self.interval_steps * self.tokens_per_step / (time.perf_counter() - self.interval_start)
        summary = summarize(self.stats.tolist())
        self.stats.zero_()
        return {
            "step": step,
            "epoch": epoch,
            "loss": summary["mlm_loss"] + self.rtd_weight * summary["rtd_loss"],
            **summary,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "mfu": self.flops_per_token * tokens_per_s / (self.peak_flops * self.world),
            "skipped_steps": skipped_steps,
            "model_state_mb": self.state_bytes / 2**20,
            "peak_rss_mb": peak_rss_bytes() / 2**20,
        }

    def progress_line(self, metrics: dict) -> str:
        step = metrics["step"]
        rate = (step - self.start_step) / (time.perf_counter() - self.run_start)
        if self.objective == "mlm":
            losses = f"| mlm acc {metrics['gen_accuracy']:.3f}"
        else:
            losses = (
                f"(mlm {metrics['mlm_loss']:.3f}, rtd {metrics['rtd_loss']:.4f}) | "
                f"gen acc {metrics['gen_accuracy']:.3f} | disc acc {metrics['disc_accuracy']:.3f}"
            )
        if "heldout_auc" in metrics:
            losses += f" | held-out AUC {metrics['heldout_auc']:.3f}"
        return (
            f"step {step}/{self.max_steps} | loss {metrics['loss']:.3f} {losses} | "
            f"{metrics['tokens_per_s']:,.0f} tok/s | MFU {metrics['mfu']:.1%} | "
            f"ETA {format_eta((self.max_steps - step) / rate)}"
        )

    def restart(self) -> None:
        """Open the next interval (after a logging step's evaluation and report, which it leaves out)."""
        self.interval_start, self.interval_steps = time.perf_counter(), 0
