"""Where a run's first weights come from (`model.init_from`): continued pre-training on a domain
corpus, from this project's export, a Hugging Face ELECTRA discriminator (with its generator when
the directory holds one), or a BERT-layout encoder converted on load.

The source brings its shape and its tokenizer: `resolve` reads only its config.json files and sets
the model keys before Ray starts (a key the user set to another value is a one-line error);
`initial_state` reads the weights once, on the driver, renamed to the joint model's parameter names,
and the workers load them (`load_initial_state`) before DeepSpeed wraps the model. Sent through
Ray's object store, so a local source need not exist on every node.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from electra_ray import storage
from electra_ray.config import Config, ConfigError, ModelConfig, generator_shape

if TYPE_CHECKING:
    import torch

# ModelConfig key -> the transformers config attribute it is read from
SHAPE_KEYS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "embedding_size": "embedding_size",  # BERT has none: its embeddings are hidden_size wide
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
}
# What our networks are built with (transformers' ElectraConfig defaults): a source that differs
# would load into a network that computes something else.
FIXED = {"hidden_act": "gelu", "type_vocab_size": 2, "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class Source:
    path: str  # as the user gave it (local or s3://)
    local: str  # a local copy (the path itself when local)
    discriminator: str  # subdirectory of `local` holding the discriminator / encoder ("" for the root)
    generator: str | None  # subdirectory holding the generator, if the source has one
    kind: str  # "electra" or "bert"
    config: dict  # the discriminator's (or encoder's) config.json
    generator_config: dict | None

    @property
    def tokenizer_dir(self) -> str:
        return os.path.join(self.local, self.discriminator)


_local_copies: dict[str, str] = {}


def local_copy(path: str) -> str:
    """`path` itself, or (s3://) a temporary local copy, fetched once per process and removed at exit."""
    if not storage.is_remote(path):
        if not os.path.isdir(path):
            raise ConfigError(f"model.init_from {path}: no such directory")
        return path
    if path not in _local_copies:
        storage.check(path)
        temporary = tempfile.mkdtemp(prefix="electra-ray-init-")
        atexit.register(shutil.rmtree, temporary, True)
        target = os.path.join(temporary, "source")
        if storage.read_manifest(path) is not None:  # one of our published exports: hash-checked
            storage.fetch_directory(path, target)
        else:
            storage.download_directory(path, target)
        _local_copies[path] = target
    return _local_copies[path]


def find_source(path: str) -> Source:
    local = local_copy(path.rstrip("/"))
    if os.path.exists(os.path.join(local, "discriminator", "config.json")):  # our export, or both networks
        generator = "generator" if os.path.exists(os.path.join(local, "generator", "config.json")) else None
        discriminator = "discriminator"
    elif os.path.exists(os.path.join(local, "config.json")):
        discriminator, generator = "", None
    else:
        raise ConfigError(
            f"model.init_from {path}: no config.json (expected an export of electra_ray, an ELECTRA "
            f"discriminator directory or a BERT-layout encoder directory)"
        )
    config = _read_json(os.path.join(local, discriminator, "config.json"), path)
    kind = config.get("model_type")
    if kind not in ("electra", "bert"):
        raise ConfigError(f"model.init_from {path}: model_type {kind!r} is neither electra nor bert")
    architectures = config.get("architectures") or [""]  # absent, null or [] all say nothing
    if not isinstance(architectures, list) or not all(isinstance(name, str) for name in architectures):
        raise ConfigError(f"model.init_from {path}: config.json's architectures must list class names")
    if kind == "electra" and architectures[0] == "ElectraForMaskedLM":
        raise ConfigError(
            f"model.init_from {path} is an ELECTRA generator: name the discriminator, or a directory holding "
            f"discriminator/ and generator/"
        )
    generator_config = _read_json(os.path.join(local, generator, "config.json"), path) if generator else None
    for name in (discriminator, generator):
        if name is not None and not any(os.path.exists(os.path.join(local, name, f)) for f in WEIGHT_FILES):
            raise ConfigError(f"model.init_from {path}: no {' or '.join(WEIGHT_FILES)} in {name or 'it'}")
    if not os.path.exists(os.path.join(local, discriminator, "tokenizer.json")):
        raise ConfigError(f"model.init_from {path}: no tokenizer.json beside the weights (the run needs its tokenizer)")
    return Source(path, local, discriminator, generator, kind, config, generator_config)


def _read_json(file: str, source: str) -> dict:
    try:
        with open(file) as f:
            values = json.load(f)
    except ValueError as error:
        raise ConfigError(f"model.init_from {source}: {os.path.basename(file)} is not JSON ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"model.init_from {source}: {os.path.basename(file)} is not a model config")
    return values


def source_shape(source: Source) -> dict:
    """The model keys the source fixes (ModelConfig names)."""
    config = source.config
    for key, expected in FIXED.items():
        if config.get(key, expected) != expected:
            raise ConfigError(
                f"model.init_from {source.path}: {key}={config[key]!r}, but electra_ray builds {expected!r}"
            )
    missing = [attr for attr in SHAPE_KEYS.values() if attr != "embedding_size" and attr not in config]
    if missing:
        raise ConfigError(f"model.init_from {source.path}: its config.json lacks {', '.join(missing)}")
    shape = {key: config.get(attr, config["hidden_size"]) for key, attr in SHAPE_KEYS.items()}
    if source.generator_config is not None:
        shape["generator_size"] = _generator_size(source, shape)
    return shape


def _generator_size(source: Source, shape: dict) -> float:
    """The generator_size whose scaled generator (model.scaled_generator_config) is the source's."""
    generator = source.generator_config
    needed = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
    missing = [key for key in needed if not isinstance(generator.get(key), int) or generator[key] < 1]
    if missing:
        raise ConfigError(
            f"model.init_from {source.path}: generator/config.json lacks a positive integer {', '.join(missing)}"
        )
    scale = generator["hidden_size"] / shape["hidden_size"]
    built = generator_shape(shape["hidden_size"], shape["num_heads"], shape["intermediate_size"], scale)
    given = (generator["hidden_size"], generator["num_attention_heads"], generator["intermediate_size"])
    if built != given or generator["num_hidden_layers"] != shape["num_layers"]:
        raise ConfigError(
            f"model.init_from {source.path}: its generator (hidden, heads, feed-forward {given}, "
            f"{generator['num_hidden_layers']} layers) is not a scaled copy of the discriminator "
            f"as electra_ray builds it"
        )
    return scale


def resolve(cfg: Config, explicit: set[str] | None = None) -> Source:
    """Set `cfg.model`'s shape from model.init_from; returns the source. `explicit`: the keys the
    user set (`--set`, a --config file); None: every model key that differs from its default."""
    source = find_source(cfg.model.init_from)
    if cfg.data.tokenizer:
        raise ConfigError(
            "data.tokenizer and model.init_from are both set: the weights come with their own tokenizer; "
            "leave data.tokenizer empty"
        )
    defaults = ModelConfig()
    for key, value in source_shape(source).items():
        current = getattr(cfg.model, key)
        given = f"model.{key}" in explicit if explicit is not None else current != getattr(defaults, key)
        if given and current != value:
            raise ConfigError(
                f"model.{key}={current} disagrees with model.init_from's {value} ({source.path}): "
                f"leave model.{key} unset, the shape comes with the weights"
            )
        setattr(cfg.model, key, value)
    if cfg.data.seq_len > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.init_from's max_position_embeddings "
            f"{cfg.model.max_position_embeddings}"
        )
    return source


def initial_state(cfg: Config) -> dict[str, torch.Tensor]:
    """The source's weights under the joint model's names (discriminator.electra..., generator...)."""
    source = find_source(cfg.model.init_from)
    state = {}
    for network, directory in (("discriminator", source.discriminator), ("generator", source.generator)):
        if directory is None:
            continue
        weights = _read_weights(os.path.join(source.local, directory))
        renamed = _bert_names(weights) if source.kind == "bert" else _electra_names(weights)
        state.update({f"{network}.{name}": tensor for name, tensor in renamed.items()})
    return state


def _read_weights(directory: str) -> dict[str, torch.Tensor]:
    # Imported here: `resolve` runs in the driver's checks, before torch is loaded.
    import torch
    from safetensors.torch import load_file

    if os.path.exists(os.path.join(directory, "model.safetensors")):
        return load_file(os.path.join(directory, "model.safetensors"))
    return torch.load(os.path.join(directory, "pytorch_model.bin"), map_location="cpu", weights_only=True)


def _electra_names(weights: dict) -> dict:
    """ElectraForPreTraining / ElectraForMaskedLM names as they are; a bare ElectraModel's under `electra.`."""
    if any(name.startswith("electra.") for name in weights):
        return weights
    return {f"electra.{name}": tensor for name, tensor in weights.items()}


def _bert_names(weights: dict) -> dict:
    """A BERT encoder's embeddings and layers under ELECTRA's names (the same modules, `bert.` ->
    `electra.`); its pooler and pre-training heads have no counterpart and are left out."""
    renamed = {}
    for name, tensor in weights.items():
        name = name.removeprefix("bert.")
        if name.startswith(("embeddings.", "encoder.")) and not name.endswith("position_ids"):
            renamed[f"electra.{name}"] = tensor
    return renamed


def bert_encoder_weights(directory: str) -> dict[str, torch.Tensor]:
    """The weights of a BERT-layout encoder directory under ELECTRA's names (`electra.embeddings...`,
    `electra.encoder...`): what an ELECTRA model built from its shape loads (fine-tuning's --model)."""
    return _bert_names(_read_weights(directory))


def load_initial_state(model: torch.nn.Module, state: dict) -> None:
    """Load `initial_state` into a new joint model: every discriminator encoder weight must be there
    (what is missing may only be what the source has no counterpart for: the generator when it has
    none, the discriminator's head for BERT)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    names = set(state)
    encoder_missing = [n for n in missing if n.startswith("discriminator.electra.") and n not in names]
    # The discriminator's embeddings module is the generator's: loaded under one name, it shows as
    # missing under the other.
    encoder_missing = [n for n in encoder_missing if n.replace("discriminator.", "generator.", 1) not in names]
    if unexpected or encoder_missing:
        raise ConfigError(
            f"model.init_from: the weights do not fit the model built from its config "
            f"(unexpected: {unexpected[:3]}, missing: {encoder_missing[:3]})"
        )
