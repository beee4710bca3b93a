"""Checkpoint -> Hugging Face format: discriminator, generator and tokenizer.

    python -m electra_ray.export CHECKPOINT_DIR OUT_DIR [--overwrite]
    python -m electra_ray.export --verify OUT_DIR        # every file against the export's manifest

Writes OUT/discriminator and OUT/generator (each with the tokenizer beside the weights), so that
`ElectraForPreTraining.from_pretrained(OUT/"discriminator")` and
`AutoTokenizer.from_pretrained(OUT/"discriminator")` work with no code of ours; each network's
README.md is its model card (model_card.py: how it was trained, held-out figures, how to load it). A run of the MLM
baseline (train.objective=mlm) has one network, written to OUT/mlm
(`ElectraForMaskedLM.from_pretrained`). Either way the encoder's weights are under `electra.`,
which is what `ElectraForSequenceClassification.from_pretrained` takes (it drops the pre-training
head and adds a new classifier). ZeRO shards are consolidated to fp32 first, whatever the stage.
CHECKPOINT and OUT may be s3:// URLs; OUT appears complete or not at all, with a `_MANIFEST.json`
of every file's sha256 (storage.publish_directory). An existing OUT is replaced only if it is an
earlier export and --overwrite is given; a second export into a local OUT while one runs is
refused. If the disk fills (or a file-size limit is reached), what was written is removed, an
earlier export at OUT is kept, and the command stops with one line. A killed export leaves at most
an unpublished `OUT.partial-*` directory beside OUT, which is never read as an export.
`electra_ray.storage.fetch_directory(URL, DIR)` downloads only a complete, hash-checked export.
Checkpoint files are loaded weights-only (checkpoint.py).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m electra_ray.export`: a bad path is refused before the imports
    from electra_ray.cli import run_cli  # below (torch, transformers: seconds); main() re-reads it
    from electra_ray.export_args import checked_args

    run_cli(lambda: checked_args(sys.argv[1:], __doc__))

import contextlib
import json
import os
from collections.abc import Callable, Iterator

import torch
from tokenizers import Tokenizer

from electra_ray import storage
from electra_ray.checkpoint import (
    CHECKPOINT_TAG,
    RUN_STATE,
    TOKENIZER_DIR,
    disk_full_reason,
    run_state_file,
    safe_loading,
    verify_pickles,
)
from electra_ray.cli import run_cli
from electra_ray.config import Config
from electra_ray.data import tokenizer_from_json
from electra_ray.errors import UserError
from electra_ray.export_args import checked_args
from electra_ray.model import build_pretraining_model
from electra_ray.model_card import run_figures, write_model_cards
from electra_ray.tokenizer import save_tokenizer

# An export's own record: the checkpoint it came from and the pre-training config (evaluate reads it).
EXPORT_METADATA = "electra_ray.json"


def read_run_state(checkpoint_dir: str) -> dict:
    path = run_state_file(checkpoint_dir)
    if not os.path.isfile(path):
        raise UserError(f"{checkpoint_dir} is not an electra-ray checkpoint (no {RUN_STATE})")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        for key in ("config", "vocab_size", "zero_stage"):
            state[key]  # noqa: B018  (a KeyError names what is missing)
        return state
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a readable run state ({type(error).__name__}: {error})") from None


def consolidated_state_dict(checkpoint_dir: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the joint model from a DeepSpeed checkpoint of any ZeRO stage; every
    file is checked and loaded weights-only (checkpoint.safe_loading), zero_to_fp32's too."""
    verify_pickles(checkpoint_dir)
    if zero_stage == 0:
        path = os.path.join(checkpoint_dir, CHECKPOINT_TAG, "mp_rank_00_model_states.pt")
        with safe_loading():
            module = torch.load(path, map_location="cpu", weights_only=True)["module"]
        return {name: tensor.float() for name, tensor in module.items()}
    with safe_loading():
        # Imported in the block: DeepSpeed picks its accelerator when imported, from the
        # DS_ACCELERATOR that safe_loading sets (cpu unless given); and only ZeRO stages >= 1 need it.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=CHECKPOINT_TAG)


def load_pretraining_model(checkpoint_dir: str):
    """(joint model with the checkpoint's weights, Config, tokenizer JSON text)."""
    state = read_run_state(checkpoint_dir)
    cfg = Config.from_dict(state["config"])
    with open(os.path.join(checkpoint_dir, TOKENIZER_DIR, "tokenizer.json")) as f:
        tokenizer_json = f.read()
    _, special = tokenizer_from_json(tokenizer_json)
    model = build_pretraining_model(cfg, state["vocab_size"], special["[PAD]"])
    weights = consolidated_state_dict(checkpoint_dir, state["zero_stage"])
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied / shared tensors may be stored under one name only; anything else missing is an error.
    tensors = model.state_dict(keep_vars=True)
    missing = [k for k in missing if not _is_alias(k, tensors, weights)]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {checkpoint_dir} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model, cfg, tokenizer_json


def _is_alias(name: str, tensors: dict, weights: dict) -> bool:
    """`name` (a key of the model's `tensors`) names a tensor that `weights` holds under another
    name (shared embeddings, tied output layers, TEAMS' shared layers)."""
    return any(tensors[other] is tensors[name] for other in weights if other in tensors)


def export(
    checkpoint: str,
    out: str,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
    measure: Callable[[str], dict] | None = None,
) -> str:
    """Checkpoint (local or s3://) -> HF-format export at `out` (local or s3://), published whole.
    An existing `out` is replaced only if it is an earlier export and `overwrite` is set; another
    command writing the same local `out` meanwhile is refused (storage.OutputBusy). A full disk
    (or file-size limit) is a UserError: what was written is removed, an earlier export is kept.
    `measure(directory)`: held-out figures of the export written there, before it is published,
    for its model cards (pretrain passes its evaluation)."""
    storage.check(checkpoint)
    storage.check_output(out, "export", overwrite)  # before the work: refused outputs cost nothing
    if not storage.is_remote(checkpoint) and not os.path.isdir(checkpoint):
        raise UserError(f"no checkpoint directory at {checkpoint}")
    # Held from here to the publish: two exports into one `out` would both have passed the check
    # above. Checked again under it: another export may have published there meanwhile.
    with storage.exclusive_output(out):
        previous = storage.check_output(out, "export", overwrite, probe=False)
        model, cfg, tokenizer_json, step = load_checkpoint(checkpoint)
        source = checkpoint if storage.is_remote(checkpoint) else os.path.abspath(checkpoint)
        figures = run_figures(checkpoint, step)  # what the run measured at this step, if its records are beside it
        # The staging directory (and all in it) is removed if anything below fails.
        with storage.staging_directory(out) as staging, disk_full_is_a_user_error(out, previous is not None):
            write_export(model, cfg, tokenizer_json, source, staging, step, figures)
            if measure:  # the cards again, with the export's own held-out figures
                write_model_cards(staging, model.exported_networks(), cfg, step, {**figures, **measure(staging)})
            return storage.publish_directory(staging, out, "export", overwrite, progress)


def load_checkpoint(checkpoint: str) -> tuple:
    """(joint model, Config, tokenizer JSON, step) of a checkpoint (local or s3://); a damaged one
    is a UserError."""
    with storage.local_directory(checkpoint) as checkpoint_dir:
        try:
            model, cfg, tokenizer_json = load_pretraining_model(checkpoint_dir)
            step = int(read_run_state(checkpoint_dir).get("step", 0))
        except (UserError, MemoryError, torch.OutOfMemoryError):
            raise
        except (RuntimeError, EOFError, OSError, KeyError, ValueError) as error:  # a truncated or corrupt file
            first_line = (str(error).splitlines() or [""])[0][:300]
            raise UserError(f"cannot read checkpoint {checkpoint}: {type(error).__name__}: {first_line}") from None
    return model, cfg, tokenizer_json, step


@contextlib.contextmanager
def disk_full_is_a_user_error(out: str, replacing: bool) -> Iterator[None]:
    """A write in the block that fails for want of space (a full disk, the file-size limit, a
    quota) becomes one line: safetensors, tokenizers and torch would raise it as a traceback."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        reason = disk_full_reason(error)
        if reason is None:
            raise
        kept = f"the export already at {out} is unchanged" if replacing else "nothing was published"
        detail = (str(error).splitlines() or [""])[0][:200]
        raise UserError(
            f"cannot write the export {out}: {reason} ({type(error).__name__}: {detail}); what was written "
            f"is removed and {kept}: free space (or raise the file-size limit) and export again"
        ) from None


def write_export(
    model, cfg: Config, tokenizer_json: str, checkpoint: str, directory: str, step: int = 0, figures: dict | None = None
) -> None:
    """The networks (each with the tokenizer and its model card, README.md), and the export's own
    record. `step`: the checkpoint's optimizer step; `figures`: held-out figures for the cards."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    networks = model.exported_networks()
    for name, network in networks.items():
        with quiet_progress_bars():
            network.save_pretrained(os.path.join(directory, name))
        save_tokenizer(tokenizer, os.path.join(directory, name), model_max_length=cfg.model.max_position_embeddings)
    write_model_cards(directory, networks, cfg, step, figures)
    with open(os.path.join(directory, EXPORT_METADATA), "w") as f:
        json.dump({"checkpoint": checkpoint, "config": cfg.to_dict()}, f, indent=1)


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """No "Writing model shards" bar of transformers on stderr for a model of one shard: an export's
    output is its result line, or its one-line error."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    def run():
        args = checked_args(argv, __doc__)
        if args.verify:
            manifest = storage.verify_directory(args.verify)
            print(f"verified: {args.verify} ({len(manifest.files)} files, sha256 as its manifest lists)")
            return
        print(f"export: {export(args.checkpoint, args.out, overwrite=args.overwrite)}")

    run_cli(run)


if __name__ == "__main__":
    main()
