import glob
import math
import os
import subprocess
import sys

import pytest

from electra_ray.config import Config, ConfigError, load_config, parse_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_are_the_papers_small_settings():
    cfg = Config()
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.embedding_size) == (12, 256, 128)
    assert (cfg.model.num_heads, cfg.model.intermediate_size, cfg.model.generator_size) == (4, 1024, 0.25)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.max_steps, cfg.train.warmup_steps) == (
        5e-4,
        128,
        10**6,
        10**4,
    )
    assert (cfg.train.rtd_weight, cfg.data.mask_prob, cfg.data.mask_token_prob) == (50.0, 0.15, 0.85)
    assert cfg.data.random_token_prob == 0.0 and cfg.data.seq_len == 128


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  max_steps: 10\nscaling:\n  num_workers: 2\n")
    cfg = load_config(
        str(path),
        [
            "train.max_steps=200",
            "data.path=s3://bucket/corpus/",
            "scaling.use_gpu=true",
            "train.adam_betas=[0.9, 0.98]",
        ],
    )
    assert cfg.train.lr == 1e-3 and cfg.train.max_steps == 200 and cfg.scaling.num_workers == 2
    assert cfg.data.path == "s3://bucket/corpus/" and cfg.scaling.use_gpu is True
    assert cfg.train.adam_betas == [0.9, 0.98]


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.hidden_size=64", "model.num_heads=2"])
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_stepz=3", "unknown config key 'train.max_stepz'"),
        ("trian.lr=3", "unknown config key 'trian'"),
        ("train.lr=fast", "config key 'train.lr' expects float, got 'fast'"),
        ("train.max_steps=1.5", "config key 'train.max_steps' expects int"),
        ("train.zero_stage=4", "'train.zero_stage' must be one of [0, 1, 2, 3]"),
        ("train.grad_accum=3", "train.batch_size (128) must be divisible by scaling.num_workers x train.grad_accum"),
        ("lr", "not of the form section.key=value"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_unknown_key_in_yaml_names_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 12\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.hidden'"):
        load_config(str(path))


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_shipped_configs_load(path):
    if os.path.basename(path).startswith("compare-"):  # python -m electra_ray.compare's configs
        from electra_ray.compare import load_compare_config

        load_compare_config(path, [])
    elif os.path.basename(path).startswith("sweep-"):  # python -m electra_ray.tune's configs
        from electra_ray.tune import load_sweep_config

        load_sweep_config(path, [])
    else:
        load_config(path)


def test_mlm_objective_masks_as_bert_unless_the_config_says_otherwise(tmp_path):
    def masking(cfg):
        return cfg.data.mask_token_prob, cfg.data.random_token_prob

    assert masking(load_config(None)) == (0.85, 0.0)
    assert masking(load_config(None, ["train.objective=mlm"])) == (0.8, 0.1)
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  random_token_prob: 0.0\n")
    assert masking(load_config(str(path), ["train.objective=mlm"])) == (0.8, 0.0)
    assert masking(load_config(None, ["train.objective=mlm", "data.mask_token_prob=0.85"])) == (0.85, 0.1)
    with pytest.raises(ConfigError, match=r"'train.objective' must be one of \['electra', 'mlm'\], got 'bert'"):
        load_config(None, ["train.objective=bert"])


def test_paper_configs():
    small, base, large = (load_config(os.path.join(ROOT, "configs", f"{n}.yaml")) for n in ("small", "base", "large"))
    assert small.model == Config().model and small.train.lr == 5e-4 and small.data.seq_len == 128
    assert (
        base.model.hidden_size,
        base.data.seq_len,
        base.train.batch_size,
        base.train.lr,
        base.train.max_steps,
        base.model.generator_size,
    ) == (768, 512, 256, 2e-4, 766_000, 1 / 3)
    assert (
        large.model.num_layers,
        large.model.hidden_size,
        large.train.batch_size,
        large.data.mask_prob,
        large.model.generator_size,
    ) == (24, 1024, 2048, 0.25, 0.25)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "electra_ray.pretrain", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_cli_unknown_key_is_one_line_error():
    run = _cli("--set", "train.bogus=1")
    assert run.returncode == 2
    assert (
        run.stderr.strip().splitlines()[-1]
        == "error: unknown config key 'train.bogus' (known: " + ", ".join(sorted(Config().train.__dict__)) + ")"
    )
    assert "Traceback" not in run.stderr


def test_cli_help_documents_every_key():
    run = _cli("--help")
    assert run.returncode == 0
    for section, values in Config().to_dict().items():
        for key in values:
            assert f"{section}.{key} =" in run.stdout


# -- ranges (config.validate, issue 16) -----------------------------------------------------------

BAD_VALUES = [  # (key, value as --set writes it): each must be refused with the key named
    ("train.batch_size", "0"),
    ("train.grad_accum", "0"),
    ("train.max_steps", "0"),
    ("train.max_steps", "'1.5'"),
    ("train.lr", "0"),
    ("train.lr", "-1e-3"),
    ("train.lr", ".nan"),
    ("train.lr", "nan"),
    ("train.lr", ".inf"),
    ("train.lr", "-.inf"),
    ("train.warmup_steps", "-1"),
    ("train.weight_decay", "-0.1"),
    ("train.weight_decay", ".inf"),
    ("train.adam_betas", "[0.9]"),
    ("train.adam_betas", "[0.9, 0.98, 0.99]"),
    ("train.adam_betas", "[0.9, 1.0]"),
    ("train.adam_betas", "[-0.1, 0.999]"),
    ("train.adam_betas", "[0.9, .nan]"),
    ("train.adam_betas", "[a, b]"),
    ("train.adam_eps", "0"),
    ("train.adam_eps", ".nan"),
    ("train.grad_clip", "-1"),
    ("train.rtd_weight", "-1"),
    ("train.rtd_weight", ".nan"),
    ("train.temperature", "0"),
    ("train.temperature", ".inf"),
    ("train.max_failures", "-2"),
    ("train.max_bad_steps", "-1"),
    ("train.keep_checkpoints", "0"),
    ("train.eval_sequences", "0"),
    ("train.log_every", "0"),
    ("train.checkpoint_every", "0"),
    ("train.eval_every", "-50"),
    ("train.eval_every", "75"),
    ("train.inject_nan_steps", "[0]"),
    ("train.inject_nan_steps", "[2.5]"),
    ("train.inject_nan_steps", "[true]"),
    ("train.inject_nan_steps", "[x]"),
    ("train.seed", "-1"),
    ("train.seed", "4294967296"),
    ("train.precision", "fp8"),
    ("train.objective", "bert"),
    ("train.zero_stage", "4"),
    ("model.num_layers", "0"),
    ("model.hidden_size", "0"),
    ("model.hidden_size", "250"),
    ("model.embedding_size", "0"),
    ("model.num_heads", "0"),
    ("model.num_heads", "-4"),
    ("model.intermediate_size", "0"),
    ("model.max_position_embeddings", "7"),
    ("model.dropout", "1"),
    ("model.dropout", "-0.1"),
    ("model.dropout", ".nan"),
    ("model.generator_size", "0"),
    ("model.generator_size", "1.5"),
    ("model.generator_size", ".nan"),
    ("data.vocab_size", "15"),
    ("data.mask_prob", "0"),
    ("data.mask_prob", "1"),
    ("data.mask_prob", ".nan"),
    ("data.mask_token_prob", "1.1"),
    ("data.mask_token_prob", "-0.1"),
    ("data.random_token_prob", "-0.1"),
    ("data.random_token_prob", "0.2"),  # 0.85 [MASK] + 0.2 random > 1
    ("data.eval_fraction", "1"),
    ("data.eval_fraction", "-0.1"),
    ("data.docs_per_block", "0"),
    ("data.seq_len", "7"),
    ("data.seq_len", "513"),
    ("scaling.num_workers", "0"),
    ("scaling.num_workers", "-1"),
    ("scaling.cpus_per_worker", "-1"),
    ("scaling.cpus_per_worker", ".inf"),
    ("scaling.cpus_per_worker", "0.00001"),
]


@pytest.mark.parametrize("key, value", BAD_VALUES)
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"{key}={value}"])
    message = str(error.value)
    assert key in message and "\n" not in message


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", "config key 'train.batch_size' must be >= 1, got 0"),
        ("train.lr=.nan", "config key 'train.lr' must be finite and > 0, got nan"),
        ("train.lr=0", "config key 'train.lr' must be > 0, got 0.0"),
        # Range checks come before the checks that divide by these keys (once a ZeroDivisionError).
        ("train.grad_accum=0", "config key 'train.grad_accum' must be >= 1, got 0"),
        ("model.num_heads=0", "config key 'model.num_heads' must be >= 1, got 0"),
        ("model.generator_size=0", "config key 'model.generator_size' must be in (0, 1], got 0.0"),
        (
            "train.adam_betas=[0.9, 1]",
            "config key 'train.adam_betas' must be 2 numbers, each finite and in [0, 1), got [0.9, 1]",
        ),
        ("train.inject_nan_steps=[3, 0]", "config key 'train.inject_nan_steps' must be a list of integers, each >= 1"),
        ("data.seq_len=1024", "config key 'data.seq_len' must be <= model.max_position_embeddings (512), got 1024"),
        (
            "data.random_token_prob=0.2",
            "config keys 'data.mask_token_prob' + 'data.random_token_prob' must be <= 1, got 0.85 + 0.2",
        ),
    ],
)
def test_range_messages_name_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert str(error.value) == message or (message in str(error.value) and "inject_nan" in override)


def test_edge_values_are_accepted():
    cfg = load_config(
        None,
        [
            "model.generator_size=1",
            "model.dropout=0",
            "data.eval_fraction=0",
            "train.seed=0",
            "train.max_failures=-1",
            "train.grad_clip=0",
            "train.rtd_weight=0",
            "train.adam_betas=[0, 0]",
            "data.mask_token_prob=0.9",
            "data.random_token_prob=0.1",
            "data.seq_len=8",
            "model.max_position_embeddings=8",
            "data.vocab_size=16",
            "scaling.cpus_per_worker=0.5",
            "train.inject_nan_steps=[1, 5]",
        ],
    )
    assert cfg.model.generator_size == 1.0 and cfg.train.inject_nan_steps == [1, 5]


def test_a_saved_config_with_nan_is_refused():  # --resume reads RUN/config.json through Config.from_dict
    values = Config().to_dict()
    values["train"]["lr"] = float("nan")
    with pytest.raises(ConfigError, match="'train.lr' must be finite"):
        Config.from_dict(values)


def test_check_bounds_is_generic():
    """The checker other config dataclasses (finetune's) can call: bounds from the fields or by key."""
    from dataclasses import dataclass

    from electra_ray.config import BoundsError, check_bounds, option

    @dataclass
    class Settings:
        lr: float = option(1e-4, "learning rate", bounds="> 0")
        epochs: int = option(3, "passes", bounds="[1, 100]")
        seeds: list = option([0], "seeds", bounds=">= 0", items=int)
        warmup: float = option(0.1, "warm-up fraction")  # no bounds: finite only

    check_bounds(Settings())
    for field_name, value, allowed in [
        ("lr", 0.0, "> 0"),
        ("epochs", 101, "in [1, 100]"),
        ("seeds", [-1], "a list of integers, each >= 0"),
        ("warmup", math.inf, "finite"),
    ]:
        with pytest.raises(BoundsError) as error:
            check_bounds(Settings(**{field_name: value}), prefix="finetune.")
        assert (error.value.key, error.value.allowed) == (f"finetune.{field_name}", allowed)
    with pytest.raises(BoundsError, match="config key 'warmup' must be in \\[0, 1\\), got 1.5"):
        check_bounds(Settings(warmup=1.5), bounds={"warmup": "[0, 1)"})


def test_a_malformed_bound_fails_at_definition():
    from electra_ray.config import Bounds

    with pytest.raises(ValueError, match="bounds '0..1'"):
        Bounds.parse("0..1")
    assert 0 not in Bounds.parse("(0, 1]") and 1 in Bounds.parse("(0, 1]") and -1 in Bounds.parse(">= -1")


def test_help_lists_ranges_and_choices():
    from electra_ray.config import describe_options

    text = describe_options()
    assert "train.batch_size = 128  (>= 1)" in text and "model.generator_size = 0.25  (in (0, 1])" in text
    assert "train.precision = 'auto'  (one of auto, bf16, fp16, fp32)" in text
    assert "train.adam_betas = [0.9, 0.999]  (2 numbers, each finite and in [0, 1))" in text


# -- malformed files and overrides ----------------------------------------------------------------


def test_malformed_yaml_file_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {lr: [1,\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    message = str(error.value)
    assert str(path) in message and "line 2, column 1" in message and "\n" not in message


def test_malformed_yaml_override_is_one_line_naming_it():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["train.adam_betas=[0.9,"])
    message = str(error.value)
    assert message.startswith("override 'train.adam_betas=[0.9,': malformed YAML at line 1") and "\n" not in message


def test_malformed_yaml_list_in_a_file_names_the_key(tmp_path):  # a quoted list reaches convert_value as a string
    path = tmp_path / "c.yaml"
    path.write_text('train:\n  adam_betas: "[0.9,"\n')
    with pytest.raises(ConfigError, match=r"config key 'train.adam_betas': malformed YAML at line 1"):
        load_config(str(path))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"train:\n  lr: \xff\xfe\n", "is not UTF-8 text (byte 0xff at offset 13)"),
        (b"- 1\n- 2\n", "must hold a mapping of sections (model:, train:, ...), got a list"),
        (b"just some text\n", "must hold a mapping of sections (model:, train:, ...), got a str"),
        (b"train:\n\tlr: 1\n", "malformed YAML at line 2, column 1"),
        (b"train:\n  lr: 1\x00\n", "malformed YAML at line 2, column 8: unacceptable character #x0000"),
        (b"train: {}\n---\nmodel: {}\n", "malformed YAML at line 2"),  # two documents
    ],
)
def test_unreadable_config_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert str(error.value).startswith(f"config file {path}") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_directory_or_empty_file_as_config(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\ntrain:\n")
    assert load_config(str(path)) == load_config(None)


def test_cli_bad_value_and_bad_yaml_are_one_line_errors(tmp_path):
    run = _cli("--set", "train.lr=.nan")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "error: config key 'train.lr' must be finite and > 0, got nan"
    path = tmp_path / "broken.yaml"
    path.write_text("train: {lr: [1,\n")
    run = _cli("--config", str(path))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: config file {path}: malformed YAML at line 2")


# -- sweep and compare configs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_samples=0", "config key 'num_samples' must be >= 1, got 0"),
        ("reduction_factor=1", "config key 'reduction_factor' must be > 1, got 1.0"),
        ("reduction_factor=.nan", "config key 'reduction_factor' must be finite and > 1, got nan"),
        ("grace_period=-1", "config key 'grace_period' must be >= 0, got -1"),
        ("max_concurrent_trials=-1", "config key 'max_concurrent_trials' must be >= 0, got -1"),
        ("dev_fraction=0", "config key 'dev_fraction' must be in (0, 1), got 0.0"),
        ("dev_fraction=1", "config key 'dev_fraction' must be in (0, 1), got 1.0"),
        ("pretrain.train.lr=0", "config key 'pretrain.train.lr' must be > 0, got 0.0"),
        ("finetune.lr=.inf", "config key 'finetune.lr' must be finite, got inf"),
        ("space.train.lr=[1e-3, .nan]", "space.train.lr = nan: train.lr must be finite and > 0"),
        ("space.train.warmup_steps=[-1]", "space.train.warmup_steps = -1: train.warmup_steps must be >= 0"),
        (
            "space.train.lr={uniform: [1e-3, 1e-4]}",
            "space.train.lr: uniform needs [low, high], two finite numbers with low < high, got [0.001, 0.0001]",
        ),
        ("space.train.lr={loguniform: [0, 1e-3]}", "space.train.lr: loguniform needs low > 0"),
    ],
)
def test_bad_sweep_values_are_refused(override, message):
    from electra_ray.tune import load_sweep_config

    overrides = [override] + (["search=random"] if "uniform" in override else [])
    with pytest.raises(ConfigError) as error:
        load_sweep_config(os.path.join(ROOT, "configs", "sweep-tiny.yaml"), overrides)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("points=0", "config key 'points' must be >= 1, got 0"),
        ("dev_fraction=1", "config key 'dev_fraction' must be in (0, 1), got 1.0"),
        ("dev_fraction=.nan", "config key 'dev_fraction' must be finite and in (0, 1), got nan"),
        ("task=imdbb", "config key 'task' must be one of"),
        ("pretrain.model.dropout=1", "config key 'pretrain.model.dropout' must be in [0, 1), got 1.0"),
    ],
)
def test_bad_compare_values_are_refused(override, message):
    from electra_ray.compare import load_compare_config

    with pytest.raises(ConfigError) as error:
        load_compare_config(os.path.join(ROOT, "configs", "compare-tiny.yaml"), [override])
    assert message in str(error.value)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_shipped_configs_pass_validation(path):
    """Every shipped config, and every pre-training config it implies (each grid point of a sweep,
    both arms of a comparison), passes validate."""
    from electra_ray.config import validate

    name = os.path.basename(path)
    if name.startswith("compare-"):
        from electra_ray.compare import arm_config, load_compare_config

        cfg, given = load_compare_config(path, [])
        for objective in ("electra", "mlm"):
            arm_config(cfg, given, objective, cfg.pretrain.train.max_steps, "/tmp/unused")
    elif name.startswith("sweep-"):
        import itertools

        from electra_ray.tune import load_sweep_config, trial_config

        cfg = load_sweep_config(path, [])
        base = cfg.pretrain.to_dict()
        for values in itertools.product(*cfg.space.values()):
            trial_config(base, dict(zip(cfg.space, values)))
    else:
        validate(load_config(path))
