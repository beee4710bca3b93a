"""What a worker measures between logging steps: the objective's counters, tokens/s, MFU, ETA,
memory, and the progress line. Counters stay on the device until a logging step reads them."""

from __future__ import annotations

import functools
import re
import resource
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from electra_ray.objective import STAT_NAMES, summarize
from electra_ray.progress import format_eta


@dataclass(frozen=True)
class GpuPeak:
    """A GPU model's dense peak TFLOP/s (without the 2:4 sparsity that datasheets also quote) for
    each precision a run computes in; None where the card has no such unit. fp16 is the rate with
    fp32 accumulation, as torch's matmuls accumulate (GeForce cards run half of it; their
    fp16-accumulate figure is not what we get)."""

    model: str
    pattern: str  # a regex searched in the lowercased torch.cuda.get_device_name()
    fp16: float
    bf16: float | None
    tf32: float | None
    fp32: float


# Sources: NVIDIA datasheets (A100: nvidia-a100-datasheet-us-nvidia-1758950-r4; H100: "NVIDIA H100
# Tensor Core GPU" datasheet, SXM / PCIe / NVL columns; H200: "NVIDIA H200 Tensor Core GPU"
# datasheet, SXM / NVL; L4, L40S, A10, T4 datasheets; V100: volta-v100-datasheet-update-us-1165301-r5)
# and the architecture whitepapers for GeForce cards (Turing: RTX 2080 Ti reference clocks; Ampere
# GA102: RTX 3090; Ada: RTX 4090). NVIDIA publishes no A10G datasheet: AWS's A10G is a GA102 like
# the A10, whose figures it gets here (as Lightning's throughput table does); measure before
# trusting its MFU to the percent. Order matters: the first pattern that matches wins.
GPU_PEAKS = (
    GpuPeak("H100 PCIe", r"\bh100\b.*\b(pcie|hbm2e)\b", 756, 756, 378, 51),
    GpuPeak("H100 NVL", r"\bh100\b.*\bnvl\b", 835, 835, 418, 60),
    GpuPeak("H100 SXM", r"\bh100\b", 989, 989, 494, 67),
    GpuPeak("H200 NVL", r"\bh200\b.*\bnvl\b", 835, 835, 418, 60),
    GpuPeak("H200 SXM", r"\bh200\b", 989, 989, 494, 67),
    GpuPeak("A100", r"\ba100\b", 312, 312, 156, 19.5),
    GpuPeak("L40S", r"\bl40s\b", 362, 362, 183, 91.6),
    GpuPeak("L4", r"\bl4\b", 121, 121, 60, 30.3),
    GpuPeak("A10G", r"\ba10g\b", 125, 125, 62.5, 31.2),
    GpuPeak("A10", r"\ba10\b", 125, 125, 62.5, 31.2),
    GpuPeak("T4", r"\bt4\b", 65, None, None, 8.1),
    GpuPeak("V100S PCIe", r"\bv100s\b", 130, None, None, 16.4),
    GpuPeak("V100 PCIe", r"\bv100\b.*\bpcie\b", 112, None, None, 14),
    GpuPeak("V100 SXM2", r"\bv100\b", 125, None, None, 15.7),
    # Anchored: the Ti / D / Laptop variants of these names have other peaks.
    GpuPeak("RTX 2080 Ti", r"\brtx 2080 ti$", 53.8, None, None, 13.4),
    GpuPeak("RTX 3090", r"\brtx 3090$", 71, 71, 35.6, 35.6),
    GpuPeak("RTX 4090", r"\brtx 4090$", 165.2, 165.2, 82.6, 82.6),
)


def gpu_model(name: str) -> GpuPeak | None:
    """The GPU_PEAKS entry of a device name as torch reports it ('NVIDIA H100 80GB HBM3', 'Tesla T4')."""
    lowered = " ".join(name.lower().split())
    return next((gpu for gpu in GPU_PEAKS if re.search(gpu.pattern, lowered)), None)


def gpu_peak_flops(name: str, precision: str, tf32: bool = False) -> float | None:
    """Datasheet peak FLOP/s of the GPU `name` computing in `precision` (fp16, bf16, fp32; `tf32`:
    fp32 matmuls may use TF32 tensor cores); None for a GPU or precision the table lacks: no MFU
    beats one against a guessed peak."""
    gpu = gpu_model(name)
    if gpu is None:
        return None
    if precision == "fp32":
        tflops = gpu.tf32 if tf32 and gpu.tf32 else gpu.fp32
    else:
        tflops = getattr(gpu, precision)
    return tflops * 1e12 if tflops else None


def peak_flops(device: torch.device, threads: int = 0, precision: str = "fp32") -> float | None:
    """The device's peak FLOP/s: the datasheet's for `precision` on a GPU (None: not in
    GPU_PEAKS), a measured fp32 matmul on CPU."""
    if device.type == "cuda":
        tf32 = torch.get_float32_matmul_precision() != "highest"  # torch.backends.cuda.matmul.allow_tf32
        return gpu_peak_flops(torch.cuda.get_device_name(device), precision, tf32)
    return cpu_matmul_flops(threads or torch.get_num_threads())


def unknown_peak_warning(device: torch.device, precision: str) -> str:
    return (
        f"warning: no datasheet {precision} peak for GPU {torch.cuda.get_device_name(device)!r} in "
        f"electra_ray.meter.GPU_PEAKS: mfu is reported as null"
    )


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
        peak_flops: float | None,
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

    def report(
        self, step: int, epoch: int, lr: float, skipped_steps: int, overflow_steps: int = 0, loss_scale=None
    ) -> dict:
        """The interval's metrics (a collective: every rank calls it at the same step). mfu is None
        without a known peak; loss_scale (fp16's dynamic loss scale) is reported when given."""
        if self.world > 1:
            dist.all_reduce(self.stats)
        tokens_per_s = self.interval_steps * self.tokens_per_step / (time.perf_counter() - self.interval_start)
        summary = summarize(self.stats.tolist())
        self.stats.zero_()
        mfu = self.flops_per_token * tokens_per_s / (self.peak_flops * self.world) if self.peak_flops else None
        metrics = {
            "step": step,
            "epoch": epoch,
            "loss": summary["mlm_loss"] + self.rtd_weight * summary["rtd_loss"],
            **summary,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "skipped_steps": skipped_steps,
            "overflow_steps": overflow_steps,
            "model_state_mb": self.state_bytes / 2**20,
            "peak_rss_mb": peak_rss_bytes() / 2**20,
        }
        if loss_scale is not None:
            metrics["loss_scale"] = loss_scale
        return metrics

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
        if "loss_scale" in metrics:
            losses += f" | loss scale {metrics['loss_scale']:g} ({metrics['overflow_steps']} overflow steps)"
        mfu = f"{metrics['mfu']:.1%}" if metrics["mfu"] is not None else "n/a"
        return (
            f"step {step}/{self.max_steps} | loss {metrics['loss']:.3f} {losses} | "
            f"{metrics['tokens_per_s']:,.0f} tok/s | MFU {mfu} | "
            f"ETA {format_eta((self.max_steps - step) / rate)}"
        )

    def restart(self) -> None:
        """Open the next interval (after a logging step's evaluation and report, which it leaves out)."""
        self.interval_start, self.interval_steps = time.perf_counter(), 0
