"""`finetune --task tagging`: token tagging (named entities, part of speech) on CoNLL-style files
with ElectraForTokenClassification (files, alignment and metrics are in tagging.py).

    python -m electra_ray.tasks msra --out data/msra
    python -m electra_ray.finetune --task tagging --tag-scheme bmes --model EXPORT \\
        --train data/msra/train.txt --eval data/msra/dev.txt --epochs 3
    python -m electra_ray.finetune --task tagging --tag-scheme none --model EXPORT \\
        --train data/brown/train.txt --eval data/brown/dev.txt        # part of speech

Each word's tag is learned on its first sub-token; a sentence too long for --max-seq-len is cut
between words into pieces (tagging.py), so every word of the eval file is predicted and scored.
Metrics: entity precision / recall / F1 (seqeval's default mode, micro-averaged) and word accuracy;
with --tag-scheme none (part of speech) accuracy alone is meaningful, and f1, precision and recall
are reported equal to it (micro-averaged over words, where every word has one gold and one
predicted tag, all three are the accuracy). The summary's metric: f1, or accuracy for none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from transformers import ElectraForTokenClassification

from electra_ray.finetune_checks import TASK_METRICS
from electra_ray.finetune_config import FinetuneConfig
from electra_ray.finetune_kinds import FinetuneError, TaskKind, new_head_model
from electra_ray.tagging import (
    Sentence,
    TaggedPieces,
    TaggingFormat,
    align,
    default_metric,
    fallback_tag,
    read_tagging_file,
    tag_labels,
    tagging_metrics,
    word_predictions,
)


@dataclass(frozen=True)
class TaggingData:
    """A tagging file's pieces (the rows the loop draws), and what scoring needs: the sentences
    (gold tags; none for the training file, whose pieces alone travel to the workers), the tag
    scheme, the tag of a word the model gives none, the most frequent training tag."""

    pieces: TaggedPieces
    sentences: list[Sentence]
    sentence_count: int
    scheme: str
    fallback: str
    majority: str


def tagging_format(cfg: FinetuneConfig) -> TaggingFormat:
    # "\t" typed on a command line arrives as backslash-t
    separator = cfg.tag_separator.replace("\\t", "\t")
    return TaggingFormat(cfg.tag_scheme, cfg.token_column, cfg.tag_column, separator)


def load_tagging(cfg: FinetuneConfig, tokenizer, max_len: int) -> tuple[TaggingData, TaggingData, list[str]]:
    """(train, eval, tags): both files read, checked and aligned; the tags, sorted, are the training file's."""
    fmt = tagging_format(cfg)
    train = read_tagging_file(cfg.train, fmt)
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    labels = tag_labels(train)
    if len(labels) < 2:
        raise FinetuneError(f"training file {cfg.train} has {len(labels)} distinct tag(s); tagging needs at least 2")
    evaluation = read_tagging_file(cfg.eval, fmt)
    label_ids = {tag: i for i, tag in enumerate(labels)}
    fallback = fallback_tag(train, cfg.tag_scheme)
    majority = Counter(tag for sentence in train for tag in sentence.tags).most_common(1)[0][0]
    shared = dict(scheme=cfg.tag_scheme, fallback=fallback, majority=majority)
    return (
        TaggingData(align(tokenizer, train, label_ids, max_len), [], len(train), **shared),
        TaggingData(align(tokenizer, evaluation, label_ids, max_len), evaluation, len(evaluation), **shared),
        labels,
    )


def tagging_batch(data: TaggingData, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    pieces = data.pieces
    width = int(pieces.lengths[index].max())
    tensors = {
        "input_ids": pieces.input_ids[index, :width],
        "token_type_ids": pieces.token_type_ids[index, :width],
        "attention_mask": (np.arange(width)[None, :] < pieces.lengths[index, None]).astype(np.int64),
        "labels": pieces.labels[index, :width],
    }
    return {name: torch.from_numpy(value).to(device) for name, value in tensors.items()}


@torch.no_grad()
def predict_tags(model, data: TaggingData, labels: list[str], batch_size: int = 128) -> list[list[str]]:
    """Each eval sentence's predicted tags, one per word."""
    model.eval()
    device = next(model.parameters()).device
    size = len(data.pieces.lengths)
    token_predictions = np.zeros(data.pieces.input_ids.shape, dtype=np.int64)
    by_length = np.argsort(data.pieces.lengths, kind="stable")  # batches of like lengths: little padding
    for start in range(0, size, batch_size):
        index = by_length[start : start + batch_size]
        inputs = tagging_batch(data, index, device)
        inputs.pop("labels")
        predicted = model(**inputs).logits.argmax(-1).cpu().numpy()
        token_predictions[index, : predicted.shape[1]] = predicted
    return word_predictions(data.pieces, token_predictions, data.sentences, labels, data.fallback)


def scores(data: TaggingData, predicted: list[list[str]]) -> dict[str, float]:
    """Every metric of TaggingKind.metrics; for scheme none, precision = recall = f1 = accuracy."""
    metrics = tagging_metrics([list(s.tags) for s in data.sentences], predicted, data.scheme)
    if data.scheme == "none":
        metrics.update(precision=metrics["accuracy"], recall=metrics["accuracy"], f1=metrics["accuracy"])
    return {name: metrics[name] for name in TaggingKind.metrics}


class TaggingKind(TaskKind):
    """A tag per word, from CoNLL-style files (tagging.py); ElectraForTokenClassification."""

    name = "tagging"
    metrics = TASK_METRICS["tagging"]
    default_metric = "f1"
    model_class = ElectraForTokenClassification

    def summary_metric(self, cfg: FinetuneConfig) -> str:
        return default_metric(cfg.tag_scheme)

    def load(self, cfg, tokenizer, max_len):
        return load_tagging(cfg, tokenizer, max_len)

    def model(self, model_dir, cfg, labels):
        return new_head_model(
            ElectraForTokenClassification,
            model_dir,
            cfg,
            ("classifier.",),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={tag: i for i, tag in enumerate(labels)},
        )

    def batch(self, data, index, device):
        return tagging_batch(data, index, device)

    def size(self, data):
        return len(data.pieces.lengths)

    def evaluate(self, model, data, labels, cfg):
        return scores(data, predict_tags(model, data, labels))

    def baseline(self, train, data, labels):
        """Every word tagged with the most frequent training tag (O in NER: no entity found)."""
        predicted = [[train.majority] * len(s.words) for s in data.sentences]
        return {"label": train.majority, **scores(data, predicted)}

    def describe(self, train, data):
        """Sentences and words: train_examples and eval_examples count pieces (a long sentence is several)."""
        return {
            "train_sentences": train.sentence_count,
            "eval_sentences": data.sentence_count,
            "eval_words": sum(len(s.words) for s in data.sentences),
        }


TAGGING = TaggingKind()
