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

Writes OUT/tune (Tune's experiment: TensorBoard logs), OUT/trials (each trial's pre-training run),
OUT/trials.json (each trial's values, status and last report: what --resume continues from),
OUT/results.csv, OUT/score.png (score against generator size, one line per λ) and OUT/best.yaml
(the best trial's pre-training config, for `electra_ray.pretrain --config`).

--resume reads only JSON of ours from OUT (sweep.json, trials.json), checked as a config file is:
never Tune's pickles (Tuner.restore would unpickle OUT/tune/tuner.pkl, which runs code, and an
s3:// sweep's storage is shared). It runs again the trials that had not ended, each continuing its
pre-training run from the run's latest checkpoint, and then the trials not yet started.
OUT may be s3://bucket/prefix (what Tune needs on a multi-node cluster: every node writes there);
then all of this goes there, and each trial keeps only scratch files (logs, its fine-tune) on the
node that runs it.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m electra_ray.tune`: a bad key is refused before the imports
    from electra_ray.cli import run_cli  # below (Ray, torch, transformers: seconds); main() re-reads it
    from electra_ray.tune_config import checked_args

    run_cli(lambda: checked_args(sys.argv[1:], __doc__))

import copy
import csv
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS

from electra_ray import storage, trackers
from electra_ray.cli import output_directory, run_cli
from electra_ray.config import (
    Config,
    ConfigError,
    OutputConfig,
    ScalingConfig,
    apply_values,
)
from electra_ray.driver import cluster_address, connect_ray, shared_tokenizer
from electra_ray.errors import UserError
from electra_ray.export import export
from electra_ray.finetune import FinetuneConfig, finetune_task
from electra_ray.pretrain import pretrain
from electra_ray.report import markdown_table, pyplot
from electra_ray.tasks import write_movie_reviews
from electra_ray.tune_config import (  # noqa: F401  (this module's names for them, since before they moved)
    DISTRIBUTIONS,
    METRICS,
    SweepConfig,
    check_sweep,
    checked_args,
    complete_sweep_config,
    expected_trials,
    flatten_space,
    load_sweep_config,
    trial_config,
    typed_value,
)

SWEEP_FILE = "sweep.json"  # in OUT: the sweep's config, what --resume continues with
RECORD_FILE = "trials.json"  # in OUT: every started trial's name, values, status, last report (TrialRecorder)
RESUMED = "resumed_trial"  # a resumed session's trial config: an index into SweepSettings.resumed
SCRATCH_ROOT = "electra-ray-sweeps"  # in each node's temporary directory: s3:// sweeps' scratch
# Names that --resume accepts from the sweep's files: one path component each, of the form we give.
SCRATCH_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}-[0-9a-f]{12}")
TRIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RECORD_STATUSES = ("running", "ended", "error")  # running: started, not ended (--resume runs it again)
# What Tune adds to every report: not the trial's own values.
TUNE_KEYS = frozenset(AUTO_RESULT_KEYS) | frozenset(DEBUG_METRICS) | {"done", "checkpoint_dir_name"}


def param_space(cfg: SweepConfig) -> dict:
    space = {}
    for key, values in cfg.space.items():
        if isinstance(values, dict):
            ((kind, (low, high)),) = values.items()
            space[key] = getattr(tune, kind)(low, high)
        else:
            space[key] = tune.grid_search(values) if cfg.search == "grid" else tune.choice(values)
    return space


def search_algorithm(cfg: SweepConfig, evaluated: list[TrialRecord] | None = None):
    """Tune's search of param_space; for optuna, told the trials that `evaluated` ended (a resumed
    sweep's: their values and last heldout_auc, the metric it optimizes)."""
    if cfg.search != "optuna":
        return None  # Tune's default: grid / random sampling of param_space
    try:  # here: optuna is an optional dependency (the `tune` extra), needed by this search only
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise UserError(
            "search: optuna needs the optuna package (pip install optuna, or pip install -e '.[tune]')"
        ) from None
    known = [r for r in evaluated or [] if r.status == "ended" and math.isfinite(r.result.get("heldout_auc", math.nan))]
    if not known:
        return OptunaSearch(seed=cfg.pretrain.train.seed)
    return OptunaSearch(
        # Another seed than the first session's: its first draws would repeat the first session's.
        seed=cfg.pretrain.train.seed + len(evaluated),
        points_to_evaluate=[dict(r.params) for r in known],
        evaluated_rewards=[r.result["heldout_auc"] for r in known],
    )


# -- a trial -------------------------------------------------------------------------------------


@dataclass
class SweepSettings:
    """What every trial gets besides its own values. sweep.json keeps it, for reading; --resume
    derives it again from the sweep's config and the --resume path (sweep_settings), taking only
    `scratch` from the file, after checking it."""

    pretrain: dict  # the trials' pre-training config (Config.to_dict()), before their `space` values
    out: str  # the sweep's output directory
    metric: str  # SweepConfig.metric
    finetune: dict  # the fine-tune of metric=finetune (FinetuneConfig as a dict)
    task_files: list = field(default_factory=list)  # (train, dev) of metric=finetune
    threads: int = 0  # torch threads per worker on a single-node Ray (set at each start)
    concurrent: int = 0  # SweepConfig.max_concurrent_trials
    scratch: str = ""  # s3:// sweeps: names each node's scratch directory for the trials' local files
    resumed: list = field(default_factory=list)  # a resumed session's trials: {"name", "params"} each


@dataclass
class TrialRecord:
    """One started trial, as OUT/trials.json keeps it."""

    name: str  # its pre-training run: OUT/trials/<name>
    params: dict  # its values of the space's keys
    status: str = "running"  # RECORD_STATUSES: ended is finished or stopped by ASHA
    result: dict = field(default_factory=dict)  # the numbers of its last report (step, heldout_auc, ...)
    error: str = ""  # status error: the last line of the trial's error


def trial_identity(config: dict, resumed: list[dict], default_name: str) -> tuple[str, dict]:
    """A trial's name and values. A new trial's config is its values, its name Tune's; a resumed
    session's trial config names its entry of SweepSettings.resumed (a name, or "" for a trial
    not started before: then Tune's)."""
    if RESUMED in config:
        entry = resumed[config[RESUMED]]
        return entry["name"] or default_name, dict(entry["params"])
    return default_name, dict(config)


def run_trial(config: dict, settings: SweepSettings) -> None:
    """One trial: pre-train with the trial's values, every report forwarded to Tune; then, for
    metric=finetune, export the discriminator, fine-tune it, and report finetune_score."""
    name, params = trial_identity(config, settings.resumed, tune.get_context().get_trial_name())
    cfg = trial_config(settings.pretrain, params)
    cfg.output.dir = storage.join(settings.out, "trials")
    cfg.output.name = name  # a resumed trial's own: its run continues from its latest checkpoint
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
    shutil.rmtree(ft.out, ignore_errors=True)  # an earlier attempt's (resumed trial): this trial wrote it
    # A task of its own: the trial function holds no GPU (and almost no CPU) of its own.
    metrics = ray.get(finetune_task(ft))
    stats = metrics["summary"][metrics["metric"]]
    if storage.is_remote(settings.out):
        keep_trial_records(cfg, ft.model, metrics)
    last = {k: v for k, v in result.history[-1].items() if isinstance(v, (int, float))}
    tune.report(
        {**last, "finetune_score": stats["median"], "finetune_std": stats["std"], "finetune_metric": metrics["metric"]}
    )


def scratch_root() -> str:
    return os.path.join(tempfile.gettempdir(), SCRATCH_ROOT)


def trial_scratch(settings: SweepSettings, trial: str) -> str:
    """An s3:// sweep's local directory for a trial's logs, export and fine-tune, on the node that
    runs it: the same path after an interruption (a resumed trial's run reads its metrics.jsonl
    again), a new one for each sweep."""
    return os.path.join(scratch_root(), settings.scratch, trial)


def new_scratch(out: str) -> str:
    """A new s3:// sweep's scratch name: the prefix's last part, made a safe name, and a random suffix."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(out)).lstrip(".-")[:64] or "sweep"
    return f"{readable}-{os.urandom(6).hex()}"


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


# -- what the driver keeps of the trials ---------------------------------------------------------


def reported_numbers(result: dict) -> dict[str, float]:
    """The numbers a trial reported (step included), without what Tune adds to every report."""
    return {
        key: value
        for key, value in result.items()
        if key not in TUNE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def trial_error(trial) -> str:
    """The last line of a failed trial's error, from Tune's text file (error.txt) beside the trial;
    never its pickled copy."""
    try:
        with open(trial.error_file) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except (OSError, TypeError):  # no file (TypeError: no path)
        return "error"
    return lines[-1].strip()[:300] if lines else "error"


def write_json(path: str, value) -> None:
    """A JSON file a crash never leaves half written: locally a new file renamed into place; on
    S3 one PUT, which is atomic."""
    text = json.dumps(value, indent=1)
    if storage.is_remote(path):
        storage.write_text(path, text)
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def write_records(out: str, records: list[TrialRecord]) -> None:
    write_json(storage.join(out, RECORD_FILE), {"trials": [dataclasses.asdict(r) for r in records]})


class TrialRecorder(tune.Callback):
    """Keeps OUT/trials.json from the driver: a trial's name and values when it starts, its last
    report and status when it ends (ended: finished, or stopped by ASHA; error). A trial still
    `running` there when the sweep stops (Ctrl-C, a crash) is what --resume runs again."""

    def __init__(self, out: str, records: list[TrialRecord], resumed: list[dict]):
        self.out, self.resumed = out, resumed
        self.records = {record.name: record for record in records}
        self.names: dict[str, str] = {}  # Tune's trial id -> our name

    def record(self, trial) -> TrialRecord:
        if trial.trial_id not in self.names:
            name, params = trial_identity(trial.config, self.resumed, str(trial))
            self.names[trial.trial_id] = name
            self.records.setdefault(name, TrialRecord(name, params))
        return self.records[self.names[trial.trial_id]]

    def on_trial_start(self, iteration, trials, trial, **info):
        record = self.record(trial)
        record.status, record.error = "running", ""
        self.save()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.record(trial).result = reported_numbers(result)  # written when the trial ends

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune calls this for a trial that returned or that ASHA stopped, not for one stopped by Ctrl-C.
        self.record(trial).status = "ended"
        self.save()

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self.record(trial)
        record.status, record.error = "error", trial_error(trial)
        self.save()

    def save(self) -> None:
        write_records(self.out, list(self.records.values()))


class TrialTrackers(tune.Callback):
    """MLflow and W&B for a sweep's trials (pretrain.output.trackers), from this, the driver's,
    process: one tracker run per trial, named as its pre-training run, with its whole pre-training
    config as params and every report at its step. The credentials (WANDB_API_KEY,
    MLFLOW_TRACKING_TOKEN, ...) stay in the driver's environment: Ray's WandbLoggerCallback would
    copy WANDB_API_KEY into its logging actor's runtime_env, which the Ray dashboard and the State
    API show to anyone who can reach them. A tracker that fails is one warning line (TrackerGroup):
    the sweep goes on."""

    def __init__(self, output: OutputConfig, base: dict, resumed: list[dict], directory: str, max_steps: int):
        self.output, self.base, self.resumed = output, base, resumed
        self.directory, self.max_steps = directory, max_steps
        self.groups: dict[str, trackers.TrackerGroup] = {}  # Tune's trial id -> its trackers

    def on_trial_start(self, iteration, trials, trial, **info):
        name, params = trial_identity(trial.config, self.resumed, str(trial))
        group = trackers.TrackerGroup(trackers.build(self.output, self.directory), kept="the sweep's tune/ directory")
        group.start(name, trackers.flat_params(trial_config(self.base, params).to_dict()))
        self.groups[trial.trial_id] = group

    def on_trial_result(self, iteration, trials, trial, result, **info):
        group = self.groups.get(trial.trial_id)
        numbers = reported_numbers(result)
        if group is not None and isinstance(numbers.get("step"), int):
            group.log(trackers.numeric(numbers), numbers["step"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        step = reported_numbers(trial.last_result).get("step", 0)
        self.finish(trial.trial_id, "FINISHED" if step >= self.max_steps else "KILLED")  # KILLED: by ASHA

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finish(trial.trial_id, "FAILED")

    def on_experiment_end(self, trials, **info):
        for trial_id in list(self.groups):  # still running: the sweep was interrupted
            self.finish(trial_id, "KILLED")

    def finish(self, trial_id: str, status: trackers.Status) -> None:
        group = self.groups.pop(trial_id, None)
        if group is not None:
            group.finish(status)


def tracker_callbacks(output: OutputConfig, settings: SweepSettings, max_steps: int) -> list[tune.Callback]:
    """The sweep's MLflow / W&B callback (TrialTrackers) if pretrain.output.trackers names one.
    W&B writes its files into OUT/wandb, or for an s3:// sweep into the current directory (unless
    WANDB_DIR says otherwise)."""
    if not trackers.external(output):
        return []
    directory = os.getcwd() if storage.is_remote(settings.out) else settings.out
    return [TrialTrackers(output, settings.pretrain, settings.resumed, directory, max_steps)]


# -- reading a sweep's files back (--resume): data, checked -----------------------------------------


def refuse(resume: str, problem: str) -> UserError:
    return UserError(f"cannot resume {resume}: {problem}")


def read_sweep_json(path: str, resume: str):
    """A JSON file of the sweep, parsed (and nothing else: no pickle, no code)."""
    name = os.path.basename(path)
    if not storage.exists(path):
        raise refuse(resume, f"no {name} there (is it a directory of electra_ray.tune?)")
    try:
        return json.loads(storage.read_text(path))
    except ValueError as error:  # UnicodeDecodeError included
        raise refuse(resume, f"its {name} is not readable JSON ({error})") from None


def saved_sweep_config(saved, out: str, resume: str) -> SweepConfig:
    """The sweep's config from sweep.json, checked as a sweep file given on the command line is."""
    if not isinstance(saved, dict) or not isinstance(saved.get("sweep"), dict):
        raise refuse(resume, f"its {SWEEP_FILE} is not a sweep's (no 'sweep' section)")
    cfg = SweepConfig()
    try:
        apply_values(cfg, saved["sweep"])
        complete_sweep_config(cfg)
    except ConfigError as error:
        raise refuse(resume, f"its {SWEEP_FILE} is refused: {error}") from None
    cfg.out = out  # where it is now: a moved sweep reads and writes its new place
    return cfg


def saved_scratch(saved: dict, out: str, resume: str) -> str:
    """sweep.json's scratch name, used only if it is one we give (new_scratch): a single name under
    the scratch root, never a path (the sweep removes that directory at its end)."""
    settings = saved.get("settings")
    scratch = settings.get("scratch", "") if isinstance(settings, dict) else ""
    if not isinstance(scratch, str) or (scratch and not SCRATCH_NAME.fullmatch(scratch)):
        raise refuse(
            resume,
            f"its {SWEEP_FILE} names the scratch directory {scratch!r}, which electra_ray.tune never "
            f"writes (a name like sweep-0123456789ab): was the file changed?",
        )
    if not storage.is_remote(out):
        return ""  # a local sweep's trials write into OUT itself
    return scratch or new_scratch(out)


def read_records(out: str, cfg: SweepConfig, resume: str = "") -> list[TrialRecord]:
    """OUT/trials.json, every entry checked: a name we give, values of the sweep's space, a status,
    numbers; and no more trials than the sweep has."""
    resume = resume or out
    saved = read_sweep_json(storage.join(out, RECORD_FILE), resume)
    entries = saved.get("trials") if isinstance(saved, dict) else None
    if not isinstance(entries, list):
        raise refuse(resume, f"its {RECORD_FILE} is not a list of trials")
    records = [record_from(entry, cfg, f"{RECORD_FILE} entry {index}", resume) for index, entry in enumerate(entries)]
    if len({r.name for r in records}) < len(records):
        raise refuse(resume, f"its {RECORD_FILE} names a trial twice")
    if len(records) > expected_trials(cfg) or (cfg.search == "grid" and missing_grid_points(cfg, records) is None):
        raise refuse(resume, f"its {RECORD_FILE} holds trials that the sweep's space does not")
    return records


def record_from(entry, cfg: SweepConfig, where: str, resume: str) -> TrialRecord:
    fields = {f.name for f in dataclasses.fields(TrialRecord)}
    if not isinstance(entry, dict) or set(entry) != fields:
        raise refuse(resume, f"{where} is not a trial's record (keys: {', '.join(sorted(fields))})")
    record = TrialRecord(**entry)
    if not isinstance(record.name, str) or not TRIAL_NAME.fullmatch(record.name):
        raise refuse(resume, f"{where}: {record.name!r} is not a trial name electra_ray.tune gives")
    if record.status not in RECORD_STATUSES or not isinstance(record.error, str):
        raise refuse(resume, f"{where}: status must be one of {list(RECORD_STATUSES)}, error a text")
    if not isinstance(record.result, dict) or reported_numbers(record.result) != record.result:
        raise refuse(resume, f"{where}: result must map names to numbers")
    check_params(record.params, cfg, where, resume)
    record.error = record.error[:300]
    return record


def check_params(params, cfg: SweepConfig, where: str, resume: str) -> None:
    """A recorded trial's values: exactly the space's keys, each a value of the space."""
    if not isinstance(params, dict) or set(params) != set(cfg.space):
        raise refuse(resume, f"{where}: params must give exactly the searched keys {sorted(cfg.space)}")
    for key, value in params.items():
        values = cfg.space[key]
        if isinstance(values, list):
            inside = value in values
        else:
            ((kind, (low, high)),) = values.items()
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            inside = number and low <= value <= high and (kind != "randint" or isinstance(value, int))
        if not inside:
            raise refuse(resume, f"{where}: {key} = {value!r} is not in the sweep's space")


def grid_points(cfg: SweepConfig) -> list[dict]:
    """Every trial of a grid, as Tune's grid search makes them: each combination, num_samples times."""
    combinations = [dict(zip(cfg.space, values)) for values in itertools.product(*cfg.space.values())]
    return combinations * cfg.num_samples


def point_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def missing_grid_points(cfg: SweepConfig, records: list[TrialRecord]) -> list[dict] | None:
    """The grid's trials that no record holds (a trial started before counts once); None if the
    records hold a point more often than the grid does."""
    left = Counter(point_key(r.params) for r in records)
    missing = []
    for point in grid_points(cfg):
        if left[point_key(point)]:
            left[point_key(point)] -= 1
        else:
            missing.append(point)
    return None if +left else missing


# -- the sweep -----------------------------------------------------------------------------------


@dataclass
class SweepResult:
    out: str  # the sweep's directory: results.csv, score.png, best.yaml, tune/, trials/
    cfg: SweepConfig
    rows: list[dict]  # one per trial (trial_rows), ranked
    best: dict | None  # the best row; None when no trial has a score, or interrupted
    interrupted: bool  # stopped before every trial ended: continue with --resume OUT


@dataclass
class Session:
    """What one Tuner runs: named trials (SweepSettings.resumed), or trials the search draws."""

    resumed: list[dict] = field(default_factory=list)  # {"name": ... ("": a new trial), "params": ...}
    searched: int = 0  # Tune's num_samples over param_space (a grid: its repeats)


def sweep(cfg: SweepConfig | None = None, resume: str = "") -> SweepResult:
    """Run a sweep (or continue the one in directory `resume`) and summarize it."""
    if resume:
        cfg, settings, records = resume_sweep(resume)
        sessions = resume_sessions(cfg, records)
    else:
        cfg, settings = new_sweep(cfg)
        records, sessions = [], [Session(searched=cfg.num_samples)]
    if sessions:
        concurrent, settings.threads = start_ray(cfg.pretrain.scaling, settings.concurrent)
    for session in sessions:
        records = run_session(cfg, settings, session, records, concurrent)
        if any(record.status == "running" for record in records):
            break  # interrupted: the next session waits for --resume
    return summarize(cfg, settings, records)


def resume_sessions(cfg: SweepConfig, records: list[TrialRecord]) -> list[Session]:
    """What --resume runs: first the trials that had not ended (by name: each continues its run from
    its latest checkpoint), then the trials not started yet (a grid's by value, with the first;
    random's and optuna's drawn, optuna told the trials that ended). Nothing: only the summary."""
    again = [{"name": r.name, "params": r.params} for r in records if r.status != "ended"]
    if cfg.search == "grid":
        new = [{"name": "", "params": point} for point in missing_grid_points(cfg, records) or []]
        return [Session(resumed=again + new)] if again or new else []
    sessions = [Session(resumed=again)] if again else []
    if len(records) < cfg.num_samples:
        sessions.append(Session(searched=cfg.num_samples - len(records)))
    return sessions


def run_session(
    cfg: SweepConfig, settings: SweepSettings, session: Session, records: list[TrialRecord], concurrent: int
) -> list[TrialRecord]:
    """One Tuner over `session`'s trials, into OUT/tune; returns trials.json as it left it."""
    settings.resumed = session.resumed
    # The trial function itself holds (almost) nothing; its TorchTrainer asks for the workers.
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), {"CPU": 0.01})
    experiment, filesystem = experiment_storage(settings.out)
    callbacks = [
        TrialRecorder(settings.out, records, session.resumed),
        *tracker_callbacks(cfg.pretrain.output, settings, cfg.pretrain.train.max_steps),
    ]
    new_tuner(cfg, trainable, experiment, concurrent, filesystem, session, records, callbacks).fit()
    return read_records(settings.out, cfg)


def experiment_storage(out: str) -> tuple[str, pafs.FileSystem | None]:
    """Where Tune keeps the experiment (OUT/tune), as Tune takes it: a local path, or on S3 the
    path without its scheme and our filesystem (endpoint and retries from the AWS variables, no
    credentials in it: Tune pickles it to every trial)."""
    experiment = storage.join(out, "tune")
    if not storage.is_remote(out):
        return experiment, None
    filesystem, inner = storage.resolve(experiment)
    return inner, filesystem


def base_config(cfg: SweepConfig, out: str) -> Config:
    """The trials' pre-training config before their values: in OUT, without MLflow and W&B, which
    follow the trials from this driver (TrialTrackers): a trial's own run would log twice, from a
    process without the driver's credentials."""
    base = copy.deepcopy(cfg.pretrain)
    base.output.dir, base.output.name = out, "shared"
    base.output.trackers = [name for name in base.output.trackers if name not in trackers.EXTERNAL]
    return base


def task_paths(out: str) -> list[str]:
    """Where task_files writes the (train, dev) files of metric=finetune."""
    return [storage.join(out, "data", name) for name in ("train.parquet", "dev.parquet")]


def sweep_settings(cfg: SweepConfig, base: Config, out: str, scratch: str) -> SweepSettings:
    return SweepSettings(
        pretrain=base.to_dict(),
        out=out,
        metric=cfg.metric,
        finetune=dataclasses.asdict(cfg.finetune),
        task_files=task_paths(out) if cfg.metric == "finetune" else [],
        concurrent=cfg.max_concurrent_trials,
        scratch=scratch,
    )


def new_sweep(cfg: SweepConfig) -> tuple[SweepConfig, SweepSettings]:
    """A new sweep's directory, with the tokenizer every trial shares (so that heldout_auc sees
    the same text), the task files of metric=finetune, sweep.json and an empty trials.json."""
    out = cfg.out.rstrip("/") if storage.is_remote(cfg.out) else output_directory(cfg.out, "sweep")
    trackers.check(cfg.pretrain.output)  # before anything is written or Ray starts
    check_new_output(out)
    base = base_config(cfg, out)
    sweep_tokenizer(base, out)
    if cfg.metric == "finetune":
        task_files(cfg, out)
    settings = sweep_settings(cfg, base, out, new_scratch(out) if storage.is_remote(out) else "")
    saved = {"sweep": dataclasses.asdict(cfg), "settings": dataclasses.asdict(settings)}
    storage.write_text(storage.join(out, SWEEP_FILE), json.dumps(saved, indent=1))
    write_records(out, [])
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


def resume_sweep(resume: str) -> tuple[SweepConfig, SweepSettings, list[TrialRecord]]:
    """The sweep in directory `resume`: its config from sweep.json and its trials from trials.json,
    both parsed as data and checked (no pickle is read: see the module's docstring); the settings
    derived again for where the sweep is now (a moved sweep's files stay in their new place)."""
    out = resume.rstrip("/") if storage.is_remote(resume) else os.path.abspath(resume)
    storage.check(out)
    saved = read_sweep_json(storage.join(out, SWEEP_FILE), resume)
    cfg = saved_sweep_config(saved, out, resume)
    scratch = saved_scratch(saved, out, resume)
    records = read_records(out, cfg, resume)
    trackers.check(cfg.pretrain.output)  # before Ray starts
    base = base_config(cfg, out)
    if not base.data.tokenizer:  # the sweep trained one into OUT/tokenizer (sweep_tokenizer)
        base.data.tokenizer = storage.join(out, "tokenizer")
    settings = sweep_settings(cfg, base, out, scratch)
    for path in [base.data.tokenizer, *settings.task_files]:
        if not storage.exists(path):
            raise refuse(resume, f"{path} is missing (the sweep wrote it at its start)")
    return cfg, settings, records


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
    cfg: SweepConfig,
    trainable,
    experiment: str,
    concurrent: int,
    filesystem: pafs.FileSystem | None = None,
    session: Session | None = None,
    records: list[TrialRecord] | None = None,
    callbacks: list[tune.Callback] | None = None,
) -> tune.Tuner:
    """The Tuner of one session (default: a new sweep's): its search, or its named trials; ASHA on
    heldout_auc, `concurrent` trials at a time (0: no limit); the experiment at `experiment`
    (experiment_storage: in `filesystem` if given). A resumed session writes into the same
    experiment directory, its trials under new directories of their own."""
    session = session or Session(searched=cfg.num_samples)
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
    if session.resumed:
        space, search, samples = {RESUMED: tune.grid_search(list(range(len(session.resumed))))}, None, 1
    else:
        space, search, samples = param_space(cfg), search_algorithm(cfg, records), session.searched
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="heldout_auc",
            mode="max",
            scheduler=scheduler,
            search_alg=search,
            num_samples=samples,
            max_concurrent_trials=concurrent or None,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=os.path.dirname(experiment),
            storage_filesystem=filesystem,
            verbose=1,
            callbacks=callbacks,
        ),
    )


def summarize(cfg: SweepConfig, settings: SweepSettings, records: list[TrialRecord]) -> SweepResult:
    """The trials' rows; unless the sweep was interrupted, ranked and written: results.csv,
    score.png and best.yaml."""
    out = settings.out
    rows = trial_rows(records, cfg)
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
    remove_scratch(settings)  # this node's: the trials published their files
    return SweepResult(out, cfg, rows, best, interrupted=False)


def remove_scratch(settings: SweepSettings) -> None:
    """An s3:// sweep's scratch directory on this node, and nothing else: a name of ours (never a
    path), directly under the scratch root, which must be this user's directory and no link (the
    temporary directory is shared with other users)."""
    if not storage.is_remote(settings.out) or not settings.scratch:
        return
    root, target = scratch_root(), trial_scratch(settings, "").rstrip(os.sep)
    if not SCRATCH_NAME.fullmatch(settings.scratch) or os.path.dirname(target) != root:
        raise UserError(f"refusing to remove {target}: not a scratch directory of electra_ray.tune")
    try:
        owned = os.lstat(root).st_uid == os.getuid() and not os.path.islink(root)
    except FileNotFoundError:
        return  # no trial ran on this node
    if not owned or os.path.realpath(os.path.dirname(target)) != os.path.realpath(root):
        print(f"warning: not removing {target}: {root} is a link or another user's", file=sys.stderr, flush=True)
        return
    shutil.rmtree(target, ignore_errors=True)  # rmtree refuses a link itself: it removes nothing then


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


def trial_rows(records: list[TrialRecord], cfg: SweepConfig) -> list[dict]:
    """One row per trial: its values, its last report, and how it ended."""
    max_steps = cfg.pretrain.train.max_steps
    rows = []
    for record in records:
        result = record.result
        step = result.get("step", 0)
        if record.status == "error":
            status = "error"
        elif record.status == "running":
            status = "unfinished"  # interrupted: --resume continues it
        elif step >= max_steps and (cfg.metric != "finetune" or "finetune_score" in result):
            status = "finished"
        else:
            status = "stopped by ASHA"
        rows.append(
            {
                "trial": record.name,
                **{key: record.params[key] for key in cfg.space},
                "status": status,
                "step": step,
                "heldout_auc": result.get("heldout_auc", math.nan),
                "finetune_score": result.get("finetune_score", math.nan),
                "finetune_std": result.get("finetune_std", math.nan),
                "error": record.error,
            }
        )
    return sorted(rows, key=lambda row: [order_key(row[key]) for key in cfg.space])


def order_key(value) -> tuple:
    """Sorts any values of a space's key: numbers by size, anything else (text, lists) by its text."""
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (1, 0, str(value))


def format_value(value) -> str:
    """A value of a searched key as labels and headers show it: numbers short (0.333), the rest as it is."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


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


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def x_positions(rows: list[dict], x_key: str) -> tuple[dict[str, float], list[str]]:
    """Where each value of the plot's x key goes (by its text, format_value): the number itself if
    every value is one, else 0, 1, 2, ... in order (text, lists: one tick each). Returns the
    positions and, for the latter, the tick labels."""
    values = sorted({format_value(r[x_key]): r[x_key] for r in rows}.items(), key=lambda item: order_key(item[1]))
    if all(is_number(value) for _, value in values):
        return {text: value for text, value in values}, []
    return {text: index for index, (text, _) in enumerate(values)}, [text for text, _ in values]


def plot_scores(rows: list[dict], cfg: SweepConfig, path: str) -> None:
    """Score against generator size (or the first searched key), one line per λ (or the second
    key); trials ASHA stopped are drawn hollow at their last heldout_auc. Any key may be text
    (train.optimizer): its values are ticks of their own."""
    plt = pyplot()
    keys = list(cfg.space)
    x_key = "model.generator_size" if "model.generator_size" in keys else keys[0]
    others = [k for k in keys if k != x_key]
    line_key = "train.rtd_weight" if "train.rtd_weight" in others else (others[0] if others else None)
    positions, ticks = x_positions(rows, x_key)

    def x(row: dict) -> float:
        return positions[format_value(row[x_key])]

    panels = ["heldout_auc"] + (["finetune_score"] if cfg.metric == "finetune" else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, metric in zip(axes[0], panels):
        groups = itertools.groupby(
            sorted(rows, key=lambda r: (order_key(r[line_key]) if line_key else (), order_key(r[x_key]))),
            key=lambda r: format_value(r[line_key]) if line_key else None,
        )
        for value, group in groups:
            group = [r for r in group if not math.isnan(r[metric])]
            if not group:
                continue
            label = f"{line_key.split('.')[-1]} = {value}" if line_key else None
            # The line joins finished trials (the mean where values repeat); trials stopped early,
            # measured at fewer steps, are hollow markers off the line.
            finished = [r for r in group if r["status"] == "finished"]
            xs = sorted({x(r) for r in finished})
            means = [sum(r[metric] for r in finished if x(r) == p) / sum(x(r) == p for r in finished) for p in xs]
            (line,) = axis.plot(xs, means, marker="o", label=label if xs else None)
            stopped = [r for r in group if r["status"] != "finished"]
            axis.scatter(
                [x(r) for r in stopped],
                [r[metric] for r in stopped],
                s=60,
                facecolors="white",
                edgecolors=line.get_color(),
                zorder=3,
                label=None if xs else label,
            )
        if ticks:
            axis.set_xticks(range(len(ticks)), ticks)
        elif all(p > 0 for p in positions.values()):
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
        f"{METRICS[cfg.metric]}: " + ", ".join(f"{key} = {format_value(best[key])}" for key in cfg.space) + "\n"
        f"# Pre-train with it: {command}\n"
    )
    with open(path, "w") as f:
        f.write(header + yaml.safe_dump(values, sort_keys=False))


def main(argv: list[str] | None = None) -> None:
    def run():
        cfg, resume = checked_args(argv, __doc__)
        result = sweep(resume=resume) if resume else sweep(cfg)
        if result.interrupted:
            return
        print(format_table(result.rows, result.cfg))
        for name in ("results.csv", "score.png", "best.yaml"):
            if storage.exists(storage.join(result.out, name)):
                print(f"{name.split('.')[0]}: {storage.join(result.out, name)}")

    run_cli(run)


if __name__ == "__main__":
    main()
