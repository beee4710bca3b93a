"""Pre-train ELECTRA on Ray: Parquet -> Ray Data -> Ray Train + DeepSpeed -> HF export.

    python -m electra_ray.pretrain                              # tiny model, shipped corpus, local Ray
    python -m electra_ray.pretrain --config configs/small.yaml --set train.max_steps=200 scaling.num_workers=2

Joins the Ray cluster named by scaling.ray_address / RAY_ADDRESS, else starts Ray in-process.
Ends with `checkpoint: PATH` and `export: PATH`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from electra_ray import initial_weights, storage, trackers
from electra_ray.cli import add_config_arguments, run_cli, run_name, verb_parser
from electra_ray.config import CONFIG_FILE, SHIPPED_CONFIGS, Config, describe_options, given_keys, load_config
from electra_ray.documents import open_corpus, training_texts
from electra_ray.ds_config import check_deepspeed_config
from electra_ray.errors import UserError
from electra_ray.tokenizer import read_tokenizer_json

if TYPE_CHECKING:
    from electra_ray.launch import PretrainResult

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
# Package data (config.SHIPPED_CONFIGS): an installed package finds it as a checkout does.
DEFAULT_CONFIG = os.path.join(SHIPPED_CONFIGS, "tiny.yaml")


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


def check_before_start(cfg: Config, export_and_evaluate: bool) -> tuple[bool, str]:
    """Fail fast, before Ray starts and before anything is written: a corpus, tokenizer, storage or
    run directory that cannot be used. Names the run if it has no name. Returns (whether this
    continues an existing run, the given tokenizer's JSON or "")."""
    open_corpus(cfg.data.path, cfg.data.text_column)
    source = initial_weights.resolve(cfg) if cfg.model.init_from else None  # sets the model's shape
    if cfg.data.tokenizer:
        storage.check(cfg.data.tokenizer)
    check_deepspeed_config(cfg)  # train.deepspeed: readable, no conflicts, accepted by DeepSpeed
    trackers.check(cfg.output)  # mlflow / wandb installed, the MLflow server answers
    storage.check(cfg.output.dir, write=True)
    if not cfg.output.name:
        cfg.output.name = run_name("run")
    storage.check(cfg.local_run_dir, write=True)  # metrics, the tokenizer: a file in the way is one line
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
    tokenizer_dir = source.tokenizer_dir if source else cfg.data.tokenizer
    given_tokenizer = read_tokenizer_json(tokenizer_dir) if tokenizer_dir else ""
    if not given_tokenizer:
        training_texts(cfg.data)
    else:  # a corpus that fills no batch; with a tokenizer still to train, launch checks it after
        from electra_ray.data import check_fills_a_batch  # imports Ray: only once the cheap checks passed

        check_fills_a_batch(cfg.data, given_tokenizer, cfg.micro_batch, cfg.scaling.num_workers)
    return continuing, given_tokenizer


def pretrain(cfg: Config, export_and_evaluate: bool = True, callbacks: tuple = (), threads: int = 0) -> PretrainResult:
    """Pre-train as configured (launch.run_pretraining, after the checks). `callbacks`: more Ray
    Train callbacks (a Tune trial passes Tune's); `threads`: torch threads per worker on a
    single-node Ray (default: driver.connect_ray's choice)."""
    continuing, given_tokenizer = check_before_start(cfg, export_and_evaluate)
    # Imported only now: bad input is refused before torch, transformers, DeepSpeed and Ray load
    # (in ~1 s, not ~6 s of imports).
    from electra_ray.launch import run_pretraining

    return run_pretraining(cfg, given_tokenizer, export_and_evaluate, callbacks, threads)


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
    keys = "config keys, with the values of the default --config (override any with --set KEY=VALUE):\n"
    parser = verb_parser("pretrain", __doc__, keys + describe_options(load_config(DEFAULT_CONFIG)))
    add_config_arguments(parser, default=DEFAULT_CONFIG, help=f"YAML config file (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped run (its directory or s3:// prefix, "
        "output.dir/output.name) with the config it was started with; --set still applies",
    )
    args = parser.parse_args(argv)

    def run():
        if args.resume:
            cfg = resume_config(args.resume, args.set)
        else:
            cfg = load_config(args.config, args.set)
            if cfg.model.init_from:  # the weights' shape replaces the default file's, not the keys given
                explicit = given_keys(None if args.config == DEFAULT_CONFIG else args.config, args.set)
                initial_weights.resolve(cfg, explicit)
        result = pretrain(cfg)
        print(f"checkpoint: {result.checkpoint}")
        if result.export:
            print(f"export: {result.export}")

    run_cli(run)


if __name__ == "__main__":
    main()
