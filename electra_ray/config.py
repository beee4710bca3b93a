"""Typed configuration: dataclasses with the paper's defaults, YAML files, `a.b=c` overrides.

A config is `Config` (sections model, data, train, scaling, output). Every field has a default
and a help text; `load_config(path, overrides)` reads a YAML file, applies `section.key=value`
overrides last, and rejects unknown keys and ill-typed values with an error naming the key.
Defaults are ELECTRA-Small's (Clark et al. 2020, table 6) unless a field says otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

import yaml

from electra_ray.errors import UserError

SHIPPED_CORPUS = os.path.join(os.path.dirname(__file__), "corpus", "sotu.parquet")
# (data.mask_token_prob, data.random_token_prob) each objective implies where the config does not
# set them: ELECTRA 85% [MASK], 15% kept; BERT 80% [MASK], 10% random, 10% kept.
OBJECTIVE_MASKING = {"electra": (0.85, 0.0), "mlm": (0.8, 0.1)}


class ConfigError(UserError):
    """A config file or override names an unknown key or holds an ill-typed value."""


def _f(default, help: str, choices: tuple | None = None):
    kind = "default_factory" if isinstance(default, (list, dict)) else "default"
    value = (lambda: type(default)(default)) if kind == "default_factory" else default
    return field(**{kind: value}, metadata={"help": help, "choices": choices})


@dataclass
class ModelConfig:
    num_layers: int = _f(12, "transformer layers, discriminator and generator alike")
    hidden_size: int = _f(256, "discriminator hidden size")
    embedding_size: int = _f(128, "token/position embedding size, shared by both networks")
    num_heads: int = _f(4, "discriminator attention heads")
    intermediate_size: int = _f(1024, "discriminator feed-forward size")
    generator_size: float = _f(0.25, "generator width (hidden, heads, FFN) as a fraction of the "
                                     "discriminator's; the paper finds 1/4-1/2 best")
    max_position_embeddings: int = _f(512, "longest sequence the position embeddings cover")
    dropout: float = _f(0.1, "dropout on hidden states and attention probabilities")


@dataclass
class DataConfig:
    path: str = _f(SHIPPED_CORPUS, "Parquet file or directory / s3:// prefix of Parquet files, one "
                                   "document per row")
    text_column: str = _f("text", "column holding the document text")
    tokenizer: str = _f("", "directory (or s3:// prefix) of a saved tokenizer; empty: train one on the corpus")
    vocab_size: int = _f(30522, "vocabulary size when the tokenizer is trained here")
    seq_len: int = _f(128, "tokens per packed sequence, [CLS] and [SEP] included")
    mask_prob: float = _f(0.15, "fraction of non-special tokens selected for prediction (Large: 0.25)")
    mask_token_prob: float = _f(0.85, "of the selected tokens, fraction replaced by [MASK] "
                                      "(ELECTRA 0.85; BERT 0.8, the default with train.objective=mlm)")
    random_token_prob: float = _f(0.0, "of the selected tokens, fraction replaced by a random token "
                                       "(ELECTRA 0; BERT 0.1, the default with train.objective=mlm); "
                                       "the rest stay unchanged")
    eval_fraction: float = _f(0.02, "fraction of documents held out for evaluation (by text hash)")
    docs_per_block: int = _f(64, "documents tokenized and packed together by one Ray Data task")


@dataclass
class TrainConfig:
    objective: str = _f("electra", "pre-training objective: electra (generator + discriminator, "
                                   "replaced-token detection) or mlm (BERT's masked LM on the "
                                   "discriminator-sized encoder: the equal-compute baseline)", ("electra", "mlm"))
    max_steps: int = _f(1_000_000, "optimizer steps")
    batch_size: int = _f(128, "sequences per optimizer step, summed over workers and accumulation")
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step on each worker")
    lr: float = _f(5e-4, "peak learning rate")
    warmup_steps: int = _f(10_000, "linear warm-up steps; then linear decay to 0 at max_steps")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    adam_betas: list = _f([0.9, 0.999], "AdamW betas")
    adam_eps: float = _f(1e-6, "AdamW epsilon")
    grad_clip: float = _f(1.0, "gradient-norm clipping (0: off)")
    rtd_weight: float = _f(50.0, "lambda: weight of the replaced-token-detection loss")
    temperature: float = _f(1.0, "generator sampling temperature")
    zero_stage: int = _f(0, "DeepSpeed ZeRO stage", (0, 1, 2, 3))
    precision: str = _f("auto", "auto (bf16 on GPU, fp32 on CPU), bf16 or fp32", ("auto", "bf16", "fp32"))
    log_every: int = _f(50, "optimizer steps between progress lines / metric reports")
    eval_every: int = _f(0, "optimizer steps between measurements of heldout_auc, the discriminator's ROC-AUC "
                            "on held-out text under one fixed corruption (evaluate.fixed_corruption): unlike the "
                            "losses it compares runs with different generators and lambdas, so sweeps rank by it. "
                            "A multiple of train.log_every; 0: off")
    eval_sequences: int = _f(64, "held-out sequences heldout_auc is measured on")
    checkpoint_every: int = _f(10_000, "optimizer steps between checkpoints (and one at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept (newest first); the newest complete one is never deleted")
    max_failures: int = _f(3, "worker-group restarts from the latest checkpoint after a worker dies (-1: no limit)")
    max_bad_steps: int = _f(20, "steps skipped in a row for a non-finite loss before the run stops with an error")
    inject_nan_steps: list = _f([], "fault injection for testing the divergence guard: optimizer steps whose "
                                    "first micro-batch gets a NaN loss")
    seed: int = _f(0, "random seed (model init, masking, sampling)")


@dataclass
class ScalingConfig:
    num_workers: int = _f(1, "Ray Train workers (data-parallel ranks)")
    use_gpu: bool = _f(False, "one GPU per worker")
    cpus_per_worker: float = _f(0.0, "CPUs reserved per worker; 0: on a local Ray, the machine's "
                                     "cores divided among the workers, else 1")
    ray_address: str = _f("", "Ray cluster to join ('auto', ray://...); empty: RAY_ADDRESS or an "
                              "in-process local Ray")
    data_resource: str = _f("", "custom Ray resource that Ray Data's read/tokenize tasks require: the cluster "
                                "configs in cluster/ give 'data_node' to CPU nodes only, which keeps "
                                "preprocessing off the GPU workers; empty: any node")


@dataclass
class OutputConfig:
    dir: str = _f("runs", "where runs are written, a local path or s3://bucket/prefix: checkpoints and "
                          "the export in DIR/NAME")
    name: str = _f("", "run name; the run lives in DIR/NAME. Empty: run-<date>-<time>. Naming an "
                       "existing run continues it from its latest checkpoint")
    local_dir: str = _f("", "local directory for the run's logs (metrics.jsonl, TensorBoard), trained "
                            "tokenizer and a copy of the export; empty: DIR/NAME, or runs/NAME when "
                            "DIR is s3://")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def run_dir(self) -> str:
        """Where checkpoints and the export go: a local path or an s3:// URL."""
        if "://" in self.output.dir:
            return f"{self.output.dir.rstrip('/')}/{self.output.name}"
        return os.path.join(self.output.dir, self.output.name)

    @property
    def local_run_dir(self) -> str:
        if self.output.local_dir:
            return self.output.local_dir
        return os.path.join("runs" if "://" in self.output.dir else self.output.dir, self.output.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        config = cls()
        apply_values(config, values, prefix="")
        validate(config)
        return config


def _convert(key: str, value, kind):
    """Coerce a YAML / command-line value to the field's type, or raise naming the key."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else None
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif kind is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, (list, tuple)):
            return list(value)
    elif kind is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {value!r}")


def apply_values(obj, values: dict, prefix: str = "") -> None:
    """Set the fields of a config dataclass from a nested mapping, coercing each value to the
    field's type; an unknown key or an ill-typed value is a ConfigError naming it."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key '{name}' (known: {', '.join(sorted(fields))})")
        if dataclasses.is_dataclass(hints[key]):
            apply_values(getattr(obj, key), value, prefix=f"{name}.")
        else:
            setattr(obj, key, _convert(name, value, hints[key]))


def set_nested(tree: dict, key: str, value) -> dict:
    """set_nested(tree, "train.lr", 1e-3): tree["train"]["lr"] = 1e-3, creating sections. Returns tree."""
    *parents, leaf = key.strip().split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return tree


def parse_overrides(overrides: list[str]) -> dict:
    """`["train.lr=1e-3", "scaling.num_workers=2"]` -> nested dict (values parsed as YAML scalars)."""
    nested: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        set_nested(nested, key, yaml.safe_load(raw) if raw.strip() else "")
    return nested


def check_choices(obj, prefix: str = "") -> None:
    """Every field of a config dataclass (and of its sections) that lists choices holds one of them."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
        elif f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ConfigError(f"config key '{prefix}{f.name}' must be one of {list(f.metadata['choices'])}, "
                              f"got {value!r}")


def validate(config: Config) -> None:
    check_choices(config)
    d, t, m, s = config.data, config.train, config.model, config.scaling
    checks = [
        (0 < d.mask_prob < 1, "data.mask_prob must be in (0, 1)"),
        (d.mask_token_prob + d.random_token_prob <= 1, "data.mask_token_prob + data.random_token_prob must be <= 1"),
        (8 <= d.seq_len <= m.max_position_embeddings, "data.seq_len must be in [8, model.max_position_embeddings]"),
        (0 <= d.eval_fraction < 1, "data.eval_fraction must be in [0, 1)"),
        (0 < m.generator_size <= 1, "model.generator_size must be in (0, 1]"),
        (m.hidden_size % m.num_heads == 0, "model.hidden_size must be divisible by model.num_heads"),
        (s.num_workers >= 1, "scaling.num_workers must be >= 1"),
        (t.max_steps >= 1 and t.log_every >= 1 and t.checkpoint_every >= 1,
         "train.max_steps, train.log_every and train.checkpoint_every must be >= 1"),
        (t.batch_size % (s.num_workers * t.grad_accum) == 0,
         f"train.batch_size ({t.batch_size}) must be divisible by scaling.num_workers x "
         f"train.grad_accum ({s.num_workers} x {t.grad_accum})"),
        (len(t.adam_betas) == 2, "train.adam_betas must have two values"),
        (t.eval_every >= 0 and t.eval_every % t.log_every == 0 and t.eval_sequences >= 1,
         f"train.eval_every ({t.eval_every}) must be 0 or a multiple of train.log_every ({t.log_every}), and "
         f"train.eval_sequences >= 1"),
        (t.keep_checkpoints >= 1 and t.max_bad_steps >= 0,
         "train.keep_checkpoints must be >= 1 and train.max_bad_steps >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def apply_file_and_overrides(config, path: str | None, overrides: list[str] | None,
                             base: dict | None = None) -> set[str]:
    """Set a config dataclass from `base` (a saved config's values) or a YAML file, then
    `section.key=value` overrides. Returns the keys that were given ("data.seq_len", ...)."""
    values: dict = dict(base or {})
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    given: set[str] = set()
    for layer in (values, parse_overrides(overrides or [])):
        apply_values(config, layer, prefix="")
        given |= _keys(layer, prefix="")
    return given


def _keys(values: dict, prefix: str) -> set[str]:
    return {key for name, value in values.items()
            for key in (_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}"})}


def load_config(path: str | None = None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Defaults, then the YAML file at `path` (or `base`: a saved config's values), then overrides."""
    config = Config()
    given = apply_file_and_overrides(config, path, overrides, base)
    apply_objective_masking(config, given)
    validate(config)
    return config


def apply_objective_masking(config: Config, given: set[str]) -> None:
    """Masking the objective implies (OBJECTIVE_MASKING), where the keys `given` do not set it."""
    for key, value in zip(("mask_token_prob", "random_token_prob"), OBJECTIVE_MASKING.get(config.train.objective, ())):
        if f"data.{key}" not in given:
            setattr(config.data, key, value)


def describe_options() -> str:
    """Every config key with its default and help, for `--help`."""
    lines = []
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if f.name == "path" and section.name == "data":
                default = "<shipped State of the Union corpus>"
            lines.append(f"  {section.name}.{f.name} = {default!r}\n      {f.metadata['help']}")
    return "\n".join(lines)
