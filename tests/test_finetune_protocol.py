"""The fine-tuning protocol (finetune_protocol.py): a learning rate chosen per encoder on a dev split
held apart from the training file, runs stuck at the constant predictor flagged, and a frozen-encoder
linear probe. In this process, on an untrained tiny encoder and a task its embeddings can solve."""

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from electra_ray.compare import untrained_export
from electra_ray.config import Config, apply_values
from electra_ray.finetune import FinetuneConfig, FinetuneError, finetune, validate
from electra_ray.finetune_kinds import TaskData
from electra_ray.finetune_protocol import chosen_lr, constant_loss, dev_split, is_stuck

WORDS = ["union", "state", "nation", "people", "congress", "trade", "law", "year"]


def keyword_task(n: int, seed: int) -> pa.Table:
    """Label 1 when the sentence holds "war", else 0: one token decides, so a linear probe on
    mean-pooled embeddings and a fine-tune at a working rate both learn it."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    texts = []
    for label in labels:
        words = list(rng.choice(WORDS, 6))
        if label:
            words[rng.integers(0, 6)] = "war"
        texts.append(" ".join(words))
    return pa.table({"text": texts, "label": labels.astype(np.int64)})


@pytest.fixture(scope="module")
def encoder(tokenizer_json, tmp_path_factory):
    cfg = Config()
    apply_values(cfg, {"model": {"num_layers": 2, "hidden_size": 64, "embedding_size": 64, "num_heads": 2}})
    apply_values(cfg, {"model": {"intermediate_size": 128, "max_position_embeddings": 64}})
    return untrained_export(cfg, tokenizer_json, str(tmp_path_factory.mktemp("untrained")))


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keyword")
    pq.write_table(keyword_task(400, 0), directory / "train.parquet")
    pq.write_table(keyword_task(200, 1), directory / "eval.parquet")
    return str(directory / "train.parquet"), str(directory / "eval.parquet")


def task_data(labels: list[int]) -> TaskData:
    n = len(labels)
    return TaskData(np.zeros((n, 3), np.int64), np.zeros((n, 3), np.int64), np.full(n, 3), np.array(labels))


def test_dev_split_is_seeded_disjoint_and_never_empty():
    data = task_data(list(range(50)))
    train, dev = dev_split(data, 0.1)
    again_train, again_dev = dev_split(data, 0.1)
    assert len(dev.labels) == 5 and len(train.labels) == 45
    assert not set(train.labels) & set(dev.labels) and set(train.labels) | set(dev.labels) == set(range(50))
    assert list(dev.labels) == list(again_dev.labels) and list(train.labels) == list(again_train.labels)
    tiny_train, tiny_dev = dev_split(task_data([0, 1]), 0.01)
    assert len(tiny_train.labels) == 1 and len(tiny_dev.labels) == 1


def test_the_constant_predictor_and_the_stuck_flag():
    assert constant_loss(task_data([0, 1, 0, 1]), [0, 1]) == pytest.approx(math.log(2))
    assert constant_loss(task_data([0, 0, 0, 0]), [0, 1]) == pytest.approx(0.0)
    assert constant_loss(task_data([0, 1]), None) is None  # regression: no classes
    assert is_stuck(0.6931, math.log(2)) and is_stuck(0.70, math.log(2)) and is_stuck(math.nan, math.log(2))
    assert not is_stuck(0.45, math.log(2)) and not is_stuck(0.70, None)
    assert chosen_lr({1e-4: 0.8, 3e-4: 0.9, 1e-3: 0.9}) == 3e-4  # a tie goes to the smaller rate


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr_grid": [1e-4, 1e-4]}, "--lr-grid lists a rate twice"),
        ({"lr_grid": [0.0]}, "--lr-grid must list finite numbers > 0"),
        ({"lr_grid": ["fast"]}, "--lr-grid must list finite numbers > 0"),
        ({"dev_fraction": 1.0}, "--dev-fraction must be a number in (0, 1)"),
        ({"task": "qa", "lr_grid": [1e-4]}, "--lr-grid needs a dev split"),
        ({"task": "regression", "probe": True}, "--probe needs classes"),
    ],
)
def test_protocol_settings_name_the_flag(changes, message):
    cfg = FinetuneConfig(model="m", train="t", eval="e", **changes)
    with pytest.raises(FinetuneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg)


def test_text_rates_from_a_command_line_are_numbers():
    cfg = FinetuneConfig(model="m", train="t", eval="e", lr_grid=["1e-4", 3e-4])
    validate(cfg)
    assert cfg.lr_grid == [1e-4, 3e-4]


def test_the_grid_chooses_on_dev_flags_the_stuck_rate_and_the_probe_reads_the_features(encoder, task_files, tmp_path):
    train, evaluation = task_files
    out = tmp_path / "ft"
    result = finetune(
        FinetuneConfig(
            model=encoder,
            train=train,
            eval=evaluation,
            lr_grid=[3e-2, 1e-3],  # 3e-2: too large a step for a fresh encoder, it stays at the constant
            probe=True,
            epochs=8,
            dropout=0.0,
            weight_decay=0.0,
            seeds=[1, 2],
            num_workers=0,
            threads=1,
            out=str(out),
        )
    ).metrics

    search = result["lr_search"]
    assert search["grid"] == [3e-2, 1e-3] and search["seed"] == 1 and search["dev_examples"] == 40
    trials = {trial["lr"]: trial for trial in search["trials"]}
    assert trials[3e-2]["stuck"] and not trials[1e-3]["stuck"]
    assert trials[1e-3]["dev"] > trials[3e-2]["dev"] and search["chosen"] == 1e-3 == result["lr"]
    assert [run["lr"] for run in result["runs"]] == [1e-3, 1e-3] and not any(run["stuck"] for run in result["runs"])
    assert result["train_examples"] == 360  # the dev split came out of the training file, not --eval
    assert result["constant_loss"] == pytest.approx(constant_loss_of(train, 40), abs=1e-9)
    assert sorted(os.listdir(out)) == ["metrics.json", "seed-1", "seed-2"]  # the other rate's model removed
    assert result["summary"]["accuracy"]["stuck"] == 0
    assert json.loads((out / "metrics.json").read_text())["lr_search"]["chosen"] == 1e-3

    majority = result["majority_baseline"]["accuracy"]
    for pooling in ("mean", "cls"):
        probe = result["probe"][pooling]
        assert probe["C"] in (0.01, 0.1, 1.0, 10.0) and 0 <= probe["dev_accuracy"] <= 1
    # One token decides the label: its embedding, averaged over the sentence, is linearly readable.
    assert result["probe"]["mean"]["accuracy"] > majority + 0.2, (result["probe"], majority)


def constant_loss_of(train_file: str, held: int) -> float:
    """The label entropy of the training file less the dev split (dev_split's seeded permutation)."""
    labels = pq.read_table(train_file)["label"].to_numpy()
    order = np.random.default_rng(0).permutation(len(labels))
    kept = labels[order[held:]]
    shares = np.bincount(kept) / len(kept)
    return float(-(shares * np.log(shares)).sum())
