#!/usr/bin/env bash
# fp16 and bf16 on one GPU: tiny runs (configs/tiny.yaml shapes, 1 worker, shipped corpus) that CI
# cannot do (train.precision=fp16 needs scaling.use_gpu). Checks what only a GPU shows:
# - fp16 under ZeRO-2 trains with DeepSpeed's dynamic loss scaling (loss_scale, overflow_steps in
#   metrics.jsonl), saves, and resumes from its own checkpoint (its DynamicLossScaler passes the
#   weights-only check), then exports;
# - bf16 under ZeRO-0 trains and exports;
# - MFU is measured against this GPU's datasheet peak (null, with a warning, for a GPU not in
#   electra_ray/meter.py GPU_PEAKS).
#
#   scripts/gpu_precision_check.sh            # OUT=/tmp/electra-gpu-check STEPS=60 by default
#
# Takes a few minutes on one GPU (mostly Ray start-up and the tokenizer). Not run yet: no GPU here.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/electra-gpu-check}
STEPS=${STEPS:-60}
PYTHON=${PYTHON:-python}
cd "$ROOT"
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
rm -rf "$OUT"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('GPU:', torch.cuda.get_device_name())"

common=(scaling.use_gpu=true train.log_every=10 train.warmup_steps=10 "output.dir=$OUT")
# fp16 + ZeRO-2: STEPS steps with a checkpoint at the end, then 20 more resumed from it.
"$PYTHON" -m electra_ray.pretrain --set "${common[@]}" train.precision=fp16 train.zero_stage=2 \
  "train.max_steps=$STEPS" "train.checkpoint_every=$STEPS" output.name=fp16
"$PYTHON" -m electra_ray.pretrain --set "${common[@]}" train.precision=fp16 train.zero_stage=2 \
  "train.max_steps=$((STEPS + 20))" "train.checkpoint_every=$STEPS" output.name=fp16
"$PYTHON" -m electra_ray.pretrain --set "${common[@]}" train.precision=bf16 \
  "train.max_steps=$STEPS" "train.checkpoint_every=$STEPS" output.name=bf16

"$PYTHON" - "$OUT" "$STEPS" <<'PY'
import json, math, os, sys

out, steps = sys.argv[1], int(sys.argv[2])
for name, last in (("fp16", steps + 20), ("bf16", steps)):
    rows = [json.loads(line) for line in open(os.path.join(out, name, "metrics.jsonl")) if '"step"' in line]
    first, end = rows[0], rows[-1]
    print(
        f"{name}: steps {first['step']}..{end['step']} | loss {first['loss']:.3f} -> {end['loss']:.3f} | "
        f"{end['tokens_per_s']:,.0f} tok/s | MFU {end['mfu']} | skipped {end['skipped_steps']} | "
        f"overflow steps {end['overflow_steps']} | loss scale {end.get('loss_scale')}"
    )
    assert end["step"] == last and all(math.isfinite(r["loss"]) for r in rows), name
    assert end["loss"] < first["loss"], f"{name}: the loss did not fall"
    assert ("loss_scale" in end) == (name == "fp16"), name
    assert os.path.isdir(os.path.join(out, name, "export", "discriminator")), f"{name}: no export"
print("GPU precision check passed")
PY
