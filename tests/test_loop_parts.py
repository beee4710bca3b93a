"""The worker loop's pieces with state of their own, driven without Ray: the divergence guard, the
meter, the cadence, the training state and the micro-batch iterator."""

import math

import numpy as np
import pytest
import torch

from electra_ray.errors import TrainingError
from electra_ray.guard import DivergenceGuard
from electra_ray.meter import Meter, format_eta
from electra_ray.objective import STAT_NAMES
from electra_ray.state import TrainState, cadence, micro_batches

CPU = torch.device("cpu")


def fused_adamw():
    weight = torch.nn.Parameter(torch.ones(3))
    return weight, torch.optim.AdamW([weight], lr=0.1, fused=True)


def guarded_step(guard, weight, optimizer, loss_scale: float, step: int):
    loss = guard.observe((weight * loss_scale).sum(), step)
    loss.backward()
    guard.arm()
    optimizer.step()
    optimizer.zero_grad()
    guard.after_step()


def test_guard_skips_a_non_finite_step_and_counts_it():
    weight, optimizer = fused_adamw()
    guard = DivergenceGuard(optimizer, max_bad_steps=2, world=1, device=CPU)
    guarded_step(guard, weight, optimizer, 1.0, step=0)
    moved = weight.detach().clone()
    assert not torch.equal(moved, torch.ones(3))  # a finite step updates
    state = {k: v.clone() for k, v in optimizer.state[weight].items()}
    guarded_step(guard, weight, optimizer, float("nan"), step=1)
    assert torch.equal(weight.detach(), moved)  # the NaN step changed neither weights...
    assert all(torch.equal(optimizer.state[weight][k], v) for k, v in state.items())  # ...nor optimizer state
    assert math.isnan(guard.bad_loss.item()) and guard.in_a_row.item() == 1 and guard.skipped.item() == 1
    warning = guard.check(step=2, last_checkpoint=None)
    assert warning == "warning: 1 step(s) skipped for a non-finite loss since the last report (1 in all, 1 in a row)"
    assert guard.check(step=2, last_checkpoint=None) is None  # reported once
    guarded_step(guard, weight, optimizer, 1.0, step=2)
    assert guard.in_a_row.item() == 0 and guard.skipped.item() == 1  # a finite step ends the run of bad ones


def test_guard_raises_after_more_than_max_bad_steps_in_a_row():
    weight, optimizer = fused_adamw()
    guard = DivergenceGuard(optimizer, max_bad_steps=2, world=1, device=CPU)
    for step in range(2):
        guarded_step(guard, weight, optimizer, float("inf"), step)
    guard.check(step=2, last_checkpoint=None)  # 2 in a row: allowed
    guarded_step(guard, weight, optimizer, float("inf"), 2)
    with pytest.raises(
        TrainingError, match=r"loss is inf at step 3 for 3 steps in a row; last good checkpoint: step 1"
    ):
        guard.check(step=3, last_checkpoint=1)


def test_guard_injects_nan_once_at_each_listed_step():
    weight, optimizer = fused_adamw()
    guard = DivergenceGuard(optimizer, max_bad_steps=5, world=1, device=CPU, inject_nan_steps=[2])
    assert torch.isfinite(guard.observe(weight.sum(), step=0))
    assert torch.isnan(guard.observe(weight.sum(), step=1)) and not guard.finite  # step 2 (1-based)
    assert torch.isfinite(guard.observe(weight.sum(), step=1))  # once only


def test_meter_sums_counters_of_finite_micro_batches_and_reports_the_interval():
    meter = Meter(
        objective="electra",
        rtd_weight=50.0,
        max_steps=10,
        tokens_per_step=1000,
        flops_per_token=2e6,
        peak_flops=1e12,
        world=1,
        device=CPU,
        start_step=0,
    )
    stats = torch.zeros(len(STAT_NAMES))
    for name, value in {"mlm_loss_sum": 6.0, "masked": 3.0, "rtd_loss_sum": 0.8, "tokens": 20.0, "batches": 1}.items():
        stats[STAT_NAMES.index(name)] = value
    meter.accumulate(stats, torch.tensor(True))
    meter.accumulate(stats * 100, torch.tensor(False))  # a skipped micro-batch's counters are left out
    meter.step()
    meter.step()
    metrics = meter.report(step=2, epoch=0, lr=1e-4, skipped_steps=1)
    assert metrics["mlm_loss"] == pytest.approx(2.0) and metrics["rtd_loss"] == pytest.approx(0.04)
    assert metrics["loss"] == pytest.approx(2.0 + 50.0 * 0.04)
    assert metrics["skipped_steps"] == 1 and metrics["lr"] == 1e-4 and metrics["step"] == 2
    assert metrics["tokens_per_s"] > 0
    assert metrics["mfu"] == pytest.approx(2e6 * metrics["tokens_per_s"] / 1e12)
    assert metrics["peak_rss_mb"] > 0
    assert not meter.stats.any()  # the next interval starts from zero
    line = meter.progress_line(metrics)
    assert line.startswith("step 2/10 | loss 4.000 (mlm 2.000, rtd 0.0400) | gen acc") and "ETA" in line
    meter.restart()
    assert meter.interval_steps == 0


def test_format_eta():
    assert format_eta(59) == "0m59s" and format_eta(3600 + 120) == "1h02m"


def test_cadence_logs_at_every_checkpoint_and_evaluates_at_logging_steps_only():
    log, checkpoint, evaluate = (
        [s for s in range(1, 13) if getattr(cadence(s, 12, 4, 6, 8), what)]
        for what in ("log", "checkpoint", "evaluate")
    )
    assert checkpoint == [6, 12]
    assert log == [4, 6, 8, 12]  # every checkpoint step reports its own metrics
    assert evaluate == [8, 12]  # and the last step
    assert [s for s in range(1, 13) if cadence(s, 12, 4, 6).last] == [12]
    assert not any(cadence(s, 12, 4, 6).evaluate for s in range(1, 13))  # eval_every 0: off


def test_micro_batches_run_epochs_and_resume_where_a_checkpoint_left_off():
    epochs = {0: ["a0", "a1", "a2"], 1: ["b0", "b1", "b2"], 2: ["c0", "c1", "c2"]}

    def epoch_batches(epoch, skip):
        return epochs[epoch][skip:]

    state = TrainState.new(seed=1, rank=0, device=CPU)
    stream = micro_batches(epoch_batches, state, rank=0, micro_batch=4)
    seen = [next(stream) for _ in range(4)]
    assert seen == ["a0", "a1", "a2", "b0"] and (state.epoch, state.consumed) == (1, 1)
    resumed = TrainState.new(seed=1, rank=0, device=CPU)
    resumed.epoch, resumed.consumed = state.epoch, state.consumed
    rest = micro_batches(epoch_batches, resumed, rank=0, micro_batch=4)
    assert [next(rest) for _ in range(3)] == ["b1", "b2", "c0"]


def test_micro_batches_refuse_a_shard_without_a_full_batch():
    state = TrainState.new(seed=1, rank=3, device=CPU)
    with pytest.raises(TrainingError, match="worker 3 got no full batch of 8 sequences"):
        next(micro_batches(lambda epoch, skip: [], state, rank=3, micro_batch=8))


def test_train_state_restores_its_position_and_random_streams():
    state = TrainState.new(seed=7, rank=1, device=CPU)
    state.step, state.epoch, state.consumed = 40, 2, 5
    state.mask_rng.random(10)
    saved = {**state.position(), "rng": state.rng_state()}
    expected_mask = state.mask_rng.random(3)
    expected_sample = torch.rand(3, generator=state.sample_rng)
    expected_torch = torch.rand(3)

    restored = TrainState.new(seed=7, rank=1, device=CPU)
    restored.restore({**saved, "rng": saved["rng"]})
    assert (restored.step, restored.epoch, restored.consumed, restored.last_checkpoint) == (40, 2, 5, 40)
    assert np.array_equal(restored.mask_rng.random(3), expected_mask)
    assert torch.equal(torch.rand(3, generator=restored.sample_rng), expected_sample)
    assert torch.equal(torch.rand(3), expected_torch)


def test_train_state_streams_differ_per_rank():
    a, b = TrainState.new(seed=7, rank=0, device=CPU), TrainState.new(seed=7, rank=1, device=CPU)
    assert not np.array_equal(a.mask_rng.random(4), b.mask_rng.random(4))
    assert not torch.equal(torch.rand(4, generator=a.sample_rng), torch.rand(4, generator=b.sample_rng))


def test_guard_counts_fp16_overflows_apart_from_non_finite_losses():
    """An fp16 overflow (finite loss, DeepSpeed skipped the step for its scaled gradients) is an
    overflow step, never a bad one; a non-finite loss is skipped and counted once, as the guard's."""
    weight, optimizer = fused_adamw()
    guard = DivergenceGuard(optimizer, max_bad_steps=1, world=1, device=CPU)
    for step in range(3):  # more overflows in a row than max_bad_steps allows bad steps
        guard.observe(weight.sum(), step)
        guard.arm()
        guard.after_step(overflow=True)
    assert guard.check(step=3, last_checkpoint=None) is None  # no warning, no TrainingError
    assert (guard.reported_overflows, guard.reported_skipped, guard.in_a_row.item()) == (3, 0, 0)
    guard.observe(weight.sum() * float("nan"), 3)
    guard.arm()
    guard.after_step(overflow=True)  # DeepSpeed sees the NaN loss's gradients overflow too
    assert guard.check(step=4, last_checkpoint=None).startswith("warning: 1 step(s) skipped for a non-finite loss")
    assert (guard.reported_overflows, guard.reported_skipped, guard.in_a_row.item()) == (3, 1, 1)


def test_meter_reports_no_mfu_without_a_peak_and_fp16s_loss_scale():
    meter = Meter(
        objective="mlm",
        rtd_weight=50.0,
        max_steps=10,
        tokens_per_step=1000,
        flops_per_token=2e6,
        peak_flops=None,
        world=1,
        device=CPU,
        start_step=0,
    )
    meter.step()
    metrics = meter.report(step=1, epoch=0, lr=1e-4, skipped_steps=0, overflow_steps=2, loss_scale=16384.0)
    assert metrics["mfu"] is None and metrics["overflow_steps"] == 2 and metrics["loss_scale"] == 16384.0
    line = meter.progress_line(metrics)
    assert "| loss scale 16384 (2 overflow steps) |" in line and "| MFU n/a |" in line
    assert "loss_scale" not in meter.report(step=2, epoch=0, lr=1e-4, skipped_steps=0)  # bf16 / fp32


@pytest.mark.parametrize(
    "name, precision, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989),
        ("NVIDIA H100 80GB HBM3", "fp32", 67),
        ("NVIDIA H100 PCIe", "bf16", 756),
        ("NVIDIA H100 NVL", "fp16", 835),
        ("NVIDIA H200", "bf16", 989),
        ("NVIDIA A100-SXM4-40GB", "bf16", 312),
        ("NVIDIA A100-SXM4-80GB", "fp16", 312),
        ("NVIDIA A100 80GB PCIe", "fp32", 19.5),
        ("NVIDIA L4", "bf16", 121),
        ("NVIDIA L40S", "fp16", 362),
        ("NVIDIA A10G", "bf16", 125),
        ("NVIDIA A10", "fp32", 31.2),
        ("Tesla T4", "fp16", 65),
        ("Tesla T4", "bf16", None),  # no bf16 units: MFU is null, not measured against another peak
        ("Tesla V100-SXM2-16GB", "fp16", 125),
        ("Tesla V100-PCIE-32GB", "fp16", 112),
        ("Tesla V100S-PCIE-32GB", "fp16", 130),
        ("NVIDIA GeForce RTX 2080 Ti", "fp16", 53.8),
        ("GeForce RTX 2080 Ti", "fp16", 53.8),  # older drivers leave out "NVIDIA"
        ("NVIDIA GeForce RTX 3090", "bf16", 71),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
        ("NVIDIA GeForce RTX 3090 Ti", "bf16", None),  # a variant the table does not know
        ("NVIDIA GeForce RTX 4090 Laptop GPU", "bf16", None),
        ("NVIDIA L40", "bf16", None),  # neither the L4 nor the L40S
        ("NVIDIA GH200 480GB", "bf16", None),
        ("AMD Instinct MI300X", "bf16", None),
    ],
)
def test_gpu_peaks_by_the_name_torch_reports(name, precision, tflops):
    from electra_ray.meter import gpu_peak_flops

    peak = gpu_peak_flops(name, precision)
    assert peak == (pytest.approx(tflops * 1e12) if tflops else None)


def test_fp32_on_gpu_uses_the_tf32_peak_only_where_torch_allows_tf32():
    from electra_ray.meter import gpu_peak_flops

    assert gpu_peak_flops("NVIDIA A100-SXM4-40GB", "fp32", tf32=True) == pytest.approx(156e12)
    assert gpu_peak_flops("NVIDIA A100-SXM4-40GB", "fp32", tf32=False) == pytest.approx(19.5e12)
    assert gpu_peak_flops("Tesla V100-SXM2-16GB", "fp32", tf32=True) == pytest.approx(15.7e12)  # has no TF32
