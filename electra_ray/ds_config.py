"""The DeepSpeed config a run trains with: the one generated from our config (batch arithmetic,
ZeRO stage, precision, optimizer), with the user's own file (train.deepspeed) merged over it.

    train:
      deepspeed: ds.json        # or .yaml, or s3://bucket/ds.json

The user's file adds what our config has no key for (offload, activation checkpointing, bucket
sizes, communication settings...): dictionaries are merged key by key, anything else replaces
ours. A key we set from our config (OWNED) that the file sets to another value is an error that
names the config key to change instead: a silent override would train another batch size,
stage or precision than the one the run's config (saved with every checkpoint) says. The value
"auto" (Hugging Face Trainer's convention) keeps ours, or DeepSpeed's default where we set none.

Pure and light (no torch import): the driver checks the file before Ray starts
(pretrain.check_before_start) and hands the merged config to every worker (train.WorkerArgs).
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass

from electra_ray import storage
from electra_ray.config import Config, ConfigError, parse_yaml

# DeepSpeed's documented defaults for dynamic loss scaling (deepspeed.ai/docs/config-json, "fp16"):
# loss_scale 0 selects dynamic scaling; it starts at 2**16, halves after `hysteresis` overflows in a
# row (each overflowing step is skipped) and doubles after `loss_scale_window` steps without one.
FP16_LOSS_SCALING = {
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "consecutive_hysteresis": False,
    "min_loss_scale": 1,
}


def compute_precision(cfg: Config) -> str:
    """fp16, bf16 or fp32: train.precision with auto resolved (bf16 on GPU, fp32 on CPU)."""
    if cfg.train.precision == "auto":
        return "bf16" if cfg.scaling.use_gpu else "fp32"
    return cfg.train.precision


def generated_config(cfg: Config, precision: str | None = None) -> dict:
    """The DeepSpeed config our config implies; `precision`: compute_precision's, by default."""
    t, world = cfg.train, cfg.scaling.num_workers
    precision = precision or compute_precision(cfg)
    config = {
        "train_batch_size": t.batch_size,
        "train_micro_batch_size_per_gpu": t.batch_size // (world * t.grad_accum),
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage, "stage3_gather_16bit_weights_on_model_save": False},
        "bf16": {"enabled": precision == "bf16"},
        # torch's fused AdamW (one kernel for all tensors, on CPU and GPU): DeepSpeed's FusedAdam
        # would be JIT-compiled and needs CUDA.
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": list(t.adam_betas),
                "eps": t.adam_eps,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
                "fused": True,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":
        config["fp16"] = {"enabled": True, **FP16_LOSS_SCALING}
    if t.optimizer == "electra":
        # The optimizer is handed to deepspeed.initialize (client_optimizer): DeepSpeed refuses one
        # there and one in its config, and wraps an optimizer it does not know in ZeRO only if told.
        del config["optimizer"]
        config["zero_allow_untested_optimizer"] = True
    return config


@dataclass(frozen=True)
class Owned:
    """A DeepSpeed key our config decides: `ours` is our value (ABSENT: we pass it outside the
    config, so any value conflicts), `given` words where it comes from, `key` the config key to set."""

    path: str
    ours: object
    given: str
    key: str


ABSENT = object()


def owned_keys(cfg: Config, precision: str) -> list[Owned]:
    t, s = cfg.train, cfg.scaling
    micro = t.batch_size // (s.num_workers * t.grad_accum)
    owned = [
        Owned("train_batch_size", t.batch_size, f"train.batch_size={t.batch_size}", "train.batch_size"),
        Owned(
            "train_micro_batch_size_per_gpu",
            micro,
            f"train.batch_size / (scaling.num_workers x train.grad_accum) = {micro}",
            "train.batch_size",
        ),
        Owned("gradient_accumulation_steps", t.grad_accum, f"train.grad_accum={t.grad_accum}", "train.grad_accum"),
        Owned("gradient_clipping", t.grad_clip, f"train.grad_clip={t.grad_clip}", "train.grad_clip"),
        Owned("zero_optimization.stage", t.zero_stage, f"train.zero_stage={t.zero_stage}", "train.zero_stage"),
        Owned("bf16.enabled", precision == "bf16", f"train.precision={t.precision}", "train.precision"),
        Owned("fp16.enabled", precision == "fp16", f"train.precision={t.precision}", "train.precision"),
        Owned("amp.enabled", False, f"train.precision={t.precision}", "train.precision"),
        Owned("torch_autocast.enabled", False, f"train.precision={t.precision}", "train.precision"),
        # deepspeed.initialize gets our LambdaLR (engine.build_engine), which wins over a config's.
        Owned("scheduler", ABSENT, "the schedule comes from train.lr, warmup_steps and max_steps", "those keys"),
    ]
    if t.optimizer == "electra":
        owned.append(Owned("optimizer", ABSENT, "train.optimizer=electra passes its own optimizer", "train.optimizer"))
    else:
        params = "optimizer.params."
        owned += [
            Owned("optimizer.type", "AdamW", "train.optimizer=adamw", "train.optimizer"),
            Owned(params + "lr", t.lr, f"train.lr={t.lr}", "train.lr"),
            Owned(params + "betas", list(t.adam_betas), f"train.adam_betas={list(t.adam_betas)}", "train.adam_betas"),
            Owned(params + "eps", t.adam_eps, f"train.adam_eps={t.adam_eps}", "train.adam_eps"),
            Owned(
                params + "weight_decay", t.weight_decay, f"train.weight_decay={t.weight_decay}", "train.weight_decay"
            ),
        ]
    return owned


_MISSING = object()


def _lookup(tree: dict, path: str):
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _refuse_scalar_section(tree: dict, path: str) -> None:
    """A section of an owned key given as a value: DeepSpeed reads `"zero_optimization": true` as
    stage 1, so it would pass the key-by-key check below while setting what we own."""
    node, walked = tree, []
    for part in path.split(".")[:-1]:
        walked.append(part)
        node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is _MISSING or node == "auto":
            return
        if not isinstance(node, dict):
            section = ".".join(walked)
            raise ConfigError(
                f"train.deepspeed sets {section}={_show(node)}: {section} must be a mapping "
                f"(its {path} is set by our config)"
            )


def _same(theirs, ours) -> bool:
    if isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple)):
        return len(theirs) == len(ours) and all(_same(a, b) for a, b in zip(theirs, ours))
    if isinstance(theirs, bool) or isinstance(ours, bool):
        return theirs is ours
    if theirs.__class__ is str and theirs.lower() == "adamw" and ours == "AdamW":
        return True  # DeepSpeed reads optimizer types case-insensitively
    return theirs == ours


def check_conflicts(user: dict, cfg: Config, precision: str) -> None:
    """A ConfigError for the first key of `user` that disagrees with a key our config sets."""
    for owned in owned_keys(cfg, precision):
        _refuse_scalar_section(user, owned.path)
        theirs = _lookup(user, owned.path)
        if theirs is _MISSING or theirs == "auto":
            continue
        if owned.ours is ABSENT:
            raise ConfigError(f"train.deepspeed sets {owned.path}, but {owned.given}: remove it and set {owned.key}")
        if not _same(theirs, owned.ours):
            raise ConfigError(
                f"train.deepspeed sets {owned.path}={_show(theirs)} but {owned.given}: set {owned.key} instead"
            )


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (bool, list, dict)) or value is None else str(value)


def merge(ours: dict, theirs: dict) -> dict:
    """`theirs` deep-merged over a copy of `ours`; "auto" keeps ours (or leaves the key unset)."""
    merged = copy.deepcopy(ours)
    for key, value in theirs.items():
        if value == "auto":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        elif isinstance(value, dict):
            merged[key] = merge({}, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_user_config(path: str) -> dict:
    """The mapping in train.deepspeed's file (JSON or YAML, local or s3://); anything unreadable is
    a one-line ConfigError."""
    where = f"train.deepspeed file {path}"
    if not storage.is_remote(path):
        if not os.path.exists(path):
            raise ConfigError(f"{where} not found")
        if os.path.isdir(path):
            raise ConfigError(f"{where} is a directory, not a JSON or YAML file")
    try:
        text = storage.read_text(path)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{where} is not UTF-8 text (byte offset {error.start})") from None
    except OSError as error:
        raise ConfigError(f"cannot read {where}: {error.strerror or error}") from None
    values = _parse(text, where, json_file=path.lower().endswith(".json"))
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must hold a mapping of DeepSpeed settings, got {type(values).__name__}")
    return values


# PyYAML (YAML 1.1) reads 5e8 as a string; DeepSpeed configs are full of such sizes.
EXPONENT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _parse(text: str, where: str, json_file: bool):
    if json_file:
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{where}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
            ) from None
    return _numbers(parse_yaml(text, where))


def _numbers(value):
    """YAML's exponent strings ("5e8") as numbers, as JSON reads them."""
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    if isinstance(value, str) and EXPONENT.fullmatch(value):
        number = float(value)
        return int(number) if number.is_integer() else number
    return value


def deepspeed_config(cfg: Config, precision: str | None = None) -> dict:
    """The config the workers hand to deepspeed.initialize: generated_config with train.deepspeed's
    file merged over it (read here: call it on the driver and pass the result on)."""
    precision = precision or compute_precision(cfg)
    ours = generated_config(cfg, precision)
    if not cfg.train.deepspeed:
        return ours
    user = read_user_config(cfg.train.deepspeed)
    check_conflicts(user, cfg, precision)
    return merge(ours, user)


def check_deepspeed_config(cfg: Config) -> None:
    """Before Ray starts: train.deepspeed's file readable, free of conflicts, and accepted by
    DeepSpeed's own config parser (its sections refuse unknown keys and ill-typed values)."""
    if not cfg.train.deepspeed:
        return
    merged = deepspeed_config(cfg)
    # Imported only here (~5 s with torch): a run without train.deepspeed is checked without it.
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    # Parsed as one rank's view: DeepSpeed checks the batch arithmetic against the world size it
    # sees (1 on the driver), which owned_keys has checked against scaling.num_workers already.
    micro, accumulation = merged["train_micro_batch_size_per_gpu"], merged["gradient_accumulation_steps"]
    one_rank = dict(merged, train_batch_size=micro * accumulation)
    try:
        DeepSpeedConfig(one_rank)
    except ValidationError as error:
        first = error.errors()[0]
        where = f"{error.title}: {'.'.join(str(part) for part in first['loc'])}"
        raise ConfigError(
            f"train.deepspeed file {cfg.train.deepspeed}: DeepSpeed refuses it ({where}: {first['msg']})"
        ) from None
    except (ValueError, AssertionError, TypeError, KeyError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"train.deepspeed file {cfg.train.deepspeed}: DeepSpeed refuses it ({message})") from None
