"""Fine-tune a pre-trained encoder on a labeled task and measure it, with ELECTRA's recipe.

    python -m electra_ray.finetune --model runs/run-.../export --train train.parquet --eval dev.parquet
    python -m electra_ray.finetune --model EXPORT --train train.tsv --eval dev.tsv --task regression \\
        --text-column sentence1 --pair-column sentence2 --label-column score --epochs 10
    python -m electra_ray.finetune --task qa --model EXPORT --train train.json --eval dev.json --max-seq-len 384

Sequence classification (single sentences or pairs), regression (STS-B style) or, with --task qa,
extractive question answering on SQuAD JSON (finetune_qa.py), on the encoder of an export (the
discriminator; the MLM baseline's masked LM), of any HF ELECTRA directory or of a BERT-layout
encoder directory (converted on load). What differs per task is a kind (finetune_kinds.py). One
run per seed: OUT/seed-N holds the fine-tuned model and its tokenizer (HF format, loadable with
`ElectraForSequenceClassification.from_pretrained`); OUT/metrics.json every seed's scores on the
eval file, their mean, standard deviation and median, and the majority-class baseline. Runs on Ray
Train (--num-workers N data-parallel workers) or in this process (--num-workers 0).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m electra_ray.finetune`: a bad flag is refused before the imports
    from electra_ray.cli import run_cli  # below (torch, transformers, Ray: seconds); main() re-reads it
    from electra_ray.finetune_checks import checked_config

    run_cli(lambda: checked_config(sys.argv[1:], __doc__))

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import time
import typing
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoTokenizer, ElectraConfig, ElectraModel

from electra_ray import storage
from electra_ray.cli import output_directory, run_cli
from electra_ray.config import ScalingConfig
from electra_ray.driver import build_trainer, check_resources, connect_ray
from electra_ray.finetune_checks import checked_config, validate
from electra_ray.finetune_config import FinetuneConfig, FinetuneError
from electra_ray.finetune_kinds import (
    CLASSIFICATION,
    REGRESSION,
    TaskKind,
    load_classifier,
    load_task,
)
from electra_ray.finetune_protocol import (
    chosen_lr,
    constant_loss,
    dev_split,
    is_stuck,
    linear_probe,
    lr_label,
    with_lr,
)
from electra_ray.finetune_qa import QA
from electra_ray.finetune_tagging import TAGGING
from electra_ray.initial_weights import bert_encoder_weights
from electra_ray.optim import lr_lambda, param_groups
from electra_ray.progress import StepProgress
from electra_ray.tasks import TaskDataError
from electra_ray.tokenizer import read_tokenizer_json, save_tokenizer
from electra_ray.train import quiet_report_logging

# Every task kind, by its --task name (a new kind: a TaskKind subclass, added here; see finetune_kinds.py).
KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (CLASSIFICATION, REGRESSION, QA, TAGGING)}
# load_classifier, load_task: this module's names for them since before the kinds were split out.
__all__ = ["FinetuneConfig", "FinetuneError", "KINDS", "finetune", "load_classifier", "load_task", "main", "validate"]


@dataclass
class FinetuneResult:
    out: str
    metrics: dict  # the content of OUT/metrics.json


def model_directory(path: str) -> str:
    """The Hugging Face directory to fine-tune: PATH itself when it holds a model, else the encoder
    network of an electra-ray export: discriminator/ (ELECTRA) or mlm/ (the MLM baseline)."""
    for candidate in (path, os.path.join(path, "discriminator"), os.path.join(path, "mlm")):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise FinetuneError(
        f"no model at {path}: expected a Hugging Face model directory (config.json) or an "
        f"electra-ray export (discriminator/ or mlm/)"
    )


# The settings of a BERT config that an ElectraConfig takes as they are (the rest: ELECTRA's defaults).
BERT_SETTINGS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)


def read_model_config(model_dir: str) -> dict:
    """A model directory's config.json as a mapping; anything else is one line naming the file."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise FinetuneError(f"model config {path} cannot be read: {error}") from None
    if not isinstance(config, dict):
        raise FinetuneError(f"model config {path} is not a JSON object")
    return config


def electra_encoder(model_dir: str, out: str) -> str:
    """model_dir itself when it holds an ELECTRA model; a BERT-layout encoder (model_type bert, as
    the MiniLM package) converted to ELECTRA in OUT/encoder: the same modules under ELECTRA's names
    (initial_weights' conversion, as `model.init_from` does for pre-training), embedding_size =
    hidden_size, and its tokenizer without built-in padding or truncation."""
    config = read_model_config(model_dir)
    if config.get("model_type") != "bert":
        return model_dir
    target = os.path.join(out, "encoder")
    shape = {key: config[key] for key in BERT_SETTINGS if key in config}
    encoder = ElectraModel(ElectraConfig(**shape, embedding_size=config["hidden_size"]))
    weights = bert_encoder_weights(model_dir)
    missing, unexpected = encoder.load_state_dict({k.removeprefix("electra."): v for k, v in weights.items()}, False)
    if missing or unexpected:
        raise FinetuneError(
            f"model {model_dir}: its BERT weights do not fit an ELECTRA encoder of its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    encoder.save_pretrained(target)
    save_tokenizer(Tokenizer.from_str(read_tokenizer_json(model_dir)), target, config["max_position_embeddings"])
    return target


# -- model and optimizer -------------------------------------------------------------------------


def layer_depth(name: str, num_layers: int) -> int:
    """0 for the embeddings (and their projection), i + 1 for encoder layer i, num_layers + 1 for
    the task head. Layer numbers are parsed whole, so layer 1 never matches layer 10."""
    match = re.search(r"\.encoder\.layer\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return 0 if name.startswith("electra.embeddings") else num_layers + 1


def layer_param_groups(model, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """AdamW groups with layer-wise LR decay (ELECTRA's fine-tuning; the intended rates of
    google-research/electra#51): depth d gets lr x layer_decay^(num_layers + 1 - d). Weight decay
    as in pre-training (none on biases and LayerNorm)."""
    num_layers = model.config.num_hidden_layers
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in param_groups(model, weight_decay):
        by_depth = defaultdict(list)
        for param in group["params"]:
            by_depth[layer_depth(names[id(param)], num_layers)].append(param)
        groups += [
            {
                "params": params,
                "weight_decay": group["weight_decay"],
                "lr": lr * layer_decay ** (num_layers + 1 - depth),
            }
            for depth, params in sorted(by_depth.items())
        ]
    return groups


def build_optimizer(model, cfg: FinetuneConfig, total_steps: int):
    """AdamW over the layer-wise groups, and the schedule: warm-up for `warmup` of the steps, then
    linear decay to 0 (the pre-training schedule)."""
    optimizer = torch.optim.AdamW(
        layer_param_groups(model, cfg.lr, cfg.layer_decay, cfg.weight_decay), lr=cfg.lr, eps=cfg.adam_eps
    )
    schedule = lr_lambda(int(cfg.warmup * total_steps), total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


# -- training (the same loop in this process and on each Ray Train worker) -----------------------


@dataclass
class SeedArgs:
    """What a fine-tuning run of one seed gets: in this process the argument of train_worker, on
    Ray Train every worker's train_loop_config (as `vars(args)`)."""

    config: FinetuneConfig
    train: typing.Any  # the kind's training data (TaskKind.load's first value)
    labels: list | None  # the classes in index order; None: regression and kinds without classes
    seed: int
    model_dir: str  # the pre-trained encoder's HF directory
    out: str  # in this process: where the fine-tuned model is saved
    on_ray: bool = False  # a Ray Train worker (rank 0 reports the model as the checkpoint)
    num_threads: int = 0  # torch threads; 0: the default


def train_worker(loop_config: dict) -> list[dict]:
    """Fine-tune one seed (`loop_config`: a SeedArgs as `vars(args)`). In this process, saves the
    model to args.out; on Ray Train, rank 0 reports it as the checkpoint. Returns the per-epoch
    training losses."""
    args = SeedArgs(**loop_config)
    cfg, data = args.config, args.train
    rank, world, device = 0, 1, torch.device("cuda" if cfg.use_gpu else "cpu")
    if args.on_ray:
        quiet_report_logging()
        rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
        device = ray.train.torch.get_device() if cfg.use_gpu else device
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)  # the same head on every rank
    kind = KINDS[cfg.task]
    model = kind.model(args.model_dir, cfg, args.labels).to(device)
    steps_per_epoch = math.ceil(kind.size(data) / cfg.batch_size)
    optimizer, scheduler = build_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    if args.on_ray:
        model = ray.train.torch.prepare_model(model)  # DDP when world > 1
    order_rng = np.random.default_rng(args.seed)  # the same example order on every rank; each takes its part
    per_rank = cfg.batch_size // world
    history = []
    # Rank 0 shows the run's progress (a bar on a terminal, ~10 lines in a log).
    progress = StepProgress(cfg.epochs * steps_per_epoch, f"seed {args.seed}, lr {cfg.lr:g}") if rank == 0 else None
    for epoch in range(cfg.epochs):
        model.train()
        # Every step has batch_size examples: the last one is completed from the epoch's start.
        steps = np.resize(order_rng.permutation(kind.size(data)), steps_per_epoch * cfg.batch_size)
        loss_sum = 0.0
        for index in steps.reshape(steps_per_epoch, cfg.batch_size):
            loss = model(**kind.batch(data, index[rank * per_rank : (rank + 1) * per_rank], device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item()
            if progress is not None:
                progress.update(loss.item())
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch})
        if args.on_ray and epoch + 1 < cfg.epochs:
            ray.train.report(history[-1])
    if progress is not None:
        progress.close()
    save_trained(getattr(model, "module", model), args.out, args.on_ray, rank, history[-1])
    return history


def save_trained(model, out: str, on_ray: bool, rank: int, metrics: dict) -> None:
    """In this process: the model saved to `out`; on Ray Train: rank 0's model reported as the
    checkpoint, with the last epoch's `metrics` (every rank reports)."""
    if not on_ray:
        model.save_pretrained(out)
        return
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            model.save_pretrained(directory)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def scaling(cfg: FinetuneConfig) -> ScalingConfig:
    """The Ray Train workers of a fine-tune: num_workers of one CPU (and, with use_gpu, a GPU) each."""
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu)


def train_seed(
    cfg: FinetuneConfig,
    model_dir: str,
    train,
    labels: list | None,
    seed: int,
    seed_dir: str,
    num_threads: int = 0,
) -> float:
    """One fine-tuning run, in this process or on Ray Train; the model ends in seed_dir. Returns
    the last epoch's training loss."""
    args = SeedArgs(
        config=cfg,
        train=train,
        labels=labels,
        seed=seed,
        model_dir=os.path.abspath(model_dir),
        out=seed_dir,
        on_ray=cfg.num_workers > 0,
        num_threads=num_threads,
    )
    if not args.on_ray:
        return train_worker(vars(args))[-1]["train_loss"]
    storage_dir = os.path.join(os.path.dirname(seed_dir), "ray-train")
    trainer = build_trainer(
        train_worker, vars(args), scaling(cfg), name=os.path.basename(seed_dir), storage_dir=storage_dir
    )
    result = trainer.fit()
    result.checkpoint.to_directory(seed_dir)
    shutil.rmtree(storage_dir, ignore_errors=True)  # the model is in seed_dir now
    return result.metrics["train_loss"]


# -- evaluation ----------------------------------------------------------------------------------


def summarize(runs: list[dict], names: tuple[str, ...]) -> dict[str, dict]:
    """Mean, standard deviation (ddof=1: a sample of seeds) and median of each metric over seeds,
    and how many of those seeds' runs were stuck at the constant predictor (counted in, flagged)."""
    summary = {}
    for name in names:
        values = np.array([run["metrics"][name] for run in runs])
        summary[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "median": float(np.median(values)),
            "values": values.tolist(),
            "stuck": sum(bool(run.get("stuck")) for run in runs),
        }
    return summary


# -- the verb ------------------------------------------------------------------------------------


@dataclass
class SeedData:
    """What every seed's run reads: the encoder, its tokenizer and the task's data."""

    model_dir: str
    tokenizer: typing.Any
    train: typing.Any
    evaluation: typing.Any
    labels: list | None
    dev: typing.Any = None  # the split held apart from the training file (lr_grid, probe); None: none
    constant_loss: float | None = None  # the constant predictor's training loss; None: not known


def run_seed(cfg: FinetuneConfig, data: SeedData, seed: int, out: str, num_threads: int) -> dict:
    """Fine-tune with one seed, save the model with its tokenizer, score it on the eval data (and
    on the dev split, when there is one); flag it when it ended at the constant predictor's loss."""
    start = time.perf_counter()
    seed_dir = os.path.join(out, f"seed-{seed}")
    train_loss = train_seed(cfg, data.model_dir, data.train, data.labels, seed, seed_dir, num_threads)
    data.tokenizer.save_pretrained(seed_dir)
    kind = KINDS[cfg.task]
    model = kind.model_class.from_pretrained(seed_dir)
    metrics = kind.evaluate(model, data.evaluation, data.labels, cfg)
    run = {
        "seed": seed,
        "lr": cfg.lr,
        "model": seed_dir,
        "train_loss": train_loss,
        "stuck": is_stuck(train_loss, data.constant_loss),
        "metrics": metrics,
    }
    if data.dev is not None:
        run["dev_metrics"] = kind.evaluate(model, data.dev, data.labels, cfg)
    run["seconds"] = time.perf_counter() - start
    print(
        f"seed {seed}, lr {cfg.lr:g}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        + f" | train loss {train_loss:.4f}"
        + (" (STUCK at the constant predictor's loss)" if run["stuck"] else "")
        + f" | {run['seconds']:.0f}s",
        flush=True,
    )
    return run


def search_lr(cfg: FinetuneConfig, data: SeedData, out: str, num_threads: int) -> tuple[float, dict, dict]:
    """The first seed fine-tuned at each rate of cfg.lr_grid, scored on the dev split. Returns (the
    rate with the best dev score, that run, the search's record). The chosen run's model becomes
    OUT/seed-N; the other rates' models, written under OUT/lr-search, are removed."""
    kind, metric = KINDS[cfg.task], cfg.metric or KINDS[cfg.task].summary_metric(cfg)
    sign = -1.0 if metric == "mse" else 1.0  # lower is better
    seed, search_dir = cfg.seeds[0], os.path.join(out, "lr-search")
    trials = {
        lr: run_seed(with_lr(cfg, lr), data, seed, os.path.join(search_dir, lr_label(lr)), num_threads)
        for lr in cfg.lr_grid
    }
    lr = chosen_lr({rate: sign * run["dev_metrics"][metric] for rate, run in trials.items()})
    chosen = trials[lr]
    os.replace(chosen["model"], os.path.join(out, f"seed-{seed}"))
    chosen["model"] = os.path.join(out, f"seed-{seed}")
    shutil.rmtree(search_dir)  # only this run's own models are in it
    record = {
        "grid": list(cfg.lr_grid),
        "seed": seed,
        "dev_metric": metric,
        "dev_examples": kind.size(data.dev),
        "chosen": lr,
        "trials": [
            {"lr": rate, "dev": run["dev_metrics"][metric], "train_loss": run["train_loss"], "stuck": run["stuck"]}
            for rate, run in trials.items()
        ],
    }
    print(f"lr search on {record['dev_examples']} dev examples ({metric}): chose {lr:g}", flush=True)
    return lr, chosen, record


def train_seeds(cfg: FinetuneConfig, data: SeedData, out: str, num_threads: int) -> tuple[list[dict], dict | None]:
    """Every seed's run, at cfg.lr or, with cfg.lr_grid, at the rate the first seed chose on dev."""
    if not cfg.lr_grid:
        return [run_seed(cfg, data, seed, out, num_threads) for seed in cfg.seeds], None
    lr, first, record = search_lr(cfg, data, out, num_threads)
    return [first] + [run_seed(with_lr(cfg, lr), data, seed, out, num_threads) for seed in cfg.seeds[1:]], record


def check_out(out: str) -> None:
    """A fine-tuning writes into a new or empty --out only: a fetched model would merge with an
    earlier one there, and results would be overwritten."""
    if not os.path.lexists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return
    if os.path.isfile(os.path.join(out, "metrics.json")):
        raise FinetuneError(
            f"--out {out} already holds a fine-tuning's results: nothing was written; choose a new "
            f"--out (results are never overwritten)"
        )
    raise FinetuneError(
        f"--out {out} already exists and is not a fine-tuning output: nothing was written; choose a new --out"
    )


def frozen_encoder(model_dir: str) -> ElectraModel:
    """The pre-trained encoder alone (the discriminator's head, unused by a probe, left unread)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "unexpected: discriminator_predictions.*" is the point here
    try:
        return ElectraModel.from_pretrained(model_dir)
    finally:
        transformers.logging.set_verbosity(verbosity)


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    validate(cfg)
    for path in (cfg.train, cfg.eval):  # before --out is checked: the cheap mistakes first
        if not storage.exists(path):
            raise TaskDataError(f"task file not found: {path}")
    out = output_directory(cfg.out, "finetune")
    with storage.exclusive_output(out):  # a second fine-tune into the same --out is refused
        check_out(out)
        return finetune_into(cfg, out)


def finetune_into(cfg: FinetuneConfig, out: str) -> FinetuneResult:
    """finetune's work, once `out` is checked and held."""
    model = cfg.model
    if storage.is_remote(model):  # an export published to S3: downloaded, its manifest checked
        model = storage.fetch_directory(model, os.path.join(out, "pretrained"))
    model_dir = model_directory(model)
    encoder_dir = electra_encoder(model_dir, out)  # what the workers load: model_dir, or it converted
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    kind = KINDS[cfg.task]
    positions = AutoConfig.from_pretrained(encoder_dir).max_position_embeddings
    cfg = kind.fit_window(cfg, min(cfg.max_seq_len or kind.default_max_seq_len, positions))
    max_len = cfg.max_seq_len
    train, evaluation, labels = kind.load(cfg, tokenizer, max_len)
    dev = None
    if cfg.lr_grid or cfg.probe:  # held apart from the training examples: --eval is only ever reported
        train, dev = dev_split(train, cfg.dev_fraction)
    data = SeedData(
        encoder_dir,
        tokenizer,
        train,
        evaluation,
        labels,
        dev,
        constant_loss(train, labels) if cfg.task == "classification" else None,
    )
    os.makedirs(out, exist_ok=True)
    num_threads = cfg.threads
    if cfg.num_workers:
        num_threads = cfg.threads or connect_ray(scaling(cfg))
        check_resources(scaling(cfg))
    print(
        f"fine-tuning {model_dir} on {kind.size(train)} examples ({cfg.train}), evaluating on "
        f"{kind.size(evaluation)} ({cfg.eval}); seeds {list(cfg.seeds)}",
        flush=True,
    )
    previous_threads = torch.get_num_threads()  # in this process, cfg.threads holds only while we run
    try:
        runs, lr_search = train_seeds(cfg, data, out, num_threads)
        probe = linear_probe(frozen_encoder(encoder_dir), train, dev, evaluation) if cfg.probe else None
    finally:
        torch.set_num_threads(previous_threads)
    result = {
        "model": model_dir,
        **({"converted": encoder_dir} if encoder_dir != model_dir else {}),  # a BERT-layout --model
        "train": cfg.train,
        "eval": cfg.eval,
        "task": cfg.task,
        "labels": labels,
        "metric": cfg.metric or kind.summary_metric(cfg),
        "train_examples": kind.size(train),
        "eval_examples": kind.size(evaluation),
        **kind.describe(train, evaluation),
        "majority_baseline": kind.baseline(train, evaluation, labels),
        "lr": runs[0]["lr"],  # the rate every seed ran at: cfg.lr, or the one the grid chose
        "lr_search": lr_search,
        "constant_loss": data.constant_loss,
        "probe": probe,
        "summary": summarize(runs, kind.metrics),
        "runs": runs,
        "config": dataclasses.asdict(cfg),
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(format_summary(result), flush=True)
    return FinetuneResult(out, result)


def finetune_metrics(cfg: FinetuneConfig) -> dict:
    """finetune(cfg)'s metrics: what a Ray task running a fine-tune returns (compare, tune)."""
    return finetune(cfg).metrics


def finetune_task(cfg: FinetuneConfig) -> ray.ObjectRef:
    """finetune_metrics(cfg) as a Ray task of its own (a sweep's trial, compare's checkpoints; cfg
    runs in that task: num_workers 0), with max(1, cfg.threads) CPUs and, with cfg.use_gpu, a GPU.
    Scheduled by Ray's default strategy: never in the caller's placement group (a Tune trial's
    holds only its training workers). Returns the task's reference; ray.get gives the metrics."""
    task = ray.remote(num_cpus=max(1, cfg.threads), num_gpus=1 if cfg.use_gpu else 0)(finetune_metrics)
    return task.options(scheduling_strategy="DEFAULT").remote(cfg)


def format_summary(result: dict) -> str:
    metric, stats = result["metric"], result["summary"][result["metric"]]
    stuck = stats.get("stuck", 0)
    line = (
        f"{metric} {stats['mean']:.4f} ± {stats['std']:.4f} (median {stats['median']:.4f}, "
        f"{len(stats['values'])} seeds{f', {stuck} STUCK at the constant predictor' if stuck else ''}; "
        f"lr {result.get('lr', result['config']['lr']):g}" + (" chosen on dev" if result.get("lr_search") else "") + ")"
    )
    if result["majority_baseline"] and metric in result["majority_baseline"]:
        line += f"; majority class: {result['majority_baseline'][metric]:.4f}"
    if result.get("probe"):
        mean, cls = result["probe"]["mean"]["accuracy"], result["probe"]["cls"]["accuracy"]
        line += f"; linear probe accuracy: mean-pooled {mean:.4f}, [CLS] {cls:.4f}"
    return line


def main(argv: list[str] | None = None) -> None:
    def run():
        result = finetune(checked_config(argv, __doc__))
        print(f"metrics: {os.path.join(result.out, 'metrics.json')}")

    run_cli(run)


if __name__ == "__main__":
    main()
