"""Faults by real mechanisms, and what each must leave behind (issue 30).

- Resume: only a damaged checkpoint is skipped; storage that does not answer (a real S3 server
  stopped by pid) is retried and then stops the run in one line; out of memory propagates; a
  checkpoint Ray Train never registered (an interrupted save) is never a candidate.
- A full disk, as the kernel reports it: RLIMIT_FSIZE in a child process (Python ignores SIGXFSZ,
  so a write past the limit fails with EFBIG, as one fails with ENOSPC on a full disk). The export
  and a checkpoint save then stop in one line, remove what they wrote and keep what was there.
- Exports: two into one OUT at once (one is refused), and one killed (SIGKILL) while it writes.
- On a real Ray (marked `ray`): the S3 endpoint going away in the middle of a checkpoint upload.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import S3Server, environment

from electra_ray import checkpoint as checkpoints
from electra_ray import storage
from electra_ray.errors import TrainingError
from electra_ray.export import export

REGISTRY = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered
FSIZE_LIMIT = 100_000  # bytes: above the tokenizer and configs, below every weights file of TINY_MODEL


def limit_file_size(limit: int):
    """A preexec_fn: writes past `limit` bytes fail with EFBIG in the child (and what it runs)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Python ignores it already; a child's exec keeps it so
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def export_cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "electra_ray.export", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def leftovers(out) -> list[str]:
    """What an export left beside OUT: staging directories, moved-aside copies, its lock."""
    parent, name = os.path.split(os.path.abspath(out))
    return sorted(entry for entry in os.listdir(parent) if entry.startswith(name) and entry != name)


# -- resume: what is skipped, what is retried, what propagates ------------------------------------


class FakeEngine:
    """DeepSpeed's engine as restore() uses it: load_checkpoint, which may fail as told."""

    def __init__(self, failures: dict | None = None):
        self.failures, self.loaded = failures or {}, []

    def load_checkpoint(self, directory, tag):
        name = os.path.basename(directory.rstrip("/"))
        if name in self.failures:
            raise self.failures[name]
        self.loaded.append(directory)
        return directory, {}


def make_run(root, stage0_checkpoint, steps: dict[str, int], registered: list[str]) -> str:
    """A run directory of checkpoints (copies of the stage-0 one, each with its step) and Ray Train's
    registry listing `registered` (oldest first), as Ray Train writes them."""
    for name, step in steps.items():
        shutil.copytree(stage0_checkpoint, os.path.join(root, name))
        path = os.path.join(root, name, checkpoints.RUN_STATE)
        state = json.load(open(path))
        state["step"] = step
        with open(path, "w") as f:
            json.dump(state, f)
    with open(os.path.join(root, REGISTRY), "w") as f:
        json.dump({"checkpoint_results": [{"checkpoint_dir_name": n, "metrics": {}} for n in registered]}, f)
    return str(root)


def ray_checkpoint(path: str, filesystem=None):
    import ray.train

    return ray.train.Checkpoint(path, filesystem=filesystem)


def restore(engine, latest) -> dict:
    return checkpoints.restore(engine, latest, rank=0, world=1, device=torch.device("cpu"))


def test_the_registry_is_ray_trains():
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    assert checkpoints.REGISTRY == REGISTRY == CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


@pytest.fixture
def run_dir(stage0_checkpoint, tmp_path) -> str:
    """Registered: steps 8 and 24. checkpoint_2 (step 16) is a whole copy, but never registered:
    its save was interrupted after the files were written, before Ray Train registered it."""
    steps = {"checkpoint_1": 8, "checkpoint_2": 16, "checkpoint_3": 24}
    return make_run(tmp_path / "run", stage0_checkpoint, steps, registered=["checkpoint_1", "checkpoint_3"])


def truncate(path: str, size: int = 100) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    "damage",
    ["truncated weights", "missing weights", "truncated random states", "bad run state", "missing run state"],
)
def test_a_damaged_checkpoint_falls_back_to_the_previous_registered_one(run_dir, damage):
    newest = os.path.join(run_dir, "checkpoint_3")
    weights = os.path.join(newest, checkpoints.CHECKPOINT_TAG, "mp_rank_00_model_states.pt")
    if damage == "truncated weights":
        truncate(weights)
    elif damage == "missing weights":
        os.remove(weights)
    elif damage == "truncated random states":
        truncate(os.path.join(newest, "rng_rank0.pt"))
    elif damage == "bad run state":
        truncate(os.path.join(newest, checkpoints.RUN_STATE), 10)
    else:
        os.remove(os.path.join(newest, checkpoints.RUN_STATE))
    engine = FakeEngine({"checkpoint_3": FileNotFoundError(weights)} if damage == "missing weights" else {})
    # checkpoint_2 is newer and complete, but unregistered: the one to fall back to is checkpoint_1.
    assert restore(engine, ray_checkpoint(newest))["step"] == 8
    assert engine.loaded == [os.path.join(run_dir, "checkpoint_1")]


def test_without_a_registry_only_the_latest_is_a_candidate(run_dir):
    os.remove(os.path.join(run_dir, REGISTRY))
    truncate(os.path.join(run_dir, "checkpoint_3", checkpoints.RUN_STATE), 10)
    with pytest.raises(TrainingError, match=r"no readable checkpoint to resume from; tried .*checkpoint_3$"):
        restore(FakeEngine(), ray_checkpoint(os.path.join(run_dir, "checkpoint_3")))


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("[../gloo/transport] Connection closed by peer"),
    ],
    ids=["MemoryError", "torch.OutOfMemoryError", "a peer's collective"],
)
def test_a_failure_that_is_not_the_checkpoints_propagates(run_dir, error):
    """Not 'this checkpoint is damaged': skipping it would resume from an older one for nothing."""
    engine = FakeEngine({"checkpoint_3": error})
    with pytest.raises(type(error)):
        restore(engine, ray_checkpoint(os.path.join(run_dir, "checkpoint_3")))
    assert engine.loaded == []


@pytest.fixture
def s3_run(run_dir, tmp_path, monkeypatch):
    """The run directory served by a real S3 server (rclone, data on disk: it survives a restart),
    with few retries so that an outage shows in seconds. Yields (server, latest checkpoint)."""
    data = tmp_path / "s3"
    data.mkdir()
    shutil.copytree(run_dir, data / "electra" / "run")
    server = S3Server("rclone", str(data)).start()
    monkeypatch.setattr(checkpoints, "STORAGE_RETRY_S", 0.5, raising=False)
    try:
        with environment({**server.env(), "AWS_MAX_ATTEMPTS": "1"}):
            filesystem, _ = storage.resolve("s3://electra/run")
            yield server, ray_checkpoint("electra/run/checkpoint_3", filesystem)
    finally:
        server.stop()


def test_storage_that_does_not_answer_stops_the_run_and_skips_nothing(s3_run, monkeypatch):
    server, latest = s3_run
    monkeypatch.setattr(checkpoints, "STORAGE_ATTEMPTS", 2, raising=False)
    server.stop()
    engine = FakeEngine()
    with pytest.raises(TrainingError) as stopped:
        restore(engine, latest)
    message = str(stopped.value)
    assert message.startswith("cannot read checkpoint electra/run/checkpoint_3: its storage did not answer 2 times")
    assert "it was not skipped" in message and "\n" not in message
    assert engine.loaded == []


def test_a_short_storage_outage_resumes_from_the_latest(s3_run):
    server, latest = s3_run
    server.stop()
    threading.Timer(1.0, server.start).start()  # back within the retries (0.5 + 1 + 2 s)
    engine = FakeEngine()
    assert restore(engine, latest)["step"] == 24
    assert len(engine.loaded) == 1


def test_a_damaged_checkpoint_on_s3_still_falls_back(s3_run):
    server, latest = s3_run
    truncate(os.path.join(server.data_dir, "electra", "run", "checkpoint_3", "rng_rank0.pt"))
    assert restore(FakeEngine(), latest)["step"] == 8


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def previous_export(stage0_checkpoint, tmp_path) -> str:
    out = str(tmp_path / "export")
    export(stage0_checkpoint, out)
    return out


def test_a_full_disk_during_export_keeps_the_previous_export(stage0_checkpoint, previous_export):
    before = storage.verify_directory(previous_export)
    run = export_cli(stage0_checkpoint, previous_export, "--overwrite", preexec_fn=limit_file_size(FSIZE_LIMIT))
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stderr[-3000:]
    line = one_line_error(stderr)
    assert line.startswith(f"error: cannot write the export {previous_export}: file too large (")
    assert line.endswith(
        f"the export already at {previous_export} is unchanged: free space (or raise the "
        f"file-size limit) and export again"
    )
    assert storage.verify_directory(previous_export) == before
    assert leftovers(previous_export) == []  # no staging directory, no lock


def test_a_full_disk_during_a_first_export_leaves_nothing(stage0_checkpoint, tmp_path):
    out = str(tmp_path / "export")
    run = export_cli(stage0_checkpoint, out, preexec_fn=limit_file_size(FSIZE_LIMIT))
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2 and "nothing was published" in one_line_error(stderr)
    assert os.listdir(tmp_path) == []


SAVE_UNDER_A_LIMIT = """
import json, os, resource, sys
import torch
from conftest import TINY_MODEL
from electra_ray import checkpoint as checkpoints
from electra_ray.config import load_config
from electra_ray.data import tokenizer_from_json
from electra_ray.engine import build_engine
from electra_ray.errors import TrainingError

tokenizer_json, root, limit = open(sys.argv[1]).read(), sys.argv[2], int(sys.argv[3])
tokenizer, special = tokenizer_from_json(tokenizer_json)
overrides = [f"model.{key}={value}" for key, value in TINY_MODEL.items()] + ["data.seq_len=32", "train.zero_stage=2"]
cfg = load_config(None, overrides)
engine, _ = build_engine(cfg, tokenizer.get_vocab_size(), special["[PAD]"], world=1)
rng = {"mask": {}, "sample": torch.Generator().get_state(), "torch": torch.get_rng_state()}
state = {"config": cfg.to_dict(), "step": 8, "vocab_size": tokenizer.get_vocab_size(), "zero_stage": 2, "world_size": 1}
report = {}
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
os.makedirs(os.path.join(root, "full"))
try:
    checkpoints.save(os.path.join(root, "full"), engine, state, rng, 0, tokenizer_json)
except TrainingError as error:
    report["error"] = [type(error).__name__, str(error)]
report["left"] = os.listdir(os.path.join(root, "full"))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again: the same engine saves and loads
os.makedirs(os.path.join(root, "ok"))
checkpoints.save(os.path.join(root, "ok"), engine, state, rng, 0, tokenizer_json)
report["saved"] = sorted(os.listdir(os.path.join(root, "ok")))
report["loaded"] = engine.load_checkpoint(os.path.join(root, "ok"), tag=checkpoints.CHECKPOINT_TAG)[0] is not None
print("REPORT " + json.dumps(report))
"""


def test_a_full_disk_during_a_checkpoint_save_is_one_error_and_leaves_nothing(tokenizer_json, tmp_path):
    """A real DeepSpeed engine (ZeRO-2, one rank, gloo) in a child process whose file-size limit
    is lowered just before the save."""
    (tmp_path / "tokenizer.json").write_text(tokenizer_json)
    script = tmp_path / "save.py"
    script.write_text(SAVE_UNDER_A_LIMIT)
    port = str(__import__("conftest")._free_port())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])),
        "DS_ACCELERATOR": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
    }
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "tokenizer.json"), str(tmp_path), str(FSIZE_LIMIT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT ") :])
    kind, message = report["error"]
    assert kind == "CheckpointWriteError" and "\n" not in message
    assert message.startswith("cannot write the checkpoint of step 8: file too large (rank 0 writing ")
    assert "nothing of it was kept and the latest complete checkpoint is unchanged" in message
    assert report["left"] == []
    assert {"model", "rng_rank0.pt", "run_state.json", "tokenizer", "zero_to_fp32.py"} <= set(report["saved"])
    assert report["loaded"]


# -- exports: two at once, and one killed ------------------------------------------------------


def wait_for_staging(out, process: subprocess.Popen, timeout: float = 120) -> str:
    """The staging directory of the export writing `out`, once a file is in it (polled every 5 ms)."""
    parent, name = os.path.split(os.path.abspath(out))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        for entry in os.listdir(parent):
            staging = os.path.join(parent, entry)
            if entry.startswith(f"{name}.partial-") and any(files for _, _, files in os.walk(staging)):
                return staging
        time.sleep(0.005)
    raise AssertionError(f"no staging directory of {out} appeared")


def test_two_exports_into_one_output_one_proceeds_the_other_is_refused(stage0_checkpoint, tmp_path):
    out = str(tmp_path / "export")
    first = export_cli(stage0_checkpoint, out)
    try:
        wait_for_staging(out, first)
        first.send_signal(signal.SIGSTOP)  # held mid-write while the second one starts
        second = export_cli(stage0_checkpoint, out)
        _, stderr = second.communicate(timeout=300)
        assert second.returncode == 2
        assert one_line_error(stderr).startswith(f"error: {out} is being written by another command right now")
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert stdout.strip() == f"export: {out}"
    storage.verify_directory(out)
    assert leftovers(out) == []


def test_an_export_killed_while_it_writes_leaves_the_previous_one_whole(stage0_checkpoint, previous_export):
    before = storage.verify_directory(previous_export)
    killed = export_cli(stage0_checkpoint, previous_export, "--overwrite")
    staging = wait_for_staging(previous_export, killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL

    assert storage.verify_directory(previous_export) == before  # every file, hash-checked
    from transformers import ElectraForPreTraining

    ElectraForPreTraining.from_pretrained(os.path.join(previous_export, "discriminator"))
    assert os.path.isdir(staging) and storage.read_manifest(staging) is None  # never taken as an export
    with pytest.raises(storage.StorageError, match="has no _MANIFEST.json"):
        storage.verify_directory(staging)

    again = export_cli(stage0_checkpoint, previous_export, "--overwrite")  # the lock the kill left is taken over
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert storage.verify_directory(previous_export).files.keys() == before.files.keys()


# -- on a real Ray: the S3 endpoint goes away in the middle of a checkpoint upload ---------------

# A TCP proxy in front of the S3 server, in its own process: the endpoint the run is given. Ray
# Train's storage needs moto (rclone refuses its directory markers), and moto keeps its objects in
# memory: killing it would lose the bucket, so the endpoint that goes away and comes back is this
# proxy (killed by pid, started again on the same port), as a network outage would look. It holds
# the `nth` request that writes into the `ordinal`-th checkpoint directory it sees (the upload is
# then stuck half-way), names that directory in `marker`, and waits to be killed.
PROXY = r"""
import asyncio, re, sys
port, target, marker, ordinal, nth = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
WRITE = re.compile(rb"(?:PUT|POST) /electra/runs/run/(checkpoint_\d[^/ ?]*)/")
seen = {}

async def pipe(reader, writer, watch):
    try:
        while data := await reader.read(1 << 16):
            for name in WRITE.findall(data) if watch and ordinal else ():
                seen[name] = seen.get(name, 0) + 1
                if len(seen) == ordinal and seen[name] == nth and list(seen).index(name) == ordinal - 1:
                    open(marker, "w").write(name.decode())
                    await asyncio.sleep(3600)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def connect(client_reader, client_writer):
    server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False))

async def main():
    async with await asyncio.start_server(connect, "127.0.0.1", port) as server:
        await server.serve_forever()

asyncio.run(main())
"""


class Proxy:
    def __init__(self, target: int, directory):
        from conftest import _free_port, _port_open

        self.port, self.target, self.directory, self.process = _free_port(), target, directory, None
        self.script, self.marker = directory / "proxy.py", directory / "held"
        self.script.write_text(PROXY)
        self._port_open = _port_open

    def start(self, hold_checkpoint: int = 0, hold_request: int = 0) -> "Proxy":
        command = [sys.executable, str(self.script), str(self.port), str(self.target), str(self.marker)]
        self.process = subprocess.Popen(command + [str(hold_checkpoint), str(hold_request)])
        deadline = time.monotonic() + 30
        while not self._port_open(self.port):
            assert self.process.poll() is None and time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        self.process.kill()  # by pid, as an outage would: no goodbye to the open connections
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def s3_behind_a_proxy(small_corpus, tokenizer_dir, tmp_path_factory):
    """moto behind the proxy, the AWS variables pointing at the proxy (few retries), Ray started
    after them (its workers inherit them), and the uninterrupted reference run (local storage: the
    same computation). Yields (proxy, moto, reference weights)."""
    import ray
    from conftest import start_test_ray
    from test_fault_tolerance import STEPS, discriminator_weights
    from test_pretrain import tiny_config

    from electra_ray.pretrain import pretrain

    directory = tmp_path_factory.mktemp("s3-outage")
    moto = S3Server("moto", str(directory / "moto")).start()
    proxy = Proxy(moto.port, directory)
    try:
        with environment({**moto.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_MAX_ATTEMPTS": "2"}):
            proxy.start()
            moto.create_bucket("electra")
            start_test_ray()
            try:
                steps = {**STEPS, "train.max_steps": 16}
                cfg = tiny_config(small_corpus, tokenizer_dir, directory / "reference", **steps)
                reference = pretrain(cfg, export_and_evaluate=False)
                yield proxy, moto, discriminator_weights(reference.checkpoint)
            finally:
                ray.shutdown()
    finally:
        if proxy.process and proxy.process.poll() is None:
            proxy.kill()
        moto.stop()


def train_workers() -> set[int]:
    """The pids of this test's Ray's live Ray Train workers."""
    import ray
    from ray.util.state import list_actors

    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
    return {actor.pid for actor in alive if "RayTrainWorker" in actor.class_name}


@pytest.mark.ray
def test_the_s3_endpoint_going_away_mid_checkpoint_costs_steps_not_the_run(
    s3_behind_a_proxy, small_corpus, tokenizer_dir, tmp_path
):
    """Checkpoints at steps 8 and 16 on S3. The upload of the step-16 one stops half-way: the
    endpoint is killed then, and stays away until the upload has failed and Ray Train has started
    new workers (train.max_failures). They resume from step 8 (reading storage again until it
    answers) and end with the reference's weights. The half-uploaded directory is never registered,
    and never a candidate to resume from."""
    from test_fault_tolerance import STEPS, assert_same_weights, discriminator_weights
    from test_pretrain import tiny_config

    from electra_ray.pretrain import pretrain

    proxy, _, weights = s3_behind_a_proxy
    proxy.kill()
    proxy.start(hold_checkpoint=2, hold_request=3)  # the third write into the second checkpoint
    outage = {}

    def cut_and_restore():
        while not proxy.marker.exists():
            time.sleep(0.05)
        time.sleep(0.1)  # the marker's name is written
        outage["checkpoint"], workers = proxy.marker.read_text(), train_workers()
        proxy.kill()
        # Away until Ray Train has replaced the workers (the upload's retries are spent), and then
        # 1 s longer: the new workers' first reads of the checkpoint may meet it still away.
        deadline = time.monotonic() + 120
        while not (train_workers() - workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        outage["restarted"] = bool(train_workers() - workers)
        time.sleep(1)
        proxy.start()

    cutter = threading.Thread(target=cut_and_restore, daemon=True)
    cutter.start()
    settings = {**STEPS, "train.max_steps": 16, "output.local_dir": str(tmp_path / "local")}
    cfg = tiny_config(small_corpus, tokenizer_dir, "s3://electra/runs", **settings)
    result = pretrain(cfg, export_and_evaluate=False)
    cutter.join(timeout=5)
    assert outage.get("restarted"), f"the upload of the second checkpoint was not cut, or not retried: {outage}"

    steps = [h["step"] for h in result.history]
    assert steps[-1] == 16 and steps.count(12) == 2, steps  # steps 9-16 again, after the restart
    with storage.local_directory(result.checkpoint) as checkpoint:
        assert_same_weights(discriminator_weights(checkpoint), weights)

    filesystem, run = storage.resolve("s3://electra/runs/run")
    registered = checkpoints.registered_names(run, filesystem)
    half = outage["checkpoint"]
    assert storage.exists(f"s3://electra/runs/run/{half}") and half not in registered  # left half-written
    latest = ray_checkpoint(f"{run}/{registered[-1]}", filesystem)
    assert [c.path.rsplit("/", 1)[1] for c in checkpoints.newest_first(latest)] == registered[::-1]
