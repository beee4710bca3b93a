"""Ray Tune sweeps of pre-training settings: generator size, the RTD weight λ, any config key.

    python -m electra_ray.tune --config configs/sweep-tiny.yaml [--set KEY=VALUE ...]
    python -m electra_ray.tune --resume runs/sweep-20261125-120000      # after an interruption

Each trial is a pre-training run as electra_ray.pretrain does it, inside a function that builds
and fits the TorchTrainer (Train V2's pattern for Tune); Tune's TuneReportCallback forwards the
workers' reports. The losses do not compare trials (a stronger generator makes the discriminator's
task harder), so trials are ranked by
- heldout_auc, at every report: the discriminator's ROC-AUC on held-out text corrupted by one fixed
  process shared by all trials (heldout.fixed_corruption). ASHA stops the weak trials by it.
- finetune_score, when a trial finishes (metric: finetune): its discriminator fine-tuned briefly on
  a labeled task (electra_ray.finetune), the median of the dev metric over the seeds.

Writes OUT/tune (Tune's experiment: TensorBoard logs, what --resume restores), OUT/trials (each
trial's pre-training run), OUT/results.csv, OUT/score.png (score against generator size, one line
per λ) and OUT/best.yaml (the best trial's pre-training config, for `electra_ray.pretrain --config`).
OUT may be s3://bucket/prefix (what Tune needs on a multi-node cluster: every node writes there);
then all of this goes there, and each trial keeps only scratch files (logs, its fine-tune) on the
node that runs it.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fnmatch
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from electra_ray import storage, trackers
from electra_ray.cli import add_config_arguments, output_directory, run_cli, verb_parser
from electra_ray.config import (
    BoundsError,
    Config,
    ConfigError,
    OutputConfig,
    ScalingConfig,
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
from electra_ray.driver import cluster_address, connect_ray, shared_tokenizer
from electra_ray.errors import UserError
from electra_ray.export import export
from electra_ray.finetune import FinetuneConfig, finetune_task
from electra_ray.pretrain import pretrain
from electra_ray.report import markdown_table, pyplot
from electra_ray.tasks import MOVIE_REVIEWS_SOURCES, write_movie_reviews

DISTRIBUTIONS = ("uniform", "loguniform", "randint")  # {kind: [low, high]} in `space`
METRICS = {"finetune": "finetune_score", "heldout_auc": "heldout_auc"}
SWEEP_FILE = "sweep.json"  # in OUT: what --resume continues with


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
    return cfg


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


def expected_trials(cfg: SweepConfig) -> int:
    if cfg.search != "grid":
        return cfg.num_samples
    return cfg.num_samples * math.prod(len(values) for values in cfg.space.values())


def param_space(cfg: SweepConfig) -> dict:
    space = {}
    for key, values in cfg.space.items():
        if isinstance(values, dict):
            ((kind, (low, high)),) = values.items()
            space[key] = getattr(tune, kind)(low, high)
        else:
            space[key] = tune.grid_search(values) if cfg.search == "grid" else tune.choice(values)
    return space


def search_algorithm(cfg: SweepConfig):
    if cfg.search != "optuna":
        return None  # Tune's default: grid / random sampling of param_space
    try:  # here: optuna is an optional dependency (the `tune` extra), needed by this search only
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise UserError(
            "search: optuna needs the optuna package (pip install optuna, or pip install -e '.[tune]')"
        ) from None
    return OptunaSearch(seed=cfg.pretrain.train.seed)


# -- a trial -------------------------------------------------------------------------------------


@dataclass
class SweepSettings:
    """What every trial gets besides its own values; sweep.json keeps it for --resume."""

    pretrain: dict  # the trials' pre-training config (Config.to_dict()), before their `space` values
    out: str  # the sweep's output directory
    metric: str  # SweepConfig.metric
    finetune: dict  # the fine-tune of metric=finetune (FinetuneConfig as a dict)
    task_files: list = field(default_factory=list)  # (train, dev) of metric=finetune
    threads: int = 0  # torch threads per worker on a single-node Ray (set at each start)
    concurrent: int = 0  # SweepConfig.max_concurrent_trials
    scratch: str = ""  # s3:// sweeps: names each node's scratch directory for the trials' local files


def run_trial(params: dict, settings: SweepSettings) -> None:
    """One trial: pre-train with the trial's values, every report forwarded to Tune; then, for
    metric=finetune, export the discriminator, fine-tune it, and report finetune_score."""
    cfg = trial_config(settings.pretrain, params)
    cfg.output.dir = storage.join(settings.out, "trials")
    cfg.output.name = tune.get_context().get_trial_name()  # the same after Tuner.restore: the run resumes
    if storage.is_remote(settings.out):
        cfg.output.local_dir = trial_scratch(settings, cfg.output.name)
    result = pretrain(cfg, export_and_evaluate=False, callbacks=(TuneReportCallback(),), threads=settings.threads)
    if settings.metric != "finetune":
        if storage.is_remote(settings.out):
            keep_trial_records(cfg)
        return
    run_dir = cfg.local_run_dir
    ft = FinetuneConfig(**settings.finetune)
    ft.model = export(result.checkpoint, os.path.join(run_dir, "export"), overwrite=True)  # the trial's own
    ft.train, ft.eval = settings.task_files
    ft.num_workers, ft.out = 0, os.path.join(run_dir, "finetune")
    shutil.rmtree(ft.out, ignore_errors=True)  # an earlier attempt's (restored trial): this trial wrote it
    # A task of its own: the trial function holds no GPU (and almost no CPU) of its own.
    metrics = ray.get(finetune_task(ft))
    stats = metrics["summary"][metrics["metric"]]
    if storage.is_remote(settings.out):
        keep_trial_records(cfg, ft.model, metrics)
    last = {k: v for k, v in result.history[-1].items() if isinstance(v, (int, float))}
    tune.report(
        {**last, "finetune_score": stats["median"], "finetune_std": stats["std"], "finetune_metric": metrics["metric"]}
    )


def trial_scratch(settings: SweepSettings, trial: str) -> str:
    """An s3:// sweep's local directory for a trial's logs, export and fine-tune, on the node that
    runs it: the same path after an interruption (a restored trial's run reads its metrics.jsonl
    again), a new one for each sweep."""
    return os.path.join(tempfile.gettempdir(), "electra-ray-sweeps", settings.scratch, trial)


def keep_trial_records(cfg: Config, export_dir: str = "", finetune_metrics: dict | None = None) -> None:
    """An s3:// sweep's trial: what it has only locally (the scratch directory may be on a node that
    goes away) published beside its checkpoints: metrics.jsonl and, for metric=finetune, the export
    and the fine-tune's metrics (finetune.json)."""
    with open(os.path.join(cfg.local_run_dir, "metrics.jsonl")) as f:
        storage.write_text(storage.join(cfg.run_dir, "metrics.jsonl"), f.read())
    if export_dir:
        storage.publish_directory(export_dir, storage.join(cfg.run_dir, "export"), overwrite=True)
    if finetune_metrics is not None:
        storage.write_text(storage.join(cfg.run_dir, "finetune.json"), json.dumps(finetune_metrics, indent=1))


# -- the sweep -----------------------------------------------------------------------------------


@dataclass
class SweepResult:
    out: str  # the sweep's directory: results.csv, score.png, best.yaml, tune/, trials/
    cfg: SweepConfig
    rows: list[dict]  # one per trial (trial_rows), ranked
    best: dict | None  # the best row; None when no trial has a score, or interrupted
    interrupted: bool  # stopped before every trial ended: continue with --resume OUT


def sweep(cfg: SweepConfig | None = None, resume: str = "") -> SweepResult:
    """Run a sweep (or continue the one in directory `resume`) and summarize it."""
    cfg, settings = resume_sweep(resume) if resume else new_sweep(cfg)
    concurrent, settings.threads = start_ray(cfg.pretrain.scaling, settings.concurrent)
    # The trial function itself holds (almost) nothing; its TorchTrainer asks for the workers.
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), {"CPU": 0.01})
    experiment, filesystem = experiment_storage(settings.out)
    if resume:
        tuner = tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem
        )
    else:
        tuner = new_tuner(cfg, trainable, experiment, concurrent, filesystem)
    return summarize(tuner.fit(), cfg, settings)


def experiment_storage(out: str) -> tuple[str, pafs.FileSystem | None]:
    """Where Tune keeps the experiment (OUT/tune), as Tune takes it: a local path, or on S3 the
    path without its scheme and our filesystem (endpoint and retries from the AWS variables, no
    credentials in it: Tune pickles it to every trial)."""
    experiment = storage.join(out, "tune")
    if not storage.is_remote(out):
        return experiment, None
    filesystem, inner = storage.resolve(experiment)
    return inner, filesystem


def new_sweep(cfg: SweepConfig) -> tuple[SweepConfig, SweepSettings]:
    """A new sweep's directory, with the tokenizer every trial shares (so that heldout_auc sees
    the same text), the task files of metric=finetune, and sweep.json."""
    out = cfg.out.rstrip("/") if storage.is_remote(cfg.out) else output_directory(cfg.out, "sweep")
    trackers.check(cfg.pretrain.output)  # before anything is written or Ray starts
    check_new_output(out)
    base = copy.deepcopy(cfg.pretrain)
    base.output.dir, base.output.name = out, "shared"
    # MLflow and W&B follow the trials through Tune's callbacks, on this driver (tracker_callbacks):
    # a trial's own run would log twice, from a process without the driver's credentials.
    base.output.trackers = [name for name in base.output.trackers if name not in trackers.EXTERNAL]
    sweep_tokenizer(base, out)
    settings = SweepSettings(
        pretrain=base.to_dict(),
        out=out,
        metric=cfg.metric,
        finetune=dataclasses.asdict(cfg.finetune),
        concurrent=cfg.max_concurrent_trials,
    )
    if storage.is_remote(out):
        settings.scratch = f"{os.path.basename(out)}-{os.urandom(6).hex()}"
    if cfg.metric == "finetune":
        settings.task_files = task_files(cfg, out)
    saved = {"sweep": dataclasses.asdict(cfg), "settings": dataclasses.asdict(settings)}
    storage.write_text(storage.join(out, SWEEP_FILE), json.dumps(saved, indent=1))
    return cfg, settings


def check_new_output(out: str) -> None:
    """A new sweep's output must be new or empty (a local directory, or an s3:// prefix that can be
    written and holds no object): a sweep never mixes its trials with another's."""
    if not storage.is_remote(out):
        if os.path.exists(out) and os.listdir(out):
            raise UserError(f"output directory {out} is not empty; choose another (out=...) or --resume it")
        os.makedirs(out, exist_ok=True)
        return
    storage.check(out, write=True)
    bucket, key = storage.bucket_and_key(out)
    with storage.s3_errors(out):
        listed = storage.s3_client().list_objects_v2(Bucket=bucket, Prefix=f"{key}/" if key else "", MaxKeys=1)
    if listed.get("KeyCount", 0):
        raise UserError(f"output {out} already holds objects; choose another prefix (out=...) or --resume it")


def sweep_tokenizer(base: Config, out: str) -> None:
    """The tokenizer every trial shares (driver.shared_tokenizer), trained into OUT/tokenizer unless
    pretrain.data.tokenizer names one; on S3 trained locally, then published there."""
    if not storage.is_remote(out) or base.data.tokenizer:
        shared_tokenizer(base, out)
        return
    destination = storage.join(out, "tokenizer")
    with storage.staging_directory(destination) as staging:
        shared_tokenizer(base, staging)  # trains into staging/tokenizer
        storage.publish_directory(base.data.tokenizer, destination, "tokenizer")
    base.data.tokenizer = destination


def task_files(cfg: SweepConfig, out: str) -> list[str]:
    """The (train, dev) files of metric=finetune in OUT/data, where every trial reads them."""
    if not storage.is_remote(out):
        return list(write_movie_reviews(cfg.task, cfg.dev_fraction, os.path.join(out, "data")))
    urls = []
    with tempfile.TemporaryDirectory(prefix="electra-ray-sweep-") as local:
        for path in write_movie_reviews(cfg.task, cfg.dev_fraction, local):
            urls.append(storage.join(out, "data", os.path.basename(path)))
            upload_file(path, urls[-1])
    return urls


def upload_file(path: str, url: str) -> None:
    bucket, key = storage.bucket_and_key(url)
    with storage.s3_errors(url):
        storage.s3_client().upload_file(path, bucket, key)


def resume_sweep(resume: str) -> tuple[SweepConfig, SweepSettings]:
    """The config and settings of the sweep in directory `resume`, as its sweep.json saved them."""
    out = resume.rstrip("/") if storage.is_remote(resume) else os.path.abspath(resume)
    storage.check(out)
    if not storage.exists(storage.join(out, SWEEP_FILE)):
        raise UserError(f"cannot resume {resume}: no {SWEEP_FILE} there (is it a directory of electra_ray.tune?)")
    saved = json.loads(storage.read_text(storage.join(out, SWEEP_FILE)))
    cfg = SweepConfig()
    apply_values(cfg, saved["sweep"])
    return cfg, SweepSettings(**saved["settings"])


def start_ray(scaling: ScalingConfig, concurrent: int) -> tuple[int, int]:
    """Join the cluster, or start a local Ray sized for `concurrent` trials at a time (0: as many
    as the cores hold). Returns (trials at a time, 0 on a cluster: as many as its resources hold;
    torch threads per worker, 0: Ray's setting)."""
    local = not ray.is_initialized() and not cluster_address(scaling)
    per_trial_cpus = scaling.num_workers * (scaling.cpus_per_worker or 1)
    if local:
        concurrent = concurrent or max(1, int((os.cpu_count() or 1) // per_trial_cpus))
    # Room for the trials' workers plus 2 CPUs for their Ray Data tasks and fine-tunes (on 2
    # cores, training workers holding every CPU would starve the data pipeline).
    single_node = connect_ray(scaling, local_cpus=int(concurrent * per_trial_cpus) + 2 if local else 0)
    if single_node and concurrent:  # the cores shared among the trials running at once
        return concurrent, max(1, (os.cpu_count() or 1) // (concurrent * scaling.num_workers))
    return concurrent, 0


def new_tuner(
    cfg: SweepConfig, trainable, experiment: str, concurrent: int, filesystem: pafs.FileSystem | None = None
) -> tune.Tuner:
    """The Tuner of a new sweep: its search, ASHA on heldout_auc, `concurrent` trials at a time (0:
    no limit); the experiment at `experiment` (experiment_storage: in `filesystem` if given)."""
    scheduler = None
    if cfg.asha:
        grace = cfg.grace_period or max(1, cfg.pretrain.train.max_steps // 4)
        # Rungs strictly before the last step, and no stop at it: every trial that trains to
        # the end gets its fine-tune.
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="step",
            max_t=max(grace, cfg.pretrain.train.max_steps - 1),
            grace_period=grace,
            reduction_factor=cfg.reduction_factor,
            stop_last_trials=False,
        )
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric="heldout_auc",
            mode="max",
            scheduler=scheduler,
            search_alg=search_algorithm(cfg),
            num_samples=cfg.num_samples,
            max_concurrent_trials=concurrent or None,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=os.path.dirname(experiment),
            storage_filesystem=filesystem,
            verbose=1,
            callbacks=tracker_callbacks(cfg.pretrain.output),
        ),
    )


def tracker_callbacks(output: OutputConfig) -> list:
    """Tune's own MLflow / W&B loggers for the trackers of pretrain.output.trackers: one tracker
    run per trial, with the trial's searched values as params and every report as metrics. They
    run in this (the driver's) process; credentials come from its environment (trackers.py)."""
    callbacks = []
    if "mlflow" in output.trackers:  # here: optional packages, imported only when asked for
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        # tracking_uri None: MLflow reads MLFLOW_TRACKING_URI itself, so the URI is not pickled with the experiment.
        uri = output.mlflow_tracking_uri or None
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=trackers.mlflow_experiment(output)))
    if "wandb" in output.trackers:
        from ray.air.integrations.wandb import WandbLoggerCallback

        callbacks.append(WandbLoggerCallback(project=trackers.wandb_project(output)))
    return callbacks


def summarize(grid, cfg: SweepConfig, settings: SweepSettings) -> SweepResult:
    """The trials' rows; unless the sweep was interrupted, ranked and written: results.csv,
    score.png and best.yaml."""
    out = settings.out
    rows = trial_rows(grid, cfg)
    interrupted = len(rows) < expected_trials(cfg) or any(row["status"] == "unfinished" for row in rows)
    if interrupted:
        print(
            f"sweep interrupted with {sum(row['status'] != 'unfinished' for row in rows)} of "
            f"{expected_trials(cfg)} trials done; continue with: python -m electra_ray.tune --resume {out}",
            flush=True,
        )
        return SweepResult(out, cfg, rows, None, interrupted=True)
    best = rank(rows, cfg.metric)
    with results_directory(out) as directory:
        write_csv(rows, cfg, os.path.join(directory, "results.csv"))
        plot_scores(rows, cfg, os.path.join(directory, "score.png"))
        if best is not None:
            write_best_config(best, settings.pretrain, cfg, os.path.join(directory, "best.yaml"), out)
    if storage.is_remote(out) and settings.scratch:  # this node's scratch: the trials published their files
        shutil.rmtree(trial_scratch(settings, ""), ignore_errors=True)
    return SweepResult(out, cfg, rows, best, interrupted=False)


@contextmanager
def results_directory(out: str) -> Iterator[str]:
    """Where the results are written: OUT itself, or for s3:// a temporary directory whose files
    are uploaded to OUT afterwards."""
    if not storage.is_remote(out):
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="electra-ray-sweep-") as local:
        yield local
        for name in sorted(os.listdir(local)):
            upload_file(os.path.join(local, name), storage.join(out, name))


def trial_rows(grid, cfg: SweepConfig) -> list[dict]:
    """One row per trial: its values, its last report, and how it ended."""
    max_steps = cfg.pretrain.train.max_steps
    rows = []
    saved = saved_statuses(grid.experiment_path, grid.filesystem)
    # The ResultGrid has no per-trial status; its experiment analysis holds the trials it was built from.
    for trial, result in zip(grid._experiment_analysis.trials, grid):
        metrics = result.metrics or {}
        step = metrics.get("step", 0)
        trial_status = saved.get(trial.trial_id, trial.status)
        if trial_status == "ERROR":
            status = "error"
        elif trial_status != "TERMINATED":
            status = "unfinished"  # interrupted: --resume continues it
        elif step >= max_steps and (cfg.metric != "finetune" or "finetune_score" in metrics):
            status = "finished"
        else:
            status = "stopped by ASHA"
        rows.append(
            {
                "trial": trial.trial_id,
                **{key: trial.config[key] for key in cfg.space},
                "status": status,
                "step": step,
                "heldout_auc": metrics.get("heldout_auc", math.nan),
                "finetune_score": metrics.get("finetune_score", math.nan),
                "finetune_std": metrics.get("finetune_std", math.nan),
                "error": str(result.error or "").strip().splitlines()[-1][:300] if result.error else "",
            }
        )
    return sorted(rows, key=lambda row: [row[key] for key in cfg.space])


def saved_statuses(experiment_dir: str, filesystem: pafs.FileSystem | None = None) -> dict[str, str]:
    """Trial id -> status as Tune last saved the experiment (in `filesystem`: the ResultGrid's, S3
    for an s3:// sweep). After Ctrl-C the trials in memory are all stopped (TERMINATED), while the
    saved state, which Tuner.restore continues from, still says which were RUNNING or PENDING."""
    filesystem = filesystem or pafs.LocalFileSystem()
    entries = filesystem.get_file_info(pafs.FileSelector(experiment_dir, allow_not_found=True))
    # One file per session (named by its start time): the newest session's is the latest state.
    states = sorted(e.path for e in entries if fnmatch.fnmatch(e.base_name, "experiment_state-*.json"))
    if not states:
        return {}
    with filesystem.open_input_stream(states[-1]) as f:
        trials = [json.loads(state) if isinstance(state, str) else state for state, _ in json.load(f)["trial_data"]]
    return {trial["trial_id"]: trial["status"] for trial in trials}


def score(row: dict, metric: str) -> float:
    return row[METRICS[metric]]


def rank(rows: list[dict], metric: str) -> dict | None:
    """Number the rows by score, best first, ties broken by heldout_auc (at small budgets many
    fine-tunes end at the same constant prediction); rows without a score get no rank. Returns the best."""

    def key(row: dict) -> tuple:
        auc = row["heldout_auc"]
        return -score(row, metric), -(auc if not math.isnan(auc) else -math.inf)

    scored = sorted((row for row in rows if not math.isnan(score(row, metric))), key=key)
    for row in rows:
        row["rank"] = ""
    for position, row in enumerate(scored, 1):
        row["rank"] = position
    return scored[0] if scored else None


COLUMNS = ("status", "step", "heldout_auc", "finetune_score", "finetune_std", "rank", "trial", "error")


def write_csv(rows: list[dict], cfg: SweepConfig, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*cfg.space, *COLUMNS])
        writer.writeheader()
        writer.writerows(
            {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows
        )  # no score: an empty cell


def format_table(rows: list[dict], cfg: SweepConfig) -> str:
    """The results as a Markdown table, best first."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    columns = (
        [*cfg.space, "status", "step", "heldout_auc"]
        + (["finetune_score", "finetune_std"] if cfg.metric == "finetune" else [])
        + ["rank"]
    )
    ordered = sorted(rows, key=lambda row: (row["rank"] == "", row["rank"] or 0))
    return markdown_table(columns, ([cell(row[c]) for c in columns] for row in ordered))


def plot_scores(rows: list[dict], cfg: SweepConfig, path: str) -> None:
    """Score against generator size (or the first searched key), one line per λ (or the second
    key); trials ASHA stopped are drawn hollow at their last heldout_auc."""
    plt = pyplot()
    keys = list(cfg.space)
    x_key = "model.generator_size" if "model.generator_size" in keys else keys[0]
    others = [k for k in keys if k != x_key]
    line_key = "train.rtd_weight" if "train.rtd_weight" in others else (others[0] if others else None)
    panels = ["heldout_auc"] + (["finetune_score"] if cfg.metric == "finetune" else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, metric in zip(axes[0], panels):
        groups = itertools.groupby(
            sorted(rows, key=lambda r: (r[line_key] if line_key else 0, r[x_key])),
            key=lambda r: r[line_key] if line_key else None,
        )
        for value, group in groups:
            group = [r for r in group if not math.isnan(r[metric])]
            if not group:
                continue
            label = f"{line_key.split('.')[-1]} = {value:g}" if line_key else None
            # The line joins finished trials (the mean where values repeat); trials stopped early,
            # measured at fewer steps, are hollow markers off the line.
            finished = [r for r in group if r["status"] == "finished"]
            xs = sorted({r[x_key] for r in finished})
            means = [
                sum(r[metric] for r in finished if r[x_key] == x) / sum(r[x_key] == x for r in finished) for x in xs
            ]
            (line,) = axis.plot(xs, means, marker="o", label=label if xs else None)
            stopped = [r for r in group if r["status"] != "finished"]
            axis.scatter(
                [r[x_key] for r in stopped],
                [r[metric] for r in stopped],
                s=60,
                facecolors="white",
                edgecolors=line.get_color(),
                zorder=3,
                label=None if xs else label,
            )
        if all(isinstance(r[x_key], (int, float)) and r[x_key] > 0 for r in rows):
            axis.set_xscale("log", base=2)
        axis.set_xlabel(x_key)
        axis.set_ylabel(
            {
                "heldout_auc": "held-out detection AUC (fixed corruption)",
                "finetune_score": "fine-tuned dev score (median over seeds)",
            }[metric]
        )
        axis.set_title(f"{metric} (hollow: stopped early)" if metric == "heldout_auc" else f"{metric}: finished trials")
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_best_config(best: dict, base: dict, cfg: SweepConfig, path: str, out: str = "") -> None:
    """The best trial's pre-training config as YAML, for `electra_ray.pretrain --config`; `out`: the
    sweep's output (default: the file's directory), where the file is published."""
    values = trial_config(base, {key: best[key] for key in cfg.space}).to_dict()
    values["output"] = {"dir": "runs"}  # a new run, not the trial's directory
    out = out or os.path.dirname(path)
    shown = storage.join(out, os.path.basename(path))
    # --config reads a local file: an s3:// sweep's best.yaml is copied here first.
    command = f"aws s3 cp {shown} best.yaml, then " if storage.is_remote(shown) else ""
    command += f"python -m electra_ray.pretrain --config {'best.yaml' if command else shown}"
    header = (
        f"# The best trial ({best['trial']}) of the sweep in {out} by "
        f"{METRICS[cfg.metric]}: " + ", ".join(f"{key} = {best[key]}" for key in cfg.space) + "\n"
        f"# Pre-train with it: {command}\n"
    )
    with open(path, "w") as f:
        f.write(header + yaml.safe_dump(values, sort_keys=False))


def main(argv: list[str] | None = None) -> None:
    parser = verb_parser(
        "tune", __doc__, "e.g. --set pretrain.train.max_steps=400 'space.train.rtd_weight=[10,50]' search=random"
    )
    add_config_arguments(
        parser,
        default=None,
        help="YAML file: pretrain (the trials' pre-training config), space, search, num_samples, "
        "max_concurrent_trials, asha, grace_period, reduction_factor, metric, finetune, task, dev_fraction, out",
    )
    parser.add_argument(
        "--resume", metavar="OUT", help="continue an interrupted sweep (its output directory or s3:// prefix)"
    )
    args = parser.parse_args(argv)

    def run():
        result = sweep(resume=args.resume) if args.resume else sweep(load_sweep_config(args.config, args.set))
        if result.interrupted:
            return
        print(format_table(result.rows, result.cfg))
        for name in ("results.csv", "score.png", "best.yaml"):
            if storage.exists(storage.join(result.out, name)):
                print(f"{name.split('.')[0]}: {storage.join(result.out, name)}")

    run_cli(run)


if __name__ == "__main__":
    main()
