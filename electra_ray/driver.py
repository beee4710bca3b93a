"""Driver services every verb shares: joining or starting Ray, building and fitting a
`TorchTrainer` (with a graceful stop), naming run directories, and the tokenizer a run (or every
run of a multi-run verb) trains on. Verbs call these; none re-implements them."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import ray
import ray.train
from ray.autoscaler.sdk import request_resources
from ray.train.torch import TorchConfig, TorchTrainer

from electra_ray import storage
from electra_ray.config import Config, ScalingConfig
from electra_ray.documents import training_texts
from electra_ray.errors import UserError
from electra_ray.stop import StopRequest
from electra_ray.tokenizer import read_tokenizer_json, save_tokenizer, train_tokenizer

# How long a request for resources the cluster lacks waits for its autoscaler before it is an error.
RESOURCE_WAIT_S = float(os.environ.get("ELECTRA_RAY_RESOURCE_WAIT_S", 900))


# -- Ray -----------------------------------------------------------------------------------------


def start_local_ray(num_cpus: int, env_vars: dict | None = None) -> None:
    """Start Ray in this process, set up for one machine on which training is the job:
    - workers at niceness 0: at Ray's default 15 the trainer loses its cores to Ray's daemons and
      the driver (12% of ELECTRA-Small's tokens/s on 2 cores);
    - no preemption watcher (a local node is never drained): every Ray process wakes 100 times a
      second (its task loop's signal check), and on 2 cores each one costs the trainer.
    The dashboard stays: it serves the state API, which Ray Train's PlacementGroupCleaner polls
    every second (without it, a warning each time), and a sweep's Tune view.
    `env_vars`: more variables for every worker."""
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # Token auth stays on (Ray's default for a new local Ray; RAY_AUTH_MODE=disabled turns it off):
    # the dashboard and Jobs API on 127.0.0.1 run code for whoever calls them, on a shared host
    # every local user. (Setting RAY_AUTH_MODE here, after `import ray`, would not reach Ray's
    # cached config and would break the start.)
    # Train's print patch would echo each progress line twice on the console.
    context = ray.init(
        num_cpus=num_cpus,
        logging_level="warning",
        runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **(env_vars or {})}},
    )
    protect_auth_token()
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def protect_auth_token() -> None:
    """Ray writes its token file with the umask's mode (often world-readable): make it the owner's."""
    token = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if os.path.isfile(token) and os.stat(token).st_mode & 0o077:
        os.chmod(token, 0o600)


def cluster_address(scaling: ScalingConfig) -> str:
    """The Ray cluster to join (scaling.ray_address, else RAY_ADDRESS); empty: start Ray here."""
    return scaling.ray_address or os.environ.get("RAY_ADDRESS", "")


CONNECT_WAIT_S = float(os.environ.get("ELECTRA_RAY_CONNECT_WAIT_S", 20))


def check_reachable(address: str, wait_s: float = CONNECT_WAIT_S) -> None:
    """A cluster address where nothing listens is one line after `wait_s`: ray.init would keep
    retrying its connection to the GCS for minutes. Only host:port forms are probed ("auto" and
    the like are Ray's to resolve)."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    deadline, error = time.monotonic() + wait_s, None
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=min(5.0, wait_s)).close()
            return
        except OSError as failure:  # refused, unreachable, unknown host: a head node may be starting
            error = failure
            time.sleep(1.0)
    raise UserError(
        f"no Ray cluster answers at {address} (scaling.ray_address or RAY_ADDRESS) after {wait_s:.0f} s: "
        f"{getattr(error, 'strerror', None) or error}; start the cluster, or leave the address empty for a local Ray"
    )


def connect_ray(scaling: ScalingConfig, local_cpus: int = 0) -> int:
    """Join the configured cluster or start a local Ray (with `local_cpus` logical CPUs; default:
    the workers' reservation plus room for Ray Data's tasks, which would otherwise wait forever
    behind the workers on a 2-core machine). Returns torch threads per worker: on a single-node
    Ray the machine's cores divided among the workers (Ray would give each worker only the one CPU
    it reserves); 0 on a cluster or on GPUs (keep Ray's setting)."""
    if not ray.is_initialized():
        if cluster_address(scaling):
            check_reachable(cluster_address(scaling))
            ray.init(address=cluster_address(scaling))
        else:
            start_local_ray(local_cpus or scaling.num_workers * max(1, int(scaling.cpus_per_worker or 1)) + 2)
    if scaling.use_gpu or len([node for node in ray.nodes() if node["Alive"]]) > 1:
        return 0
    return max(1, (os.cpu_count() or 1) // max(1, scaling.num_workers))


def check_resources(scaling: ScalingConfig) -> None:
    """A request no node can meet is an error within a bounded time, never an endless wait: at once
    on the local Ray (nothing can add nodes to it), after RESOURCE_WAIT_S on a cluster joined by
    address, whose autoscaler may start nodes that have it."""
    wanted = {"CPU": scaling.num_workers * (scaling.cpus_per_worker or 1.0)}
    if scaling.use_gpu:
        wanted["GPU"] = float(scaling.num_workers)
    if scaling.data_resource:
        wanted[scaling.data_resource] = 1e-9  # any amount: Ray Data's tasks ask for a fraction

    def missing() -> list[str]:
        have = ray.cluster_resources()
        return [
            f"{name} (asked {amount:g}, the cluster has {have.get(name, 0):g})"
            if amount >= 1
            else f"{name} (no node has it)"
            for name, amount in wanted.items()
            if have.get(name, 0) < amount
        ]

    if not missing():
        return
    advice = ("; set scaling.use_gpu=false" if scaling.use_gpu else "") + (
        "; check scaling.data_resource" if scaling.data_resource else ""
    )
    if not cluster_address(scaling):
        raise UserError(f"this Ray cluster cannot run the job: missing {', '.join(missing())}{advice}")
    print(f"waiting up to {RESOURCE_WAIT_S:.0f}s for the autoscaler to add {', '.join(missing())}", flush=True)
    # The workers' own shape (one bundle each, as Ray Train will ask), so the autoscaler starts
    # the node types that fit them; Ray Data's resource as a bundle of its own.
    worker = {"CPU": scaling.cpus_per_worker or 1.0, **({"GPU": 1.0} if scaling.use_gpu else {})}
    data = [{scaling.data_resource: 1.0}] if scaling.data_resource else []
    request_resources(bundles=[worker] * scaling.num_workers + data)
    deadline = time.monotonic() + RESOURCE_WAIT_S
    while missing() and time.monotonic() < deadline:
        time.sleep(5)
    request_resources(bundles=[])
    if missing():
        raise UserError(
            f"no node of this Ray cluster provides {', '.join(missing())} after {RESOURCE_WAIT_S:.0f}s "
            f"of autoscaling: its node types do not have it{advice}"
        )


# -- Ray Train -----------------------------------------------------------------------------------


def scaling_config(scaling: ScalingConfig) -> ray.train.ScalingConfig:
    """What Ray Train asks the cluster for: scaling.num_workers workers, each with
    scaling.cpus_per_worker CPUs (default 1) and, with scaling.use_gpu, one GPU. On an autoscaling
    cluster these requests are what brings up worker nodes."""
    return ray.train.ScalingConfig(
        num_workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        resources_per_worker={"CPU": scaling.cpus_per_worker or 1.0},
    )


def data_config() -> ray.train.DataConfig:
    """How Ray Train hands the dataset to the workers: `streaming_split` into one shard per worker,
    with Ray Data told to preserve order. Without it blocks leave in the order their tasks finish,
    and which worker gets which block, and in what order, would change from run to run; with it
    (and the seeded file order, data.file_order) each worker's shard is the same in every run, so
    a resume can skip what was consumed."""
    return ray.train.DataConfig(execution_options=ray.data.ExecutionOptions(preserve_order=True))


def build_trainer(
    train_fn: Callable,
    loop_config: dict,
    scaling: ScalingConfig,
    *,
    name: str,
    storage_dir: str,
    keep_checkpoints: int | None = None,
    max_failures: int = 0,
    callbacks: tuple = (),
    datasets: dict | None = None,
) -> TorchTrainer:
    """A TorchTrainer on nccl (GPUs) or gloo (CPUs), persisting to `storage_dir` (local or
    s3://) under `name`. With datasets, each worker's shard comes in the same order in every run,
    so a resume can skip what was consumed."""
    filesystem, storage_path = storage.resolve(storage_dir)
    return TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=scaling_config(scaling),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem if storage.is_remote(storage_dir) else None,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            # A dead worker: Ray Train restarts the group, which resumes from the latest checkpoint.
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=list(callbacks),
        ),
        dataset_config=data_config(),
        datasets=datasets,
    )


# One StopRequest actor per Ray connection of this process (a new local Ray is a new node): an
# actor is a process of its own, and starting one for every run (a sweep's trials, compare's arms,
# the tests) costs seconds of CPU.
_stop_requests: dict[str, ray.actor.ActorHandle] = {}


def stop_request() -> ray.actor.ActorHandle:
    """This process's StopRequest actor, cleared for a new run."""
    context = ray.get_runtime_context()
    connection = f"{context.get_node_id()}/{context.get_job_id()}"  # job ids start again in a new Ray
    if connection not in _stop_requests:
        _stop_requests[connection] = ray.remote(num_cpus=0)(StopRequest).remote()
    ray.get(_stop_requests[connection].clear.remote())
    return _stop_requests[connection]


def fit_stoppable(trainer: TorchTrainer, stop_request=None) -> ray.train.Result:
    """trainer.fit(), where SIGTERM or Ctrl-C asks the workers (through the StopRequest actor) to
    save a checkpoint and stop (a second signal acts as usual). On the main thread fit runs on a
    helper thread: there Ray Train would install its own SIGINT handler, which aborts the run
    without a checkpoint."""
    if stop_request is None or threading.current_thread() is not threading.main_thread():
        return trainer.fit()  # nothing to stop gracefully, or a Tune trial: Tune has the signals
    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:
            outcome["error"] = error

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request_stop(signum, frame):
        print(
            f"{signal.Signals(signum).name}: saving a checkpoint at the next logging step, then stopping "
            f"(again to abort)",
            flush=True,
        )
        stop_request.request.remote()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in previous:
        signal.signal(sig, request_stop)
    print("training: SIGTERM or Ctrl-C saves a checkpoint and stops", flush=True)
    thread = threading.Thread(target=fit, name="trainer.fit", daemon=True)  # dies with an abort
    try:
        thread.start()
        while thread.is_alive():
            thread.join(timeout=0.5)  # signal handlers run on this thread, between these waits
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# -- run directories and the tokenizer -----------------------------------------------------------


def prepare_tokenizer(cfg: Config, run_dir: str) -> str:
    """The tokenizer's JSON text: loaded from data.tokenizer, or trained on the training split
    (into run_dir/tokenizer, or read from there if an earlier attempt trained it)."""
    directory = cfg.data.tokenizer or os.path.join(run_dir, "tokenizer")
    if not cfg.data.tokenizer and not os.path.exists(os.path.join(directory, "tokenizer.json")):
        start = time.perf_counter()
        tokenizer = train_tokenizer(training_texts(cfg.data), cfg.data.vocab_size, cfg.data.cased)
        save_tokenizer(tokenizer, directory, model_max_length=cfg.model.max_position_embeddings)
        print(
            f"tokenizer: trained {tokenizer.get_vocab_size()} tokens in {time.perf_counter() - start:.1f}s "
            f"-> {directory}",
            flush=True,
        )
    return read_tokenizer_json(directory)


def shared_tokenizer(base: Config, out: str) -> str:
    """One tokenizer for every run of a multi-run verb (sweep, compare), so that their held-out
    figures are measured on the same tokens: trained into out/tokenizer unless data.tokenizer names
    one, and `base.data.tokenizer` pointed at it. Returns its JSON text."""
    tokenizer_json = prepare_tokenizer(base, out)
    if not base.data.tokenizer:
        base.data.tokenizer = os.path.join(out, "tokenizer")
    return tokenizer_json
