"""`make bench`'s arms: the peer's objective against ours, torch.compile tracing each encoder whole,
and `bench --quick` running every arm end to end. Nothing is timed here (the bench measures)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from electra_ray.config import load_config
from electra_ray.model import build_model
from electra_ray.peer import objective_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}


def tiny_model(rtd_weight: float = 50.0):
    torch.manual_seed(0)
    return build_model(load_config("configs/tiny.yaml").model, 1000, SPECIAL["[PAD]"], rtd_weight)


def batch_with_padding():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (4, 64), generator=generator)
    ids[:, 0], ids[:, -1] = SPECIAL["[CLS]"], SPECIAL["[SEP]"]
    ids[1, 40:] = SPECIAL["[PAD]"]  # a short row
    return ids, (ids != SPECIAL["[PAD]"]).long()


def test_the_peer_computes_our_objective_given_the_same_masking():
    ids, attention_mask = batch_with_padding()
    check = objective_check(tiny_model(), SPECIAL, ids, attention_mask)
    # The peer masks about 15% of each row's maskable tokens (never [CLS], [SEP] or padding): at
    # least ceil(15% of them), at most ceil(15% of the row's length).
    maskable = (attention_mask.sum(1) - 2).tolist()
    assert sum(math.ceil(0.15 * n) for n in maskable) <= check.masked <= 4 * math.ceil(0.15 * 64)
    assert check.ours_mlm == pytest.approx(check.peer_mlm, rel=1e-5)
    assert check.ours_rtd == pytest.approx(check.peer_rtd, rel=1e-5)
    assert 5.0 < check.peer_mlm < 8.0  # ~ln(1000) for an untrained generator: a real loss, not a zero


def test_the_objective_check_sees_a_different_masking():
    """The check is not vacuous: another seed is another masking, hence another MLM loss."""
    ids, attention_mask = batch_with_padding()
    model = tiny_model()
    first = objective_check(model, SPECIAL, ids, attention_mask, seed=0)
    second = objective_check(model, SPECIAL, ids, attention_mask, seed=1)
    assert abs(first.peer_mlm - second.peer_mlm) > 1e-4
    assert second.ours_mlm == pytest.approx(second.peer_mlm, rel=1e-5)


def test_train_compile_traces_each_encoder_whole():
    """CPU dropout draws its bits in place (model.fast_dropout); under torch.compile it must defer
    to F.dropout, or every layer breaks the graph and compile runs slower than eager."""
    model = tiny_model()
    encoder = model.discriminator.electra
    ids, attention_mask = batch_with_padding()
    explanation = torch._dynamo.explain(encoder)(input_ids=ids, attention_mask=attention_mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.ray
def test_bench_quick_runs_every_arm(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "electra_ray.bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.load(open(out / "results.json"))
    assert report["quick"] and report["model"] == "tiny" and report["compile_backend"] == "eager"
    runs = report["step"]["runs"]
    assert set(runs) == {"ours", "floor", "plain", "compiled", "naive", "peer"}
    for kind, measured in runs.items():
        assert len(measured) == 1 and measured[0]["tokens_per_s"] > 0, kind
    # One round: each ratio is that round's ratio.
    assert report["step"]["ours_over_peer"] == pytest.approx(
        runs["ours"][0]["tokens_per_s"] / runs["peer"][0]["tokens_per_s"]
    )
    assert report["peer_objective"]["mlm_difference"] < 1e-4 * report["peer_objective"]["peer_mlm"]
    assert report["peer_objective"]["rtd_difference"] < 1e-4 * report["peer_objective"]["peer_rtd"]
    assert 0 < report["mfu"]["ours"] < 1 and 0 < report["mfu"]["compiled"] < 1
    assert "memory" not in report  # --quick leaves the ZeRO memory section out
    table = (out / "results.md").read_text()
    assert "ours / peer (electra-pytorch 0.1.2)" in table and "compiled / plain" in table
