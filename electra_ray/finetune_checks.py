"""Every setting of a fine-tune checked, and its command line read, before torch, transformers
and Ray load: `python -m electra_ray.finetune` with a bad flag answers in about a second.

Each check is a function returning (whether the setting is good, the message when it is not). The
settings of one task kind (QA's window, tagging's columns) are checked here too, by task name
(KIND_CHECKS): a kind's module loads transformers, which is what these checks come before.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Callable

import yaml

from electra_ray.cli import verb_parser
from electra_ray.finetune_config import TASKS, FinetuneConfig, FinetuneError
from electra_ray.tagging import SCHEMES

Check = Callable[[], "tuple[bool, str]"]  # (whether a setting is good, the message when it is not)

# Every metric each task kind measures, in its summary's order (the kinds' `metrics`).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1", "mcc"),
    "regression": ("pearson", "spearman", "mse"),
    "qa": ("exact_match", "f1"),
    "tagging": ("f1", "precision", "recall", "accuracy"),
}
assert tuple(TASK_METRICS) == TASKS
QA_MAX_SEQ_LEN = 384  # SQuAD's window (BERT, ELECTRA, Hugging Face's run_qa): --max-seq-len 0 for qa


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(cfg: FinetuneConfig) -> None:
    """Every setting in range and the settings consistent, before any file is read: each problem a
    FinetuneError naming the flag. Checked in order, so a later check may rely on an earlier one."""
    kind_checks = KIND_CHECKS.get(cfg.task, lambda cfg: [])(cfg)
    cfg.lr_grid = _numbers(cfg.lr_grid)
    checks = (*_task_checks(cfg), *_number_checks(cfg), *_list_checks(cfg), *_protocol_checks(cfg), *kind_checks)
    for check in checks:
        ok, message = check()
        if not ok:
            raise FinetuneError(message)


# Each check: a function returning (whether the setting is good, the message when it is not).


def _task_checks(cfg: FinetuneConfig) -> list:
    """The task, its metric, and the three paths every fine-tuning needs."""
    metrics = TASK_METRICS.get(cfg.task, ())
    return [
        lambda: (cfg.task in TASK_METRICS, f"task must be one of {list(TASK_METRICS)}, got {cfg.task!r}"),
        lambda: (
            not cfg.metric or cfg.metric in metrics,
            f"metric {cfg.metric!r} is not one of {list(metrics)} (the metrics of a {cfg.task} task)",
        ),
        *[
            lambda name=name: (
                isinstance(getattr(cfg, name), str) and getattr(cfg, name) != "",
                f"--{name} is required: a path (local or s3://)",
            )
            for name in ("model", "train", "eval")
        ],
    ]


def _number_checks(cfg: FinetuneConfig) -> list:
    """Every number in its range."""
    return [
        lambda: (_finite(cfg.lr) and cfg.lr > 0, f"--lr must be a finite number > 0, got {cfg.lr!r}"),
        lambda: (_integer(cfg.epochs) and cfg.epochs >= 1, f"--epochs must be an integer >= 1, got {cfg.epochs!r}"),
        lambda: (
            _integer(cfg.batch_size) and cfg.batch_size >= 1,
            f"--batch-size must be an integer >= 1, got {cfg.batch_size!r}",
        ),
        lambda: (
            _integer(cfg.max_seq_len) and (cfg.max_seq_len >= 3 or cfg.max_seq_len == 0),  # [CLS], a token, [SEP]
            f"--max-seq-len must be an integer >= 3 (0: the task's own), got {cfg.max_seq_len!r}",
        ),
        lambda: (
            _finite(cfg.dropout) and 0 <= cfg.dropout < 1,
            f"--dropout must be a number in [0, 1), got {cfg.dropout!r}",
        ),
        lambda: (
            _finite(cfg.warmup) and 0 <= cfg.warmup < 1,
            f"--warmup must be a number in [0, 1), got {cfg.warmup!r}",
        ),
        lambda: (
            _finite(cfg.layer_decay) and 0 < cfg.layer_decay <= 1,
            f"--layer-decay must be a number in (0, 1], got {cfg.layer_decay!r}",
        ),
        lambda: (
            _finite(cfg.weight_decay) and cfg.weight_decay >= 0,
            f"--weight-decay must be a finite number >= 0, got {cfg.weight_decay!r}",
        ),
        lambda: (
            _finite(cfg.adam_eps) and cfg.adam_eps > 0,
            f"--adam-eps must be a finite number > 0, got {cfg.adam_eps!r}",
        ),
        lambda: (
            _finite(cfg.grad_clip) and cfg.grad_clip >= 0,
            f"--grad-clip must be a finite number >= 0 (0: off), got {cfg.grad_clip!r}",
        ),
        lambda: (
            _integer(cfg.num_workers) and cfg.num_workers >= 0,
            f"--num-workers must be an integer >= 0 (0: in this process), got {cfg.num_workers!r}",
        ),
        lambda: (
            _integer(cfg.threads) and cfg.threads >= 0,
            f"--threads must be an integer >= 0 (0: the default), got {cfg.threads!r}",
        ),
        lambda: (
            _integer(cfg.max_train_examples) and cfg.max_train_examples >= 0,
            f"--max-train-examples must be an integer >= 0 (0: all), got {cfg.max_train_examples!r}",
        ),
    ]


def _list_checks(cfg: FinetuneConfig) -> list:
    """The seeds, the batch's split among the workers, the classes."""
    return [
        lambda: (
            isinstance(cfg.seeds, (list, tuple)) and len(cfg.seeds) > 0 and all(map(_integer, cfg.seeds)),
            f"--seeds must list one or more integers, got {cfg.seeds!r}",
        ),
        lambda: (
            len(set(cfg.seeds)) == len(cfg.seeds),  # each seed's model is OUT/seed-N
            f"--seeds lists a seed twice: {list(cfg.seeds)}",
        ),
        lambda: (
            cfg.batch_size % max(1, cfg.num_workers) == 0,
            f"batch_size ({cfg.batch_size}) must be divisible by num_workers ({cfg.num_workers})",
        ),
        lambda: (isinstance(cfg.labels, (list, tuple)), f"--labels must be a list, got {cfg.labels!r}"),
        lambda: (
            not cfg.labels or cfg.task == "classification",
            f"--labels lists the classes of a classification task; --task is {cfg.task}",
        ),
        lambda: (
            all(isinstance(v, (str, int, float, bool)) for v in cfg.labels),  # a label is one value
            f"--labels must list single values (strings or numbers), got {list(cfg.labels)!r}",
        ),
        lambda: (len(set(cfg.labels)) == len(cfg.labels), f"--labels lists a class twice: {list(cfg.labels)!r}"),
    ]


def _protocol_checks(cfg: FinetuneConfig) -> list:
    """The learning-rate grid, the dev split and the probe (finetune_protocol.py)."""
    return [
        lambda: (
            isinstance(cfg.lr_grid, (list, tuple)) and all(_finite(v) and v > 0 for v in cfg.lr_grid),
            f"--lr-grid must list finite numbers > 0, got {cfg.lr_grid!r}",
        ),
        lambda: (len(set(cfg.lr_grid)) == len(cfg.lr_grid), f"--lr-grid lists a rate twice: {list(cfg.lr_grid)}"),
        lambda: (
            _finite(cfg.dev_fraction) and 0 < cfg.dev_fraction < 1,
            f"--dev-fraction must be a number in (0, 1), got {cfg.dev_fraction!r}",
        ),
        lambda: (
            not cfg.lr_grid or cfg.task in ("classification", "regression"),
            f"--lr-grid needs a dev split of the training examples: classification or regression, not {cfg.task}",
        ),
        lambda: (not cfg.probe or cfg.task == "classification", f"--probe needs classes: --task is {cfg.task}"),
    ]


def _numbers(values) -> list:
    """A command line's or YAML's list of rates as numbers: YAML 1.1 reads 1e-4 (no dot) as text."""
    if not isinstance(values, (list, tuple)):
        return values
    converted = []
    for value in values:
        try:
            converted.append(float(value) if isinstance(value, str) else value)
        except ValueError:
            converted.append(value)
    return converted


# -- the settings of one kind --------------------------------------------------------------------


def qa_query_len(cfg: FinetuneConfig, max_len: int) -> int:
    """--max-query-len, or its default for a window of max_len tokens: 64 (SQuAD's), a quarter of a
    shorter window (a 64-token window keeps 16 question tokens and 45 of context)."""
    return cfg.max_query_len or min(64, max_len // 4)


def qa_stride(cfg: FinetuneConfig, max_len: int) -> int:
    """--doc-stride, or its default: 128 (SQuAD's), or half the context of a shorter window."""
    return cfg.doc_stride or min(128, (max_len - qa_query_len(cfg, max_len) - 3) // 2)


def qa_window(cfg: FinetuneConfig, max_len: int, what: str) -> tuple[bool, str]:
    """A QA window of max_len tokens holds [CLS] question [SEP] context [SEP] with a context longer
    than the stride. `what` names where max_len came from in the message."""
    query, stride = qa_query_len(cfg, max_len), qa_stride(cfg, max_len)
    room = max_len - query - 3
    if room < 2:
        return False, f"a window of {what} {max_len} tokens leaves no context after --max-query-len {query}"
    return (
        room > stride,
        f"--doc-stride ({stride}) must be below the context tokens of a window: {what} "
        f"({max_len}) - --max-query-len ({query}) - 3 = {room}",
    )


def qa_checks(cfg: FinetuneConfig) -> list[Check]:
    return [
        lambda: (
            _integer(cfg.doc_stride) and cfg.doc_stride >= 0,
            f"--doc-stride must be an integer >= 0 (0: what fits the window), got {cfg.doc_stride!r}",
        ),
        *[
            lambda name=name: (
                _integer(getattr(cfg, name)) and getattr(cfg, name) >= 1,
                f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(cfg, name)!r}",
            )
            for name in ("max_answer_len", "n_best")
        ],
        lambda: (
            _integer(cfg.max_query_len) and cfg.max_query_len >= 0,
            f"--max-query-len must be an integer >= 0 (0: what fits the window), got {cfg.max_query_len!r}",
        ),
        lambda: qa_window(cfg, cfg.max_seq_len or QA_MAX_SEQ_LEN, "--max-seq-len"),
    ]


def tagging_checks(cfg: FinetuneConfig) -> list[Check]:
    return [
        lambda: (cfg.tag_scheme in SCHEMES, f"--tag-scheme must be one of {list(SCHEMES)}, got {cfg.tag_scheme!r}"),
        *[
            lambda name=name: (
                _integer(getattr(cfg, name)),
                f"--{name.replace('_', '-')} must be an integer (a column index; -1: the last), "
                f"got {getattr(cfg, name)!r}",
            )
            for name in ("token_column", "tag_column")
        ],
        lambda: (
            cfg.token_column != cfg.tag_column,
            f"--token-column and --tag-column are both {cfg.token_column}",
        ),
    ]


KIND_CHECKS: dict[str, Callable[[FinetuneConfig], list[Check]]] = {"qa": qa_checks, "tagging": tagging_checks}


# -- the command line ----------------------------------------------------------------------------


def parser(doc: str) -> argparse.ArgumentParser:
    """One flag per FinetuneConfig field (--layer-decay for layer_decay), its help and default; a
    boolean field is a flag and its negation (--use-gpu / --no-use-gpu)."""
    parser = verb_parser("finetune", doc)
    hints = typing.get_type_hints(FinetuneConfig)
    for field in dataclasses.fields(FinetuneConfig):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flag, help = f"--{field.name.replace('_', '-')}", f"{field.metadata['help']} (default: {default!r})"
        if hints[field.name] is bool:
            parser.add_argument(
                flag, dest=field.name, default=argparse.SUPPRESS, action=argparse.BooleanOptionalAction, help=help
            )
            continue
        listed = hints[field.name] is list
        parser.add_argument(
            flag,
            dest=field.name,
            default=argparse.SUPPRESS,
            required=field.name in ("model", "train", "eval"),
            nargs="+" if listed else None,
            type=yaml.safe_load if listed else str,
            choices=field.metadata["choices"],
            help=help,
        )
    return parser


def checked_config(argv: list[str] | None, doc: str) -> FinetuneConfig:
    """The command line as a checked FinetuneConfig (argparse exits 2 on a malformed one; a bad
    value raises FinetuneError)."""
    from electra_ray.config import apply_values

    args = parser(doc).parse_args(argv)
    cfg = FinetuneConfig()
    apply_values(cfg, vars(args))
    validate(cfg)
    return cfg
