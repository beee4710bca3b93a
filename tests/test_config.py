import glob
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
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.max_steps, cfg.train.warmup_steps) == (5e-4, 128, 10**6, 10**4)
    assert (cfg.train.rtd_weight, cfg.data.mask_prob, cfg.data.mask_token_prob) == (50.0, 0.15, 0.85)
    assert cfg.data.random_token_prob == 0.0 and cfg.data.seq_len == 128


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  max_steps: 10\nscaling:\n  num_workers: 2\n")
    cfg = load_config(str(path), ["train.max_steps=200", "data.path=s3://bucket/corpus/", "scaling.use_gpu=true",
                                  "train.adam_betas=[0.9, 0.98]"])
    assert cfg.train.lr == 1e-3 and cfg.train.max_steps == 200 and cfg.scaling.num_workers == 2
    assert cfg.data.path == "s3://bucket/corpus/" and cfg.scaling.use_gpu is True
    assert cfg.train.adam_betas == [0.9, 0.98]


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.hidden_size=64", "model.num_heads=2"])
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.max_stepz=3", "unknown config key 'train.max_stepz'"),
    ("trian.lr=3", "unknown config key 'trian'"),
    ("train.lr=fast", "config key 'train.lr' expects float, got 'fast'"),
    ("train.max_steps=1.5", "config key 'train.max_steps' expects int"),
    ("train.zero_stage=4", "'train.zero_stage' must be one of [0, 1, 2, 3]"),
    ("train.grad_accum=3", "train.batch_size (128) must be divisible by scaling.num_workers x train.grad_accum"),
    ("lr", "not of the form section.key=value"),
])
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
    assert (base.model.hidden_size, base.data.seq_len, base.train.batch_size, base.train.lr,
            base.train.max_steps, base.model.generator_size) == (768, 512, 256, 2e-4, 766_000, 1 / 3)
    assert (large.model.num_layers, large.model.hidden_size, large.train.batch_size, large.data.mask_prob,
            large.model.generator_size) == (24, 1024, 2048, 0.25, 0.25)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "electra_ray.pretrain", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_unknown_key_is_one_line_error():
    run = _cli("--set", "train.bogus=1")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == \
        "error: unknown config key 'train.bogus' (known: " + ", ".join(sorted(Config().train.__dict__)) + ")"
    assert "Traceback" not in run.stderr


def test_cli_help_documents_every_key():
    run = _cli("--help")
    assert run.returncode == 0
    for section, values in Config().to_dict().items():
        for key in values:
            assert f"{section}.{key} =" in run.stdout
