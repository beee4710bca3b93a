"""Typed configuration: dataclasses with the paper's defaults, YAML files, `a.b=c` overrides.

A config is `Config` (sections model, data, train, scaling, output). Every field has a default
and a help text; `load_config(path, overrides)` reads a YAML file, applies `section.key=value`
overrides last, and rejects unknown keys and ill-typed values with an error naming the key.
Defaults are ELECTRA-Small's (Clark et al. 2020, table 6) unless a field says otherwise.

Ranges are declared next to the help text (`option(..., bounds="> 0")`) and checked generically by
`check_bounds`; `validate` runs it, then the few checks that involve two keys. Every violation is a
ConfigError naming the key, the value and the allowed range, raised before Ray starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field

import yaml

from electra_ray.errors import UserError

CONFIG_FILE = "config.json"  # in a run directory: the config it was started with (what --resume reads)
SHIPPED_CORPUS = os.path.join(os.path.dirname(__file__), "corpus", "sotu.parquet")
# The YAML presets (tiny, small, base, large, sweeps), package data: found in an installed package too.
# The checkout's configs/ is a link to this directory.
SHIPPED_CONFIGS = os.path.join(os.path.dirname(__file__), "configs")
# (data.mask_token_prob, data.random_token_prob) each objective implies where the config does not
# set them: ELECTRA 85% [MASK], 15% kept; BERT 80% [MASK], 10% random, 10% kept.
OBJECTIVE_MASKING = {"electra": (0.85, 0.0), "mlm": (0.8, 0.1)}
# output.trackers: the metric sinks the driver can write (trackers.py; metrics.jsonl always).
TRACKERS = ("tensorboard", "mlflow", "wandb")


class ConfigError(UserError):
    """A config file or override names an unknown key, or holds an ill-typed or out-of-range value."""


class BoundsError(ConfigError):
    """A value outside its key's range; `allowed` is the range as the message words it ("> 0")."""

    def __init__(self, key: str, value, allowed: str):
        super().__init__(f"config key '{key}' must be {allowed}, got {value!r}")
        self.key, self.value, self.allowed = key, value, allowed


@dataclass(frozen=True)
class Bounds:
    """An allowed range written as in maths: ">= 1", "> 0", "<= 10", "[0, 1)", "(0, 1]"."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def parse(cls, text: str) -> Bounds:
        # Parsed when the dataclass is defined, so a typo in a bound fails at import, not at a user.
        one_sided = re.fullmatch(r"(>=|>|<=|<)\s*(\S+)", text.strip())
        if one_sided:
            op, x = one_sided.group(1), float(one_sided.group(2))
            if op.startswith(">"):
                return cls(text, low=x, low_open=op == ">")
            return cls(text, high=x, high_open=op == "<")
        interval = re.fullmatch(r"([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])", text.strip())
        if not interval:
            raise ValueError(f"bounds {text!r}: expected '>= x', '> x', '<= x', '< x' or an interval like '[0, 1)'")
        return cls(
            text,
            low=float(interval.group(2)),
            high=float(interval.group(3)),
            low_open=interval.group(1) == "(",
            high_open=interval.group(4) == ")",
        )

    def __contains__(self, value) -> bool:
        above = self.low < value or (not self.low_open and value == self.low)
        below = value < self.high or (not self.high_open and value == self.high)
        return above and below

    def __str__(self) -> str:
        return self.text if self.text[0] in "<>" else f"in {self.text}"


def option(
    default,
    help: str,
    choices: tuple | None = None,
    bounds: str | None = None,
    items: type | None = None,
    length: int | None = None,
):
    """A config field: its default, help text and what values it allows. `bounds`: the range of a
    number (of each item of a list); `items`: a list's item type (int or float); `length`: a
    list's exact length. Float fields (and float items) must also be finite."""
    kind = "default_factory" if isinstance(default, (list, dict)) else "default"
    value = (lambda: type(default)(default)) if kind == "default_factory" else default
    metadata = {
        "help": help,
        "choices": choices,
        "bounds": Bounds.parse(bounds) if bounds else None,
        "items": items,
        "length": length,
    }
    return field(**{kind: value}, metadata=metadata)


@dataclass
class ModelConfig:
    num_layers: int = option(12, "transformer layers, discriminator and generator alike", bounds=">= 1")
    hidden_size: int = option(256, "discriminator hidden size", bounds=">= 1")
    embedding_size: int = option(128, "token/position embedding size, shared by both networks", bounds=">= 1")
    num_heads: int = option(4, "discriminator attention heads", bounds=">= 1")
    intermediate_size: int = option(1024, "discriminator feed-forward size", bounds=">= 1")
    generator_size: float = option(
        0.25,
        "generator width (hidden, heads, FFN) as a fraction of the discriminator's; the paper finds 1/4-1/2 best",
        bounds="(0, 1]",
    )
    max_position_embeddings: int = option(512, "longest sequence the position embeddings cover", bounds=">= 8")
    dropout: float = option(0.1, "dropout on hidden states and attention probabilities", bounds="[0, 1)")
    generator_layers: int = option(
        0,
        "the generator is the discriminator's bottom N layers, shared, with its own "
        "MLM head (TEAMS, Shen et al. 2021; N = num_layers: the paper's all-weights "
        "tying, section 3.2), so the discriminator's lower layers learn from the MLM "
        "loss; generator_size is then unused. 0: a separate generator of "
        "generator_size width (the paper's recipe)",
        bounds=">= 0",
    )
    disentangled_embeddings: bool = option(
        False,
        "gradient-disentangled embedding sharing (DeBERTaV3, arXiv "
        "2111.09543): the discriminator reads stop-gradient(shared token "
        "embeddings) + its own delta (initialised at 0), so RTD gradients "
        "do not pull the generator's embeddings; the export merges the delta",
    )
    local_attention: int = option(
        0,
        "local heads at initialisation (electra_ray/local_init.py) in the first N layers of each encoder that "
        "reads its embeddings directly: a sinusoid position table and two heads per layer that attend to the "
        "previous and the next token; the weights stay a plain ELECTRA model. N >= num_layers: every layer "
        "(so tiny.yaml with --set model.num_layers=2 keeps working). 0: BERT's initialisation",
        bounds=">= 0",
    )
    init_from: str = option(
        "",
        "continue pre-training from existing weights (a directory or s3:// prefix): an export of "
        "electra_ray, an ELECTRA discriminator directory (with generator/ beside discriminator/ to "
        "load both) or a BERT-layout encoder, converted on load. Its shape and tokenizer come with "
        "it; without a generator one is built at generator_size, sharing the loaded embeddings",
    )


@dataclass
class DataConfig:
    path: str = option(
        SHIPPED_CORPUS, "Parquet file or directory / s3:// prefix of Parquet files, one document per row"
    )
    text_column: str = option("text", "column holding the document text")
    tokenizer: str = option("", "directory (or s3:// prefix) of a saved tokenizer; empty: train one on the corpus")
    # The WordPiece trainer accepts any size (it always keeps the 5 specials and every character of the
    # corpus: 108 tokens on the shipped one, even at vocab_size 0), so 16 is a floor against typos, not a need.
    vocab_size: int = option(30522, "vocabulary size when the tokenizer is trained here", bounds=">= 16")
    cased: bool = option(
        False,
        "when the tokenizer is trained here: keep case and accents (BERT-cased); "
        "false: lowercase and strip accents (BERT-uncased, the paper's)",
    )
    seq_len: int = option(
        128,
        "tokens per packed sequence, [CLS] and [SEP] included; at most model.max_position_embeddings",
        bounds=">= 8",
    )
    mask_prob: float = option(
        0.15, "fraction of non-special tokens selected for prediction (Large: 0.25)", bounds="(0, 1)"
    )
    mask_token_prob: float = option(
        0.85,
        "of the selected tokens, fraction replaced by [MASK] "
        "(ELECTRA 0.85; BERT 0.8, the default with train.objective=mlm)",
        bounds="[0, 1]",
    )
    random_token_prob: float = option(
        0.0,
        "of the selected tokens, fraction replaced by a random token "
        "(ELECTRA 0; BERT 0.1, the default with train.objective=mlm); "
        "the rest stay unchanged; mask_token_prob + random_token_prob <= 1",
        bounds="[0, 1]",
    )
    eval_fraction: float = option(0.02, "fraction of documents held out for evaluation (by text hash)", bounds="[0, 1)")
    docs_per_block: int = option(64, "documents tokenized and packed together by one Ray Data task", bounds=">= 1")
    # Corpora are often stored in an order (by date, source, topic): the files are read in an order
    # drawn from train.seed (data.file_order) and each worker draws its batches from a buffer this large
    # (data.shuffled_batches). Ray's local shuffle permutes what it holds once it holds 1.5x the buffer,
    # then takes more in each time half is left. The shipped corpus, one file sorted by year, is 16.7k
    # sequences at configs/tiny.yaml's settings: 16384 permutes all of it at once (Spearman's rho of a
    # sequence's place and its year: 0.00); 8192 leaves its last years to the end (0.33; stored order
    # with the former 256: 0.85). It holds 16384 x seq_len x 4 bytes per column (8 MB at seq_len 128), and
    # up to 1.5x that.
    shuffle_buffer: int = option(
        16384,
        "sequences each worker shuffles its batches from (at least 2 micro-batches); "
        "larger mixes more documents, costs memory and delays each epoch's first batch "
        "(until 1.5x this many sequences are tokenized)",
        bounds=">= 1",
    )
    packing: str = option(
        "concatenate",
        "how documents become sequences: concatenate (documents joined with [SEP] "
        "and cut into [CLS] ... [SEP] rows that cross documents; token types all 0) "
        "or segments (google-research/electra's ExampleBuilder: whole sentences of one "
        "document, split into [CLS] A [SEP] B [SEP] with token types 0 / 1)",
        ("concatenate", "segments"),
    )
    short_seq_prob: float = option(
        0.05,
        "packing=segments: probability that an example aims at a random length in "
        "[5, seq_len] instead of seq_len (google-research/electra: 0.05)",
        bounds="[0, 1]",
    )
    whole_word_mask: bool = option(
        False,
        "select and corrupt whole words: a word and its ## pieces, or a Chinese word "
        "(jieba segmenter, pip install jieba) while tokens stay characters; mask_prob "
        "still counts tokens, and the [MASK] / random / keep choice is made per word. "
        "false: token by token (the paper's)",
    )


@dataclass
class TrainConfig:
    objective: str = option(
        "electra",
        "pre-training objective: electra (generator + discriminator, "
        "replaced-token detection) or mlm (BERT's masked LM on the "
        "discriminator-sized encoder: the equal-compute baseline)",
        ("electra", "mlm"),
    )
    max_steps: int = option(1_000_000, "optimizer steps", bounds=">= 1")
    batch_size: int = option(
        128,
        "sequences per optimizer step, summed over workers and accumulation; a multiple "
        "of scaling.num_workers x train.grad_accum",
        bounds=">= 1",
    )
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step on each worker", bounds=">= 1")
    lr: float = option(5e-4, "peak learning rate", bounds="> 0")
    warmup_steps: int = option(10_000, "linear warm-up steps; then linear decay to 0 at max_steps", bounds=">= 0")
    weight_decay: float = option(0.01, "AdamW weight decay (not applied to biases and LayerNorm)", bounds=">= 0")
    adam_betas: list = option([0.9, 0.999], "AdamW betas", bounds="[0, 1)", items=float, length=2)
    adam_eps: float = option(1e-6, "AdamW epsilon", bounds="> 0")
    optimizer: str = option(
        "adamw",
        "adamw: torch AdamW (bias-corrected), linear warm-up then linear decay; electra: "
        "google-research/electra's optimization.py (no bias correction, warm-up and "
        "linear decay applied together)",
        ("adamw", "electra"),
    )
    grad_clip: float = option(1.0, "gradient-norm clipping (0: off)", bounds=">= 0")
    rtd_weight: float = option(50.0, "lambda: weight of the replaced-token-detection loss", bounds=">= 0")
    temperature: float = option(1.0, "generator sampling temperature (after any schedule)", bounds="> 0")
    temperature_start: float = option(
        1.0,
        "sampling temperature at step 0, lowered linearly to train.temperature "
        "over train.temperature_steps (a descending schedule as in Fast-ELECTRA, "
        "arXiv 2310.07347: flatter samples, easier replacements early)",
        bounds="> 0",
    )
    temperature_steps: int = option(
        0, "steps of the temperature schedule; 0: train.temperature throughout", bounds=">= 0"
    )
    corrective_weight: float = option(
        0.0,
        "mu: weight of the discriminator's corrective LM loss, which also predicts "
        "the original token at the selected positions from the corrupted input "
        "(after COCO-LM, arXiv 2102.08473): a dense signal that makes the "
        "discriminator read context early; 0: off (the paper's recipe)",
        bounds=">= 0",
    )
    zero_stage: int = option(0, "DeepSpeed ZeRO stage", (0, 1, 2, 3))
    compile: bool = option(
        False,
        "torch.compile both networks' encoders (model.compile_networks), on CPU and GPU; costs "
        "compilation time at the first steps of every worker. Off by default: on a CPU it measured "
        "0.85x of eager (docs/benchmarks.md); measure it on your GPU with `make bench-gpu`",
    )
    precision: str = option(
        "auto",
        "auto (bf16 on GPU, fp32 on CPU), bf16, fp16 (DeepSpeed's dynamic loss scaling, for GPUs without "
        "bf16 such as V100, T4, RTX 2080 Ti; needs scaling.use_gpu) or fp32",
        ("auto", "bf16", "fp16", "fp32"),
    )
    deepspeed: str = option(
        "",
        "your own DeepSpeed config (a JSON or YAML file, local or s3://), merged over the generated one: "
        "offload, activation checkpointing, bucket sizes... A key this config sets (batch sizes, "
        "train.grad_clip, train.zero_stage, precision, optimizer) may only repeat its value",
    )
    log_every: int = option(50, "optimizer steps between progress lines / metric reports", bounds=">= 1")
    eval_every: int = option(
        0,
        "optimizer steps between measurements of heldout_auc, the discriminator's ROC-AUC "
        "on held-out text under one fixed corruption (heldout.fixed_corruption): unlike the "
        "losses it compares runs with different generators and lambdas, so sweeps rank by it. "
        "A multiple of train.log_every; 0: off",
        bounds=">= 0",
    )
    eval_sequences: int = option(64, "held-out sequences heldout_auc is measured on", bounds=">= 1")
    checkpoint_every: int = option(
        10_000,
        "optimizer steps between checkpoints (and one at the end); a checkpoint step also reports metrics",
        bounds=">= 1",
    )
    keep_checkpoints: int = option(
        2, "checkpoints kept (newest first); the newest complete one is never deleted", bounds=">= 1"
    )
    max_failures: int = option(
        3, "worker-group restarts from the latest checkpoint after a worker dies (-1: no limit)", bounds=">= -1"
    )
    max_bad_steps: int = option(
        20, "steps skipped in a row for a non-finite loss before the run stops with an error", bounds=">= 0"
    )
    inject_nan_steps: list = option(
        [],
        "fault injection for testing the divergence guard: optimizer steps whose first micro-batch gets a NaN loss",
        bounds=">= 1",
        items=int,
    )
    # At most 2**32 - 1: search=optuna seeds numpy's RandomState with it, which takes no more.
    seed: int = option(0, "random seed (model init, masking, sampling, data order)", bounds="[0, 4294967295]")


@dataclass
class ScalingConfig:
    num_workers: int = option(1, "Ray Train workers (data-parallel ranks)", bounds=">= 1")
    use_gpu: bool = option(False, "one GPU per worker")
    cpus_per_worker: float = option(
        0.0,
        "CPUs reserved per worker; 0: on a local Ray, the machine's cores divided among the workers, else 1",
        bounds=">= 0",
    )
    ray_address: str = option(
        "", "Ray cluster to join ('auto', ray://...); empty: RAY_ADDRESS or an in-process local Ray"
    )
    data_resource: str = option(
        "",
        "custom Ray resource that Ray Data's read/tokenize tasks require: the cluster "
        "configs in cluster/ give 'data_node' to CPU nodes only, which keeps "
        "preprocessing off the GPU workers; empty: any node",
    )


@dataclass
class OutputConfig:
    dir: str = option(
        "runs", "where runs are written, a local path or s3://bucket/prefix: checkpoints and the export in DIR/NAME"
    )
    name: str = option(
        "",
        "run name; the run lives in DIR/NAME. Empty: run-<date>-<time>. Naming an "
        "existing run continues it from its latest checkpoint",
    )
    local_dir: str = option(
        "",
        "local directory for the run's logs (metrics.jsonl, TensorBoard), trained "
        "tokenizer and a copy of the export; empty: DIR/NAME, or runs/NAME when "
        "DIR is s3://",
    )
    trackers: list = option(
        ["tensorboard"],
        "where the driver sends the metrics besides metrics.jsonl: any of tensorboard (event files in "
        "the local run directory), mlflow, wandb (pip install electra-ray[mlflow] / [wandb]; "
        "docs/tracking.md)",
        choices=TRACKERS,
    )
    mlflow_tracking_uri: str = option(
        "",
        "MLflow tracking server (http://host:5000) or store (sqlite:///mlflow.db); empty: "
        "MLFLOW_TRACKING_URI, else MLflow's default. No credentials here: MLFLOW_TRACKING_USERNAME / "
        "_PASSWORD / _TOKEN in the environment",
    )
    mlflow_experiment: str = option("", "MLflow experiment; empty: MLFLOW_EXPERIMENT_NAME, else electra-ray")
    wandb_project: str = option(
        "", "Weights & Biases project; empty: WANDB_PROJECT, else electra-ray (key, entity, mode: WANDB_* variables)"
    )


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

    @property
    def micro_batch(self) -> int:
        """Sequences per worker per forward pass (validate checks the division is exact)."""
        return self.train.batch_size // (self.scaling.num_workers * self.train.grad_accum)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        config = cls()
        apply_values(config, values, prefix="")
        validate(config)
        return config


def convert_value(key: str, value, kind):
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
                return int(value)
            except ValueError:
                pass
            try:  # "1e3": YAML 1.1 reads an exponent without a dot as a string
                number = float(value)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
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
            value = _load_yaml(value, f"config key '{key}'")
        if isinstance(value, (list, tuple)):
            return list(value)
    elif kind is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {value!r}")


def parse_yaml(text: str, where: str):
    """yaml.safe_load with _load_yaml's one-line errors, for other YAML files (train.deepspeed)."""
    return _load_yaml(text, where)


def _load_yaml(text: str, where: str):
    """yaml.safe_load, a parse error becoming one line that names `where` and the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1  # the marks count from 0
        elif isinstance(getattr(error, "position", None), int):  # a ReaderError: a character YAML refuses
            line = text.count("\n", 0, error.position) + 1
            column = error.position - text.rfind("\n", 0, error.position)
        else:
            line = column = None
        # A ReaderError has no `problem`; its str() is "unacceptable character #x0000: ...\n  in ...".
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        context = getattr(error, "context", None)
        what = f"{problem} ({context})" if context else str(problem)
        at = f" at line {line}, column {column}" if line is not None else ""
        raise ConfigError(f"{where}: malformed YAML{at}: {' '.join(what.split())}") from None


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
            if value is not None:  # `train:` with every key commented out is an empty section
                apply_values(getattr(obj, key), value, prefix=f"{name}.")
        else:
            setattr(obj, key, convert_value(name, value, hints[key]))


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
        set_nested(nested, key, _load_yaml(raw, f"override '{item}'") if raw.strip() else "")
    return nested


def check_choices(obj, prefix: str = "") -> None:
    """Every field of a config dataclass (and of its sections) that lists choices holds one of them."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
        elif f.metadata.get("choices") and isinstance(value, list):  # a list of choices (output.trackers)
            unknown = [item for item in value if item not in f.metadata["choices"]]
            if unknown:
                raise ConfigError(
                    f"config key '{prefix}{f.name}' takes items of {list(f.metadata['choices'])}, got {unknown!r}"
                )
        elif f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ConfigError(
                f"config key '{prefix}{f.name}' must be one of {list(f.metadata['choices'])}, got {value!r}"
            )


def _is_number(value, kind) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        return False
    return kind is int or math.isfinite(value)


def _allowed(kind, bounds: Bounds | None, items=None, length: int | None = None) -> str:
    """What a field allows, worded for a message: "> 0", "finite and in [0, 1)", "2 numbers, each in [0, 1)"."""
    if kind is list:
        count = f"{length} " if length is not None else "a list of "
        return f"{count}{'integers' if items is int else 'numbers'}" + (
            f", each {_allowed(items, bounds)}" if bounds or items is float else ""
        )
    if kind is float:
        return f"finite and {bounds}" if bounds else "finite"
    return str(bounds) if bounds else "an integer"


def check_bounds(obj, prefix: str = "", bounds: dict[str, str] | None = None) -> None:
    """Every number of a config dataclass (and of its sections) within its field's `bounds`
    (`option(..., bounds=...)`), every float finite, every list with `items` / `length` metadata of
    that shape; a violation is a BoundsError naming the key, the value and the range. `bounds`
    adds ranges by key ({"num_samples": ">= 1"}) for dataclasses whose fields do not declare them."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_bounds(value, f"{key}.", bounds)
            continue
        kind = hints[f.name]
        extra = (bounds or {}).get(key)
        allowed = Bounds.parse(extra) if extra else f.metadata.get("bounds")
        items, length = f.metadata.get("items"), f.metadata.get("length")
        if kind is list and (items or allowed or length is not None):
            items = items or float
            ok = (
                isinstance(value, list)
                and (length is None or len(value) == length)
                and all(_is_number(v, items) and (allowed is None or v in allowed) for v in value)
            )
        elif kind in (int, float):
            ok = _is_number(value, kind) and (allowed is None or value in allowed)
        else:
            continue
        if not ok:
            # A finite number out of range: the range alone ("must be > 0, got 0.0"), not "finite and ...".
            finite_scalar = kind in (int, float) and _is_number(value, kind) and allowed is not None
            raise BoundsError(key, value, str(allowed) if finite_scalar else _allowed(kind, allowed, items, length))


def validate(config: Config) -> None:
    """Every setting in range (check_bounds: each key on its own; then the checks that involve two
    keys, which may divide by a key and so come after), before any Ray work starts."""
    check_choices(config)
    check_bounds(config)
    d, t, m, s = config.data, config.train, config.model, config.scaling
    # model.generator_size needs no check of its own: model.generator_config rounds the generator's
    # width to at least 1 and lowers its head count until it divides the width, for any size in (0, 1].
    checks = [
        (
            # with model.init_from the positions come with the weights (initial_weights.resolve checks)
            d.seq_len <= m.max_position_embeddings or bool(m.init_from),
            f"config key 'data.seq_len' must be <= model.max_position_embeddings ({m.max_position_embeddings}), "
            f"got {d.seq_len}",
        ),
        # A tolerance: 0.15 + 0.85 style sums may round just above 1 (masking compares with their sum).
        (
            d.mask_token_prob + d.random_token_prob <= 1 + 1e-9,
            f"config keys 'data.mask_token_prob' + 'data.random_token_prob' must be <= 1, "
            f"got {d.mask_token_prob} + {d.random_token_prob}",
        ),
        (
            m.hidden_size % m.num_heads == 0,
            f"config key 'model.hidden_size' ({m.hidden_size}) must be divisible by model.num_heads ({m.num_heads})",
        ),
        (
            t.batch_size % (s.num_workers * t.grad_accum) == 0,
            f"train.batch_size ({t.batch_size}) must be divisible by scaling.num_workers x "
            f"train.grad_accum ({s.num_workers} x {t.grad_accum})",
        ),
        (
            t.eval_every % t.log_every == 0,
            f"train.eval_every ({t.eval_every}) must be 0 or a multiple of train.log_every ({t.log_every})",
        ),
        (
            m.generator_layers <= m.num_layers,
            f"config key 'model.generator_layers' must be <= model.num_layers ({m.num_layers}), "
            f"got {m.generator_layers}",
        ),
        # Ray refuses a fractional resource request finer than 0.0001 when the workers start.
        (
            s.cpus_per_worker == 0 or s.cpus_per_worker >= 1e-4,
            f"config key 'scaling.cpus_per_worker' must be 0 or >= 0.0001, got {s.cpus_per_worker!r}",
        ),
    ]
    # DeepSpeed's CPU accelerator runs fp16 only where oneDNN has it (AVX512-FP16/AMX CPUs; not on
    # most, where deepspeed.initialize refuses it inside the workers): loss scaling is for GPUs.
    checks.append(
        (
            t.precision != "fp16" or s.use_gpu,
            "train.precision=fp16 needs scaling.use_gpu=true (DeepSpeed's CPU accelerator refuses fp16 "
            "on most CPUs); on CPU use bf16 or fp32",
        )
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def read_config_file(path: str) -> dict:
    """A YAML config file's top-level mapping; anything unreadable is a one-line ConfigError."""
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory, not a YAML file")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start})"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    values = _load_yaml(text, f"config file {path}")
    if values is None:  # empty, or comments only
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (model:, train:, ...), got a {type(values).__name__}"
        )
    return values


def apply_file_and_overrides(
    config, path: str | None, overrides: list[str] | None, base: dict | None = None
) -> set[str]:
    """Set a config dataclass from `base` (a saved config's values) or a YAML file, then
    `section.key=value` overrides. Returns the keys that were given ("data.seq_len", ...)."""
    values: dict = dict(base or {})
    if path:
        values = read_config_file(path)
    given: set[str] = set()
    for layer in (values, parse_overrides(overrides or [])):
        apply_values(config, layer, prefix="")
        given |= _keys(layer, prefix="")
    return given


def _keys(values: dict, prefix: str) -> set[str]:
    return {
        key
        for name, value in values.items()
        for key in (_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}"})
    }


def given_keys(path: str | None, overrides: list[str] | None) -> set[str]:
    """The keys a YAML file at `path` and `overrides` set ("model.hidden_size", ...)."""
    return _keys(read_config_file(path) if path else {}, prefix="") | _keys(parse_overrides(overrides or []), prefix="")


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


def describe_options(defaults: Config | None = None) -> str:
    """Every config key with its default, allowed values and help, for `--help`. `defaults`: the
    values to show (a verb's default config file loaded), instead of the dataclasses' own."""
    lines = []
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(section.default_factory)
        for f in dataclasses.fields(section.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if defaults is not None:
                default = getattr(getattr(defaults, section.name), f.name)
            if f.name == "path" and section.name == "data" and default == SHIPPED_CORPUS:
                default = "<shipped State of the Union corpus>"
            meta, kind = f.metadata, hints[f.name]
            if meta.get("choices"):
                allowed = f"  ({'any' if kind is list else 'one'} of {', '.join(map(str, meta['choices']))})"
            elif kind is list and (meta.get("bounds") or meta.get("items")):
                allowed = f"  ({_allowed(kind, meta.get('bounds'), meta.get('items'), meta.get('length'))})"
            elif meta.get("bounds"):  # floats are also refused when not finite; the listing leaves that implied
                allowed = f"  ({meta['bounds']})"
            else:
                allowed = ""
            lines.append(f"  {section.name}.{f.name} = {default!r}{allowed}\n      {meta['help']}")
    return "\n".join(lines)


def generator_shape(hidden_size: int, num_heads: int, intermediate_size: int, scale: float) -> tuple[int, int, int]:
    """(hidden, heads, feed-forward) of a generator `scale` times the discriminator's width
    (google-research/electra's get_generator_config). The head count is rounded and lowered until
    it divides the hidden size, so that every multiplier of a sweep gives its own width (1/8 and
    1/4 of a 4-head model would otherwise both be one head)."""
    hidden = max(1, round(hidden_size * scale))
    heads = max(1, round(num_heads * scale))
    while hidden % heads:
        heads -= 1
    return hidden, heads, max(1, round(intermediate_size * scale))
