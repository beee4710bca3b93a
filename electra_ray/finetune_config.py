"""What a fine-tune is asked to do: FinetuneConfig (one --flag per field) and FinetuneError.

Below every fine-tuning module (finetune_kinds, finetune_qa, finetune_tagging, finetune), so each
of them reads the config without importing the verb.
"""

from __future__ import annotations

from dataclasses import dataclass

from electra_ray.config import option
from electra_ray.errors import UserError

# The --task values; finetune.KINDS holds a kind for each (a test checks the two agree).
TASKS = ("classification", "regression", "qa", "tagging")


class FinetuneError(UserError):
    """Fine-tuning cannot start: no model at the path, or settings that do not fit together."""


@dataclass
class FinetuneConfig:
    model: str = option(
        "",
        "pre-trained model: an export directory or s3:// prefix (its discriminator/, or mlm/ "
        "for the MLM baseline) or any Hugging Face ELECTRA model directory",
    )
    train: str = option("", "training file (local or s3://): Parquet, CSV, TSV or JSONL, one example per row")
    eval: str = option("", "evaluation file, laid out as the training file")
    task: str = option(
        "classification",
        "classification (a class per example), regression (a number per example, as STS-B), qa "
        "(extractive question answering on SQuAD-format JSON) or tagging (a tag per word: named "
        "entities, part of speech; CoNLL-style files)",
        TASKS,
    )
    text_column: str = option("text", "column of the text (the first sentence of a pair)")
    pair_column: str = option("", "column of the second sentence of a pair; empty: single sentences")
    label_column: str = option("label", "column of the label")
    labels: list = option([], "the classes in index order; empty: the sorted distinct labels of the training file")
    metric: str = option(
        "",
        "the metric of the summary line; empty: accuracy (classification), spearman "
        "(regression), f1 (qa; tagging, where --tag-scheme none gives accuracy). All of accuracy/f1/mcc, "
        "pearson/spearman/mse, exact_match/f1 or f1/precision/recall/accuracy are measured",
    )
    max_seq_len: int = option(
        0,
        "tokens per example, [CLS] and [SEP] included; longer examples are truncated (qa: the window; "
        "tagging: a longer sentence is cut between words into pieces). 0: the task's own, capped by the "
        "model's positions: 128, qa 384 (SQuAD's recipe)",
    )
    doc_stride: int = option(
        0,
        "qa: tokens that successive windows over a long context share; 0: 128, or half a window's "
        "context where a window is shorter",
    )
    max_query_len: int = option(
        0, "qa: a question's tokens beyond this are cut; 0: 64, or a quarter of a window shorter than 256"
    )
    max_answer_len: int = option(30, "qa: the longest answer span, in tokens")
    n_best: int = option(20, "qa: the highest start and end logits of a window paired in the answer search")
    tag_scheme: str = option(
        "bio",
        "tagging: how tags make entities: bio (IOB2), iob (IOB1), bioes, bmes (MSRA), or none (part "
        "of speech: no entities, scored by accuracy)",
    )
    token_column: int = option(0, "tagging: the column of a line that holds the token (-1: the last)")
    tag_column: int = option(-1, "tagging: the column of a line that holds the tag (-1: the last)")
    tag_separator: str = option("", "tagging: what separates a line's columns; empty: whitespace; \\t: a tab")
    lr: float = option(1e-4, "peak learning rate (ELECTRA: 1e-4; Large 5e-5)")
    layer_decay: float = option(
        0.8,
        "layer-wise LR decay: the task head gets lr, the top layer lr x decay, ..., "
        "the embeddings lr x decay^(layers+1) (ELECTRA: 0.8; Large 0.9)",
    )
    warmup: float = option(0.1, "fraction of the steps of linear warm-up; then linear decay to 0")
    epochs: int = option(3, "passes over the training data (ELECTRA: 3; 10 for RTE and STS-B)")
    batch_size: int = option(32, "examples per optimizer step, summed over workers")
    weight_decay: float = option(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    adam_eps: float = option(1e-6, "AdamW epsilon")
    grad_clip: float = option(1.0, "gradient-norm clipping (0: off)")
    dropout: float = option(0.1, "dropout in the encoder and the task head while fine-tuning")
    seeds: list = option([0, 1, 2], "one fine-tuning run per seed (head initialisation, example order, dropout)")
    lr_grid: list = option(
        [],
        "learning rates to choose --lr from (e.g. [1e-4, 3e-4, 1e-3]): the first seed is fine-tuned at each, "
        "the rate with the best score on a dev split held apart from --train is kept for every seed and "
        "reported; empty: --lr as given (classification and regression)",
    )
    dev_fraction: float = option(
        0.1, "share of --train held apart as the dev split that --lr-grid and --probe choose on (never --eval)"
    )
    probe: bool = option(
        False,
        "also a frozen-encoder linear probe: logistic regression on the pre-trained encoder's mean-pooled and "
        "[CLS] vectors, its regularisation chosen on the dev split, scored on --eval (classification)",
    )
    max_train_examples: int = option(0, "fine-tune on the first N training examples only (0: all)")
    num_workers: int = option(1, "Ray Train workers (data-parallel); 0: train in this process, without Ray")
    threads: int = option(
        0,
        "torch threads of each worker (or of this process); 0: on a local Ray the machine's "
        "cores divided among the workers, in this process torch's default",
    )
    use_gpu: bool = option(False, "one GPU per worker (in this process: the first GPU)")
    out: str = option("", "output directory; empty: runs/finetune-<date>-<time>")
