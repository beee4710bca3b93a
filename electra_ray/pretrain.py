"""Pre-train ELECTRA on Ray: Parquet -> Ray Data -> Ray Train + DeepSpeed -> HF export.

    python -m electra_ray.pretrain                              # tiny model, shipped corpus, local Ray
    python -m electra_ray.pretrain --config configs/small.yaml --set train.max_steps=200 scaling.num_workers=2

Joins the Ray cluster named by scaling.ray_address / RAY_ADDRESS, else starts Ray in-process.
Ends with `checkpoint: PATH` and `export: PATH`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow.fs as pafs
import ray
import ray.data
import torch

from electra_ray import storage
from electra_ray.cli import add_config_arguments, run_cli, verb_parser
from electra_ray.config import Config, describe_options, load_config
from electra_ray.data import build_dataset, load_sequences, open_corpus, tokenizer_from_json
from electra_ray.driver import (
    build_trainer,
    check_resources,
    connect_ray,
    fit_stoppable,
    prepare_tokenizer,
    run_name,
    training_texts,
)
from electra_ray.errors import UserError
from electra_ray.evaluate import FixedCorruption, evaluate_export, fixed_corruption, format_report
from electra_ray.export import export
from electra_ray.meter import peak_flops
from electra_ray.metrics import MetricsLogger, read_history, training_error
from electra_ray.tokenizer import read_tokenizer_json
from electra_ray.train import StopRequest, WorkerArgs, train_loop_per_worker

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
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.yaml")


@dataclass
class PretrainResult:
    run_dir: str  # local: metrics.jsonl, TensorBoard, eval.json, a copy of the export
    checkpoint: str  # the latest checkpoint: a local path or an s3:// URL
    export: str  # the HF-format export: a local path or an s3:// URL ("" if not exported)
    history: list[dict]  # every report of the workers (also in run_dir/metrics.jsonl)
    evaluation: dict  # held-out measurements of the export (evaluate.py)
    stopped: bool = False  # stopped early by SIGTERM / Ctrl-C, after saving a checkpoint


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
    with storage.s3_errors(path):
        return bool(filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True)))


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


def check_before_start(cfg: Config, export_and_evaluate: bool) -> tuple[bool, str]:
    """Fail fast, before Ray starts and before anything is written: a corpus, tokenizer, storage or
    run directory that cannot be used. Names the run if it has no name. Returns (whether this
    continues an existing run, the given tokenizer's JSON or "")."""
    open_corpus(cfg.data.path, cfg.data.text_column)
    if cfg.data.tokenizer:
        storage.check(cfg.data.tokenizer)
    storage.check(cfg.output.dir, write=True)
    if not cfg.output.name:
        cfg.output.name = run_name("run")
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
    return continuing, given_tokenizer


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
        stop_actor=ray.remote(num_cpus=0)(StopRequest).remote(),
        heldout=heldout_corruption(cfg, tokenizer_json),
    )


def pretrain(cfg: Config, export_and_evaluate: bool = True, callbacks: tuple = (), threads: int = 0) -> PretrainResult:
    """Pre-train as configured. `callbacks`: more Ray Train callbacks (a Tune trial passes Tune's);
    `threads`: torch threads per worker on a single-node Ray (default: connect_ray's choice)."""
    continuing, given_tokenizer = check_before_start(cfg, export_and_evaluate)
    default_threads = connect_ray(cfg.scaling)
    check_resources(cfg.scaling)
    # Checks done: from here on the run directory is written.
    run_dir = os.path.abspath(cfg.local_run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if not storage.is_remote(cfg.run_dir):
        os.makedirs(cfg.run_dir, exist_ok=True)
    storage.write_text(storage.join(cfg.run_dir, CONFIG_FILE), json.dumps(cfg.to_dict(), indent=1))  # for --resume
    tokenizer_json = given_tokenizer or prepare_tokenizer(cfg, run_dir)
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
        callbacks=(MetricsLogger(run_dir), *callbacks),
        datasets={"train": build_dataset(cfg.data, tokenizer_json, "train", cfg.scaling.data_resource)},
    )
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
        return PretrainResult(run_dir, checkpoint, "", read_history(run_dir), {}, stopped=True)
    if not export_and_evaluate:
        return PretrainResult(run_dir, checkpoint, "", read_history(run_dir), {})
    export_dir, evaluation = export_and_publish(cfg, checkpoint, run_dir)
    return PretrainResult(run_dir, checkpoint, export_dir, read_history(run_dir), evaluation)


def export_and_publish(cfg: Config, checkpoint: str, run_dir: str) -> tuple[str, dict]:
    """Export the final checkpoint into the run's own directory, evaluate it (eval.json), and
    publish export and records to the run's s3:// prefix if it has one (the local directory may
    not outlive the machine). Returns (the export's path or URL, the evaluation)."""
    export_dir = export(checkpoint, os.path.join(run_dir, "export"), overwrite=True)  # the run's own
    evaluation = evaluate_export(export_dir)
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(evaluation, f, indent=1)
    print(format_report(evaluation), flush=True)
    if storage.is_remote(cfg.run_dir):
        export_dir = storage.publish_directory(export_dir, storage.join(cfg.run_dir, "export"), overwrite=True)
        for name in ("metrics.jsonl", "eval.json"):
            with open(os.path.join(run_dir, name)) as f:
                storage.write_text(storage.join(cfg.run_dir, name), f.read())
    return export_dir, evaluation


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
    parser = verb_parser("pretrain", __doc__, "config keys (override any with --set KEY=VALUE):\n" + describe_options())
    add_config_arguments(
        parser,
        default=DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None,
        help="YAML config file (default: configs/tiny.yaml)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped run (its directory or s3:// prefix, "
        "output.dir/output.name) with the config it was started with; --set still applies",
    )
    args = parser.parse_args(argv)

    def run():
        cfg = resume_config(args.resume, args.set) if args.resume else load_config(args.config, args.set)
        result = pretrain(cfg)
        print(f"checkpoint: {result.checkpoint}")
        if result.export:
            print(f"export: {result.export}")

    run_cli(run)


if __name__ == "__main__":
    main()
