"""Experiment trackers beside metrics.jsonl: MLflow and Weights & Biases, chosen by output.trackers.

    python -m electra_ray.pretrain --set 'output.trackers=[tensorboard,mlflow]'   # MLFLOW_TRACKING_URI
    WANDB_MODE=offline python -m electra_ray.pretrain --set 'output.trackers=[wandb]'

The Train controller writes every report of the workers to metrics.jsonl (metrics.MetricsLogger).
`tracking` follows that file from the driver process itself and forwards each new record to the
trackers: credentials (MLFLOW_TRACKING_TOKEN, WANDB_API_KEY, ...) are needed in the driver's
environment only, never on the workers or in the controller actor (whose environment, on a cluster
joined by address, is the cluster's, not the driver's). They are read from the environment by MLflow
and W&B themselves: nothing here logs them, and the config (config.json, checkpoints) cannot hold
them (check refuses a password in output.mlflow_tracking_uri).

A run is one tracker run named output.name: params are the flattened config ("train.lr"), metrics
every numeric value of a report at its optimizer step, and the export's held-out evaluation as
eval/... at the last step; it ends FINISHED, FAILED (an error), or KILLED (stopped early).

A tracker is a copy of metrics.jsonl, never what decides a run's outcome: one that cannot start is
a one-line error before training, but one that fails later (the server gone, a network error, its
final status refused) is one warning line and skipped from then on (TrackerGroup). The run trains,
exports and exits as it would have, and a run's own error is never hidden by a tracker's.
A sweep's trials are tracked the same way from the sweep's driver (tune.TrialTrackers).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

from electra_ray.config import Config, OutputConfig
from electra_ray.errors import UserError

Status = Literal["FINISHED", "FAILED", "KILLED"]  # MLflow's words for how a run ended
DEFAULT_PROJECT = "electra-ray"  # MLflow experiment and W&B project when neither config nor environment names one
EXTERNAL = ("mlflow", "wandb")  # trackers that are packages of their own (and extras of electra-ray)
REACH_TIMEOUT_S = 5.0  # the check of the MLflow server: a refused port answers at once, a dead host after this


class Tracker(Protocol):
    def start(self, run_name: str, params: dict[str, object]) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, status: Status) -> None: ...


# -- settings and checks (before Ray starts) ------------------------------------------------------


def external(output: OutputConfig) -> list[str]:
    """The trackers of output.trackers this module runs (TensorBoard is metrics.MetricsLogger's)."""
    return [name for name in EXTERNAL if name in output.trackers]


def mlflow_uri(output: OutputConfig) -> str:
    """output.mlflow_tracking_uri, else MLFLOW_TRACKING_URI; empty: MLflow's own default."""
    return output.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")


def mlflow_experiment(output: OutputConfig) -> str:
    return output.mlflow_experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "") or DEFAULT_PROJECT


def wandb_project(output: OutputConfig) -> str:
    return output.wandb_project or os.environ.get("WANDB_PROJECT", "") or DEFAULT_PROJECT


def redact(uri: str) -> str:
    """A URI as messages show it: without a password (https://user:***@host)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def check(output: OutputConfig) -> None:
    """Before Ray starts: each tracker's package is installed, output.mlflow_tracking_uri holds no
    password, and an http(s) MLflow server answers. Each problem is one line naming the fix."""
    for name in external(output):
        # find_spec, not import: mlflow and wandb take seconds to import; the trackers import them later.
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"output.trackers has {name}, but the {name} package is not installed: pip install electra-ray[{name}]"
            )
    if urllib.parse.urlsplit(output.mlflow_tracking_uri).password is not None:
        raise UserError(
            f"output.mlflow_tracking_uri {redact(output.mlflow_tracking_uri)} holds a password, which would be "
            f"saved with the run's config: set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead"
        )
    if "mlflow" in output.trackers:
        check_reachable(mlflow_uri(output))


def check_reachable(uri: str) -> None:
    """An http(s) tracking URI answers within REACH_TIMEOUT_S (any HTTP status counts: a server
    behind authentication answers 401). Other stores (sqlite:, file:, databricks) are not probed."""
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    parts = urllib.parse.urlsplit(uri)
    # No userinfo in the probe: urllib would take it for a host.
    netloc = parts.netloc.rpartition("@")[2]
    probe = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(probe, timeout=REACH_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"cannot reach the MLflow tracking server at {redact(uri)} (output.mlflow_tracking_uri or "
            f"MLFLOW_TRACKING_URI): {reason}"
        ) from None


def flat_params(values: dict, prefix: str = "") -> dict[str, object]:
    """A config as tracker params: {"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def numeric(record: dict) -> dict[str, float]:
    """The values of a metrics.jsonl record a tracker plots: numbers, not the step, time or flags."""
    skip = {"step", "time"}
    return {
        name: float(value)
        for name, value in record.items()
        if name not in skip and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


# -- the trackers ---------------------------------------------------------------------------------


class MlflowTracker:
    """One MLflow run, through MlflowClient (no process-wide active run or tracking URI: two runs
    in one process, a sweep's or the tests', do not see each other's)."""

    MAX_BATCH = 100  # params (and metrics: 1000) per log_batch request of the REST API

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.client = None
        self.run_id = ""

    def start(self, run_name: str, params: dict[str, object]) -> None:
        # Here: mlflow is an optional package and takes ~2 s to import.
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri or None)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        # MLflow refuses values longer than 6000 characters; a config's longest is a path.
        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), self.MAX_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + self.MAX_BATCH])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, status: Status) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbTracker:
    """One W&B run. Its files go to `directory` (the run's local directory) unless WANDB_DIR says
    otherwise; WANDB_MODE=offline keeps them there for `wandb sync`."""

    def __init__(self, project: str, directory: str):
        self.project, self.directory = project, directory
        self.run = None

    def start(self, run_name: str, params: dict[str, object]) -> None:
        import wandb  # here: an optional package, ~1 s to import

        self.run = wandb.init(
            project=self.project,
            name=run_name,
            config=params,
            dir=os.environ.get("WANDB_DIR") or self.directory,
            reinit="create_new",  # a run of its own even where the process has one (a sweep, the tests)
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, status: Status) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def build(output: OutputConfig, run_dir: str) -> list[Tracker]:
    trackers: list[Tracker] = []
    if "mlflow" in output.trackers:
        trackers.append(MlflowTracker(mlflow_uri(output), mlflow_experiment(output)))
    if "wandb" in output.trackers:
        trackers.append(WandbTracker(wandb_project(output), run_dir))
    return trackers


# -- a run's trackers: a failure is one warning, never the run's end -------------------------------


def first_line(error: BaseException) -> str:
    """An error as one short line: a tracker client's message may span a whole HTTP response."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class TrackerGroup:
    """The trackers of one run. A tracker that fails (a network error, a server gone) is warned
    about once and skipped from then on, its finish included: the run goes on, its values stay in
    `kept` (metrics.jsonl, or a sweep's Tune experiment), and an outage never turns a finished run
    into an error. Only a start can fail the run (start_strict): then nothing was trained yet."""

    def __init__(self, trackers: list[Tracker], kept: str = "metrics.jsonl"):
        self.trackers, self.kept = trackers, kept
        self.failed: set[int] = set()
        self.finished = False

    def start_strict(self, run_name: str, params: dict[str, object]) -> None:
        """Start every tracker; one that cannot (credentials refused, a server error) is a
        one-line UserError, after the ones already started are ended FAILED."""
        for index, tracker in enumerate(self.trackers):
            try:
                tracker.start(run_name, params)
            except Exception as error:  # whatever the tracker's client raises, as one line
                self.failed.update(range(index, len(self.trackers)))  # never started: nothing to end
                self.finish("FAILED")
                raise UserError(f"{type(tracker).__name__} could not start the run: {first_line(error)}") from None

    def start(self, run_name: str, params: dict[str, object]) -> None:
        """Start every tracker; one that cannot is warned about and skipped (a sweep's trial goes on)."""
        for index, tracker in enumerate(self.trackers):
            try:
                tracker.start(run_name, params)
            except Exception as error:  # whatever the tracker's client raises; the run must not stop
                self._fail(index, f"could not start the run {run_name}", error)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for index, tracker in self._working():
            try:
                tracker.log(metrics, step)
            except Exception as error:  # whatever the tracker's client raises; training must not stop
                self._fail(index, f"stopped logging at step {step}", error)

    def finish(self, status: Status) -> None:
        """End the runs of the trackers that still work, once; never raises (it runs after the
        run's work is done, or while the run's own error is on its way out)."""
        if self.finished:
            return
        self.finished = True
        for index, tracker in self._working():
            try:
                tracker.finish(status)
            except Exception as error:  # whatever the tracker's client raises
                self._fail(index, f"could not end the run as {status}", error)

    def _working(self) -> Iterator[tuple[int, Tracker]]:
        return ((index, tracker) for index, tracker in enumerate(self.trackers) if index not in self.failed)

    def _fail(self, index: int, what: str, error: Exception) -> None:
        """Mark the tracker failed, with one line: which, what failed, why, where the values are."""
        self.failed.add(index)
        name = type(self.trackers[index]).__name__
        warn(f"{name} {what}: {first_line(error)} (every value stays in {self.kept}); it is skipped from now on")


def start_all(trackers: list[Tracker], run_name: str, params: dict[str, object]) -> None:
    """Start every tracker, or raise a one-line UserError (TrackerGroup.start_strict)."""
    TrackerGroup(trackers).start_strict(run_name, params)


# -- following metrics.jsonl on the driver ----------------------------------------------------------


class MetricsFollower:
    """Forwards the records appended to metrics.jsonl to trackers, from a thread of the driver:
    polled every `interval` seconds, and once more at `stop` (nothing reported is left behind).
    Records already in the file (an earlier attempt's, when a run continues) are not sent again."""

    def __init__(self, path: str, trackers: list[Tracker] | TrackerGroup, interval: float = 1.0):
        self.path, self.interval = path, interval
        self.group = trackers if isinstance(trackers, TrackerGroup) else TrackerGroup(trackers)
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self._lock = threading.Lock()  # the thread's polls and the driver's own values (TrackedRun.log)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-follower", daemon=True)

    def start(self) -> MetricsFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except OSError as error:  # the file unreadable for a moment: the next poll, or stop's, sends it
                warn(f"cannot read {self.path} for the trackers: {first_line(error)}")

    def poll(self) -> None:
        """Send the complete lines written since the last poll (a line still being written waits)."""
        if not os.path.exists(self.path):
            return
        with self._lock:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.decode("utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # metrics.read_history warns about it
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    self.group.log(numeric(record), record["step"])

    def send(self, metrics: dict[str, float], step: int) -> None:
        """Values of the driver's own (the export's evaluation), after every report written so far."""
        self.poll()
        with self._lock:
            self.group.log(metrics, step)


@dataclass
class TrackedRun:
    """What `tracking` yields: the caller marks a run stopped early, and logs end-of-run values."""

    follower: MetricsFollower | None
    stopped: bool = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.follower is not None:
            self.follower.send(metrics, step)


@contextmanager
def tracking(cfg: Config, run_dir: str) -> Iterator[TrackedRun]:
    """Start the run's trackers (none: nothing happens), forward metrics.jsonl to them while the
    block runs, and finish them: FINISHED, KILLED if the block set `stopped`, FAILED on an error.
    A tracker that fails after its start is one warning line (TrackerGroup): the block's result,
    or its own error, is what the caller gets."""
    trackers = build(cfg.output, run_dir)
    if not trackers:
        yield TrackedRun(None)
        return
    group = TrackerGroup(trackers)
    group.start_strict(cfg.output.name, flat_params(cfg.to_dict()))
    run = TrackedRun(MetricsFollower(os.path.join(run_dir, "metrics.jsonl"), group).start())
    status: Status = "FAILED"
    try:
        yield run
        status = "KILLED" if run.stopped else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        stop_following(run.follower)
        group.finish(status)


def stop_following(follower: MetricsFollower) -> None:
    """The last poll of metrics.jsonl; an unreadable file is a warning (the file keeps every value)."""
    try:
        follower.stop()
    except OSError as error:
        warn(f"cannot read {follower.path} for the trackers: {first_line(error)}")
