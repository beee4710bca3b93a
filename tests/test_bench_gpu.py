"""The GPU check's CPU dry run: the same code path as `make bench-gpu` (every section: throughput
and the micro-batch search, the SDPA kernel, torch.compile, bf16 vs fp32 parity, pre-training
through Ray + DeepSpeed with held-out AUCs), on tiny shapes, so scarce GPU minutes are never
spent on a bug. Nothing is timed: only that each section ran and wrote what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.ray  # trains: a subprocess of several minutes
def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "electra_ray.bench", "--gpu", "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.load(open(out / "gpu.json"))
    assert report["mode"] == "dry-run"
    assert report["errors"] == {} and report["skipped"] == [], report["errors"]
    assert report["shapes"], "no shape measured"
    for label, shape in report["shapes"].items():
        assert shape["tokens_per_s"] > 0 and 0 < shape["mfu"] < 1, label
        assert shape["sequences_per_s"] * shape["shape"]["seq_len"] == pytest.approx(shape["tokens_per_s"])
    assert report["compile"]["step_s"] > 0 and report["compile"]["eager_step_s"] > 0
    parity = report["parity"]
    assert parity["loss"]["relative_difference"] < 0.05, parity  # bf16 follows fp32 on the same batches
    pretrain = report["pretrain"]
    assert pretrain["returncode"] == 0 and not pretrain["timed_out"], pretrain
    steps = [line["step"] for line in pretrain["logged"]]
    assert steps == list(range(1, len(steps) + 1)) and steps, pretrain["logged"]
    assert all(0.0 <= line["heldout_auc"] <= 1.0 for line in pretrain["logged"])
    table = (out / "gpu.md").read_text()
    assert "| measure | value |" in table and "pre-training, our full path" in table
