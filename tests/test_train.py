import pytest
import torch

from electra_ray.config import load_config
from electra_ray.engine import deepspeed_config
from electra_ray.model import build_model
from electra_ray.optim import lr_lambda, param_groups


def test_warmup_then_linear_decay_to_zero():
    factor = lr_lambda(warmup_steps=10, max_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(4) == pytest.approx(0.5) and factor(9) == 1.0
    assert factor(10) == 1.0 and factor(60) == pytest.approx(0.5) and factor(110) == 0.0
    assert all(factor(s) >= factor(s + 1) for s in range(10, 120))


def test_deepspeed_batch_arithmetic_and_precision():
    cfg = load_config(
        None,
        [
            "train.batch_size=64",
            "train.grad_accum=4",
            "scaling.num_workers=2",
            "train.zero_stage=3",
            "train.grad_clip=0.5",
        ],
    )
    ds = deepspeed_config(cfg, "fp32")
    assert ds["train_batch_size"] == 64 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_micro_batch_size_per_gpu"] * 4 * 2 == 64
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and deepspeed_config(cfg, "bf16")["bf16"]["enabled"] is True
    assert "fp16" not in ds and "fp16" not in deepspeed_config(cfg, "bf16")
    assert ds["optimizer"]["params"]["eps"] == 1e-6 and ds["optimizer"]["params"]["weight_decay"] == 0.01


def test_no_weight_decay_on_biases_and_layer_norms():
    cfg = load_config(
        None,
        [
            "model.num_layers=1",
            "model.hidden_size=32",
            "model.num_heads=2",
            "model.intermediate_size=64",
            "model.embedding_size=16",
        ],
    )
    model = build_model(cfg.model, vocab_size=100)
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert isinstance(decay["params"][0], torch.nn.Parameter)


def test_a_deterministic_setup_failure_becomes_a_training_error_not_a_retry():
    """Ray Train would restart the workers train.max_failures times (forever with -1) for it."""
    from electra_ray.errors import TrainingError
    from electra_ray.train import setup_errors

    with pytest.raises(TrainingError, match=r"^worker set-up failed: KeyError: '\[MASK\]'$"):
        with setup_errors():
            {}["[MASK]"]
    with pytest.raises(ConnectionError):  # a transient failure still propagates: Ray Train retries it
        with setup_errors():
            raise ConnectionError("peer reset")
