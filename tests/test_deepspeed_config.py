"""train.precision=fp16 and train.deepspeed on CPU: the generated DeepSpeed config, the user's file
merged over it, every conflict named, bad files refused as one line before Ray starts."""

import json
import os
import subprocess
import sys

import pytest
import torch

from electra_ray.config import ConfigError, load_config
from electra_ray.ds_config import FP16_LOSS_SCALING, check_deepspeed_config, deepspeed_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = ["scaling.use_gpu=true"]  # config only: nothing here starts a worker


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_fp16_gets_deepspeeds_dynamic_loss_scaling_and_deepspeed_reads_it_so():
    ds = deepspeed_config(load_config(None, GPU + ["train.precision=fp16"]))
    assert ds["fp16"] == {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 16,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "consecutive_hysteresis": False,
        "min_loss_scale": 1,
    }
    assert ds["bf16"] == {"enabled": False}
    auto = deepspeed_config(load_config(None, GPU))
    assert auto["bf16"] == {"enabled": True} and "fp16" not in auto  # auto is bf16 on GPU
    cpu = deepspeed_config(load_config(None, []))
    assert cpu["bf16"] == {"enabled": False} and "fp16" not in cpu

    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig({**ds, "train_batch_size": ds["train_micro_batch_size_per_gpu"]})
    fp16 = parsed.float16_config
    assert fp16.enabled and fp16.loss_scale == 0 and fp16.initial_dynamic_scale() == 2**16  # 0: dynamic
    assert (fp16.loss_scale_window, fp16.hysteresis, fp16.min_loss_scale) == (1000, 2, 1)


def test_fp16_needs_a_gpu_and_is_one_line_before_ray():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["train.precision=fp16"])
    assert str(error.value) == (
        "train.precision=fp16 needs scaling.use_gpu=true (DeepSpeed's CPU accelerator refuses fp16 on most "
        "CPUs); on CPU use bf16 or fp32"
    )
    assert load_config(None, ["train.precision=bf16"]).train.precision == "bf16"  # DeepSpeed's CPU has bf16


def test_the_users_file_is_merged_over_ours(tmp_path):
    user = {
        "zero_optimization": {"reduce_bucket_size": 2e5, "offload_optimizer": {"device": "cpu"}},
        "activation_checkpointing": {"partition_activations": True},
        "optimizer": {"params": {"torch_adam": True, "lr": 5e-4}},  # lr: the same value as train.lr
        "train_batch_size": "auto",  # Hugging Face's convention: ours
        "gradient_clipping": 1,  # the same value, as an int
        "fp16": {"initial_scale_power": 12},
        "steps_per_print": 100,
    }
    cfg = load_config(
        None, GPU + ["train.precision=fp16", f"train.deepspeed={write(tmp_path / 'ds.json', json.dumps(user))}"]
    )
    ours = deepspeed_config(load_config(None, GPU + ["train.precision=fp16"]))
    merged = deepspeed_config(cfg)
    assert merged["zero_optimization"] == {
        **ours["zero_optimization"],
        "reduce_bucket_size": 200000.0,
        "offload_optimizer": {"device": "cpu"},
    }
    assert merged["activation_checkpointing"] == {"partition_activations": True}
    assert merged["optimizer"] == ours["optimizer"] and merged["train_batch_size"] == 128
    assert merged["fp16"] == {**ours["fp16"], "initial_scale_power": 12} and merged["steps_per_print"] == 100
    assert {k: v for k, v in merged.items() if k not in user} == {k: v for k, v in ours.items() if k not in user}
    check_deepspeed_config(cfg)  # DeepSpeed's own parser accepts the merge


def test_yaml_files_and_their_exponents(tmp_path):
    path = write(
        tmp_path / "ds.yaml", "zero_optimization:\n  allgather_bucket_size: 5e8\n  reduce_bucket_size: 2.5e+4\n"
    )
    merged = deepspeed_config(load_config(None, ["train.zero_stage=2", f"train.deepspeed={path}"]))
    # PyYAML reads "5e8" as a string; JSON (and DeepSpeed's examples) mean a number.
    assert merged["zero_optimization"]["allgather_bucket_size"] == 500_000_000
    assert merged["zero_optimization"]["reduce_bucket_size"] == 25_000


@pytest.mark.parametrize(
    "user, overrides, message",
    [
        (
            {"zero_optimization": {"stage": 3}},
            ["train.zero_stage=2"],
            "train.deepspeed sets zero_optimization.stage=3 but train.zero_stage=2: set train.zero_stage instead",
        ),
        (
            {"zero_optimization": True},  # DeepSpeed reads it as stage 1
            [],
            "train.deepspeed sets zero_optimization=true: zero_optimization must be a mapping "
            "(its zero_optimization.stage is set by our config)",
        ),
        (
            {"train_batch_size": 64},
            [],
            "train.deepspeed sets train_batch_size=64 but train.batch_size=128: set train.batch_size instead",
        ),
        (
            {"train_micro_batch_size_per_gpu": 16},
            ["scaling.num_workers=2", "train.grad_accum=2"],
            "train.deepspeed sets train_micro_batch_size_per_gpu=16 but train.batch_size / "
            "(scaling.num_workers x train.grad_accum) = 32: set train.batch_size instead",
        ),
        (
            {"gradient_accumulation_steps": 4},
            [],
            "train.deepspeed sets gradient_accumulation_steps=4 but train.grad_accum=1: set train.grad_accum instead",
        ),
        (
            {"gradient_clipping": 0.5},
            [],
            "train.deepspeed sets gradient_clipping=0.5 but train.grad_clip=1.0: set train.grad_clip instead",
        ),
        (
            {"bf16": {"enabled": True}},
            [],
            "train.deepspeed sets bf16.enabled=true but train.precision=auto: set train.precision instead",
        ),
        (
            {"fp16": {"enabled": False}},
            GPU + ["train.precision=fp16"],
            "train.deepspeed sets fp16.enabled=false but train.precision=fp16: set train.precision instead",
        ),
        (
            {"amp": {"enabled": True}},
            [],
            "train.deepspeed sets amp.enabled=true but train.precision=auto: set train.precision instead",
        ),
        (
            {"optimizer": {"type": "Lamb"}},
            [],
            "train.deepspeed sets optimizer.type=Lamb but train.optimizer=adamw: set train.optimizer instead",
        ),
        (
            {"optimizer": {"params": {"lr": 1e-3}}},
            [],
            "train.deepspeed sets optimizer.params.lr=0.001 but train.lr=0.0005: set train.lr instead",
        ),
        (
            {"optimizer": {"params": {"betas": [0.9, 0.98]}}},
            [],
            "train.deepspeed sets optimizer.params.betas=[0.9, 0.98] but train.adam_betas=[0.9, 0.999]: "
            "set train.adam_betas instead",
        ),
        (
            {"optimizer": {"params": {"eps": 1e-8}}},
            [],
            "train.deepspeed sets optimizer.params.eps=1e-08 but train.adam_eps=1e-06: set train.adam_eps instead",
        ),
        (
            {"optimizer": {"params": {"weight_decay": 0.1}}},
            [],
            "train.deepspeed sets optimizer.params.weight_decay=0.1 but train.weight_decay=0.01: "
            "set train.weight_decay instead",
        ),
        (
            {"optimizer": {"type": "AdamW"}},
            ["train.optimizer=electra"],
            "train.deepspeed sets optimizer, but train.optimizer=electra passes its own optimizer: "
            "remove it and set train.optimizer",
        ),
        (
            {"scheduler": {"type": "WarmupLR"}},
            [],
            "train.deepspeed sets scheduler, but the schedule comes from train.lr, warmup_steps and max_steps: "
            "remove it and set those keys",
        ),
    ],
)
def test_a_key_we_set_that_the_file_sets_otherwise_is_named(tmp_path, user, overrides, message):
    path = write(tmp_path / "ds.json", json.dumps(user))
    with pytest.raises(ConfigError) as error:
        deepspeed_config(load_config(None, [*overrides, f"train.deepspeed={path}"]))
    assert str(error.value) == message


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "electra_ray.pretrain", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("missing.json", None, "error: train.deepspeed file {path} not found"),
        (
            "broken.json",
            '{"zero_optimization": {"stage": 2,}}',
            "error: train.deepspeed file {path}: malformed JSON at line 1, column 35: Expecting property name",
        ),
        (
            "broken.yaml",
            "zero_optimization: {stage: [2,\n",
            "error: train.deepspeed file {path}: malformed YAML at line 2",
        ),
        (
            "list.yaml",
            "- stage: 2\n",
            "error: train.deepspeed file {path} must hold a mapping of DeepSpeed settings, got list",
        ),
        (
            "typo.json",
            '{"zero_optimization": {"reduce_bucket_sise": 1000}}',
            "error: train.deepspeed file {path}: DeepSpeed refuses it (DeepSpeedZeroConfig: reduce_bucket_sise: "
            "Extra inputs are not permitted)",
        ),
        (
            "stage.json",
            '{"zero_optimization": {"stage": 3}}',
            "error: train.deepspeed sets zero_optimization.stage=3 but train.zero_stage=0: "
            "set train.zero_stage instead",
        ),
    ],
)
def test_a_bad_file_is_one_line_and_exit_status_2_before_ray(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    out = tmp_path / "runs"
    run = _cli("--set", f"train.deepspeed={path}", f"output.dir={out}")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(message.format(path=path)), run.stderr
    assert not out.exists()  # refused before anything was written (and before Ray started)


def test_fp16_on_cpu_from_the_cli_is_one_line():
    run = _cli("--set", "train.precision=fp16")
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "error: train.precision=fp16 needs scaling.use_gpu=true (DeepSpeed's CPU accelerator refuses fp16 on "
        "most CPUs); on CPU use bf16 or fp32"
    ]


def test_an_fp16_zero_checkpoints_loss_scaler_passes_the_weights_only_check(tmp_path):
    """ZeRO 1-3 pickle their DynamicLossScaler into the optimizer states under fp16: resuming an
    fp16 run must not refuse its own checkpoint as tampered."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    from electra_ray.checkpoint import safe_loading, verify_pickles

    scaler = DynamicLossScaler(
        init_scale=2.0 ** FP16_LOSS_SCALING["initial_scale_power"],
        scale_window=1000,
        min_scale=1,
        delayed_shift=2,
        consecutive_hysteresis=False,
    )
    scaler.cur_scale = 1024.0
    torch.save({"loss_scaler": scaler, "optimizer_state_dict": {"x": torch.ones(2)}}, tmp_path / "optim_states.pt")
    verify_pickles(str(tmp_path))
    with safe_loading():
        loaded = torch.load(tmp_path / "optim_states.pt", weights_only=True)
    assert isinstance(loaded["loss_scaler"], DynamicLossScaler) and loaded["loss_scaler"].cur_scale == 1024.0
