"""The equal-compute experiment end to end, shrunk: configs/compare-tiny.yaml with a 2-layer encoder,
20 ELECTRA steps and small fine-tunes, on a real local Ray."""

import json
import os
import subprocess
import sys

import pytest

from electra_ray.compare import compare, load_compare_config

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "compare-tiny.yaml")


def test_equal_compute_experiment_writes_table_curve_and_verdict(small_corpus, tokenizer_dir, tmp_path):
    cfg, given = load_compare_config(CONFIG, [
        f"pretrain.data.path={small_corpus}", f"pretrain.data.tokenizer={tokenizer_dir}",
        "pretrain.data.seq_len=64", "pretrain.data.eval_fraction=0.1", "pretrain.model.num_layers=2",
        "pretrain.model.hidden_size=64", "pretrain.model.embedding_size=64", "pretrain.model.intermediate_size=128",
        "pretrain.model.max_position_embeddings=64", "pretrain.train.max_steps=20", "pretrain.train.warmup_steps=5",
        "pretrain.train.log_every=5", "points=2", "from_scratch=true", "finetune.max_train_examples=64",
        "finetune.epochs=1",
        f"out={tmp_path}/compare"])
    assert cfg.finetune.seeds == [0, 1, 2] and cfg.task == "rotten_tomatoes"  # the shipped config's
    results = compare(cfg, given)

    budget = results["budget"]
    assert budget["electra"]["steps"] == 20 and budget["mlm"]["steps"] > 20  # no generator: more steps
    # the nearest multiple of `points` steps to equal FLOPs
    assert abs(budget["mlm"]["flops"] - budget["electra"]["flops"]) <= budget["mlm"]["step_flops"] * cfg.points / 2
    points = {(p["objective"], p["step"]): p for p in results["points"]}
    mlm_steps = budget["mlm"]["steps"]
    assert sorted(points) == sorted([("none", 0), ("electra", 10), ("electra", 20), ("mlm", mlm_steps // 2),
                                     ("mlm", mlm_steps)])
    for (objective, step), point in points.items():
        assert len(point["finetune"]["runs"]) == 3 and point["finetune"]["train_examples"] == 64
        assert point["flops"] == (step * budget[objective]["step_flops"] if step else 0)

    # each objective pre-trained with its own masking, on the same tokenizer
    for objective, masking in (("electra", (0.85, 0.0)), ("mlm", (0.8, 0.1))):
        with open(os.path.join(points[(objective, budget[objective]["steps"])]["export"], "electra_ray.json")) as f:
            data = json.load(f)["config"]["data"]
        assert (data["mask_token_prob"], data["random_token_prob"]) == masking and data["tokenizer"] == tokenizer_dir

    out = results["out"]
    report = open(os.path.join(out, "report.md")).read()
    assert "| ELECTRA | 20 |" in report and f"| MLM (BERT) | {mlm_steps} |" in report
    assert "| none (random init) | 0 | 0 |" in report and "dev accuracy mean ± std | median | seeds" in report
    assert "At the full budget" in report and ("won by" in report or "a tie" in report)
    with open(os.path.join(out, "curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(os.path.join(out, "results.json")))["timings"]["total_s"] > 0


def test_bad_compare_key_is_a_one_line_error():
    run = subprocess.run([sys.executable, "-m", "electra_ray.compare", "--config", CONFIG, "--set",
                          "pretrain.train.max_stepz=3"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'pretrain.train.max_stepz'")
