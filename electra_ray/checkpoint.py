"""What a checkpoint holds, and finding a readable one to resume from.

A checkpoint is one directory, written by every rank and persisted by Ray Train to
`output.dir/NAME/checkpoint_<time>/`:

    model/             DeepSpeed's checkpoint: each rank's ZeRO shard of weights and optimizer
                       state, the LR scheduler, DeepSpeed's step counters
    run_state.json     config, step, epoch, `consumed` (micro-batches of the epoch already trained
                       on: the data position), vocabulary size, ZeRO stage, world size
                       (`electra_ray.json` in checkpoints of earlier versions: still read)
    rng_rank{r}.pt     rank r's random streams: masking (numpy), sampling (torch generator), and
                       torch's global one (dropout)
    tokenizer/         tokenizer.json

With these a resumed run sees the same batches, masks, samples and dropout as an uninterrupted
one. Ray Train registers a checkpoint only after it is fully persisted, so an interrupted save
never becomes the latest; one that is registered but cannot be read (truncated, corrupted) is
skipped at resume, with a warning, for the one before it.

Loading is safe against tampered files: a checkpoint in shared storage can be written by others,
and unpickling runs whatever code a pickle names. Every torch file of a checkpoint is loaded with
torch's weights-only unpickler (tensors, plain containers and the few DeepSpeed classes below),
DeepSpeed's own loader and `zero_to_fp32` included (`safe_loading`); a file that needs anything else
is refused before any of the checkpoint is used.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import json
import os
import pickle
import posixpath
import re

import pyarrow.fs as pafs
import torch
import torch.distributed as dist

from electra_ray.errors import TrainingError, UserError

CHECKPOINT_TAG = "model"  # DeepSpeed's tag directory inside a checkpoint
RUN_STATE = "run_state.json"  # config, step, data position, vocabulary: what export and resume read
# The run state's name before exports took `electra_ray.json` for their metadata (another schema).
LEGACY_RUN_STATE = "electra_ray.json"
TOKENIZER_DIR = "tokenizer"
# What DeepSpeed pickles into its ZeRO 1-3 optimizer states beyond tensors and plain containers
# (found by torch.serialization.get_unsafe_globals_in_checkpoint on checkpoints of every stage).
DEEPSPEED_CLASSES = (
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",  # ZeRO 1-3 under train.precision=fp16
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)


class UnsafeCheckpointError(UserError):
    """A checkpoint file would run code or build objects outside the allowed list when loaded."""


def _allowed_classes() -> list:
    allowed = []
    for name in DEEPSPEED_CLASSES:
        module, _, attribute = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):  # a DeepSpeed without it never pickles it
            allowed.append(getattr(importlib.import_module(module), attribute))
    return allowed


@contextlib.contextmanager
def safe_loading():
    """Every torch.load in the block is weights-only, also where the caller (DeepSpeed's checkpoint
    engine, zero_to_fp32) asks for weights_only=False: torch honours TORCH_FORCE_WEIGHTS_ONLY_LOAD
    over the argument."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_allowed_classes()):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def verify_pickles(directory: str) -> None:
    """Refuse a checkpoint directory any of whose torch files needs more than the weights-only
    unpickler allows; nothing in it is executed. The tensors are memory-mapped, not read."""
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.pt"), recursive=True)):
        try:
            with safe_loading():
                try:
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as error:
                    if "mmap" not in str(error):
                        raise
                    # torch.save's legacy (non-zip) format cannot be memory-mapped: read it whole,
                    # still weights-only.
                    torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            found = re.search(r"WeightsUnpickler error: (.*?)(?: was not an allowed global|\. |$)", str(error), re.M)
            reason = found.group(1) if found else "unsafe pickle"
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it needs objects a checkpoint never holds ({reason}); "
                f"was it tampered with? Checkpoint storage must be writable only by people you trust"
            ) from None
        # Anything else (a truncated file, not a torch file) is unreadable, and nothing in it ran:
        # the caller treats it as such (resume falls back to the previous checkpoint).


def run_state_file(directory: str) -> str:
    """The path of a checkpoint's run state: RUN_STATE, or LEGACY_RUN_STATE in an older checkpoint."""
    legacy = os.path.join(directory, LEGACY_RUN_STATE)
    current = os.path.join(directory, RUN_STATE)
    return legacy if not os.path.exists(current) and os.path.exists(legacy) else current


def load_rng_state(path: str) -> dict:
    with safe_loading():
        return torch.load(path, map_location="cpu", weights_only=True)


def save(directory: str, engine, run_state: dict, rng_state: dict, rank: int, tokenizer_json: str) -> None:
    engine.save_checkpoint(directory, tag=CHECKPOINT_TAG)  # every rank writes its shard
    torch.save(rng_state, os.path.join(directory, f"rng_rank{rank}.pt"))
    if rank == 0:
        with open(os.path.join(directory, RUN_STATE), "w") as f:
            json.dump(run_state, f, indent=1)
        os.makedirs(os.path.join(directory, TOKENIZER_DIR))
        with open(os.path.join(directory, TOKENIZER_DIR, "tokenizer.json"), "w") as f:
            f.write(tokenizer_json)


def newest_first(latest) -> list:
    """The latest registered checkpoint, then the older ones beside it (newest first)."""
    import ray.train  # here: export reads checkpoints without Ray, and Ray Train costs seconds to import

    parent = posixpath.dirname(latest.path.rstrip("/"))
    siblings = latest.filesystem.get_file_info(pafs.FileSelector(parent))
    older = sorted(
        (
            info.path
            for info in siblings
            if info.type == pafs.FileType.Directory
            and posixpath.basename(info.path).startswith("checkpoint_")
            and info.path < latest.path
        ),
        reverse=True,
    )
    return [latest] + [ray.train.Checkpoint(path, filesystem=latest.filesystem) for path in older]


def restore(engine, latest, rank: int, world: int, device: torch.device) -> dict:
    """Load the newest checkpoint every rank can read into `engine`; returns its run state with
    this rank's random states under "rng"."""
    tried = []
    for candidate in newest_first(latest):
        state, error = None, None
        try:
            with candidate.as_directory() as directory:
                # Every rank checks every file, so all agree to refuse (an error, never a retry).
                verify_pickles(directory)
                with open(run_state_file(directory)) as f:
                    state = json.load(f)
                state["rng"] = load_rng_state(os.path.join(directory, f"rng_rank{rank}.pt"))
                with safe_loading():
                    loaded = engine.load_checkpoint(directory, tag=CHECKPOINT_TAG)[0]
                if loaded is None:
                    raise FileNotFoundError(f"no DeepSpeed checkpoint '{CHECKPOINT_TAG}' in it")
        except UnsafeCheckpointError as refused:
            raise TrainingError(str(refused)) from None
        except Exception as failure:  # a truncated file, a missing shard, bad JSON: this one is unusable
            state, error = None, failure
        readable = torch.tensor([0.0 if state is None else 1.0], device=device)
        if world > 1:  # every rank must resume from the same checkpoint
            dist.all_reduce(readable, op=dist.ReduceOp.MIN)
        if readable.item():
            if tried and rank == 0:
                print(f"resuming from the previous checkpoint {candidate.path}", flush=True)
            return state
        tried.append(candidate.path)
        if error is not None:
            print(
                f"warning: checkpoint {candidate.path} cannot be read on rank {rank} "
                f"({type(error).__name__}: {str(error)[:200]}); skipping it",
                flush=True,
            )
    raise TrainingError(f"no readable checkpoint to resume from; tried {', '.join(tried)}")
