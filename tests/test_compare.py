"""The equal-compute experiment end to end, shrunk: configs/compare-tiny.yaml with a 2-layer encoder,
20 ELECTRA steps and small fine-tunes, on a real local Ray; and its pure parts (the verdict, the
budgets' steps, the discriminator sanity check, [CLS] spread, the report) without Ray."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from electra_ray.compare import (
    OBJECTIVES,
    _points_table,
    cls_spread,
    cls_vectors,
    compare,
    discriminator_check,
    electra_steps,
    equal_compute_steps,
    format_report,
    load_compare_config,
    plot_auc,
    plot_curve,
    rtd_drop,
    untrained_export,
    verdict,
)
from electra_ray.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "compare-tiny.yaml")


@pytest.mark.ray
@pytest.mark.usefixtures("local_ray")
def test_equal_compute_experiment_writes_table_curve_and_verdict(small_corpus, tokenizer_dir, tmp_path):
    cfg, given = load_compare_config(
        CONFIG,
        [
            f"pretrain.data.path={small_corpus}",
            f"pretrain.data.tokenizer={tokenizer_dir}",
            "pretrain.data.seq_len=64",
            "pretrain.data.eval_fraction=0.1",
            "pretrain.model.num_layers=2",
            "pretrain.model.hidden_size=64",
            "pretrain.model.embedding_size=64",
            "pretrain.model.intermediate_size=128",
            "pretrain.model.max_position_embeddings=64",
            "pretrain.model.local_attention=2",
            "pretrain.train.max_steps=20",
            "pretrain.train.warmup_steps=5",
            "pretrain.train.log_every=5",
            "points=2",
            "from_scratch=true",
            "finetune.max_train_examples=64",
            "finetune.epochs=1",
            f"out={tmp_path}/compare",
        ],
    )
    assert cfg.finetune.seeds == [0, 1, 2] and cfg.task == "rotten_tomatoes"  # the shipped config's
    results = compare(cfg, given)

    budget = results["budget"]
    assert budget["electra"]["steps"] == 20 and budget["mlm"]["steps"] > 20  # no generator: more steps
    # the nearest multiple of `points` steps to equal FLOPs
    assert abs(budget["mlm"]["flops"] - budget["electra"]["flops"]) <= budget["mlm"]["step_flops"] * cfg.points / 2
    points = {(p["objective"], p["step"]): p for p in results["points"]}
    mlm_steps = budget["mlm"]["steps"]
    assert sorted(points) == sorted(
        [("none", 0), ("electra", 10), ("electra", 20), ("mlm", mlm_steps // 2), ("mlm", mlm_steps)]
    )
    for (objective, step), point in points.items():
        # the shipped protocol: 58 training sentences after the 10% dev split, the rate chosen on it, the probe
        finetune = point["finetune"]
        assert len(finetune["runs"]) == 3 and finetune["train_examples"] == 58
        assert finetune["lr_search"]["chosen"] == finetune["lr"] in (1e-4, 3e-4, 1e-3)
        assert set(finetune["probe"]) == {"mean", "cls"} and finetune["constant_loss"] > 0.5
        assert point["flops"] == (step * budget[objective]["step_flops"] if step else 0)

    # each objective pre-trained with its own masking, on the same tokenizer
    for objective, masking in (("electra", (0.85, 0.0)), ("mlm", (0.8, 0.1))):
        with open(os.path.join(points[(objective, budget[objective]["steps"])]["export"], "electra_ray.json")) as f:
            data = json.load(f)["config"]["data"]
        assert (data["mask_token_prob"], data["random_token_prob"]) == masking and data["tokenizer"] == tokenizer_dir

    out = results["out"]
    report = open(os.path.join(out, "report.md")).read()
    assert "| ELECTRA | 20 |" in report and f"| MLM (BERT) | {mlm_steps} |" in report
    assert "| none (random init) | 0 | 0 |" in report and "dev accuracy mean ± std | median | seeds" in report
    assert "| stuck | fine-tune lr | linear probe: mean-pooled |" in report and "Linear probe on the frozen" in report
    assert "At the full budget" in report and ("won by" in report or "a tie" in report)
    with open(os.path.join(out, "curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(os.path.join(out, "results.json")))["timings"]["total_s"] > 0

    # the random-init control, the sanity check and the [CLS] spread, measured before fine-tuning
    assert "Against random init (median" in report and "Verdict: " in report
    assert "## Discriminator sanity check (ELECTRA)" in report and "| ELECTRA x1 | 20 |" in report
    assert "## MLM baseline on held-out text" in report and "| budget | [CLS] spread |" in report
    (run,) = [r for r in results["runs"] if r["objective"] == "electra"]
    assert (run["steps"], run["warmup_steps"]) == (20, 5) and run["check"]["rtd_drop_step"] in (5, 10, 15, 20)
    assert isinstance(run["check"]["passed"], bool) and math.isfinite(run["check"]["rtd_drop_nats"])
    assert ("| pass |" if run["check"]["passed"] else "| FAIL |") in report
    for (objective, _step), point in points.items():
        assert point["budget"] == (0 if objective == "none" else 1) and 0 <= point["cls_spread"] <= 2
        evaluation = point.get("evaluation", {})
        assert (
            set(evaluation)
            >= {
                "none": set(),
                "mlm": {"mlm_loss", "unigram_entropy"},
                "electra": {
                    "auc_fixed_corruption",
                    "auc_generator_replacements",
                    "auc_random_replacements",
                    "rtd_loss_generator",
                    "rtd_loss_constant",
                },
            }[objective]
        )
        assert evaluation.get("sequences", 0) <= 256
    saved = json.load(open(os.path.join(out, "results.json")))
    assert len(saved["points"]) == 5 and all(len(p["finetune"]["runs"]) == 3 for p in saved["points"])
    assert [b["budget"] for b in saved["budgets"]] == [1.0]
    with open(os.path.join(out, "auc.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_compare_key_is_a_one_line_error():
    run = subprocess.run(
        [sys.executable, "-m", "electra_ray.compare", "--config", CONFIG, "--set", "pretrain.train.max_stepz=3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'pretrain.train.max_stepz'")


# -- without Ray ---------------------------------------------------------------------------------


def test_cls_spread_is_0_for_collapsed_and_1_for_orthogonal_vectors():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    assert cls_spread(np.outer([1.0, 2.0, 0.5, 7.0], direction)) == pytest.approx(0, abs=1e-9)  # lengths differ
    assert cls_spread(np.eye(5)) == pytest.approx(1)
    assert cls_spread(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2)  # opposite: beyond orthogonal
    assert 0.9 < cls_spread(rng.normal(size=(256, 128))) < 1.1  # random directions are nearly orthogonal
    with pytest.raises(ValueError):
        cls_spread(np.ones((1, 4)))


def _point(objective, step, median, std, budget=1.0, flops=None):
    values = [median - std, median, median + std]
    return {
        "objective": objective,
        "budget": budget if objective != "none" else 0.0,
        "step": step,
        "flops": float(step * 1e9 if flops is None else flops),
        "export": f"/x/{objective}-{step}",
        "finetune": {
            "metric": "accuracy",
            "majority_baseline": {"label": 0, "accuracy": 0.48},
            "train_examples": 64,
            "eval_examples": 32,
            "summary": {"accuracy": {"mean": median, "std": std, "median": median, "values": values}},
        },
    }


def _results(electra, mlm, none=(0.50, 0.02), earlier_budget=None):
    points = [
        _point("electra", 20, *electra),
        _point("mlm", 22, *mlm),
        _point("electra", 10, 0.3, 0.0),
        _point("mlm", 11, 0.3, 0.0),
    ]
    if none is not None:
        points.insert(0, _point("none", 0, *none))
    if earlier_budget is not None:  # a smaller budget's full point: not the verdict's
        points += [_point(o, 10, *earlier_budget, budget=0.5) for o in OBJECTIVES]
    return {"points": points}


def test_verdict_says_so_when_electra_leads_and_both_beat_random_init():
    text = verdict(_results(electra=(0.80, 0.01), mlm=(0.78, 0.01), earlier_budget=(0.2, 0.0)))
    assert "At the full budget (2e+10 FLOPs)" in text and "ELECTRA won by 2.0 points, more than" in text
    assert "ELECTRA +30.0 points, more than the seeds' standard deviation (2.0 points)" in text
    assert "MLM +28.0 points, more than" in text
    assert text.endswith(
        "Verdict: ELECTRA >= MLM, and both beat random init by more than the seeds' standard deviation."
    )


def test_the_probe_orders_the_encoders_and_stuck_fine_tunes_are_named():
    results = _results(electra=(0.80, 0.01), mlm=(0.78, 0.01))
    probes = {"none": (0.60, 0.55), "electra": (0.70, 0.66), "mlm": (0.72, 0.60)}  # ELECTRA's probe below MLM's
    for point in results["points"]:
        accuracy = probes[point["objective"]]
        point["finetune"]["probe"] = {
            p: {"accuracy": a, "dev_accuracy": a, "C": 1.0} for p, a in zip(("mean", "cls"), accuracy)
        }
        point["finetune"].update(lr=3e-4, lr_search={"chosen": 3e-4})
    results["points"][1]["finetune"]["summary"]["accuracy"]["stuck"] = 2  # ELECTRA's full point
    text = verdict(results)
    assert (
        "Linear probe on the frozen encoder (mean-pooled, dev accuracy): ELECTRA 0.7000, MLM 0.7200, "
        "random init 0.6000." in text
    )
    assert "Fine-tunes stuck at the constant predictor's loss (seeds): electra-x1-step20 (2)." in text
    assert "does not hold" in text and "ELECTRA's linear probe is below MLM's" in text
    assert "some fine-tunes are stuck" in text and "not above random init" not in text
    table = _points_table(results["points"], "accuracy")
    assert (
        "| ELECTRA | 20 | 2e+10 | 0.8000 ± 0.0100 | 0.8000 | 3 | **2 STUCK** | 0.0003 (dev) | 0.7000 | 0.6600 "
        "| x1 | — |" in table
    )


def test_verdict_names_each_failure():
    text = verdict(_results(electra=(0.52, 0.05), mlm=(0.75, 0.01)))
    assert "the MLM baseline won by 23.0 points" in text and "ELECTRA +2.0 points, not more than" in text
    assert "does not hold: ELECTRA's median is below the MLM baseline's; ELECTRA does not beat random init" in text
    assert "MLM does not beat" not in text
    # ELECTRA ahead of MLM is no failure; both within the spread of random init are two
    text = verdict(_results(electra=(0.53, 0.04), mlm=(0.51, 0.01), none=(0.50, 0.02)))
    assert "ELECTRA's median is below" not in text and "ELECTRA does not beat random init" in text
    assert "MLM does not beat random init" in text
    text = verdict(_results(electra=(0.8, 0.0), mlm=(0.7, 0.0), none=None))
    assert "No random-init control (from_scratch=false)" in text and "Verdict:" not in text


def test_each_budget_has_equal_flops_and_a_scaled_step_count():
    cfg, _ = load_compare_config(CONFIG, [])
    pre, points = cfg.pretrain, cfg.points
    flops = {}
    for budget in (0.25, 0.5, 1, 2.5):
        plan = equal_compute_steps(pre, 8192, points, budget)
        electra, mlm = plan["electra"], plan["mlm"]
        assert (
            electra["steps"]
            == electra_steps(pre.train.max_steps, points, budget)
            == round(budget * pre.train.max_steps)
        )  # 1200 x each budget is a multiple of points=2 already
        assert electra["steps"] % points == 0 and mlm["steps"] % points == 0 and mlm["steps"] > electra["steps"]
        assert abs(mlm["flops"] - electra["flops"]) <= mlm["step_flops"] * points / 2
        flops[budget] = electra["flops"]
    assert flops[2.5] == pytest.approx(10 * flops[0.25]) and equal_compute_steps(
        pre, 8192, points
    ) == equal_compute_steps(pre, 8192, points, 1.0)
    assert electra_steps(7, 2, 0.1) == 2 and electra_steps(1000, 3, 0.5) == 501  # at least `points`; a multiple


@pytest.mark.parametrize(
    "override, message",
    [
        ("budgets=[]", "config key 'budgets' must list at least one number > 0, got []"),
        ("budgets=[1,0]", "config key 'budgets' must be a list of numbers, each finite and > 0, got [1, 0]"),
        ("budgets=[1,1.0001]", "each budget must give its own number of steps"),
        ("pretrain.data.eval_fraction=0", "config key 'pretrain.data.eval_fraction' must be > 0"),
    ],
)
def test_bad_budgets_are_refused(override, message):
    with pytest.raises(ConfigError) as error:
        load_compare_config(CONFIG, [override])
    assert message in str(error.value)


def test_shipped_config_runs_the_random_init_control_at_one_budget():
    cfg, _ = load_compare_config(CONFIG, [])
    assert cfg.from_scratch is True and cfg.budgets == [1]


def _write_metrics(directory, records):
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_discriminator_check_reads_the_rtd_loss_against_the_constant_predictor(tmp_path):
    def entropy(p):
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    records = [
        {"step": 5, "rtd_loss": entropy(0.14) + 0.01, "replaced_fraction": 0.14},  # above the constant
        {"step": 10, "rtd_loss": entropy(0.13) - 0.03, "replaced_fraction": 0.13},
        {"step": 15, "rtd_loss": entropy(0.15) - 0.01, "replaced_fraction": 0.15},
        {"training_error": "stopped"},
    ]
    _write_metrics(tmp_path, records)
    check = discriminator_check(str(tmp_path), [{"auc_random_replacements": 0.55}])
    assert check["rtd_drop_nats"] == pytest.approx(0.03) and check["rtd_drop_step"] == 10 and check["passed"]
    assert check["best_auc_random_replacements"] == 0.55

    _write_metrics(tmp_path, records[:1] + records[2:])  # the best drop 0.01 nats: below 0.02
    assert not discriminator_check(str(tmp_path), [{"auc_random_replacements": 0.69}])["passed"]
    passed = discriminator_check(str(tmp_path), [{"auc_random_replacements": 0.6}, {"auc_random_replacements": 0.7}])
    assert passed["passed"] and passed["best_auc_random_replacements"] == 0.7
    assert rtd_drop(records[:1]) == (pytest.approx(-0.01), 5) and math.isnan(rtd_drop([])[0])
    os.remove(os.path.join(tmp_path, "metrics.jsonl"))
    nothing = discriminator_check(str(tmp_path), [])
    assert not nothing["passed"] and nothing["rtd_drop_step"] is None


def test_report_and_figures_of_two_budgets(tmp_path):
    cfg, _ = load_compare_config(CONFIG, ["budgets=[0.5,1]"])
    results = _results(electra=(0.80, 0.01), mlm=(0.78, 0.01), earlier_budget=(0.6, 0.02))
    for point in results["points"]:
        point["cls_spread"] = 0.25
        if point["objective"] == "electra":
            point["evaluation"] = {
                "sequences": 4,
                "auc_fixed_corruption": 0.6,
                "auc_generator_replacements": 0.55,
                "auc_random_replacements": 0.8,
                "rtd_loss_generator": 0.38,
                "rtd_loss_constant": 0.40,
                "bigram_auc_fixed_corruption": 0.9,
            }
        elif point["objective"] == "mlm":
            point["evaluation"] = {"sequences": 4, "mlm_loss": 6.1, "unigram_entropy": 5.9, "bigram_mlm_loss": 3.6}
    check = {"rtd_drop_nats": 0.005, "rtd_drop_step": 20, "best_auc_random_replacements": 0.8, "passed": True}
    plans = [{"budget": b, **equal_compute_steps(cfg.pretrain, 8192, 2, b)} for b in (0.5, 1.0)]
    results.update(
        config=dataclasses.asdict(cfg),
        budget={o: plans[-1][o] for o in OBJECTIVES},
        budgets=plans,
        runs=[
            {"objective": "electra", "budget": 1.0, "steps": 20, "check": check},
            {"objective": "electra", "budget": 0.5, "steps": 10, "check": dict(check, passed=False)},
        ],
        timings={"pretrain_electra_s": 60.0, "total_s": 120.0},
    )
    report = format_report(results)
    assert "| none (random init) | 0 | 0 | 0.5000 ± 0.0200 | 0.5000 | 3 | 0 | — | — | — | — | 0.25 |" in report
    assert "| ELECTRA | 20 | 2e+10 | 0.8000 ± 0.0100 | 0.8000 | 3 | 0 | — | — | — | x1 | 0.25 |" in report
    assert "| ELECTRA x1 | 20 | 0.0050 (step 20) | 0.800 | pass |" in report
    assert "| ELECTRA x0.5 | 10 | 0.0050 (step 20) | 0.800 | FAIL |" in report
    assert "| ELECTRA x1 | 20 | 2e+10 | 0.600 | 0.550 | 0.800 | +0.0200 | 0.900 |" in report  # + the yardstick
    assert "| MLM (BERT) x0.5 | 10 | 1e+10 | 6.100 | 5.900 | 3.600 |" in report
    assert "Budgets" in report and "x0.5, x1" in report
    assert "Verdict: ELECTRA >= MLM" in report and "Random-init control (from_scratch): the encoder" in report
    for plot, name in ((plot_curve, "curve.png"), (plot_auc, "auc.png")):
        plot(results, str(tmp_path / name))
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results["points"] = [p for p in results["points"] if p["budget"] != 0.5]  # one budget: curve through checkpoints
    plot_curve(results, str(tmp_path / "one.png"))


def test_cls_vectors_read_the_encoder_of_either_export(tokenizer_json, tmp_path):
    from tokenizers import Tokenizer
    from transformers import ElectraForMaskedLM

    from electra_ray.model import discriminator_config
    from electra_ray.tokenizer import save_tokenizer

    cfg, _ = load_compare_config(
        CONFIG,
        [
            "pretrain.model.num_layers=1",
            "pretrain.model.hidden_size=32",
            "pretrain.model.embedding_size=32",
            "pretrain.model.intermediate_size=64",
            "pretrain.model.max_position_embeddings=32",
        ],
    )
    texts = ["a fine film", "dull and long , with no story at all " * 10, "ok"]
    random_init = untrained_export(cfg.pretrain, tokenizer_json, str(tmp_path / "untrained"))
    vectors = cls_vectors(random_init, texts, max_len=128)  # truncated to the 32 positions
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    assert np.allclose(cls_vectors(random_init, texts, max_len=128, batch_size=2), vectors, atol=1e-5)

    tokenizer = Tokenizer.from_str(tokenizer_json)
    mlm_dir = str(tmp_path / "mlm-export" / "mlm")
    ElectraForMaskedLM(discriminator_config(cfg.pretrain.model, tokenizer.get_vocab_size())).save_pretrained(mlm_dir)
    save_tokenizer(tokenizer, mlm_dir, model_max_length=32)
    assert cls_vectors(str(tmp_path / "mlm-export"), texts, max_len=16).shape == (3, 32)
