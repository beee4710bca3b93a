#!/usr/bin/env bash
# Does electra-ray run on transformers VERSION? Installs it into a throwaway venv outside the
# repository (with torch pinned first: unpinned, pip would pull a CUDA build) and runs the pure
# tests that touch transformers plus the 2-worker ZeRO-2 pre-training test on a real local Ray.
#
#   scripts/check_transformers_floor.sh 4.53.0        # VENV=/tmp/tfvenv by default
#
# Result (2026-12-02, torch 2.13.0 CPU, Python 3.11), the floor pyproject.toml declares:
# - 4.53.0 (tokenizers 0.21.4): passed, 262 pure tests and the 2-worker ZeRO-2 run.
# - 4.52.4: fails at import: electra_ray/model.py imports transformers.masking_utils, which 4.53.0
#   introduced (ModuleNotFoundError in every test module that imports the model).
# On 4.53-4.57 ELECTRA chooses its eager/SDPA attention class when it is built and never calls the
# attention registered as "electra_ray" (transformers 5 does): correct, but CPU training with
# attention dropout uses torch's slower dropout there (model.attention).
set -euo pipefail
VERSION=${1:?usage: $0 TRANSFORMERS_VERSION}
VENV=${VENV:-/tmp/tfvenv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export DS_ACCELERATOR=cpu RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
# DeepSpeed's compiled ops are cached per venv: the repository's .venv cache stays untouched.
export TORCH_EXTENSIONS_DIR=$VENV/torch_extensions

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
# The project's dependencies and test extra, read from pyproject.toml, without torch and transformers.
mapfile -t requirements < <("$VENV/bin/python" - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    if not requirement.startswith(("torch", "transformers")):
        print(requirement)
PY
)
flock /tmp/electra-ray-pip.lock "$VENV/bin/pip" install -q torch==2.13.0
flock /tmp/electra-ray-pip.lock "$VENV/bin/pip" install -q torch==2.13.0 "transformers==$VERSION" "${requirements[@]}"
"$VENV/bin/python" -c "import transformers, tokenizers; print('transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)"

cd "$ROOT"  # the checkout's electra_ray is imported from here (python -m pytest puts it first on the path)
# Ray and DeepSpeed tests share the machine: the test lock, as for every test that starts them.
flock /tmp/electra-ray-tests.lock "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not ray" \
    tests/test_config.py tests/test_data.py tests/test_masking.py tests/test_objective.py \
    tests/test_tokenizer.py tests/test_train.py tests/test_loop_parts.py tests/test_learning_options.py \
    tests/test_evaluate.py tests/test_heldout_reads.py tests/test_checkpoint_layout.py \
    tests/test_safe_loading.py tests/test_optim.py
flock /tmp/electra-ray-tests.lock "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_pretrain.py -k zero2
echo "transformers $VERSION: passed"
