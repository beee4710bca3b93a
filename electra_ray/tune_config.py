"""What `tune` is asked to do, checked before Ray, torch and transformers load: SweepConfig, its
loading and every check a sweep's settings get (a new sweep's, and sweep.json's on --resume), and
the command line (`python -m electra_ray.tune` with a bad key answers in about a second)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from electra_ray.cli import add_config_arguments, verb_parser
from electra_ray.config import (
    BoundsError,
    Config,
    ConfigError,
    apply_file_and_overrides,
    apply_objective_masking,
    apply_values,
    check_bounds,
    check_choices,
    convert_value,
    option,
    set_nested,
    validate,
)
from electra_ray.finetune_config import FinetuneConfig
from electra_ray.tasks import MOVIE_REVIEWS_SOURCES

DISTRIBUTIONS = ("uniform", "loguniform", "randint")  # {kind: [low, high]} in `space`
METRICS = {"finetune": "finetune_score", "heldout_auc": "heldout_auc"}


@dataclass
class SweepConfig:
    pretrain: Config = field(default_factory=Config)  # every trial's settings, before its `space` values
    space: dict = option(
        {"model.generator_size": [0.125, 0.25, 1 / 3, 0.5, 1.0], "train.rtd_weight": [1, 10, 50, 100]},
        "pre-training keys to search, replacing the default as a whole: a list of values (grid: "
        "every combination; random/optuna: a choice), or {uniform|loguniform|randint: [low, high]} "
        "(random/optuna only)",
    )
    search: str = option(
        "grid",
        "grid, random (Tune's random sampling) or optuna (needs the optuna package)",
        ("grid", "random", "optuna"),
    )
    num_samples: int = option(1, "grid: repeats of the whole grid; random/optuna: trials")
    max_concurrent_trials: int = option(
        0,
        "trials run at a time; 0: on a local Ray, as many as the cores hold, "
        "on a cluster, as many as its resources hold",
    )
    asha: bool = option(True, "stop weak trials early (ASHA on heldout_auc, by optimizer step)")
    grace_period: int = option(0, "steps every trial runs before ASHA may stop it; 0: a quarter of max_steps")
    reduction_factor: float = option(3.0, "ASHA lets 1/reduction_factor of the trials through each rung")
    metric: str = option(
        "finetune",
        "what ranks the trials: finetune (finished trials fine-tuned on `task`) or heldout_auc (the last one reported)",
        tuple(METRICS),
    )
    finetune: FinetuneConfig = field(
        default_factory=lambda: FinetuneConfig(seeds=[0], max_train_examples=2000, threads=1)
    )
    task: str = option(
        "rotten_tomatoes",
        "labeled data for metric=finetune: a source of the movie-reviews package",
        MOVIE_REVIEWS_SOURCES,
    )
    dev_fraction: float = option(0.1, "fraction of the labeled data held out as dev (by text hash)")
    out: str = option(
        "",
        "output directory, or s3://bucket/prefix (shared storage: what a multi-node cluster needs); "
        "empty: runs/sweep-<date>-<time>",
    )


def load_sweep_config(path: str | None, overrides: list[str]) -> SweepConfig:
    cfg = SweepConfig()
    given = apply_file_and_overrides(cfg, path, overrides)
    apply_objective_masking(cfg.pretrain, {k.removeprefix("pretrain.") for k in given if k.startswith("pretrain.")})
    complete_sweep_config(cfg)
    return cfg


def complete_sweep_config(cfg: SweepConfig) -> None:
    """A sweep's settings as every later step takes them (a new sweep's, or sweep.json's on
    --resume): the space flattened, distribution bounds as numbers, eval_every set, every error
    found (check_sweep), and each listed value as the config holds it (typed_space)."""
    cfg.space = flatten_space(cfg.space)
    for key, values in cfg.space.items():
        if isinstance(values, dict) and isinstance(next(iter(values.values())), list):
            # YAML 1.1 reads 1e-3 as a string; Tune needs the distribution's bounds as numbers.
            ((kind, bounds),) = values.items()
            values[kind] = [
                convert_value(f"space.{key}.{kind}", b, int if kind == "randint" else float) for b in bounds
            ]
    if cfg.pretrain.train.eval_every == 0:  # every report carries the metric ASHA needs
        cfg.pretrain.train.eval_every = cfg.pretrain.train.log_every
    check_sweep(cfg)
    cfg.space = typed_space(cfg)


def flatten_space(space: dict, prefix: str = "") -> dict:
    """{"model": {"generator_size": [...]}} (as `--set space.model.generator_size=...` gives it)
    and {"model.generator_size": [...]} both become the latter."""
    flat = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not (len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
            flat.update(flatten_space(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def trial_config(base: dict, params: dict) -> Config:
    """The pre-training config of one trial: the sweep's base config with the trial's values."""
    cfg = Config.from_dict(base)
    values: dict = {}
    for key, value in params.items():
        set_nested(values, key, value)
    apply_values(cfg, values)
    validate(cfg)
    return cfg


def typed_value(base: dict, key: str, value):
    """`value` of config key `key` as a trial's config holds it: 1 -> 1.0 for a float key, "1e-3"
    (YAML 1.1's reading of 1e-3) -> 0.001."""
    node = trial_config(base, {key: value})
    for part in key.split("."):
        node = getattr(node, part)
    return node


def typed_space(cfg: SweepConfig) -> dict:
    """The space with each listed value typed (typed_value): a key's values compare and sort with
    each other, in the results and the plot, and match what trials.json holds."""
    base = cfg.pretrain.to_dict()
    return {
        key: [typed_value(base, key, value) for value in values] if isinstance(values, list) else values
        for key, values in cfg.space.items()
    }


def check_sweep(cfg: SweepConfig) -> None:
    """Every error a sweep's settings can hold, before any trial starts: unknown or ill-typed keys,
    values the pre-training config rejects, distributions a grid cannot enumerate."""
    check_choices(cfg)
    # The sweep's own numbers (pretrain.* and finetune.* carry their ranges in their fields); ASHA
    # needs reduction_factor > 1, and dev_fraction 0 or 1 would leave dev or train empty.
    check_bounds(
        cfg,
        bounds={
            "num_samples": ">= 1",
            "max_concurrent_trials": ">= 0",
            "grace_period": ">= 0",
            "reduction_factor": "> 1",
            "dev_fraction": "(0, 1)",
        },
    )
    if not cfg.space:
        raise ConfigError("space is empty: name at least one pre-training key to search")
    if cfg.pretrain.output.local_dir:
        # Every trial would share it (and remove its finetune/ there): each gets its own instead.
        raise ConfigError(
            "pretrain.output.local_dir must be empty in a sweep: each trial gets its own local directory "
            "(OUT/trials/<trial>, or a scratch directory for an s3:// sweep)"
        )
    if cfg.metric == "heldout_auc" or cfg.asha:
        if cfg.pretrain.train.objective != "electra":
            raise ConfigError("a sweep ranks discriminators: pretrain.train.objective must be electra")
    base = cfg.pretrain.to_dict()
    for key, values in cfg.space.items():
        if isinstance(values, dict):
            ((kind, bounds),) = values.items()
            if cfg.search == "grid":
                raise ConfigError(f"space.{key}: a grid needs a list of values, not {kind} (use search: random)")
            if not (isinstance(bounds, list) and len(bounds) == 2):
                raise ConfigError(f"space.{key}: {kind} needs [low, high], got {bounds!r}")
            # Tune itself fails on these only when the sweep starts: an empty range, a log of <= 0.
            numbers = all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
            if not numbers or bounds[0] >= bounds[1]:
                raise ConfigError(
                    f"space.{key}: {kind} needs [low, high], two finite numbers with low < high, got {bounds!r}"
                )
            if kind == "loguniform" and bounds[0] <= 0:
                raise ConfigError(f"space.{key}: loguniform needs low > 0, got {bounds!r}")
            values = bounds
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"space.{key}: expected a non-empty list of values or {{uniform|loguniform|randint: "
                f"[low, high]}}, got {values!r}"
            )
        for value in values:
            try:
                trial_config(base, {key: value})
            except BoundsError as error:
                if error.key != key:
                    raise ConfigError(f"space.{key} = {value!r}: {error}") from None
                # The value is out of the searched key's own range: say which, once.
                raise ConfigError(f"space.{key} = {value!r}: {key} must be {error.allowed}") from None
            except ConfigError as error:
                raise ConfigError(f"space.{key} = {value!r}: {error}") from None
        if isinstance(cfg.space[key], dict):
            check_distribution_fits(key, kind, type(typed_value(base, key, values[0])))


def check_distribution_fits(key: str, kind: str, field_type: type) -> None:
    """A distribution draws numbers a trial's config takes as they come: uniform and loguniform
    draw fractions, which an integer key refuses, and no distribution draws text, flags or lists.
    (Found now, not when every trial fails.)"""
    if field_type is bool or field_type not in (int, float):
        kind_name = field_type.__name__
        raise ConfigError(f"space.{key}: {kind} draws numbers, {key} takes {kind_name}: give a list of values")
    if field_type is int and kind != "randint":
        raise ConfigError(f"space.{key}: {kind} draws fractions, {key} takes whole numbers: use randint")


def expected_trials(cfg: SweepConfig) -> int:
    if cfg.search != "grid":
        return cfg.num_samples
    return cfg.num_samples * math.prod(len(values) for values in cfg.space.values())


def checked_args(argv: list[str] | None, doc: str) -> tuple[SweepConfig | None, str]:
    """(the checked SweepConfig of a new sweep, or None; the --resume path, or ""). argparse exits 2
    on a malformed line; a bad value raises ConfigError."""
    example = "e.g. --set pretrain.train.max_steps=400 'space.train.rtd_weight=[10,50]' search=random"
    parser = verb_parser("tune", doc, example)
    add_config_arguments(
        parser,
        default=None,
        help="YAML file: pretrain (the trials' pre-training config), space, search, num_samples, "
        "max_concurrent_trials, asha, grace_period, reduction_factor, metric, finetune, task, dev_fraction, out",
    )
    parser.add_argument(
        "--resume", metavar="OUT", help="continue an interrupted sweep (its output directory or s3:// prefix)"
    )
    args: argparse.Namespace = parser.parse_args(argv)
    if args.resume:
        return None, args.resume
    return load_sweep_config(args.config, args.set), ""
