"""What a checkpoint holds, and finding a readable one to resume from.

A checkpoint is one directory, written by every rank and persisted by Ray Train to
`output.dir/NAME/checkpoint_<time>/`:

    model/             DeepSpeed's checkpoint: each rank's ZeRO shard of weights and optimizer
                       state, the LR scheduler, DeepSpeed's step counters
    electra_ray.json   config, step, epoch, `consumed` (micro-batches of the epoch already trained
                       on: the data position), vocabulary size, ZeRO stage, world size
    rng_rank{r}.pt     rank r's random streams: masking (numpy), sampling (torch generator), and
                       torch's global one (dropout)
    tokenizer/         tokenizer.json

With these a resumed run sees the same batches, masks, samples and dropout as an uninterrupted
one. Ray Train registers a checkpoint only after it is fully persisted, so an interrupted save
never becomes the latest; one that is registered but cannot be read (truncated, corrupted) is
skipped at resume, with a warning, for the one before it.
"""

from __future__ import annotations

import json
import os
import posixpath

import torch

CHECKPOINT_TAG = "model"          # DeepSpeed's tag directory inside a checkpoint
RUN_STATE = "electra_ray.json"    # config, step, data position, vocabulary: what export and resume read
TOKENIZER_DIR = "tokenizer"


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
    import pyarrow.fs as pafs
    import ray.train

    parent = posixpath.dirname(latest.path.rstrip("/"))
    siblings = latest.filesystem.get_file_info(pafs.FileSelector(parent))
    older = sorted((info.path for info in siblings if info.type == pafs.FileType.Directory
                    and posixpath.basename(info.path).startswith("checkpoint_") and info.path < latest.path),
                   reverse=True)
    return [latest] + [ray.train.Checkpoint(path, filesystem=latest.filesystem) for path in older]


def restore(engine, latest, rank: int, world: int, device: torch.device) -> dict:
    """Load the newest checkpoint every rank can read into `engine`; returns its run state with
    this rank's random states under "rng"."""
    import torch.distributed as dist

    from electra_ray.train import TrainingError

    tried = []
    for candidate in newest_first(latest):
        state, error = None, None
        try:
            with candidate.as_directory() as directory:
                with open(os.path.join(directory, RUN_STATE)) as f:
                    state = json.load(f)
                state["rng"] = torch.load(os.path.join(directory, f"rng_rank{rank}.pt"), weights_only=False)
                if engine.load_checkpoint(directory, tag=CHECKPOINT_TAG)[0] is None:
                    raise FileNotFoundError(f"no DeepSpeed checkpoint '{CHECKPOINT_TAG}' in it")
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
            print(f"warning: checkpoint {candidate.path} cannot be read on rank {rank} "
                  f"({type(error).__name__}: {str(error)[:200]}); skipping it", flush=True)
    raise TrainingError(f"no readable checkpoint to resume from; tried {', '.join(tried)}")
