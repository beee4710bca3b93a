"""What differs between fine-tuning tasks: a task KIND reads its files, builds its model and its
batches, and scores a fine-tuned model; finetune.py's loop (seeds, Ray Train, layer-wise LR decay,
OUT/metrics.json) is the same for every kind.

A kind subclasses TaskKind and is registered in finetune.KINDS under its name (the --task value).
Sequence classification and regression live here; question answering in finetune_qa.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers
from transformers import ElectraForSequenceClassification

from electra_ray.finetune_checks import TASK_METRICS
from electra_ray.finetune_config import FinetuneConfig, FinetuneError
from electra_ray.model import use_fast_cpu_dropout
from electra_ray.tasks import (
    Examples,
    class_labels,
    classification_metrics,
    examples,
    read_task_file,
    regression_metrics,
)


class TaskKind:
    """One kind of fine-tuning task. `data` is whatever `load` returns (one object for the training
    file, one for the eval file); the loop only calls `size`, `batch` and, after training,
    `evaluate` on it, so it must pickle (it travels to Ray Train workers). `labels` is load's third
    value (the classes in index order; None where the kind has none) and reaches `model`, `evaluate`
    and `baseline` unchanged; `cfg` is the run's FinetuneConfig (the kind's own settings are fields
    of it, with a --flag each)."""

    name: str = ""
    metrics: tuple[str, ...] = ()  # every metric `evaluate` returns, in the summary's order
    default_metric: str = ""  # the summary line's metric when --metric is empty
    model_class: type = ElectraForSequenceClassification  # loads a fine-tuned OUT/seed-N
    default_max_seq_len: int = 128  # --max-seq-len 0 means this (capped by the model's positions)

    def fit_window(self, cfg: FinetuneConfig, max_len: int) -> FinetuneConfig:
        """cfg with the settings that depend on the window (`max_len`: --max-seq-len or the task's
        own, capped by the model's positions) resolved; one that cannot fit is a FinetuneError."""
        return dataclasses.replace(cfg, max_seq_len=max_len)

    def summary_metric(self, cfg: FinetuneConfig) -> str:
        """The summary line's metric when --metric is empty: default_metric, unless the kind's own
        settings choose (tagging: accuracy for part of speech)."""
        return self.default_metric

    def load(self, cfg: FinetuneConfig, tokenizer, max_len: int) -> tuple[Any, Any, list | None]:
        """(train, eval, labels): cfg.train and cfg.eval read, checked and tokenized to at most
        max_len tokens a row (cfg.max_train_examples honoured)."""
        raise NotImplementedError

    def model(self, model_dir: str, cfg: FinetuneConfig, labels: list | None) -> torch.nn.Module:
        """The pre-trained ELECTRA encoder of model_dir with a new task head (see new_head_model)."""
        raise NotImplementedError

    def batch(self, data, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for rows `index` of data, the training targets included."""
        raise NotImplementedError

    def size(self, data) -> int:
        """Rows of data: the training loop draws batches of row indices from range(size)."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, data, labels: list | None, cfg: FinetuneConfig) -> dict[str, float]:
        """Every metric of `metrics` for the fine-tuned model (in eval mode: call model.eval()) on the eval data."""
        raise NotImplementedError

    def baseline(self, train, data, labels: list | None) -> dict | None:
        """A trivial predictor's eval scores (metrics.json's majority_baseline); None: none."""
        return None

    def describe(self, train, data) -> dict:
        """Extra top-level entries of metrics.json (counts the kind reports beyond train/eval rows)."""
        return {}


def new_head_model(model_class: type, model_dir: str, cfg: FinetuneConfig, head: tuple[str, ...], **config):
    """`model_class` on the encoder of `model_dir` with a new task head (parameters under the
    prefixes `head`), dropout cfg.dropout. Any encoder weight missing from the directory is an
    error, not a silently random layer."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized: <head>.*" is the point here
    try:
        model, info = model_class.from_pretrained(
            model_dir,
            output_loading_info=True,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            **config,
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = [k for k in info["missing_keys"] if not k.startswith(head)]
    if missing or info["mismatched_keys"]:
        raise FinetuneError(
            f"model {model_dir} lacks encoder weights: missing {missing[:3]}, "
            f"mismatched {list(info['mismatched_keys'])[:3]}"
        )
    return use_fast_cpu_dropout(model)


# -- sequence classification and regression ------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    """Tokenized examples, padded to the longest; each batch is cut to its own longest."""

    input_ids: np.ndarray  # [N, L] int64
    token_type_ids: np.ndarray  # [N, L] int64: 0 for the first sentence, 1 for the second
    lengths: np.ndarray  # [N] tokens of each example
    labels: np.ndarray  # [N] int64 class indices or float32 targets


def encode(tokenizer, data: Examples, max_len: int) -> TaskData:
    encoded = tokenizer(
        data.texts,
        data.pairs,
        truncation=True,
        max_length=max_len,
        padding=True,
        return_token_type_ids=True,
        return_tensors="np",
    )
    return TaskData(
        encoded["input_ids"].astype(np.int64),
        encoded["token_type_ids"].astype(np.int64),
        encoded["attention_mask"].sum(axis=1),
        data.labels,
    )


def load_task(cfg: FinetuneConfig, tokenizer, max_len: int) -> tuple[TaskData, TaskData, list | None]:
    """(train, eval, classes): both files read, checked and tokenized. Classes are None for
    regression."""
    texts = [c for c in (cfg.text_column, cfg.pair_column) if c]
    columns = texts + [cfg.label_column]
    train = read_task_file(cfg.train, columns, texts)
    if cfg.max_train_examples:
        train = train.slice(0, cfg.max_train_examples)
    labels = None
    if cfg.task == "classification":
        labels = list(cfg.labels) or class_labels(train, cfg.label_column, cfg.train)
        if len(labels) < 2:
            raise FinetuneError(
                f"training file {cfg.train} has {len(labels)} distinct label(s) in column "
                f"'{cfg.label_column}'; classification needs at least 2"
            )
    columns_of = dict(text_column=cfg.text_column, pair_column=cfg.pair_column, label_column=cfg.label_column)
    train_examples = examples(train, cfg.train, **columns_of, labels=labels)
    eval_examples = examples(read_task_file(cfg.eval, columns, texts), cfg.eval, **columns_of, labels=labels)
    if not train_examples.texts or not eval_examples.texts:
        raise FinetuneError(f"no examples in {cfg.train if not train_examples.texts else cfg.eval}")
    return encode(tokenizer, train_examples, max_len), encode(tokenizer, eval_examples, max_len), labels


def batch(data: TaskData, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    width = int(data.lengths[index].max())
    tensors = {
        "input_ids": data.input_ids[index, :width],
        "token_type_ids": data.token_type_ids[index, :width],
        "attention_mask": (np.arange(width)[None, :] < data.lengths[index, None]).astype(np.int64),
        "labels": data.labels[index],
    }
    return {name: torch.from_numpy(value).to(device) for name, value in tensors.items()}


def load_classifier(model_dir: str, cfg: FinetuneConfig, labels: list | None):
    """ElectraForSequenceClassification on the encoder of `model_dir`, with a new task head."""
    task = (
        {
            "num_labels": len(labels),
            "id2label": {i: str(v) for i, v in enumerate(labels)},
            "label2id": {str(v): i for i, v in enumerate(labels)},
        }
        if labels
        else {"num_labels": 1, "problem_type": "regression"}
    )
    return new_head_model(ElectraForSequenceClassification, model_dir, cfg, ("classifier.",), **task)


@torch.no_grad()
def predict(model, data: TaskData, batch_size: int = 128) -> np.ndarray:
    """Class indices (classification) or predicted values (regression), one per example."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(data.lengths), batch_size):
        inputs = batch(data, np.arange(start, min(start + batch_size, len(data.lengths))), device)
        inputs.pop("labels")
        logits = model(**inputs).logits.float().cpu()
        outputs.append(logits[:, 0] if model.config.problem_type == "regression" else logits.argmax(-1))
    return torch.cat(outputs).numpy()


def score(data: TaskData, predictions: np.ndarray, labels: list | None) -> dict[str, float]:
    if labels is None:
        return regression_metrics(data.labels, predictions)
    return classification_metrics(data.labels, predictions, len(labels))


def majority_baseline(train: TaskData, evaluation: TaskData, labels: list | None) -> dict | None:
    """The eval scores of always predicting the most frequent training class (classification)."""
    if labels is None:
        return None
    majority = int(np.bincount(train.labels, minlength=len(labels)).argmax())
    return {"label": labels[majority], **score(evaluation, np.full_like(evaluation.labels, majority), labels)}


class SequenceKind(TaskKind):
    """A class (classification) or a number (regression, as STS-B) per text or text pair, from
    Parquet / CSV / TSV / JSONL task files (electra_ray.tasks); ElectraForSequenceClassification."""

    def __init__(self, name: str, metrics: tuple[str, ...]):
        self.name, self.metrics, self.default_metric = name, metrics, metrics[0 if name == "classification" else 1]

    def load(self, cfg, tokenizer, max_len):
        return load_task(cfg, tokenizer, max_len)

    def model(self, model_dir, cfg, labels):
        return load_classifier(model_dir, cfg, labels)

    def batch(self, data, index, device):
        return batch(data, index, device)

    def size(self, data):
        return len(data.lengths)

    def evaluate(self, model, data, labels, cfg):
        return score(data, predict(model, data), labels)

    def baseline(self, train, data, labels):
        return majority_baseline(train, data, labels)


CLASSIFICATION = SequenceKind("classification", TASK_METRICS["classification"])
REGRESSION = SequenceKind("regression", TASK_METRICS["regression"])
