"""The fine-tuning protocol around finetune.py's loop: what makes a comparison of encoders fair.

- **A dev split held apart from the training file** (`dev_split`): the learning rate (--lr-grid)
  and the probe's regularisation are chosen on it, never on the eval file whose scores are reported.
  Mosbach et al. 2021: a small encoder fine-tuned at one fixed rate can fail outright, and which rate
  works differs per encoder (at lr 1e-3 every ELECTRA seed of `make compare` stayed at ln 2 while
  random init trained), so one rate for all arms measures the rate, not the features.
- **A run stuck at the constant predictor** (`constant_loss`, `is_stuck`): its last epoch's
  training loss no lower than always predicting the training label distribution. Such a run is
  flagged in metrics.json and in every table, never averaged in silently.
- **A frozen-encoder linear probe** (`linear_probe`): logistic regression on the pre-trained
  encoder's mean-pooled and [CLS] vectors, no fine-tuning. It reads what the features hold, with no
  optimisation of the encoder that can fail.

Sequence tasks only (classification; the probe and the stuck test also need classes): QA and
tagging have no cheap dev split or constant predictor here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from electra_ray.finetune_kinds import TaskData, batch

# A run is stuck when its last epoch's training loss is above this share of the constant predictor's:
# a fine-tune that learns anything of RT's sentiment ends well below it (0.3-0.5 of ln 2), and one
# stuck at the constant ends within a percent or two above or below it.
STUCK_SHARE = 0.97
PROBE_REGULARISATION = (0.01, 0.1, 1.0, 10.0)  # logistic regression's C, chosen on dev
DEV_SEED = 0  # the dev split is the same for every arm and seed: arms are chosen on the same examples


def subset(data: TaskData, rows: np.ndarray) -> TaskData:
    return TaskData(data.input_ids[rows], data.token_type_ids[rows], data.lengths[rows], data.labels[rows])


def dev_split(data: TaskData, fraction: float) -> tuple[TaskData, TaskData]:
    """(train, dev): a seeded `fraction` of the training examples held apart (at least one each)."""
    n = len(data.lengths)
    order = np.random.default_rng(DEV_SEED).permutation(n)
    held = min(n - 1, max(1, round(fraction * n)))
    return subset(data, np.sort(order[held:])), subset(data, np.sort(order[:held]))


def constant_loss(train: TaskData, labels: list | None) -> float | None:
    """The training cross-entropy (nats) of always predicting the training label distribution: the
    entropy of the labels. None for regression (no classes)."""
    if labels is None:
        return None
    counts = np.bincount(train.labels, minlength=len(labels)).astype(float)
    shares = counts[counts > 0] / counts.sum()
    return float(-(shares * np.log(shares)).sum())


def is_stuck(train_loss: float, constant: float | None) -> bool:
    return constant is not None and (not math.isfinite(train_loss) or train_loss > STUCK_SHARE * constant)


@torch.no_grad()
def encoder_features(encoder, data: TaskData, batch_size: int = 128) -> dict[str, np.ndarray]:
    """{"mean": mean-pooled final hidden states over the real tokens, "cls": the [CLS] vector}, [N, H]
    each, from `encoder` (an ElectraModel) in eval mode."""
    encoder.eval()
    device = next(encoder.parameters()).device
    pooled = {"mean": [], "cls": []}
    for start in range(0, len(data.lengths), batch_size):
        inputs = batch(data, np.arange(start, min(start + batch_size, len(data.lengths))), device)
        inputs.pop("labels")
        hidden = encoder(**inputs).last_hidden_state.float()
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pooled["mean"].append(((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy())
        pooled["cls"].append(hidden[:, 0].cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in pooled.items()}


def linear_probe(encoder, train: TaskData, dev: TaskData, evaluation: TaskData) -> dict[str, dict]:
    """Per pooling ("mean", "cls"): logistic regression on standardised frozen features, its C chosen
    on `dev`; returns {"dev_accuracy", "accuracy" (on `evaluation`), "C"}. scikit-learn's
    LogisticRegression (lbfgs): a convex fit, so the probe cannot get stuck as a fine-tune can."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = {name: encoder_features(encoder, data) for name, data in (("train", train), ("dev", dev))}
    features["eval"] = encoder_features(encoder, evaluation)
    results = {}
    for pooling in ("mean", "cls"):
        fits = []
        for c in PROBE_REGULARISATION:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
            probe.fit(features["train"][pooling], train.labels)
            fits.append((float(probe.score(features["dev"][pooling], dev.labels)), -c, probe))
        dev_accuracy, negative_c, best = max(fits, key=lambda fit: fit[:2])  # ties: the stronger regularisation
        results[pooling] = {
            "dev_accuracy": dev_accuracy,
            "accuracy": float(best.score(features["eval"][pooling], evaluation.labels)),
            "C": -negative_c,
        }
    return results


def lr_label(lr: float) -> str:
    return f"lr-{lr:g}"


def chosen_lr(dev_scores: dict[float, float]) -> float:
    """The grid's rate with the best dev score; ties go to the smaller rate (the gentler fine-tune)."""
    return max(sorted(dev_scores), key=lambda lr: dev_scores[lr])


def with_lr(cfg, lr: float):
    return dataclasses.replace(cfg, lr=lr)
