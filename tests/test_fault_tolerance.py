"""Fault tolerance on a real local Ray: a worker killed from outside, a driver stopped and resumed,
a corrupt newest checkpoint, a full disk while a checkpoint is written, non-finite losses. Each
interrupted run must end with exactly the weights of the same run left alone (checkpoints hold the
data position and every random stream, Ray Data delivers each worker's shard in the same order,
and gloo's sums are deterministic), or stop with one line."""

import contextlib
import glob
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
import torch
from test_pretrain import tiny_config, tiny_overrides

from electra_ray.export import consolidated_state_dict
from electra_ray.pretrain import pretrain

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

STEPS = {
    "train.max_steps": 24,
    "train.checkpoint_every": 8,
    "train.log_every": 4,
    "train.keep_checkpoints": 2,
    "train.zero_stage": 2,
    "model.dropout": 0.1,
    # The CLI runs start from configs/tiny.yaml, the in-process reference from the defaults: pin what differs.
    "model.local_attention": 0,
}


@pytest.fixture(scope="module")
def reference(local_ray, small_corpus, tokenizer_dir, tmp_path_factory):
    """The uninterrupted run every other run is compared with."""
    out = tmp_path_factory.mktemp("reference")
    result = pretrain(tiny_config(small_corpus, tokenizer_dir, out, **STEPS), export_and_evaluate=False)
    return result, discriminator_weights(result.checkpoint)


def discriminator_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    weights = consolidated_state_dict(checkpoint, zero_stage=2)
    return {k: v for k, v in weights.items() if k.startswith("discriminator.")}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def checkpoints_in(run_dir: str) -> list[str]:
    return sorted(path for path in glob.glob(os.path.join(run_dir, "checkpoint_*")) if os.path.isdir(path))


def registered_checkpoints(run_dir: str) -> list[str]:
    """Checkpoints Ray Train has registered (a directory appears before its registration)."""
    try:
        with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
            return [r["checkpoint_dir_name"] for r in json.load(f)["checkpoint_results"]]
    except (OSError, ValueError):
        return []


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_killed_worker_costs_steps_not_the_run(reference, small_corpus, tokenizer_dir, tmp_path):
    kill_record = os.path.join(tmp_path, "killed.json")

    class KillAWorkerAtTheFirstCheckpoint(ray.train.UserCallback):
        """Runs in Ray Train's controller, which collects reports one at a time: while it is here the
        workers cannot get past the report after next (step 16), so the kill lands mid-run however
        fast they are."""

        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is None or os.path.exists(kill_record):
                return
            from ray.util.state import list_actors

            alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
            workers = sorted(actor.pid for actor in alive if "RayTrainWorker" in actor.class_name)
            os.kill(workers[1], signal.SIGKILL)  # from outside, as the OOM killer or a preemption would
            with open(kill_record, "w") as f:
                json.dump({"workers": len(workers), "step": metrics[0]["step"], "time": time.time()}, f)

    cfg = tiny_config(small_corpus, tokenizer_dir, tmp_path, **STEPS)
    result = pretrain(cfg, export_and_evaluate=False, callbacks=(KillAWorkerAtTheFirstCheckpoint(),))
    with open(kill_record) as f:
        killed = json.load(f)
    assert killed["workers"] == 2 and killed["step"] == 8

    steps = [h["step"] for h in result.history]
    # resumed from the step-8 checkpoint, not from scratch
    assert steps[:2] == [4, 8] and steps.count(4) == steps.count(8) == 1 and steps[-1] == 24
    assert_same_weights(discriminator_weights(result.checkpoint), reference[1])
    after = [h for h in result.history if h["time"] > killed["time"]]
    print(
        f"\nworker killed at the step-8 report; first report after the restart: step {after[0]['step']} "
        f"{after[0]['time'] - killed['time']:.1f}s later; step time "
        f"{(after[-1]['time'] - after[0]['time']) / max(1, after[-1]['step'] - after[0]['step']):.2f}s; reports {steps}"
    )


def stop_a_driver(sig: signal.Signals, overrides: list[str]) -> str:
    """Start `python -m electra_ray.pretrain`, send it `sig` once Ray Train's controller runs (by
    then, on the main thread, Ray Train would have put its own SIGINT handler in place of ours),
    and return all it printed once it has exited with status 0. The workers, seconds from their
    first step then, stop at their first logging step however fast this machine runs 24 steps."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "electra_ray.pretrain", "--set", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []

    def read_output():
        for line in driver.stdout:
            lines.append(line)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: driver.poll() is not None or any("(TrainController pid=" in line for line in lines),
            600,
            "Ray Train's controller to start",
        )
        assert driver.poll() is None, "".join(lines)[-3000:]
        driver.send_signal(sig)
        driver.wait(timeout=600)
        reader.join(timeout=60)
    finally:
        driver.kill()
        driver.stdout.close()
    output = "".join(lines)
    assert driver.returncode == 0, output[-3000:]
    assert f"{sig.name}: saving a checkpoint" in output and "export:" not in output, output[-3000:]
    return output


def test_driver_stopped_then_resumed_ends_with_the_same_weights(reference, small_corpus, tokenizer_dir, tmp_path):
    run_dir = os.path.join(tmp_path, "run")
    output = stop_a_driver(signal.SIGTERM, tiny_overrides(small_corpus, tokenizer_dir, tmp_path, **STEPS))
    assert f"stopped at step 4; continue with: python -m electra_ray.pretrain --resume {run_dir}" in output

    resumed = subprocess.run(
        [sys.executable, "-m", "electra_ray.pretrain", "--resume", run_dir], capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from step 4" in resumed.stdout + resumed.stderr
    final = os.path.join(run_dir, registered_checkpoints(run_dir)[-1])
    assert_same_weights(discriminator_weights(final), reference[1])


def test_ctrl_c_saves_a_checkpoint_too(small_corpus, tokenizer_dir, tmp_path):
    """Ray Train's own SIGINT handler would abort the run with nothing saved."""
    from electra_ray.export import read_run_state

    run_dir = os.path.join(tmp_path, "run")
    output = stop_a_driver(signal.SIGINT, tiny_overrides(small_corpus, tokenizer_dir, tmp_path, **STEPS))
    assert f"stopped at step 4; continue with: python -m electra_ray.pretrain --resume {run_dir}" in output
    assert read_run_state(os.path.join(run_dir, registered_checkpoints(run_dir)[-1]))["step"] == 4


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_previous(reference, small_corpus, tokenizer_dir, tmp_path):
    import shutil

    first, _ = reference
    run_dir = os.path.join(tmp_path, "run")
    shutil.copytree(first.run_dir, run_dir)  # steps 16 and 24 kept
    newest = checkpoints_in(run_dir)[-1]
    for shard in glob.glob(os.path.join(newest, "model", "*optim_states.pt")):
        with open(shard, "r+b") as f:
            f.truncate(100)

    cfg = tiny_config(small_corpus, tokenizer_dir, tmp_path, **{**STEPS, "train.max_steps": 32})
    result = pretrain(cfg, export_and_evaluate=False)
    steps = [h["step"] for h in result.history]
    assert steps[steps.index(24) + 1 :] == [20, 24, 28, 32]  # after the reference's reports: from step 16 again
    logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    warnings = [
        line
        for path in glob.glob(os.path.join(logs, "worker-*.out"))
        for line in open(path, errors="replace")
        if "cannot be read" in line and os.path.basename(newest) in line
    ]
    assert warnings, "no warning naming the corrupt checkpoint in the workers' logs"


def test_a_nan_loss_is_skipped_and_counted(reference, small_corpus, tokenizer_dir, tmp_path):
    cfg = tiny_config(
        small_corpus, tokenizer_dir, tmp_path, **{**STEPS, "train.max_steps": 12, "train.inject_nan_steps": "[6, 10]"}
    )
    result = pretrain(cfg, export_and_evaluate=False)
    assert [(h["step"], h["skipped_steps"]) for h in result.history] == [(4, 0), (8, 1), (12, 2)]
    assert all(torch.isfinite(v).all() for v in discriminator_weights(result.checkpoint).values())


def test_persistent_non_finite_loss_stops_naming_the_last_good_checkpoint(small_corpus, tokenizer_dir, tmp_path):
    from electra_ray.errors import UserError

    cfg = tiny_config(
        small_corpus,
        tokenizer_dir,
        tmp_path,
        **{
            "train.max_steps": 30,
            "train.log_every": 1,
            "train.checkpoint_every": 1,
            "train.lr": 1e12,
            "train.warmup_steps": 1,
            "train.grad_clip": 0,
            "train.max_bad_steps": 3,
            "scaling.num_workers": 1,
        },
    )
    with pytest.raises(
        UserError,
        match=r"training stopped: loss is (nan|inf) at step (\d+) for 4 steps in a row;"
        r".*last good checkpoint: (step \d+|none yet); lower train.lr .*\(run .*run\)",
    ):
        pretrain(cfg)


def test_resume_refuses_a_code_running_checkpoint_without_running_it(reference, small_corpus, tokenizer_dir, tmp_path):
    """A tampered file in the newest checkpoint stops the run with one error (every rank refuses it
    before loading anything; no retry, no fall-back to an older checkpoint an attacker left alone)."""
    import shutil

    from conftest import write_code_running_pickle

    from electra_ray.errors import UserError

    first, _ = reference
    run_dir = os.path.join(tmp_path, "run")
    shutil.copytree(first.run_dir, run_dir)
    newest = checkpoints_in(run_dir)[-1]
    marker = tmp_path / "ran"
    write_code_running_pickle(os.path.join(newest, "model", "mp_rank_00_model_states.pt"), str(marker))

    cfg = tiny_config(small_corpus, tokenizer_dir, tmp_path, **{**STEPS, "train.max_steps": 32})
    with pytest.raises(
        UserError,
        match=r"training stopped: refusing to load .*mp_rank_00_model_states.pt: it needs "
        r"objects a checkpoint never holds \(Unsupported global: GLOBAL exec\)",
    ):
        pretrain(cfg, export_and_evaluate=False)
    assert not marker.exists()
    assert checkpoints_in(run_dir)[-1] == newest  # nothing trained, nothing saved


@contextlib.contextmanager
def workers_file_size_limited(limit: int):
    """While the block runs, every Ray Train worker of this test's Ray gets RLIMIT_FSIZE=`limit`
    as soon as it is alive (prlimit from outside, as `os.kill` kills one above). Python ignores
    SIGXFSZ, so a write past the limit fails with EFBIG, as one on a full disk fails with ENOSPC.
    Only our Ray's workers: other Ray instances on this machine are left alone. Yields the pids."""
    from ray.util.state import list_actors

    limited: list[int] = []
    done = threading.Event()

    def limit_new_workers():
        address = ray.get_runtime_context().gcs_address
        while not done.is_set():
            with contextlib.suppress(Exception):  # the state API between two runs, or a worker gone meanwhile
                alive = list_actors(address=address, filters=[("state", "=", "ALIVE")])
                for actor in alive:
                    if "RayTrainWorker" in actor.class_name and actor.pid not in limited:
                        hard = resource.prlimit(actor.pid, resource.RLIMIT_FSIZE)[1]
                        resource.prlimit(actor.pid, resource.RLIMIT_FSIZE, (limit, hard))
                        limited.append(actor.pid)
            done.wait(0.2)

    watcher = threading.Thread(target=limit_new_workers, daemon=True)
    watcher.start()
    try:
        yield limited
    finally:
        done.set()
        watcher.join(timeout=30)


def test_a_full_disk_while_a_checkpoint_is_written_stops_in_one_line_and_keeps_the_previous(
    reference, small_corpus, tokenizer_dir, tmp_path
):
    """The reference's steps 16 and 24 are kept, 24 damaged: the run resumes from 16 and its next
    checkpoint (step 24) meets a file-size limit of 300 kB in the workers (the weights files are
    larger; Ray's own logs smaller). The run stops with one line, the step-16 checkpoint stays the
    one to resume from, nothing of step 24's new checkpoint is left; with space again the run
    resumes and ends with the reference's weights."""
    import shutil

    from electra_ray.errors import UserError

    first, weights = reference
    run_dir = os.path.join(tmp_path, "run")
    shutil.copytree(first.run_dir, run_dir)
    for shard in glob.glob(os.path.join(checkpoints_in(run_dir)[-1], "model", "*optim_states.pt")):
        with open(shard, "r+b") as f:
            f.truncate(100)
    registered, directories = registered_checkpoints(run_dir), checkpoints_in(run_dir)
    cfg = tiny_config(small_corpus, tokenizer_dir, tmp_path, **STEPS)

    with workers_file_size_limited(300_000) as limited:
        with pytest.raises(UserError) as stopped:
            pretrain(cfg, export_and_evaluate=False)
    message = str(stopped.value)
    assert len(limited) == 2 and "\n" not in message
    assert message.startswith("training stopped: cannot write the checkpoint of step 24: file too large (rank ")
    assert "nothing of it was kept and the latest complete checkpoint is unchanged" in message
    assert registered_checkpoints(run_dir) == registered and checkpoints_in(run_dir) == directories

    result = pretrain(cfg, export_and_evaluate=False)  # space again
    assert registered_checkpoints(run_dir)[-1] not in registered
    assert [h["step"] for h in result.history][-2:] == [20, 24]
    assert_same_weights(discriminator_weights(result.checkpoint), weights)
