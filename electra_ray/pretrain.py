"""Pre-train ELECTRA on Ray: Parquet -> Ray Data -> Ray Train + DeepSpeed -> HF export.

    python -m electra_ray.pretrain                              # tiny model, shipped corpus, local Ray
    python -m electra_ray.pretrain --config configs/small.yaml --set train.max_steps=200 scaling.num_workers=2

Joins the Ray cluster named by scaling.ray_address / RAY_ADDRESS, else starts Ray in-process.
Ends with `checkpoint: PATH` and `export: PATH`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import threading
import time
from dataclasses import dataclass

from electra_ray import storage
from electra_ray.config import Config, describe_options, load_config
from electra_ray.errors import UserError

CONFIG_FILE = "config.json"  # in the run directory: what --resume starts from
# Keys a run's checkpoints and tokenizer depend on: continuing a run with other values would load
# its weights into another network (or fail deep inside the workers), so they must equal the
# saved config's (check_run_directory).
RUN_IDENTITY = (
    "model.num_layers",
    "model.hidden_size",
    "model.embedding_size",
    "model.num_heads",
    "model.intermediate_size",
    "model.generator_size",
    "model.max_position_embeddings",
    "model.generator_layers",
    "model.disentangled_embeddings",
    "train.objective",
    "train.zero_stage",
    "data.tokenizer",
    "data.vocab_size",
)
# How long a request for resources the cluster lacks waits for its autoscaler before it is an error.
RESOURCE_WAIT_S = float(os.environ.get("ELECTRA_RAY_RESOURCE_WAIT_S", 900))
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.yaml")


@dataclass
class PretrainResult:
    run_dir: str  # local: metrics.jsonl, TensorBoard, eval.json, a copy of the export
    checkpoint: str  # the latest checkpoint: a local path or an s3:// URL
    export: str  # the HF-format export: a local path or an s3:// URL ("" if not exported)
    history: list[dict]  # every report of the workers (also in run_dir/metrics.jsonl)
    evaluation: dict  # held-out measurements of the export (evaluate.py)
    stopped: bool = False  # stopped early by SIGTERM / Ctrl-C, after saving a checkpoint


def prepare_tokenizer(cfg: Config, run_dir: str) -> str:
    """The tokenizer's JSON text: loaded from data.tokenizer, or trained on the training split."""
    from electra_ray.tokenizer import read_tokenizer_json, save_tokenizer, train_tokenizer

    directory = cfg.data.tokenizer or os.path.join(run_dir, "tokenizer")
    if not cfg.data.tokenizer and not os.path.exists(os.path.join(directory, "tokenizer.json")):
        start = time.perf_counter()
        texts = training_texts(cfg)
        tokenizer = train_tokenizer(texts, cfg.data.vocab_size)
        save_tokenizer(tokenizer, directory, model_max_length=cfg.model.max_position_embeddings)
        print(
            f"tokenizer: trained {tokenizer.get_vocab_size()} tokens in {time.perf_counter() - start:.1f}s "
            f"-> {directory}",
            flush=True,
        )
    return read_tokenizer_json(directory)


def training_texts(cfg: Config):
    """The training split's documents; a corpus with none is an error here, before anything is written."""
    from electra_ray.data import DataError, iter_documents

    texts = iter_documents(cfg.data.path, cfg.data.text_column, "train", cfg.data.eval_fraction)
    first = next(texts, None)
    if first is None:
        raise DataError(
            f"corpus {cfg.data.path} has no text to train on: column '{cfg.data.text_column}' "
            f"is empty in every row of the training split"
        )
    return itertools.chain([first], texts)


def start_local_ray(num_cpus: int, env_vars: dict | None = None) -> None:
    """Start Ray in this process, set up for one machine on which training is the job:
    - workers at niceness 0: at Ray's default 15 the trainer loses its cores to Ray's daemons and
      the driver (12% of ELECTRA-Small's tokens/s on 2 cores);
    - no preemption watcher (a local node is never drained): every Ray process wakes 100 times a
      second (its task loop's signal check), and on 2 cores each one costs the trainer.
    The dashboard stays: it serves the state API, which Ray Train's PlacementGroupCleaner polls
    every second (without it, a warning each time), and a sweep's Tune view.
    `env_vars`: more variables for every worker."""
    import ray

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


def init_ray(cfg: Config) -> int:
    """Join the configured cluster or start a local Ray. Returns torch threads per worker: on a
    single-node Ray the machine's cores divided among the workers (Ray would give each worker
    only the one CPU it reserves); 0 on a cluster (keep Ray's setting)."""
    import ray

    if not ray.is_initialized():
        address = cfg.scaling.ray_address or os.environ.get("RAY_ADDRESS", "")
        if address:
            ray.init(address=address)
        else:
            # Logical CPUs: the workers' reservation plus room for Ray Data's tasks, which would
            # otherwise wait forever behind the workers on a 2-core machine.
            start_local_ray(cfg.scaling.num_workers * max(1, int(cfg.scaling.cpus_per_worker or 1)) + 2)
    if cfg.scaling.use_gpu or len([node for node in ray.nodes() if node["Alive"]]) > 1:
        return 0
    return max(1, (os.cpu_count() or 1) // cfg.scaling.num_workers)


def check_resources(cfg: Config) -> None:
    """A request no node can meet is an error within a bounded time, never an endless wait: at once
    on the local Ray (nothing can add nodes to it), after RESOURCE_WAIT_S on a cluster joined by
    address, whose autoscaler may start nodes that have it."""
    import ray

    wanted = {"CPU": cfg.scaling.num_workers * (cfg.scaling.cpus_per_worker or 1.0)}
    if cfg.scaling.use_gpu:
        wanted["GPU"] = float(cfg.scaling.num_workers)
    if cfg.scaling.data_resource:
        wanted[cfg.scaling.data_resource] = 1e-9  # any amount: Ray Data's tasks ask for a fraction

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
    advice = ("; set scaling.use_gpu=false" if cfg.scaling.use_gpu else "") + (
        "; check scaling.data_resource" if cfg.scaling.data_resource else ""
    )
    if not (cfg.scaling.ray_address or os.environ.get("RAY_ADDRESS")):
        raise UserError(f"this Ray cluster cannot run the job: missing {', '.join(missing())}{advice}")
    from ray.autoscaler.sdk import request_resources

    print(f"waiting up to {RESOURCE_WAIT_S:.0f}s for the autoscaler to add {', '.join(missing())}", flush=True)
    # The workers' own shape (one bundle each, as Ray Train will ask), so the autoscaler starts
    # the node types that fit them; Ray Data's resource as a bundle of its own.
    worker = {"CPU": cfg.scaling.cpus_per_worker or 1.0, **({"GPU": 1.0} if cfg.scaling.use_gpu else {})}
    data = [{cfg.scaling.data_resource: 1.0}] if cfg.scaling.data_resource else []
    request_resources(bundles=[worker] * cfg.scaling.num_workers + data)
    deadline = time.monotonic() + RESOURCE_WAIT_S
    while missing() and time.monotonic() < deadline:
        time.sleep(5)
    request_resources(bundles=[])
    if missing():
        raise UserError(
            f"no node of this Ray cluster provides {', '.join(missing())} after {RESOURCE_WAIT_S:.0f}s "
            f"of autoscaling: its node types do not have it{advice}"
        )


def check_run_directory(cfg: Config) -> bool:
    """Naming an existing run continues it, but only if it is a run of the same network: a
    directory that is not a run is refused, and so is a run whose saved config differs in a key
    of RUN_IDENTITY (before anything is written, config.json included)."""
    saved_path = storage.join(cfg.run_dir, CONFIG_FILE)
    if not storage.exists(saved_path):
        if _holds_files(cfg.run_dir):
            raise UserError(
                f"{cfg.run_dir} exists and is not a run of electra_ray.pretrain (no {CONFIG_FILE}): "
                f"nothing was written; choose another output.name or output.dir"
            )
        return False
    try:
        saved = json.loads(storage.read_text(saved_path))
    except ValueError as error:
        raise UserError(f"{saved_path} is not readable JSON ({error}): cannot check that this run matches it") from None
    if not isinstance(saved, dict) or not all(isinstance(saved.get(s), dict) for s in ("model", "train", "data")):
        raise UserError(f"{saved_path} is not a run's config: cannot check that this run matches it")
    current = cfg.to_dict()
    differences = []
    for key in RUN_IDENTITY:
        section, name = key.split(".")
        before, now = saved.get(section, {}).get(name), current[section][name]
        if before != now:
            differences.append(f"{key} {before!r} -> {now!r}")
    if differences:
        raise UserError(
            f"run {cfg.run_dir} was started with other settings ({'; '.join(differences)}): nothing "
            f"was written; use another output.name, or the run's own values to continue it"
        )
    return True


def _holds_files(path: str) -> bool:
    if not storage.is_remote(path):
        return os.path.isdir(path) and bool(os.listdir(path)) or os.path.isfile(path)
    filesystem, inner = storage.resolve(path)
    import pyarrow.fs as pafs

    with storage.s3_errors(path):
        return bool(filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True)))


def scaling_config(cfg: Config):
    """What Ray Train asks the cluster for: scaling.num_workers workers, each with
    scaling.cpus_per_worker CPUs (default 1) and, with scaling.use_gpu, one GPU. On an autoscaling
    cluster these requests are what brings up worker nodes."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=cfg.scaling.num_workers,
        use_gpu=cfg.scaling.use_gpu,
        resources_per_worker={"CPU": cfg.scaling.cpus_per_worker or 1.0},
    )


def heldout_corruption(cfg: Config, tokenizer_json: str):
    """The fixed corruption of held-out text that heldout_auc is measured on (train.eval_every);
    None when it is off or there is no discriminator (the MLM baseline)."""
    if not cfg.train.eval_every or cfg.train.objective != "electra":
        return None
    from electra_ray.data import load_sequences, tokenizer_from_json
    from electra_ray.evaluate import fixed_corruption

    special = tokenizer_from_json(tokenizer_json)[1]
    columns = load_sequences(cfg.data, tokenizer_json, "eval", cfg.train.eval_sequences)
    return fixed_corruption(
        columns["input_ids"],
        special.values(),
        special["[PAD]"],
        cfg.data.mask_prob,
        token_type_ids=columns.get("token_type_ids"),
    )


def pretrain(cfg: Config, export_and_evaluate: bool = True, callbacks: tuple = (), threads: int = 0) -> PretrainResult:
    """Pre-train as configured. `callbacks`: more Ray Train callbacks (a Tune trial passes Tune's);
    `threads`: torch threads per worker on a single-node Ray (default: init_ray's choice)."""
    import ray.data
    import ray.train
    import torch
    from ray.train.torch import TorchConfig, TorchTrainer

    from electra_ray.data import build_dataset, open_corpus, tokenizer_from_json
    from electra_ray.evaluate import evaluate_export, format_report
    from electra_ray.export import export
    from electra_ray.metrics import MetricsLogger, read_history, training_error
    from electra_ray.tokenizer import read_tokenizer_json
    from electra_ray.train import StopRequest, TrainingError, train_loop_per_worker

    # Fail fast, before Ray starts: a corpus, tokenizer or storage that cannot be used.
    open_corpus(cfg.data.path, cfg.data.text_column)
    if cfg.data.tokenizer:
        storage.check(cfg.data.tokenizer)
    storage.check(cfg.output.dir, write=True)
    if not cfg.output.name:
        cfg.output.name = time.strftime("run-%Y%m%d-%H%M%S")
    continuing = check_run_directory(cfg)
    run_dir = os.path.abspath(cfg.local_run_dir)
    if not continuing and run_dir != os.path.abspath(cfg.run_dir) and _holds_files(run_dir):
        raise UserError(
            f"the run's local directory {run_dir} already holds files: nothing was written; choose "
            f"another output.local_dir or output.name"
        )
    if export_and_evaluate:  # the run's own export is replaced at the end; anything else there is refused now
        storage.check_output(os.path.join(run_dir, "export"), "export", overwrite=True)
        if storage.is_remote(cfg.run_dir):
            storage.check_output(storage.join(cfg.run_dir, "export"), "export", overwrite=True, probe=False)
    # Refused here: a file that is no usable tokenizer, or a corpus with no text to train one on.
    given_tokenizer = read_tokenizer_json(cfg.data.tokenizer) if cfg.data.tokenizer else ""
    if not given_tokenizer:
        training_texts(cfg)
    default_threads = init_ray(cfg)
    check_resources(cfg)
    # Checks done: from here on the run directory is written.
    os.makedirs(run_dir, exist_ok=True)
    if not storage.is_remote(cfg.run_dir):
        os.makedirs(cfg.run_dir, exist_ok=True)
    storage.write_text(storage.join(cfg.run_dir, CONFIG_FILE), json.dumps(cfg.to_dict(), indent=1))  # for --resume
    tokenizer_json = given_tokenizer or prepare_tokenizer(cfg, run_dir)
    vocab_size = tokenizer_from_json(tokenizer_json)[0].get_vocab_size()
    threads = threads if threads and default_threads else default_threads  # a cluster keeps Ray's setting
    ray.data.DataContext.get_current().enable_progress_bars = False  # the training progress line suffices
    peak = 0.0
    if threads and not cfg.scaling.use_gpu:
        # Measured here, before the workers and Ray Data compete for the cores.
        from electra_ray.train import peak_flops

        peak = peak_flops(torch.device("cpu"), threads)
    storage_filesystem, storage_path = storage.resolve(cfg.output.dir)
    stop_request = ray.remote(num_cpus=0)(StopRequest).remote()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "tokenizer_json": tokenizer_json,
            "vocab_size": vocab_size,
            "num_threads": threads,
            "peak_flops": peak,
            "stop_actor": stop_request,
            "heldout": heldout_corruption(cfg, tokenizer_json),
        },
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=cfg.output.name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem if storage.is_remote(cfg.output.dir) else None,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            # A dead worker: Ray Train restarts the group, which resumes from the latest checkpoint.
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=[MetricsLogger(run_dir), *callbacks],
        ),
        # Each worker's shard in the same order in every run, so a resume can skip what was consumed.
        dataset_config=ray.train.DataConfig(execution_options=_ordered_execution()),
        datasets={"train": build_dataset(cfg.data, tokenizer_json, "train", cfg.scaling.data_resource)},
    )
    try:
        result = _fit_stoppable(trainer, stop_request)
    except ray.train.WorkerGroupError as error:
        known = [e for e in error.worker_failures.values() if isinstance(e, TrainingError)]
        if not known:
            raise
        raise UserError(f"training stopped: {known[0]} (run {cfg.run_dir})") from None
    if training_error(run_dir):
        raise UserError(f"training stopped: {training_error(run_dir)} (run {cfg.run_dir})")
    checkpoint = result.checkpoint.path
    if storage.is_remote(cfg.output.dir):
        checkpoint = f"{cfg.output.dir.partition('://')[0]}://{checkpoint}"
    if result.metrics.get("step", cfg.train.max_steps) < cfg.train.max_steps:
        print(
            f"stopped at step {result.metrics['step']}; continue with: "
            f"python -m electra_ray.pretrain --resume {cfg.run_dir}",
            flush=True,
        )
        return PretrainResult(run_dir, checkpoint, "", read_history(run_dir), {}, stopped=True)
    if not export_and_evaluate:
        return PretrainResult(run_dir, checkpoint, "", read_history(run_dir), {})
    export_dir = export(checkpoint, os.path.join(run_dir, "export"), overwrite=True)  # the run's own
    evaluation = evaluate_export(export_dir)
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(evaluation, f, indent=1)
    print(format_report(evaluation), flush=True)
    if storage.is_remote(cfg.run_dir):  # the local directory may not outlive the machine
        export_dir = storage.publish_directory(export_dir, storage.join(cfg.run_dir, "export"), overwrite=True)
        for name in ("metrics.jsonl", "eval.json"):
            with open(os.path.join(run_dir, name)) as f:
                storage.write_text(storage.join(cfg.run_dir, name), f.read())
    return PretrainResult(run_dir, checkpoint, export_dir, read_history(run_dir), evaluation)


def _ordered_execution():
    from ray.data import ExecutionOptions

    return ExecutionOptions(preserve_order=True)


def _fit_stoppable(trainer, stop_request):
    """trainer.fit(), where SIGTERM or Ctrl-C asks the workers to save a checkpoint and stop (a
    second signal acts as usual). On the main thread fit runs on a helper thread: there Ray Train
    would install its own SIGINT handler, which aborts the run without a checkpoint."""
    if threading.current_thread() is not threading.main_thread():  # a Tune trial: Tune has the signals
        return trainer.fit()
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


def resume_config(run: str, overrides: list[str]) -> Config:
    """The config a run was started with (RUN/config.json), pointed at RUN, then `overrides`."""
    run = run.rstrip("/")
    path = storage.join(run, CONFIG_FILE)
    if not storage.exists(path):
        raise UserError(f"cannot resume {run}: no {CONFIG_FILE} there (is it a run directory of electra_ray.pretrain?)")
    try:
        values = json.loads(storage.read_text(path))
        values["output"]  # noqa: B018  (a KeyError: not a run's config)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"cannot resume {run}: its {CONFIG_FILE} is not a run's config ({type(error).__name__})"
        ) from None
    if storage.is_remote(run):
        parent, _, name = run.rpartition("/")
    else:
        parent, name = os.path.split(os.path.abspath(run))
    values["output"].update(dir=parent, name=name)
    return load_config(None, overrides, base=values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m electra_ray.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override any with --set KEY=VALUE):\n" + describe_options(),
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None,
        help="YAML config file (default: configs/tiny.yaml)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        action="extend",
        help="override config keys, e.g. --set train.max_steps=200 data.path=corpus/",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped run (its directory or s3:// prefix, "
        "output.dir/output.name) with the config it was started with; --set still applies",
    )
    args = parser.parse_args(argv)
    from electra_ray.cli import run_cli

    def run():
        cfg = resume_config(args.resume, args.set) if args.resume else load_config(args.config, args.set)
        result = pretrain(cfg)
        print(f"checkpoint: {result.checkpoint}")
        if result.export:
            print(f"export: {result.export}")

    run_cli(run)


if __name__ == "__main__":
    main()
