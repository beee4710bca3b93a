"""The pre-training run itself, for a config `pretrain` has checked: Ray, the tokenizer, the
workers' arguments, the TorchTrainer's fit, then export, evaluation and publishing."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import ray
import ray.data
import torch

from electra_ray import storage
from electra_ray.config import CONFIG_FILE, Config
from electra_ray.data import build_dataset, check_fills_a_batch, load_sequences, tokenizer_from_json
from electra_ray.driver import (
    build_trainer,
    check_resources,
    connect_ray,
    fit_stoppable,
    prepare_tokenizer,
    stop_request,
)
from electra_ray.ds_config import deepspeed_config
from electra_ray.errors import UserError
from electra_ray.evaluate import evaluate_export, format_report
from electra_ray.export import export
from electra_ray.heldout import FixedCorruption, fixed_corruption
from electra_ray.initial_weights import initial_state
from electra_ray.meter import peak_flops
from electra_ray.metrics import MetricsLogger, read_history, training_error
from electra_ray.trackers import TrackedRun, numeric, tracking
from electra_ray.train import WorkerArgs, train_loop_per_worker


@dataclass
class PretrainResult:
    run_dir: str  # local: metrics.jsonl, TensorBoard, eval.json, a copy of the export
    checkpoint: str  # the latest checkpoint: a local path or an s3:// URL
    export: str  # the HF-format export: a local path or an s3:// URL ("" if not exported)
    history: list[dict]  # every report of the workers (also in run_dir/metrics.jsonl)
    evaluation: dict  # held-out measurements of the export (evaluate.py)
    stopped: bool = False  # stopped early by SIGTERM / Ctrl-C, after saving a checkpoint


def run_pretraining(
    cfg: Config, given_tokenizer: str = "", export_and_evaluate: bool = True, callbacks: tuple = (), threads: int = 0
) -> PretrainResult:
    """Run a checked config (pretrain.check_before_start). `given_tokenizer`: the JSON of
    data.tokenizer, read by the checks; `callbacks`: more Ray Train callbacks (a Tune trial passes
    Tune's); `threads`: torch threads per worker on a single-node Ray (default: connect_ray's)."""
    default_threads = connect_ray(cfg.scaling)
    check_resources(cfg.scaling)
    # Checks done: from here on the run directory is written.
    run_dir = os.path.abspath(cfg.local_run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if not storage.is_remote(cfg.run_dir):
        os.makedirs(cfg.run_dir, exist_ok=True)
    storage.write_text(storage.join(cfg.run_dir, CONFIG_FILE), json.dumps(cfg.to_dict(), indent=1))  # for --resume
    tokenizer_json = given_tokenizer
    if not tokenizer_json:
        tokenizer_json = prepare_tokenizer(cfg, run_dir)
        check_fills_a_batch(cfg.data, tokenizer_json, cfg.micro_batch, cfg.scaling.num_workers)
    threads = threads if threads and default_threads else default_threads  # a cluster keeps Ray's setting
    ray.data.DataContext.get_current().enable_progress_bars = False  # the training progress line suffices
    args = worker_args(cfg, tokenizer_json, threads)
    trainer = build_trainer(
        train_loop_per_worker,
        vars(args),
        cfg.scaling,
        name=cfg.output.name,
        storage_dir=cfg.output.dir,
        keep_checkpoints=cfg.train.keep_checkpoints,
        max_failures=cfg.train.max_failures,
        callbacks=(MetricsLogger(run_dir, tensorboard="tensorboard" in cfg.output.trackers), *callbacks),
        datasets={"train": build_dataset(cfg.data, tokenizer_json, "train", cfg.scaling.data_resource, cfg.train.seed)},
    )
    with tracking(cfg, run_dir) as tracked:  # MLflow / W&B (output.trackers), fed from metrics.jsonl
        return fit_and_export(cfg, trainer, args, run_dir, export_and_evaluate, tracked)


def fit_and_export(
    cfg: Config, trainer, args: WorkerArgs, run_dir: str, export_and_evaluate: bool, tracked: TrackedRun
) -> PretrainResult:
    """Fit (a SIGTERM stops it at a checkpoint), then export and evaluate the final checkpoint."""
    result = fit_stoppable(trainer, args.stop_actor)
    if training_error(run_dir):  # reported by the workers (train.train_loop_per_worker)
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
        tracked.stopped = True
        return PretrainResult(run_dir, checkpoint, "", read_history(run_dir), {}, stopped=True)
    if not export_and_evaluate:
        return PretrainResult(run_dir, checkpoint, "", read_history(run_dir), {})
    export_dir, evaluation = export_and_publish(cfg, checkpoint, run_dir)
    tracked.log({f"eval/{k}": v for k, v in numeric(evaluation).items()}, cfg.train.max_steps)
    return PretrainResult(run_dir, checkpoint, export_dir, read_history(run_dir), evaluation)


def export_and_publish(cfg: Config, checkpoint: str, run_dir: str) -> tuple[str, dict]:
    """Export the final checkpoint into the run's own directory, evaluate it (eval.json), and
    publish export and records to the run's s3:// prefix if it has one (the local directory may
    not outlive the machine). Returns (the export's path or URL, the evaluation)."""
    evaluation: dict = {}

    def measure(directory: str) -> dict:  # the export, before it is published: its model cards get the figures
        evaluation.update(evaluate_export(directory))
        return evaluation

    export_dir = export(checkpoint, os.path.join(run_dir, "export"), overwrite=True, measure=measure)  # the run's own
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(evaluation, f, indent=1)
    print(format_report(evaluation), flush=True)
    if storage.is_remote(cfg.run_dir):
        export_dir = storage.publish_directory(export_dir, storage.join(cfg.run_dir, "export"), overwrite=True)
        for name in ("metrics.jsonl", "eval.json"):
            with open(os.path.join(run_dir, name)) as f:
                storage.write_text(storage.join(cfg.run_dir, name), f.read())
    return export_dir, evaluation


def heldout_corruption(cfg: Config, tokenizer_json: str) -> FixedCorruption | None:
    """The fixed corruption of held-out text that heldout_auc is measured on (train.eval_every);
    None when it is off or there is no discriminator (the MLM baseline)."""
    if not cfg.train.eval_every or cfg.train.objective != "electra":
        return None
    special = tokenizer_from_json(tokenizer_json)[1]
    columns = load_sequences(cfg.data, tokenizer_json, "eval", cfg.train.eval_sequences)
    return fixed_corruption(
        columns["input_ids"],
        special.values(),
        special["[PAD]"],
        cfg.data.mask_prob,
        token_type_ids=columns.get("token_type_ids"),
    )


def worker_args(cfg: Config, tokenizer_json: str, threads: int) -> WorkerArgs:
    """What every worker gets. The CPU's peak FLOP/s is measured here, before the workers and Ray
    Data compete for the cores."""
    peak = peak_flops(torch.device("cpu"), threads) if threads and not cfg.scaling.use_gpu else 0.0
    return WorkerArgs(
        config=cfg,
        tokenizer_json=tokenizer_json,
        vocab_size=tokenizer_from_json(tokenizer_json)[0].get_vocab_size(),
        num_threads=threads,
        peak_flops=peak,
        stop_actor=stop_request(),
        heldout=heldout_corruption(cfg, tokenizer_json),
        initial_weights=ray.put(initial_state(cfg)) if cfg.model.init_from else None,
        deepspeed_config=deepspeed_config(cfg),  # train.deepspeed merged here: workers may not reach its file
    )
