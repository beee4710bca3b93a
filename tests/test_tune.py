"""Ray Tune sweeps: a real sweep of 4 tiny trials with ASHA, interrupted and resumed, and the
results it writes checked against what the trials reported to Tune."""

import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from electra_ray.config import ConfigError
from electra_ray.tune import load_sweep_config, param_space, search_algorithm

SWEEP = {
    "pretrain": {
        "model": {
            "num_layers": 2,
            "hidden_size": 64,
            "embedding_size": 64,
            "num_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
            "dropout": 0.0,
        },
        "data": {"seq_len": 64},
        "train": {
            "max_steps": 30,
            "batch_size": 8,
            "lr": 1.0e-3,
            "warmup_steps": 5,
            "log_every": 10,
            "checkpoint_every": 30,
            "eval_sequences": 32,
        },
    },
    "space": {"model.generator_size": [0.25, 1.0], "train.rtd_weight": [1, 50]},
    "grace_period": 10,
    "reduction_factor": 2,
    "max_concurrent_trials": 2,
    "finetune": {"seeds": [0], "max_train_examples": 200, "epochs": 1, "lr": 1.0e-3, "max_seq_len": 64},
}


def write_sweep(tmp_path, corpus: str, tokenizer: str, **changes) -> str:
    sweep = json.loads(json.dumps(SWEEP))
    sweep["pretrain"]["data"].update(path=corpus, tokenizer=tokenizer)
    sweep.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "space.model.generator_sise=[0.5]",
            "space.model.generator_sise = 0.5: unknown config key 'model.generator_sise'",
        ),
        (
            "space.model.generator_size=[0.25,0]",
            "space.model.generator_size = 0: model.generator_size must be in (0, 1]",
        ),
        ("space.train.rtd_weight={loguniform: [1, 100]}", "space.train.rtd_weight: a grid needs a list of values"),
        ("space.train.rtd_weight=[ten]", "config key 'train.rtd_weight' expects float, got 'ten'"),
        ("pretrain.train.eval_every=15", "train.eval_every (15) must be 0 or a multiple of train.log_every (10)"),
        ("metric=loss", "config key 'metric' must be one of ['finetune', 'heldout_auc'], got 'loss'"),
    ],
)
def test_a_bad_sweep_is_refused_before_any_trial(tmp_path, small_corpus, tokenizer_dir, override, message):
    with pytest.raises(ConfigError) as error:
        load_sweep_config(write_sweep(tmp_path, small_corpus, tokenizer_dir), [override])
    assert message in str(error.value)


def test_random_and_optuna_search_sample_inside_the_space(tmp_path, small_corpus, tokenizer_dir):
    overrides = [
        "search=optuna",
        "num_samples=6",
        "space.train.rtd_weight={loguniform: [1, 100]}",
        "space.model.generator_size=[0.25,0.5,1.0]",
    ]
    cfg = load_sweep_config(write_sweep(tmp_path, small_corpus, tokenizer_dir), overrides)
    assert cfg.space == {"train.rtd_weight": {"loguniform": [1, 100]}, "model.generator_size": [0.25, 0.5, 1.0]}
    searcher = search_algorithm(cfg)
    assert searcher.set_search_properties("heldout_auc", "max", param_space(cfg))
    suggestions = [searcher.suggest(f"trial-{i}") for i in range(6)]
    assert all(1 <= s["train.rtd_weight"] <= 100 and s["model.generator_size"] in (0.25, 0.5, 1.0) for s in suggestions)
    assert len({s["train.rtd_weight"] for s in suggestions}) == 6  # sampled, not a fixed list


def tune_results(out: str) -> dict[str, list[dict]]:
    """Every report each trial made to Tune, read from Tune's own experiment directory."""
    reports = {}
    for path in glob.glob(os.path.join(out, "tune", "*", "result.json")):
        with open(path) as f:
            reports[os.path.basename(os.path.dirname(path))] = [json.loads(line) for line in f if line.strip()]
    return reports


def run_cli(args: list[str], log: str, **kwargs) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "electra_ray.tune", *args], stdout=f, stderr=subprocess.STDOUT, text=True, **kwargs
        )


def test_sweep_with_asha_is_interrupted_resumed_and_summarized(tmp_path, small_corpus, tokenizer_dir):
    out = str(tmp_path / "sweep")
    config = write_sweep(tmp_path, small_corpus, tokenizer_dir)
    first = run_cli(["--config", config, "--set", f"out={out}"], str(tmp_path / "first.log"))
    try:
        deadline = time.time() + 600
        # Interrupt (Ctrl-C) once one trial has finished, fine-tune included, and before all have.
        while not any("finetune_score" in r for reports in tune_results(out).values() for r in reports):
            assert first.poll() is None, open(tmp_path / "first.log").read()[-3000:]
            assert time.time() < deadline, "no trial finished in 10 minutes"
            time.sleep(0.5)
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=180) == 0
    finally:
        if first.poll() is None:
            first.kill()
    log = open(tmp_path / "first.log").read()
    assert f"continue with: python -m electra_ray.tune --resume {out}" in log, log[-3000:]
    assert not os.path.exists(os.path.join(out, "results.csv"))
    done_before = {trial for trial, reports in tune_results(out).items() if any("finetune_score" in r for r in reports)}
    assert 1 <= len(done_before) < 4

    resumed = subprocess.run(
        [sys.executable, "-m", "electra_ray.tune", "--resume", out], capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(float(r["model.generator_size"]), float(r["train.rtd_weight"])) for r in rows} == {
        (0.25, 1.0),
        (0.25, 50.0),
        (1.0, 1.0),
        (1.0, 50.0),
    }
    reports = tune_results(out)
    for row in rows:
        trial = [r for name, r in reports.items() if row["trial"] in name]
        assert len(trial) == 1, (row["trial"], list(reports))
        history, last = trial[0], trial[0][-1]
        assert row["status"] in ("finished", "stopped by ASHA"), row
        assert math.isclose(float(row["heldout_auc"]), last["heldout_auc"])
        assert 0.0 <= last["heldout_auc"] <= 1.0
        # Every report carries the metric ASHA ranks by, at every logging step.
        assert all(r["step"] % 10 == 0 and 0 <= r["heldout_auc"] <= 1 for r in history)
        if row["status"] == "finished":
            assert int(row["step"]) == 30 and math.isclose(float(row["finetune_score"]), last["finetune_score"])
        else:
            assert int(row["step"]) < 30 and row["finetune_score"] == ""
    # A trial that had finished before the interruption was not run again.
    for name, history in reports.items():
        if any(done in name for done in done_before):
            assert [r["step"] for r in history] == [10, 20, 30, 30]
    # Ranked by the fine-tune score, ties (common at 30 steps: constant predictions) by heldout_auc.
    finished = sorted(
        (r for r in rows if r["status"] == "finished"),
        key=lambda r: (-float(r["finetune_score"]), -float(r["heldout_auc"])),
    )
    assert [int(r["rank"]) for r in finished] == list(range(1, len(finished) + 1))
    assert all(r["rank"] == "" for r in rows if r["status"] != "finished")

    with open(os.path.join(out, "best.yaml")) as f:
        best = yaml.safe_load(f)
    assert (best["model"]["generator_size"], best["train"]["rtd_weight"]) == (
        float(finished[0]["model.generator_size"]),
        float(finished[0]["train.rtd_weight"]),
    )
    from electra_ray.config import load_config

    assert load_config(os.path.join(out, "best.yaml")).model.generator_size == best["model"]["generator_size"]
    with open(os.path.join(out, "score.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| model.generator_size | train.rtd_weight | status |" in resumed.stdout
    # Tune's experiment directory holds TensorBoard event files for its dashboard / TensorBoard.
    assert glob.glob(os.path.join(out, "tune", "*", "events.out.tfevents.*"))
