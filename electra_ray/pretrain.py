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
import time
from dataclasses import dataclass

from electra_ray import storage
from electra_ray.config import Config, describe_options, load_config
from electra_ray.errors import UserError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.yaml")


@dataclass
class PretrainResult:
    run_dir: str       # local: metrics.jsonl, TensorBoard, eval.json, a copy of the export
    checkpoint: str    # the latest checkpoint: a local path or an s3:// URL
    export: str        # the HF-format export: a local path or an s3:// URL
    history: list[dict]  # every report of the workers (also in run_dir/metrics.jsonl)
    evaluation: dict   # held-out measurements of the export (evaluate.py)


def prepare_tokenizer(cfg: Config, run_dir: str) -> str:
    """The tokenizer's JSON text: loaded from data.tokenizer, or trained on the training split."""
    from electra_ray.data import DataError, iter_documents
    from electra_ray.tokenizer import read_tokenizer_json, save_tokenizer, train_tokenizer

    directory = cfg.data.tokenizer or os.path.join(run_dir, "tokenizer")
    if not cfg.data.tokenizer and not os.path.exists(os.path.join(directory, "tokenizer.json")):
        start = time.perf_counter()
        texts = iter_documents(cfg.data.path, cfg.data.text_column, "train", cfg.data.eval_fraction)
        first = next(texts, None)
        if first is None:
            raise DataError(f"corpus {cfg.data.path} has no text to train on: column '{cfg.data.text_column}' "
                            f"is empty in every row of the training split")
        tokenizer = train_tokenizer(itertools.chain([first], texts), cfg.data.vocab_size)
        save_tokenizer(tokenizer, directory, model_max_length=cfg.model.max_position_embeddings)
        print(f"tokenizer: trained {tokenizer.get_vocab_size()} tokens in {time.perf_counter() - start:.1f}s "
              f"-> {directory}", flush=True)
    return read_tokenizer_json(directory)


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
            ray.init(num_cpus=cfg.scaling.num_workers * max(1, int(cfg.scaling.cpus_per_worker or 1)) + 2,
                     logging_level="warning",
                     # Train's print patch would echo each progress line twice on the console.
                     runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    if cfg.scaling.use_gpu or len([node for node in ray.nodes() if node["Alive"]]) > 1:
        return 0
    return max(1, (os.cpu_count() or 1) // cfg.scaling.num_workers)


def scaling_config(cfg: Config):
    """What Ray Train asks the cluster for: scaling.num_workers workers, each with
    scaling.cpus_per_worker CPUs (default 1) and, with scaling.use_gpu, one GPU. On an autoscaling
    cluster these requests are what brings up worker nodes."""
    import ray.train

    return ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                   resources_per_worker={"CPU": cfg.scaling.cpus_per_worker or 1.0})


def pretrain(cfg: Config, export_and_evaluate: bool = True) -> PretrainResult:
    import ray.data
    import ray.train
    import torch
    from ray.train.torch import TorchConfig, TorchTrainer

    from electra_ray.data import build_dataset, open_corpus, tokenizer_from_json
    from electra_ray.evaluate import evaluate_export, format_report
    from electra_ray.export import export
    from electra_ray.metrics import MetricsLogger, read_history
    from electra_ray.train import TrainingError, train_loop_per_worker

    # Fail fast, before Ray starts: a corpus, tokenizer or storage that cannot be used.
    open_corpus(cfg.data.path, cfg.data.text_column)
    if cfg.data.tokenizer:
        storage.check(cfg.data.tokenizer)
    storage.check(cfg.output.dir, write=True)
    if not cfg.output.name:
        cfg.output.name = time.strftime("run-%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(cfg.local_run_dir)
    os.makedirs(run_dir, exist_ok=True)
    tokenizer_json = prepare_tokenizer(cfg, run_dir)
    vocab_size = tokenizer_from_json(tokenizer_json)[0].get_vocab_size()
    threads = init_ray(cfg)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the training progress line suffices
    peak = 0.0
    if threads and not cfg.scaling.use_gpu:
        # Measured here, before the workers and Ray Data compete for the cores.
        from electra_ray.train import peak_flops

        peak = peak_flops(torch.device("cpu"), threads)
    storage_filesystem, storage_path = storage.resolve(cfg.output.dir)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "tokenizer_json": tokenizer_json, "vocab_size": vocab_size,
                           "num_threads": threads, "peak_flops": peak},
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=cfg.output.name, storage_path=storage_path,
            storage_filesystem=storage_filesystem if storage.is_remote(cfg.output.dir) else None,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=[MetricsLogger(run_dir)]),
        datasets={"train": build_dataset(cfg.data, tokenizer_json, "train", cfg.scaling.data_resource)},
    )
    try:
        result = trainer.fit()
    except ray.train.WorkerGroupError as error:
        known = [e for e in error.worker_failures.values() if isinstance(e, TrainingError)]
        if not known:
            raise
        raise UserError(f"training stopped: {known[0].args[0] if known[0].args else known[0]}") from None
    checkpoint = result.checkpoint.path
    if storage.is_remote(cfg.output.dir):
        checkpoint = f"{cfg.output.dir.partition('://')[0]}://{checkpoint}"
    if not export_and_evaluate:
        return PretrainResult(run_dir, checkpoint, "", read_history(run_dir), {})
    export_dir = export(checkpoint, os.path.join(run_dir, "export"))
    evaluation = evaluate_export(export_dir)
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(evaluation, f, indent=1)
    print(format_report(evaluation), flush=True)
    if storage.is_remote(cfg.run_dir):  # the local directory may not outlive the machine
        export_dir = storage.publish_directory(export_dir, storage.join(cfg.run_dir, "export"))
        for name in ("metrics.jsonl", "eval.json"):
            with open(os.path.join(run_dir, name)) as f:
                storage.write_text(storage.join(cfg.run_dir, name), f.read())
    return PretrainResult(run_dir, checkpoint, export_dir, read_history(run_dir), evaluation)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m electra_ray.pretrain", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override any with --set KEY=VALUE):\n" + describe_options())
    parser.add_argument("--config", default=DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None,
                        help="YAML config file (default: configs/tiny.yaml)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                        help="override config keys, e.g. --set train.max_steps=200 data.path=corpus/")
    args = parser.parse_args(argv)
    from electra_ray.cli import run_cli

    def run():
        result = pretrain(load_config(args.config, args.set))
        print(f"checkpoint: {result.checkpoint}")
        print(f"export: {result.export}")

    run_cli(run)


if __name__ == "__main__":
    main()
