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
one. A checkpoint is complete once Ray Train has registered it: it does so only after every rank's
files are persisted, and lists it in `checkpoint_manager_snapshot.json` beside the checkpoints
(their completion marker). An interrupted save (a dead worker, an unreachable S3) can leave a
`checkpoint_*` directory that was never registered: resume never considers one. A registered one
that cannot be read (a truncated, corrupt or missing file) is skipped at resume, with a warning,
for the registered one before it. Any other failure is not the checkpoint's fault and never skips
it: storage that does not answer (S3 unreachable, I/O errors) is retried, then stops the run with
one line; anything else (out of memory, a dead peer) propagates.

Saving: a rank whose disk is full (or whose file-size limit or quota is reached) records the failed
write instead of raising it, goes on through DeepSpeed's barriers, and then all ranks agree: each
removes what it wrote and raises CheckpointWriteError, and the run stops with one line. Nothing of
that checkpoint reaches Ray Train, so the latest complete checkpoint stays the latest.

Loading is safe against tampered files: a checkpoint in shared storage can be written by others,
and unpickling runs whatever code a pickle names. Every torch file of a checkpoint is loaded with
torch's weights-only unpickler (tensors, plain containers and the few DeepSpeed classes below),
DeepSpeed's own loader and `zero_to_fp32` included (`safe_loading`); a file that needs anything else
is refused before any of the checkpoint is used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import importlib
import json
import os
import pickle
import posixpath
import re
import shutil
import time
import zipfile
from collections.abc import Callable

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


FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
# Ray Train's record of the checkpoints it registered (the complete ones), beside them in the run
# directory: ray.train.v2._internal.constants.CHECKPOINT_MANAGER_SNAPSHOT_FILENAME (not imported:
# export reads checkpoints without Ray).
REGISTRY = "checkpoint_manager_snapshot.json"
# Reading a checkpoint whose storage does not answer: attempts, and the wait before the first retry
# (doubled after each). Then the run stops with one line: the checkpoint is not skipped.
STORAGE_ATTEMPTS = 4
STORAGE_RETRY_S = 2.0


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
    # A user's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (asking for unsafe loads elsewhere) is set aside in
    # the block: with both set, torch refuses every load ("Only one of ..."), and every checkpoint
    # would look unreadable. Checkpoints are always loaded weights-only.
    saved = {name: os.environ.get(name) for name in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)
    try:
        with torch.serialization.safe_globals(_allowed_classes()):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


# -- writing a checkpoint ------------------------------------------------------------------------

# What a write fails with when the disk is full, or the file-size limit (RLIMIT_FSIZE) or a quota is reached.
DISK_FULL = {
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "file too large",
    errno.EDQUOT: "disk quota exceeded",
}
# Rust libraries (safetensors, tokenizers) report the OS error inside their message.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class CheckpointWriteError(TrainingError):
    """A rank's disk is full (or its file-size limit or quota is reached) while a checkpoint is
    written: retrying from the previous checkpoint would only fail here again."""


def disk_full_reason(error: BaseException) -> str | None:
    """Why `error` (or an error it was raised from) is a write that failed for want of space: "no
    space left on device", "file too large" or "disk quota exceeded"; None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return DISK_FULL[error.errno]
        found = _RUST_OS_ERROR.search(str(error))
        if found and int(found.group(1)) in DISK_FULL:
            return DISK_FULL[int(found.group(1))]
        error = error.__cause__ or error.__context__
    return None


class _RecordingFile:
    """A file that torch.save writes through, keeping the OSError of a failed write: torch's zip
    writer turns it into "unexpected pos N vs M", which no longer says that the disk is full."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(state_dict, path: str, zipfile_serialization: bool) -> None:
    """DeepSpeed's TorchCheckpointEngine.save, with the OS error of a failed write kept."""
    with open(path, "wb") as f:
        recording = _RecordingFile(f)
        try:
            torch.save(state_dict, recording, _use_new_zipfile_serialization=zipfile_serialization)
        except Exception as error:
            if recording.error is not None and recording.error is not error:
                raise recording.error from error
            raise


@contextlib.contextmanager
def _recorded_writes(engine, failures: list[tuple[str, Exception]]):
    """While the block runs (engine.save_checkpoint), a write of DeepSpeed's that fails is appended
    to `failures` as (what, error) instead of raised, and this rank's later writes are skipped.
    DeepSpeed has barriers between its writes: a rank that left at its failed write would leave the
    others waiting there (gloo's timeout is 30 min). Patched on the instances only, and undone."""
    checkpoint_engine = engine.checkpoint_engine

    def recorded(write: Callable, what: Callable[..., str]) -> Callable:
        @functools.wraps(write)
        def attempt(*args, **kwargs):
            if failures:
                return None  # the checkpoint is lost already: nothing more to write
            try:
                return write(*args, **kwargs)
            except MemoryError:
                raise
            except Exception as error:
                failures.append((what(*args, **kwargs), error))
                return None

        return attempt

    save = checkpoint_engine.save
    if type(checkpoint_engine).__name__ == "TorchCheckpointEngine":  # DeepSpeed's default: we know its save

        def save(state_dict, path):
            _torch_save(state_dict, path, checkpoint_engine.zipfile_serialization)

    patches = [
        (checkpoint_engine, "save", recorded(save, lambda state_dict, path: path)),
        (checkpoint_engine, "makedirs", recorded(checkpoint_engine.makedirs, lambda path, **_: path)),
    ]
    if hasattr(engine, "_copy_recovery_script"):  # ZeRO's zero_to_fp32.py, copied by rank 0 outside the engine
        copy = recorded(engine._copy_recovery_script, lambda path: os.path.join(path, "zero_to_fp32.py"))
        patches.append((engine, "_copy_recovery_script", copy))
    # Instance attributes of these names already there (put back afterwards): normally none.
    shadowed = [(owner, name, vars(owner).get(name)) for owner, name, _ in patches]
    for owner, name, patched in patches:
        setattr(owner, name, patched)
    try:
        yield
    finally:
        for owner, name, before in shadowed:
            if before is None:
                delattr(owner, name)  # the class's method again
            else:
                setattr(owner, name, before)


def _write_own_files(directory: str, run_state: dict, rng_state: dict, rank: int, tokenizer_json: str) -> None:
    _torch_save(rng_state, os.path.join(directory, f"rng_rank{rank}.pt"), zipfile_serialization=True)
    if rank == 0:
        with open(os.path.join(directory, RUN_STATE), "w") as f:
            json.dump(run_state, f, indent=1)
        os.makedirs(os.path.join(directory, TOKENIZER_DIR))
        with open(os.path.join(directory, TOKENIZER_DIR, "tokenizer.json"), "w") as f:
            f.write(tokenizer_json)


def _empty(directory: str) -> None:
    """Remove what was written into `directory` (the caller's fresh directory for this checkpoint)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _gather(value):
    """Every rank's `value` (a list indexed by rank): [value] without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def save(directory: str, engine, run_state: dict, rng_state: dict, rank: int, tokenizer_json: str) -> None:
    """Write this rank's part of a checkpoint into `directory` (empty, this rank's own). Every rank
    calls it (DeepSpeed's save is collective). If any rank fails to write, every rank leaves its
    `directory` empty and raises: CheckpointWriteError when a disk is full (or a file-size limit or
    quota reached), else the OSError / RuntimeError (Ray Train retries from the latest checkpoint)."""
    failures: list[tuple[str, Exception]] = []
    with _recorded_writes(engine, failures):
        # No 'latest' file: load_checkpoint is always given the tag, and DeepSpeed writes that one
        # outside its checkpoint engine (a failure there would skip its last barrier on this rank).
        engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, save_latest=False)
    if not failures:
        try:
            _write_own_files(directory, run_state, rng_state, rank, tokenizer_json)
        except MemoryError:
            raise
        except Exception as error:
            failures.append((directory, error))
    mine = None
    if failures:
        where, error = failures[0]
        mine = (disk_full_reason(error), f"rank {rank} writing {where}: {type(error).__name__}: {_first_line(error)}")
    everyone = _gather(mine)
    if not any(everyone):
        return
    _empty(directory)
    full = [(reason, detail) for reason, detail in filter(None, everyone) if reason]
    if full:
        reason, detail = full[0]
        raise CheckpointWriteError(
            f"cannot write the checkpoint of step {run_state.get('step')}: {reason} ({detail}); nothing of "
            f"it was kept and the latest complete checkpoint is unchanged: free space (or raise the "
            f"file-size limit or quota) where the workers write checkpoints (their temporary directory), "
            f"then resume"
        )
    if mine is not None:
        raise failures[0][1]
    raise RuntimeError(f"checkpoint not written: {next(filter(None, everyone))[1]}")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:300]


# -- finding a checkpoint to resume from ---------------------------------------------------------


def registered_names(run_dir: str, filesystem) -> list[str]:
    """The checkpoint directory names Ray Train registered in `run_dir` (complete checkpoints),
    oldest first, from its snapshot; [] if there is none or it cannot be parsed. A storage error
    reading it propagates."""
    path = posixpath.join(run_dir, REGISTRY)
    try:
        with filesystem.open_input_stream(path) as stream:
            snapshot = json.loads(stream.read().decode("utf-8"))
        return [str(entry["checkpoint_dir_name"]) for entry in snapshot["checkpoint_results"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError):
        return []  # a snapshot cut short: trust only the checkpoint Ray Train handed us


def newest_first(latest) -> list:
    """The latest registered checkpoint, then the older registered ones (newest first). Directories
    beside them that Ray Train never registered (an interrupted save) are never candidates."""
    run_dir, name = posixpath.split(latest.path.rstrip("/"))
    registered = registered_names(run_dir, latest.filesystem)
    if name not in registered:  # a registry that does not know the latest: trust none of it
        return [latest]
    older = registered[: registered.index(name)]
    return [latest] + [_checkpoint_beside(latest, posixpath.join(run_dir, other)) for other in reversed(older)]


# Errors that mean a checkpoint's files cannot be used: missing, truncated, not what they should be.
MISSING_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)  # the OSErrors that are the checkpoint's
UNREADABLE_ERRORS = (
    EOFError,
    ValueError,  # bad JSON, bad UTF-8, a bad header
    KeyError,  # a file without what it must hold
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)
# torch's and DeepSpeed's RuntimeErrors for a file that is not a whole checkpoint file (a
# RuntimeError is also a dead peer's collective, or out of memory: those are not the checkpoint's).
UNREADABLE_MESSAGES = re.compile(
    r"PytorchStreamReader|failed finding central directory|invalid header|archive is corrupted|"
    r"unexpected EOF|Invalid magic number|Error\(s\) in loading state_dict|size mismatch|"
    r"storage has wrong byte size",
    re.IGNORECASE,
)


def failure_kind(error: BaseException) -> str:
    """What a failure to read a checkpoint means: "unreadable" (this checkpoint is damaged: skip
    it), "storage" (its storage did not answer: retry, never skip), "other" (out of memory, a dead
    peer, a bug: propagate)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return "other"
    if isinstance(error, MISSING_ERRORS):
        return "unreadable"
    if isinstance(error, OSError):  # S3 unreachable or refusing, timeouts, I/O errors
        return "storage"
    if isinstance(error, UNREADABLE_ERRORS) or type(error).__name__ == "SafetensorError":
        return "unreadable"
    if isinstance(error, RuntimeError) and not _is_distributed_error(error) and UNREADABLE_MESSAGES.search(str(error)):
        return "unreadable"
    return "other"


def _is_distributed_error(error: BaseException) -> bool:
    distributed = getattr(dist, "DistError", None)
    return distributed is not None and isinstance(error, distributed)


def read_checkpoint(engine, candidate, rank: int) -> dict:
    """Load `candidate` into `engine`; its run state with this rank's random states under "rng"."""
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
    return state


def _retrying_storage(read: Callable[[], object]) -> tuple[str, object]:
    """("read", what `read` returned), ("unreadable", error) or ("storage", error) once
    STORAGE_ATTEMPTS reads failed for storage reasons; any other error propagates."""
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return "read", read()
        except UnsafeCheckpointError as refused:
            raise TrainingError(str(refused)) from None
        except Exception as error:
            kind = failure_kind(error)
            if kind == "other":
                raise
            if kind == "unreadable" or attempt == STORAGE_ATTEMPTS - 1:
                return kind, error
            time.sleep(STORAGE_RETRY_S * 2**attempt)
    raise AssertionError("unreachable")


# Every rank's outcome for a candidate, worst first: one rank that cannot reach storage stops all,
# one that finds it damaged skips it for all.
_OUTCOMES = ("storage", "unreadable", "read")


def _candidates(latest, rank: int) -> list:
    """newest_first(latest) as rank 0 read it, on every rank (all must try the same ones). If the
    registry cannot be read, only the latest: never a checkpoint that may be incomplete."""
    candidates = [latest]
    if rank == 0:
        kind, found = _retrying_storage(lambda: newest_first(latest))
        if kind == "read":
            candidates = found
        else:
            print(
                f"warning: cannot read {REGISTRY} beside {latest.path} ({_describe(found)}): only the latest "
                f"checkpoint is a candidate",
                flush=True,
            )
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shared = [[candidate.path for candidate in candidates]]
        dist.broadcast_object_list(shared, src=0)
        candidates = [_checkpoint_beside(latest, path) for path in shared[0]]
    return candidates


def _checkpoint_beside(latest, path: str):
    """A ray.train.Checkpoint at `path`, on `latest`'s filesystem (`latest` itself for its path)."""
    import ray.train  # here: export reads checkpoints without Ray, and Ray Train costs seconds to import

    return latest if path == latest.path else ray.train.Checkpoint(path, filesystem=latest.filesystem)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(error)[:200]}"


def restore(engine, latest, rank: int, world: int, device: torch.device) -> dict:
    """Load the newest registered checkpoint every rank can read into `engine`; returns its run
    state with this rank's random states under "rng". A damaged checkpoint is skipped (a warning);
    storage that does not answer after STORAGE_ATTEMPTS stops the run (TrainingError, one line)."""
    tried = []
    for candidate in _candidates(latest, rank):
        kind, found = _retrying_storage(functools.partial(read_checkpoint, engine, candidate, rank))
        mine = (kind, "" if kind == "read" else _describe(found))
        outcomes = _gather(mine) if world > 1 else [mine]
        worst = min(outcomes, key=lambda outcome: _OUTCOMES.index(outcome[0]))
        if worst[0] == "read":
            if tried and rank == 0:
                print(f"resuming from the previous checkpoint {candidate.path}", flush=True)
            return found
        if worst[0] == "storage":
            raise TrainingError(
                f"cannot read checkpoint {candidate.path}: its storage did not answer "
                f"{STORAGE_ATTEMPTS} times ({worst[1]}); it was not skipped: resume once the storage "
                f"is reachable again"
            )
        tried.append(candidate.path)
        if kind != "read":
            print(
                f"warning: checkpoint {candidate.path} cannot be read on rank {rank} ({mine[1]}); skipping it",
                flush=True,
            )
    raise TrainingError(f"no readable checkpoint to resume from; tried {', '.join(tried)}")
