"""train.optimizer=electra: google-research/electra's AdamWeightDecayOptimizer and LR schedule
(model/optimization.py), checked against its formulas written out here, and under DeepSpeed."""

import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from electra_ray.optim import AdamWNoBiasCorrection, electra_lr_lambda

LR, BETA1, BETA2, EPS, WD = 0.1, 0.9, 0.999, 1e-6, 0.01
P0 = np.array([1.0, -2.0, 0.5, 3.0])
G1 = np.array([0.1, -0.3, 2.0, 0.0])
G2 = np.array([-0.2, -0.1, 1.5, 0.4])


def google_step(p, m, v, g, lr, weight_decay):
    """One AdamWeightDecayOptimizer._apply_gradients update, in float64."""
    m = BETA1 * m + (1.0 - BETA1) * g
    v = BETA2 * v + (1.0 - BETA2) * g * g
    update = m / (np.sqrt(v) + EPS) + weight_decay * p
    return p - lr * update, m, v


def stepped(optimizer, param, grad):
    param.grad = torch.tensor(grad, dtype=param.dtype)
    optimizer.step()


def test_two_steps_equal_googles_update_without_bias_correction():
    param = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float32))
    optimizer = AdamWNoBiasCorrection([param], lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD)
    p, m, v = P0, np.zeros(4), np.zeros(4)
    for grad in (G1, G2):
        stepped(optimizer, param, grad)
        p, m, v = google_step(p, m, v, grad, LR, WD)
        state = optimizer.state[param]
        np.testing.assert_allclose(param.detach().numpy(), p, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v, rtol=1e-6, atol=1e-12)
    assert float(state["step"]) == 2.0
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    # The first update written out: m = 0.1 g, v = 0.001 g^2, so m / sqrt(v) = sign(g) / sqrt(0.1) =
    # 3.162: 3.2x the unit step of bias-corrected Adam.
    first = AdamWNoBiasCorrection([torch.nn.Parameter(torch.zeros(2))], lr=1.0, eps=1e-12)
    first.param_groups[0]["params"][0].grad = torch.tensor([0.5, -4.0])
    first.step()
    np.testing.assert_allclose(first.param_groups[0]["params"][0].detach().numpy(), [-3.16227, 3.16227], rtol=1e-5)


def test_no_weight_decay_in_a_group_with_weight_decay_zero():
    decayed = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float32))
    exempt = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float32))
    groups = [{"params": [decayed], "weight_decay": WD}, {"params": [exempt], "weight_decay": 0.0}]
    optimizer = AdamWNoBiasCorrection(groups, lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=0.5)
    for param in (decayed, exempt):
        param.grad = torch.zeros(4)  # m = v = 0: the only change is weight decay
    optimizer.step()
    assert torch.equal(exempt.detach(), torch.tensor(P0, dtype=torch.float32))
    np.testing.assert_allclose(decayed.detach().numpy(), P0 * (1 - LR * WD), rtol=1e-6)
    # ... and with a gradient, the exempt group follows google's update with weight_decay 0
    for param in (decayed, exempt):
        param.grad = torch.tensor(G1, dtype=torch.float32)
    optimizer.step()
    p, m, v = google_step(P0, np.zeros(4), np.zeros(4), np.zeros(4), LR, 0.0)
    np.testing.assert_allclose(exempt.detach().numpy(), google_step(p, m, v, G1, LR, 0.0)[0], rtol=1e-6)


@pytest.mark.parametrize("flag", [1.0, torch.tensor(1.0)], ids=["float", "tensor"])
def test_found_inf_leaves_params_and_state_unchanged(flag):
    param = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float32))
    optimizer = AdamWNoBiasCorrection([param], lr=LR, eps=EPS, weight_decay=WD)
    stepped(optimizer, param, G1)
    before = param.detach().clone(), {k: v.clone() for k, v in optimizer.state[param].items()}
    optimizer.found_inf = flag
    stepped(optimizer, param, [float("nan"), float("inf"), 1.0, -float("inf")])  # a diverged step's gradients
    assert torch.equal(param.detach(), before[0])
    assert all(torch.equal(value, before[1][key]) for key, value in optimizer.state[param].items())
    # found_inf 0 (as train.py sets on a good step) is an ordinary step
    optimizer.found_inf = torch.tensor(0.0)
    stepped(optimizer, param, G2)
    p, m, v = google_step(*google_step(P0, np.zeros(4), np.zeros(4), G1, LR, WD), G2, LR, WD)
    np.testing.assert_allclose(param.detach().numpy(), p, rtol=1e-6)
    assert float(optimizer.state[param]["step"]) == 2.0


def test_learning_rate_factor_follows_googles_polynomial_decay_times_warmup():
    warmup, total = 10, 110

    def google(global_step):  # polynomial_decay(power 1, end 0, cycle False) * min(1, step / warmup)
        return (1.0 - min(global_step, total) / total) ** 1.0 * min(1.0, global_step / warmup)

    factor = electra_lr_lambda(warmup, total)
    for step in (0, warmup // 2, warmup, 60, total - 1, total, total + 5):
        assert factor(step) == pytest.approx(google(step), abs=1e-12), step
    assert factor(0) == 0.0 and factor(5) == pytest.approx(0.5 * 105 / 110) and factor(10) == pytest.approx(100 / 110)
    assert factor(60) == pytest.approx(0.5 / 1.1 * 1.0) and factor(110) == 0.0
    assert electra_lr_lambda(0, 100)(0) == 1.0 and electra_lr_lambda(0, 100)(50) == 0.5

    # google's update k (global_step k, from 0) uses factor(k); so does LambdaLR stepped after each update
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = AdamWNoBiasCorrection([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([google(k) for k in range(12)])


def test_state_dict_round_trip_continues_identically():
    def fresh():
        param = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float32))
        return param, AdamWNoBiasCorrection([{"params": [param], "weight_decay": WD}], lr=LR, eps=EPS)

    param, optimizer = fresh()
    stepped(optimizer, param, G1)
    stepped(optimizer, param, G2)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)  # as a checkpoint does: state_dict() holds the live tensors
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored_param, restored = fresh()
    with torch.no_grad():
        restored_param.copy_(param)
    restored.load_state_dict(saved)
    state = restored.state[restored_param]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and float(state["step"]) == 2.0
    assert all(v.dtype == torch.float32 for v in state.values())
    assert restored.param_groups[0]["weight_decay"] == WD
    stepped(optimizer, param, G1)
    stepped(restored, restored_param, G1)
    assert torch.equal(param.detach(), restored_param.detach())
    assert all(torch.equal(v, optimizer.state[param][k]) for k, v in state.items())


def test_a_bf16_parameter_keeps_float32_state():
    param = torch.nn.Parameter(torch.tensor(P0, dtype=torch.bfloat16))
    optimizer = AdamWNoBiasCorrection([param], lr=LR, eps=EPS, weight_decay=WD)
    stepped(optimizer, param, G1)
    assert param.dtype == torch.bfloat16 and optimizer.state[param]["exp_avg"].dtype == torch.float32
    expected = google_step(P0.astype(np.float32).astype(np.float64), np.zeros(4), np.zeros(4), G1, LR, WD)[0]
    np.testing.assert_allclose(param.detach().float().numpy(), expected, rtol=1e-2)


def test_the_config_switches_deepspeed_to_the_client_optimizer():
    from electra_ray.config import load_config
    from electra_ray.engine import client_optimizer, deepspeed_config
    from electra_ray.model import build_model
    from electra_ray.optim import lr_lambda

    small = [
        "model.num_layers=1",
        "model.hidden_size=32",
        "model.num_heads=2",
        "model.intermediate_size=64",
        "model.embedding_size=16",
    ]
    cfg = load_config(None, small)
    assert cfg.train.optimizer == "adamw" and "optimizer" in deepspeed_config(cfg)
    model = build_model(cfg.model, vocab_size=100)
    optimizer, schedule = client_optimizer(cfg, model)
    assert optimizer is None and schedule(0) == lr_lambda(cfg.train.warmup_steps, cfg.train.max_steps)(0)

    cfg = load_config(None, small + ["train.optimizer=electra", "train.warmup_steps=10", "train.max_steps=100"])
    ds = deepspeed_config(cfg)
    assert "optimizer" not in ds and ds["zero_allow_untested_optimizer"] is True
    optimizer, schedule = client_optimizer(cfg, model)
    assert isinstance(optimizer, AdamWNoBiasCorrection) and schedule(0) == 0.0 and schedule(10) == 0.9
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert decay["eps"] == 1e-6 and decay["betas"] == (0.9, 0.999) and decay["lr"] == cfg.train.lr


def test_a_bad_optimizer_name_is_a_one_line_config_error():
    from electra_ray.config import ConfigError, load_config

    with pytest.raises(
        ConfigError,
        match=r"^config key 'train.optimizer' must be one of \['adamw', 'electra'\], "
        r"got 'adam'$",
    ):
        load_config(None, ["train.optimizer=adam"])
    run = subprocess.run(
        [sys.executable, "-m", "electra_ray.pretrain", "--set", "train.optimizer=bad"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: config key 'train.optimizer' must be one of ['adamw', 'electra'], got 'bad'"
    ]


# -- under DeepSpeed: ZeRO 0-3 on one gloo rank, in a subprocess (a process group is per process) ---


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(8, 16)
        self.LayerNorm = torch.nn.LayerNorm(16)
        self.out = torch.nn.Linear(16, 1)

    def forward(self, x, y):
        hidden = self.LayerNorm(torch.tanh(self.dense(x)))
        return torch.nn.functional.mse_loss(self.out(hidden).squeeze(-1), y)


def _deepspeed_check(stage: int) -> None:
    """Train 4 steps, checkpoint, take a skipped (NaN) step and 3 more; a second engine loads the
    checkpoint, gets back m, v and step exactly, and ends with the same weights."""
    import deepspeed

    from electra_ray.config import load_config
    from electra_ray.engine import client_optimizer, deepspeed_config
    from electra_ray.optim import param_groups

    def engine_for():
        cfg = load_config(
            None,
            [
                f"train.zero_stage={stage}",
                "train.optimizer=electra",
                "train.batch_size=4",
                "train.warmup_steps=3",
                "train.max_steps=20",
                "train.lr=1e-2",
            ],
        )
        torch.manual_seed(0)
        model = Toy()
        optimizer, schedule = client_optimizer(cfg, model)
        engine, _, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=param_groups(model, cfg.train.weight_decay),
            optimizer=optimizer,
            config=deepspeed_config(cfg),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        assert isinstance(inner, AdamWNoBiasCorrection), type(inner)
        return engine, inner

    def weights(engine):
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        params = list(engine.module.parameters())
        with GatheredParameters(params) if stage == 3 else contextlib.nullcontext():
            return [p.detach().clone() for p in params]

    def train(engine, inner, batches, diverged=False):
        for x, y in batches:
            loss = engine(x, y)
            engine.backward(loss * float("nan") if diverged else loss)
            inner.found_inf = torch.tensor(float(diverged))  # as train.py's divergence guard
            engine.step()

    def snapshot(inner):
        return [{k: v.clone() for k, v in state.items()} for state in inner.state.values()]

    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 8, generator=generator), torch.randn(4, generator=generator)) for _ in range(8)]
    engine, inner = engine_for()
    train(engine, inner, batches[:4])
    saved = snapshot(inner)
    assert saved and all(set(s) == {"step", "exp_avg", "exp_avg_sq"} and float(s["step"]) == 4 for s in saved)
    with tempfile.TemporaryDirectory() as directory:
        engine.save_checkpoint(directory, tag="t")
        before = weights(engine)
        train(engine, inner, batches[4:5], diverged=True)
        assert all(torch.equal(a, b) for a, b in zip(before, weights(engine))), "a skipped step moved weights"
        assert all(torch.equal(v, s[k]) for s, now in zip(saved, snapshot(inner)) for k, v in now.items())
        train(engine, inner, batches[5:])

        resumed, resumed_inner = engine_for()
        resumed.load_checkpoint(directory, tag="t")
        loaded = snapshot(resumed_inner)
        assert len(loaded) == len(saved)
        for s, now in zip(saved, loaded):
            assert all(torch.equal(v, s[k]) and v.dtype == torch.float32 for k, v in now.items())
        train(resumed, resumed_inner, batches[4:5], diverged=True)
        train(resumed, resumed_inner, batches[5:])
    assert all(torch.equal(a, b) for a, b in zip(weights(engine), weights(resumed)))
    print(f"stage {stage} ok")


def test_under_deepspeed_zero_0_to_3_it_skips_saves_and_resumes_exactly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]
        ),
    }
    run = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "0", "1", "2", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [line for line in run.stdout.splitlines() if line.endswith(" ok")] == [f"stage {s} ok" for s in range(4)]


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        _deepspeed_check(int(argument))
