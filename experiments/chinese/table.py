"""OUT/results.json and a Markdown table from what experiments/chinese/run.sh wrote under OUT."""

import json
import os
import sys

out = sys.argv[1]
ARMS = {"pretrained": "tiny-zh export (1,600 steps, whole-word masking)", "random": "random-init, same shape"}
# task: (directory pattern, the metric, a second metric shown beside it)
TASKS = {
    "sentiment": ("ft-{arm}", "accuracy", "f1"),
    "msra": ("ft-msra-{arm}", "f1", "accuracy"),
    "sentiment, lr 1e-3": ("ft-lr1e-3-{arm}", "accuracy", "f1"),
    "sentiment, lr 1e-4": ("ft-lr1e-4-{arm}", "accuracy", "f1"),
}


def stats(values: dict) -> str:
    return f"{values['median']:.3f} ({', '.join(f'{v:.3f}' for v in values['values'])})"


run = os.path.join(out, "tiny-zh")
history = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl")) if '"step"' in line]
keep = ("step", "mlm_loss", "rtd_loss", "gen_accuracy", "time")
corpus = {}
for part in ("poetry", "fortunes"):
    summary = json.load(open(os.path.join(out, "corpus", part, "_SUCCESS")))
    corpus[part] = {"documents": summary["documents"], "text_bytes": summary["text_bytes"]}
vocab = json.load(open(os.path.join(run, "export", "discriminator", "config.json")))["vocab_size"]
results = {
    "pretraining": {
        "corpus": corpus,
        "vocab_size": vocab,
        "first_report": {k: history[0].get(k) for k in keep},
        "last_report": {k: history[-1].get(k) for k in keep},
        "heldout": json.load(open(os.path.join(run, "eval.json"))),
    }
}
rows = []
for task, (pattern, metric, second) in TASKS.items():
    for arm, label in ARMS.items():
        path = os.path.join(out, pattern.format(arm=arm), "metrics.json")
        if not os.path.exists(path):
            continue
        finetune = json.load(open(path))
        entry = {
            "label": label,
            "metric": metric,
            "summary": {m: finetune["summary"][m] for m in finetune["summary"]},
            "majority_baseline": finetune["majority_baseline"],
            "train_examples": finetune["train_examples"],
            "eval_examples": finetune["eval_examples"],
            "seeds": finetune["config"]["seeds"],
        }
        results.setdefault(task, {})[arm] = entry
        baseline = finetune["majority_baseline"]
        rows.append(
            f"| {task} | {label} | {metric} {stats(finetune['summary'][metric])} "
            f"| {second} {finetune['summary'][second]['median']:.3f} "
            f"| {metric} {baseline[metric]:.3f}, {second} {baseline[second]:.3f} "
            f"| {finetune['train_examples']:,} / {finetune['eval_examples']:,} |"
        )
json.dump(results, open(os.path.join(out, "results.json"), "w"), indent=1)
first, last = results["pretraining"]["first_report"], results["pretraining"]["last_report"]
print(
    f"pre-training: MLM / RTD loss {first['mlm_loss']:.2f} / {first['rtd_loss']:.3f} (step {first['step']}) -> "
    f"{last['mlm_loss']:.2f} / {last['rtd_loss']:.3f} (step {last['step']}); vocabulary {vocab:,}"
)
print("| task | encoder | score, median (per seed) | also (median) | majority class | train / eval examples |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
