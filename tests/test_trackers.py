"""MLflow and W&B tracking (electra_ray.trackers): against a real `mlflow server` on 127.0.0.1 and
W&B in offline mode (its run files read back), the trackers alone, and once end to end in a tiny
pre-training run on a real local Ray."""

import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
from conftest import TINY_MODEL, _free_port

from electra_ray import pretrain as pretrain_verb
from electra_ray.config import ConfigError, load_config
from electra_ray.errors import UserError
from electra_ray.trackers import (
    MetricsFollower,
    MlflowTracker,
    WandbTracker,
    check,
    flat_params,
    redact,
    start_all,
)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (SQLite store, artifacts on disk), in a process group of its
    own: it runs uvicorn in a child process, and stop() ends the group by its id."""

    def __init__(self, directory: str):
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        command = [
            os.path.join(os.path.dirname(sys.executable), "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{directory}/mlflow.db",
            "--default-artifact-root",
            f"{directory}/artifacts",
        ]
        self.log = open(os.path.join(directory, "server.log"), "ab")
        # No job runner (a process of its own that the tests do not use).
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait(self, timeout_s: float = 180) -> "MlflowServer":
        """Until /health answers (tens of seconds on a busy 2-core machine: it creates its tables)."""
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, f"mlflow server exited: see {self.log.name}"
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return self
            except OSError:
                assert time.monotonic() < deadline, f"mlflow server did not start: see {self.log.name}"
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group started above, by its id
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module", autouse=True)
def mlflow_process(tmp_path_factory):
    """Started with the module and waited for only by the tests that use it (mlflow_server): its
    start overlaps the tests that need no server."""
    server = MlflowServer(str(tmp_path_factory.mktemp("mlflow")))
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(mlflow_process) -> MlflowServer:
    return mlflow_process.wait()


@pytest.fixture
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)


def wandb_records(run_dir: str, timeout_s: float = 60) -> dict[str, list[dict]]:
    """The history, summary and config of the one offline W&B run under run_dir, once its exit
    record is written: W&B's service process writes the run file after run.finish() returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = read_wandb_file(run_dir)
        if found["exit"] or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def read_wandb_file(run_dir: str) -> dict[str, list]:
    """The records of run_dir's one offline run (read_wandb_records)."""
    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    return read_wandb_records(path)


def read_wandb_records(path: str) -> dict[str, list]:
    """The records of an offline run-<id>.wandb file: LevelDB log records (7-byte headers, 32 KiB
    blocks) holding protobuf Records, after a 7-byte ':W&B' header. W&B has no Python reader of
    its own any more."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    found: dict[str, list] = {"history": [], "summary": [], "config": [], "exit": []}
    position, pieces = 7, b""
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + header])
        pieces += data[position + header : position + header + length]
        position += header + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            which = record.WhichOneof("record_type")
            # An item names its key in `key`, or in `nested_key` (a path, of one part for our metrics).
            if which == "history":
                found["history"].append(
                    {i.key or i.nested_key[0]: json.loads(i.value_json) for i in record.history.item}
                )
            elif which == "summary":
                found["summary"].append(
                    {u.key or u.nested_key[0]: json.loads(u.value_json) for u in record.summary.update}
                )
            elif which == "run":
                found["config"].append({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif which == "exit":
                found["exit"].append(record.exit.exit_code)
    return found


# -- bad input: one line, before Ray starts ---------------------------------------------------------


def run_pretrain_cli(capsys, *overrides: str) -> str:
    with pytest.raises(SystemExit) as exit:
        pretrain_verb.main(["--set", *overrides])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_an_unknown_tracker_is_one_line():
    with pytest.raises(ConfigError, match=r"'output.trackers' takes items of \['tensorboard', 'mlflow', 'wandb'\]"):
        load_config(None, ["output.trackers=[tensorboard, foo]"])


def test_an_unreachable_mlflow_server_is_named_quickly(capsys, tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    err = run_pretrain_cli(
        capsys, "output.trackers=[mlflow]", f"output.mlflow_tracking_uri={uri}", f"output.dir={tmp_path / 'runs'}"
    )
    assert f"cannot reach the MLflow tracking server at {uri}" in err
    assert time.monotonic() - start < 15 and not (tmp_path / "runs").exists()  # refused before anything is written


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # Python's mark of a module that cannot be imported
    cfg = load_config(None, ["output.trackers=[wandb]"])
    with pytest.raises(UserError, match=r"wandb package is not installed: pip install electra-ray\[wandb\]$"):
        check(cfg.output)


def test_a_password_in_the_uri_is_refused_and_never_shown():
    cfg = load_config(None, ["output.trackers=[mlflow]", "output.mlflow_tracking_uri=https://me:s3cret@example.com"])
    with pytest.raises(UserError, match="MLFLOW_TRACKING_PASSWORD") as error:
        check(cfg.output)
    assert "s3cret" not in str(error.value) and "https://me:***@example.com" in str(error.value)
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


# -- the trackers alone -----------------------------------------------------------------------------


def test_follower_sends_complete_new_lines_once(tmp_path):
    class Recorder:  # a Tracker that keeps what it is sent
        def __init__(self):
            self.logged = []

        def log(self, metrics, step):
            self.logged.append((step, metrics))

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 5, "loss": 9.0}) + "\n")  # an earlier attempt's: not sent again
    recorder = Recorder()
    follower = MetricsFollower(str(path), [recorder], interval=0.05)
    with open(path, "a") as f:
        f.write(json.dumps({"step": 10, "loss": 2.5, "lr": 1e-3, "checkpoint": "/x", "time": 1.0}) + "\n")
        f.write(json.dumps({"training_error": "diverged"}) + "\n")
        f.write('{"step": 15, "lo')  # being written
    follower.poll()
    assert recorder.logged == [(10, {"loss": 2.5, "lr": 1e-3})]
    with open(path, "a") as f:
        f.write('ss": 2.0}\n')
    follower.start().stop()
    assert recorder.logged[1:] == [(15, {"loss": 2.0})]


def test_wandb_tracker_writes_an_offline_run(tmp_path, offline_wandb):
    tracker = WandbTracker("unit", str(tmp_path))
    tracker.start("alone", {"train.lr": 1e-3})
    tracker.log({"loss": 3.0}, 5)
    tracker.log({"loss": 2.0}, 10)
    tracker.finish("FINISHED")

    records = wandb_records(str(tmp_path))
    assert records["exit"] == [0]
    assert [(h["_step"], h["loss"]) for h in records["history"]] == [(5, 3.0), (10, 2.0)]
    assert records["summary"][-1]["loss"] == 2.0
    assert any(c.get("train.lr") == 1e-3 for c in records["config"])


def test_mlflow_tracker_logs_params_metrics_and_status(mlflow_server):
    from mlflow.tracking import MlflowClient

    params = flat_params(load_config(None, []).to_dict())
    assert params["train.lr"] == 5e-4 and params["train.adam_betas"] == [0.9, 0.999]
    params.update({f"extra.{i}": i for i in range(MlflowTracker.MAX_BATCH)})  # more than one request's worth
    tracker = MlflowTracker(mlflow_server.uri, "unit")
    tracker.start("alone", params)
    tracker.log({"loss": 3.0}, 5)
    tracker.log({"loss": 2.0}, 10)
    tracker.finish("KILLED")

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "alone" and run.info.status == "KILLED"
    assert len(run.data.params) == len(params) and run.data.params["model.num_layers"] == "12"
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss")] == [(5, 3.0), (10, 2.0)]


def test_a_tracker_that_cannot_start_is_one_line(mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    client.delete_experiment(client.create_experiment("gone"))  # MLflow refuses new runs in it
    with pytest.raises(UserError, match=r"^MlflowTracker could not start the run: .*") as error:
        start_all([MlflowTracker(mlflow_server.uri, "gone")], "run", {})
    assert "\n" not in str(error.value)


# -- a tracker that fails after its start: one warning line, the run's own outcome stands -----------


class FakeTracker:
    """A Tracker that fails where told ("log", "finish") and keeps what it was sent."""

    def __init__(self, fails: str = ""):
        self.fails, self.logged, self.finished = fails, [], []

    def start(self, run_name, params):
        pass

    def log(self, metrics, step):
        if self.fails == "log":
            raise ConnectionError("Connection refused\nwith a second line nobody needs")
        self.logged.append(step)

    def finish(self, status):
        if self.fails == "finish":
            raise ConnectionError("API request to endpoint /api/2.0/mlflow/runs/update failed")
        self.finished.append(status)


def tracked_with(monkeypatch, tmp_path, fakes: list[FakeTracker]):
    """trackers.tracking (what launch.run_pretraining wraps a run in) with `fakes` as the trackers."""
    from electra_ray import trackers

    monkeypatch.setattr(trackers, "build", lambda output, run_dir: fakes)
    cfg = load_config(None, ["output.name=run"])
    return trackers.tracking(cfg, str(tmp_path))


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_a_tracker_failure_is_one_warning_and_the_run_ends_as_it_ran(tmp_path, monkeypatch, capsys):
    good, broken_log, broken_finish = FakeTracker(), FakeTracker("log"), FakeTracker("finish")
    with tracked_with(monkeypatch, tmp_path, [broken_log, good, broken_finish]) as run:
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 5, "loss": 3.0}) + "\n")
        run.log({"eval/auc": 0.6}, 10)  # the export's evaluation: after every record written so far
    warnings = warnings_of(capsys.readouterr().err)
    assert warnings == [
        "warning: FakeTracker stopped logging at step 5: Connection refused (every value stays in metrics.jsonl); "
        "it is skipped from now on",
        "warning: FakeTracker could not end the run as FINISHED: API request to endpoint "
        "/api/2.0/mlflow/runs/update failed (every value stays in metrics.jsonl); it is skipped from now on",
    ]
    assert good.logged == [5, 10] and good.finished == ["FINISHED"]
    assert broken_log.finished == []  # failed: not asked again (an outage would make it wait for its retries)


def test_a_tracker_failing_at_the_end_never_hides_the_runs_own_error(tmp_path, monkeypatch, capsys):
    good, broken_finish = FakeTracker(), FakeTracker("finish")
    with pytest.raises(RuntimeError, match="^the run's own error$"):
        with tracked_with(monkeypatch, tmp_path, [broken_finish, good]):
            raise RuntimeError("the run's own error")
    assert good.finished == ["FAILED"]
    assert len(warnings_of(capsys.readouterr().err)) == 1


def test_a_tracker_that_fails_to_start_ends_the_started_ones_and_is_one_line():
    class NoStart(FakeTracker):
        def start(self, run_name, params):
            raise PermissionError("401 Unauthorized\n<html>...</html>")

    started, broken_finish = FakeTracker(), FakeTracker("finish")
    with pytest.raises(UserError, match=r"^NoStart could not start the run: 401 Unauthorized$"):
        start_all([started, broken_finish, NoStart()], "run", {})
    assert started.finished == ["FAILED"]


# -- a sweep's trials are tracked from the driver; the W&B key never reaches Ray --------------------


class FakeTrial:
    """What Tune hands its callbacks: a trial's id, config, last result and name (str)."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config, self.last_result = trial_id, config, {}
        self.local_path, self.experiment_dir_name = "", "tune"

    def __str__(self):
        return f"run_trial_{self.trial_id}"


def drive(callback, trial: FakeTrial, reports: list[dict]) -> None:
    """The calls Tune makes to a callback for a trial that reports `reports` and returns."""
    callback.setup()
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for report in reports:
        trial.last_result = report
        callback.on_trial_result(iteration=1, trials=[trial], trial=trial, result=report)
    callback.on_trial_complete(iteration=2, trials=[trial], trial=trial)
    callback.on_experiment_end(trials=[trial])


@pytest.fixture
def remote_calls(monkeypatch) -> list[dict]:
    """Every ray.remote(...) call's options (where a runtime_env would be), instead of an actor.
    The modules that call ray.remote when imported are imported first."""
    import ray
    import ray.air.integrations.wandb  # noqa: F401
    import ray.data  # noqa: F401

    import electra_ray.tune  # noqa: F401

    calls: list[dict] = []

    def record(*args, **options):
        calls.append(options)
        raise RuntimeError("no actor in this test")

    monkeypatch.setattr(ray, "remote", record)
    return calls


FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def test_rays_wandb_callback_would_put_the_key_in_an_actors_runtime_env(monkeypatch, offline_wandb, remote_calls):
    """Why sweeps do not use it: the key would be shown by the dashboard and the State API."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    # Its actor is pinned to this node, which would start a local Ray here (ray.init on first use).
    monkeypatch.setattr("ray.air.integrations.wandb._force_on_current_node", lambda: {})
    with pytest.raises(RuntimeError, match="no actor in this test"):
        drive(WandbLoggerCallback(project="sweeps"), FakeTrial("a_00000", {"x": 1}), [])
    assert remote_calls[0]["runtime_env"] == {"env_vars": {"WANDB_API_KEY": FAKE_KEY}}


def test_a_sweep_tracks_trials_from_the_driver_without_giving_ray_the_key(
    tmp_path, small_corpus, tokenizer_dir, mlflow_server, offline_wandb, monkeypatch, remote_calls
):
    import ray
    from mlflow.tracking import MlflowClient

    from electra_ray.tune import TrialTrackers, load_sweep_config, new_sweep, tracker_callbacks

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    overrides = [
        f"pretrain.data.path={small_corpus}",
        f"pretrain.data.tokenizer={tokenizer_dir}",
        "pretrain.output.trackers=[tensorboard, mlflow, wandb]",
        f"pretrain.output.mlflow_tracking_uri={mlflow_server.uri}",
        "pretrain.output.mlflow_experiment=sweep-trials",
        "pretrain.output.wandb_project=sweeps",
        "pretrain.train.max_steps=20",
        "space={train.rtd_weight: [1, 50]}",
        "metric=heldout_auc",
    ]
    unreachable = f"pretrain.output.mlflow_tracking_uri=http://127.0.0.1:{_free_port()}"
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        new_sweep(load_sweep_config(None, [*overrides, unreachable, f"out={tmp_path / 'refused'}"]))
    assert not (tmp_path / "refused").exists()  # refused before anything is written

    cfg, settings = new_sweep(load_sweep_config(None, [*overrides, f"out={tmp_path / 'sweep'}"]))
    # The trials' own runs keep TensorBoard only: the driver's callback tracks them.
    assert settings.pretrain["output"]["trackers"] == ["tensorboard"]
    (callback,) = tracker_callbacks(cfg.pretrain.output, settings, cfg.pretrain.train.max_steps)
    assert isinstance(callback, TrialTrackers)
    reports = [
        {"step": 10, "heldout_auc": 0.55, "loss": 3.0, "training_iteration": 1, "pid": 4242, "time_this_iter_s": 1.5},
        {"step": 20, "heldout_auc": 0.6, "loss": 2.5, "training_iteration": 2, "pid": 4242, "time_this_iter_s": 1.5},
    ]
    assert not ray.is_initialized()
    drive(callback, FakeTrial("a_00000", {"train.rtd_weight": 50.0}), reports)

    # No actor, no runtime_env: the callback works in this process, without even connecting to Ray.
    assert remote_calls == [] and not ray.is_initialized()
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("sweep-trials").experiment_id])
    assert run.info.run_name == "run_trial_a_00000" and run.info.status == "FINISHED"
    assert run.data.params["train.rtd_weight"] == "50.0" and run.data.params["train.max_steps"] == "20"
    assert set(run.data.metrics) == {"heldout_auc", "loss"}  # not Tune's own fields
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "heldout_auc")] == [
        (10, 0.55),
        (20, 0.6),
    ]
    records = wandb_records(settings.out)  # OUT/wandb: written by this process
    assert records["exit"] == [0]
    assert [(h["_step"], h["heldout_auc"]) for h in records["history"]] == [(10, 0.55), (20, 0.6)]
    assert any(c.get("train.rtd_weight") == 50.0 for c in records["config"])


# -- end to end: one tiny pre-training run on a real local Ray --------------------------------------


def tiny_tracked_run(output_dir, name: str, trackers: str, mlflow_uri: str, **more) -> dict:
    """The overrides of a tiny 10-step pre-training run (reports at steps 5 and 10) with trackers."""
    return {
        **{f"model.{key}": value for key, value in TINY_MODEL.items()},
        "data.seq_len": 32,
        "train.batch_size": 8,
        "train.max_steps": 10,
        "train.warmup_steps": 2,
        "train.log_every": 5,
        "train.checkpoint_every": 10,
        "scaling.num_workers": 1,
        "scaling.cpus_per_worker": 1,
        "output.dir": str(output_dir),
        "output.name": name,
        "output.trackers": trackers,
        "output.mlflow_tracking_uri": mlflow_uri,
        **more,
    }


@pytest.mark.ray
@pytest.mark.usefixtures("local_ray")
def test_pretraining_reports_to_mlflow_and_wandb(small_corpus, tokenizer_dir, tmp_path, mlflow_server, offline_wandb):
    from mlflow.tracking import MlflowClient

    overrides = tiny_tracked_run(
        tmp_path,
        "tracked",
        "[mlflow, wandb]",
        mlflow_server.uri,
        **{"data.path": small_corpus, "data.tokenizer": tokenizer_dir, "output.mlflow_experiment": "end-to-end"},
    )
    result = pretrain_verb.pretrain(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    losses = {h["step"]: h["loss"] for h in result.history}
    assert sorted(losses) == [5, 10]
    assert not os.path.exists(os.path.join(result.run_dir, "tensorboard"))  # not among the trackers

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("end-to-end").experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "10" and run.data.params["output.trackers"] == "['mlflow', 'wandb']"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [5, 10] and [m.value for m in history] == pytest.approx([losses[5], losses[10]])
    assert "eval/auc_fixed_corruption" in run.data.metrics  # the export's evaluation, at the last step

    records = wandb_records(result.run_dir)
    assert records["exit"] == [0]
    logged = {h["_step"]: h["loss"] for h in records["history"] if "loss" in h}
    assert logged == pytest.approx(losses)
    assert any(c.get("train.max_steps") == 10 for c in records["config"])


@pytest.mark.ray
@pytest.mark.usefixtures("local_ray")
def test_an_mlflow_outage_leaves_a_finished_run_finished(small_corpus, tokenizer_dir, tmp_path, monkeypatch, capsys):
    """The tracking server goes away right after the run's start: every log and the run's end fail.
    The run still trains, exports and returns (the CLI exits 0), with one warning line."""
    from electra_ray.trackers import MetricsFollower

    server = MlflowServer(str(tmp_path)).wait()  # this test's own: it stops it
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused connection fails at once
    original_start = MetricsFollower.start

    def start_after_an_outage(follower):
        server.stop()  # by the pid of the process group this test started
        return original_start(follower)

    monkeypatch.setattr(MetricsFollower, "start", start_after_an_outage)
    overrides = tiny_tracked_run(
        tmp_path / "runs",
        "outage",
        "[mlflow]",
        server.uri,
        **{"data.path": small_corpus, "data.tokenizer": tokenizer_dir},
    )
    result = pretrain_verb.pretrain(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    assert [h["step"] for h in result.history] == [5, 10] and os.path.isdir(result.export)
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "MlflowTracker" in line]
    assert warning.startswith("warning: MlflowTracker stopped logging at step 5: ") and "skipped from now on" in warning
