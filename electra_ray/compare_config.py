"""What `compare` is asked to do, checked before torch, transformers and Ray load: CompareConfig,
its loading and checks, and the command line (`python -m electra_ray.compare` with a bad key
answers in about a second)."""

from __future__ import annotations

from dataclasses import dataclass, field

from electra_ray.cli import add_config_arguments, verb_parser
from electra_ray.config import (
    Config,
    ConfigError,
    apply_file_and_overrides,
    check_bounds,
    check_choices,
    option,
)
from electra_ray.finetune_config import FinetuneConfig
from electra_ray.tasks import MOVIE_REVIEWS_SOURCES


@dataclass
class CompareConfig:
    pretrain: Config = field(default_factory=Config)  # train.max_steps: ELECTRA's steps, the FLOPs budget
    # model/train/eval/out are set here; each checkpoint's fine-tunes run in one Ray task (num_workers 0)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    task: str = option("rotten_tomatoes", "labeled data: a source of the movie-reviews package", MOVIE_REVIEWS_SOURCES)
    dev_fraction: float = option(0.1, "fraction of the labeled data held out as dev (by text hash)")
    points: int = option(
        3, "checkpoints of each pre-training run that are fine-tuned, evenly spaced; the last is the full budget"
    )
    budgets: list = option(
        [1],
        "multiples of pretrain.train.max_steps: per budget both objectives pre-train from "
        "scratch, ELECTRA round(budget x max_steps) steps and the MLM baseline the same FLOPs, "
        "warm-up scaled alike (a learning curve); the verdict reads the largest",
        bounds="> 0",
        items=float,
    )
    from_scratch: bool = option(
        True,
        "also fine-tune the encoder with no pre-training (0 FLOPs): the random-init "
        "control the verdict measures both objectives against",
    )
    out: str = option("", "output directory; empty: runs/compare-<date>-<time>")


def load_compare_config(path: str | None, overrides: list[str]) -> tuple[CompareConfig, set[str]]:
    cfg = CompareConfig()
    given = apply_file_and_overrides(cfg, path, overrides)
    check_choices(cfg)
    # The comparison's own numbers (pretrain.* and finetune.* carry their ranges in their fields;
    # arm_config checks the pre-training settings as a whole): dev_fraction 0 or 1 empties dev or train.
    check_bounds(cfg, bounds={"points": ">= 1", "dev_fraction": "(0, 1)"})
    if not cfg.budgets:
        raise ConfigError("config key 'budgets' must list at least one number > 0, got []")
    steps = [electra_steps(cfg.pretrain.train.max_steps, cfg.points, b) for b in cfg.budgets]
    if len(set(steps)) < len(steps):  # two runs of the same length: the same point twice
        raise ConfigError(
            f"config key 'budgets' {cfg.budgets} gives ELECTRA {steps} steps (rounded to a multiple "
            f"of points={cfg.points}): each budget must give its own number of steps"
        )
    if cfg.pretrain.data.eval_fraction == 0:  # checked here: evaluate_export would fail after pre-training
        raise ConfigError(
            "config key 'pretrain.data.eval_fraction' must be > 0: compare measures each checkpoint on held-out text"
        )
    return cfg, given


def electra_steps(max_steps: int, points: int, budget: float = 1.0) -> int:
    """ELECTRA's steps at `budget` x max_steps, rounded to a multiple of `points` (at least `points`)."""
    return max(points, round(budget * max_steps / points) * points)


def checked_config(argv: list[str] | None, doc: str) -> tuple[CompareConfig, set[str]]:
    """The command line as a checked CompareConfig and the keys it gave (argparse exits 2 on a
    malformed one; a bad value raises ConfigError)."""
    parser = verb_parser(
        "compare",
        doc,
        "e.g. --set points=2 finetune.seeds=[0,1,2,3,4] pretrain.train.max_steps=400 budgets=[0.25,0.5,1]",
    )
    add_config_arguments(
        parser,
        default=None,
        help="YAML file: sections pretrain (a pre-training config), finetune (its settings), and task, "
        "dev_fraction, points, budgets, from_scratch, out",
    )
    args = parser.parse_args(argv)
    return load_compare_config(args.config, args.set)
