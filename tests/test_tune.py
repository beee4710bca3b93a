"""Ray Tune sweeps: a real sweep of 4 tiny trials with ASHA over a number and a text-valued key,
tracked by W&B (offline) from the driver, interrupted, moved, resumed from where it is now, and the
results it writes checked against what the trials themselves wrote."""

import csv
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from electra_ray.config import ConfigError
from electra_ray.tune import RECORD_FILE, load_sweep_config, param_space, search_algorithm

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
        # Found before any trial starts, not in every trial: a fraction for an integer key, a number for text.
        ("space.train.max_steps={uniform: [10, 20]}", "space.train.max_steps: uniform draws fractions"),
        ("space.data.text_column={randint: [1, 3]}", "space.data.text_column: randint draws numbers, data.text_column"),
        ("pretrain.output.local_dir=/home/alice", "pretrain.output.local_dir must be empty in a sweep"),
    ],
)
def test_a_bad_sweep_is_refused_before_any_trial(tmp_path, small_corpus, tokenizer_dir, override, message):
    overrides = [override] + (["search=random"] if "space.train.max_steps" in override or "randint" in override else [])
    with pytest.raises(ConfigError) as error:
        load_sweep_config(write_sweep(tmp_path, small_corpus, tokenizer_dir), overrides)
    assert message in str(error.value)


def test_space_values_are_typed_as_the_config_holds_them(tmp_path, small_corpus, tokenizer_dir):
    """YAML 1.1 reads 1e-3 as text and 1 as an integer: a float key's values are all floats (they
    sort, plot and compare with what trials.json holds)."""
    cfg = load_sweep_config(write_sweep(tmp_path, small_corpus, tokenizer_dir), ["space.train.lr=['1e-3', 2e-4, 1]"])
    assert cfg.space["train.lr"] == [0.001, 0.0002, 1.0] and all(type(v) is float for v in cfg.space["train.lr"])


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


def run_cli(args: list[str], log: str, **kwargs) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "electra_ray.tune", *args], stdout=f, stderr=subprocess.STDOUT, text=True, **kwargs
        )


FAKE_WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # W&B's key format; offline, never sent


def trial_records(out: str) -> dict[str, dict]:
    """OUT/trials.json: the driver's record of every started trial, by name."""
    path = os.path.join(out, RECORD_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {record["name"]: record for record in json.load(f)["trials"]}


def finished_trials(out: str) -> set[str]:
    """The trials that ended with their fine-tune, as trials.json says."""
    records = trial_records(out).items()
    return {name for name, r in records if r["status"] == "ended" and "finetune_score" in r["result"]}


def run_history(out: str, trial: str) -> list[dict]:
    """The trial's own pre-training records (OUT/trials/<trial>/metrics.jsonl), those with a step."""
    with open(os.path.join(out, "trials", trial, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "step" in r]


@pytest.mark.ray
def test_sweep_with_asha_is_interrupted_resumed_and_summarized(tmp_path, small_corpus, tokenizer_dir):
    from test_trackers import read_wandb_records

    first_place, out = str(tmp_path / "sweep"), str(tmp_path / "moved")
    # train.optimizer, a text-valued key, is the plot's line key (its label was f"{value:g}").
    space = {"model.generator_size": [0.25, 1.0], "train.optimizer": ["adamw", "electra"]}
    config = write_sweep(tmp_path, small_corpus, tokenizer_dir, space=space)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_API_KEY=FAKE_WANDB_KEY)
    env.pop("WANDB_DIR", None)
    tracked = ["--set", "pretrain.output.trackers=[tensorboard,wandb]", "pretrain.output.wandb_project=sweep-test"]
    first = run_cli(["--config", config, *tracked, f"out={first_place}"], str(tmp_path / "first.log"), env=env)
    try:
        deadline = time.time() + 600
        # Interrupt (Ctrl-C) once one trial has finished, fine-tune included, and before all have.
        while not finished_trials(first_place):
            assert first.poll() is None, open(tmp_path / "first.log").read()[-3000:]
            assert time.time() < deadline, "no trial finished in 10 minutes"
            time.sleep(0.5)
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=180) == 0
    finally:
        if first.poll() is None:
            first.kill()
    log = open(tmp_path / "first.log").read()
    assert f"continue with: python -m electra_ray.tune --resume {first_place}" in log, log[-3000:]
    assert not os.path.exists(os.path.join(first_place, "results.csv"))
    before = trial_records(first_place)
    done_before = finished_trials(first_place)
    assert 1 <= len(done_before) < 4, before

    # The sweep is moved before it is resumed: the resume reads and writes only where it is now.
    shutil.move(first_place, out)
    command = [sys.executable, "-m", "electra_ray.tune", "--resume", out]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not os.path.exists(first_place)

    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(float(r["model.generator_size"]), r["train.optimizer"]) for r in rows} == {
        (0.25, "adamw"),
        (0.25, "electra"),
        (1.0, "adamw"),
        (1.0, "electra"),
    }
    for row in rows:
        # The row is the trial's own last records: its pre-training run's, and its fine-tune's.
        history = run_history(out, row["trial"])
        assert row["status"] in ("finished", "stopped by ASHA"), row
        assert int(row["step"]) == history[-1]["step"]
        assert math.isclose(float(row["heldout_auc"]), history[-1]["heldout_auc"])
        # Every report carries the metric ASHA ranks by, at every logging step.
        assert all(r["step"] % 10 == 0 and 0 <= r["heldout_auc"] <= 1 for r in history)
        if row["status"] == "finished":
            with open(os.path.join(out, "trials", row["trial"], "finetune", "metrics.json")) as f:
                finetune = json.load(f)
            assert int(row["step"]) == 30
            assert math.isclose(float(row["finetune_score"]), finetune["summary"][finetune["metric"]]["median"])
        else:
            assert int(row["step"]) < 30 and row["finetune_score"] == ""
    # A trial that had finished before the interruption was not run again.
    for name in done_before:
        assert [r["step"] for r in run_history(out, name)] == [10, 20, 30]
    # The trials that had not ended ran again under their own names (their runs continued).
    assert {row["trial"] for row in rows} >= set(before)
    # Ranked by the fine-tune score, ties (common at 30 steps: constant predictions) by heldout_auc.
    finished = sorted(
        (r for r in rows if r["status"] == "finished"),
        key=lambda r: (-float(r["finetune_score"]), -float(r["heldout_auc"])),
    )
    assert [int(r["rank"]) for r in finished] == list(range(1, len(finished) + 1))
    assert all(r["rank"] == "" for r in rows if r["status"] != "finished")

    with open(os.path.join(out, "best.yaml")) as f:
        best = yaml.safe_load(f)
    assert (best["model"]["generator_size"], best["train"]["optimizer"]) == (
        float(finished[0]["model.generator_size"]),
        finished[0]["train.optimizer"],
    )
    from electra_ray.config import load_config

    assert load_config(os.path.join(out, "best.yaml")).model.generator_size == best["model"]["generator_size"]
    with open(os.path.join(out, "score.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| model.generator_size | train.optimizer | status |" in resumed.stdout
    # Tune's experiment directory holds TensorBoard event files for its dashboard / TensorBoard.
    assert glob.glob(os.path.join(out, "tune", "*", "events.out.tfevents.*"))

    # W&B followed every trial from the driver (one offline run per trial and session), with the
    # trial's reports; the trials' own runs kept TensorBoard only.
    runs = sorted(glob.glob(os.path.join(out, "wandb", "offline-run-*", "run-*.wandb")))
    assert len(runs) >= 4
    records = [read_wandb_records(path) for path in runs]
    assert all(r["exit"] for r in records)
    logged = [h for r in records for h in r["history"] if "heldout_auc" in h]
    assert logged and all(0 <= h["heldout_auc"] <= 1 for h in logged)
    assert not glob.glob(os.path.join(out, "trials", "*", "wandb"))
    # The key is in no file the sweep wrote (W&B's offline files included).
    for directory, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                assert FAKE_WANDB_KEY.encode() not in f.read(), os.path.join(directory, name)
