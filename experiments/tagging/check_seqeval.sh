#!/bin/bash
# electra_ray.tagging's entities and scores against seqeval 1.2.2 itself (default mode, micro
# average), on 3,000 random gold / predicted tag sequences per scheme. seqeval needs scikit-learn
# and SciPy, which the project does not: they go into a temporary directory, not the venv.
#
#   bash experiments/tagging/check_seqeval.sh      # prints "<scheme> equal" for bio, iob, bioes, bmes
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
TARGET=$(mktemp -d)
trap 'rm -rf "$TARGET"' EXIT
$PY -m pip install -q --target "$TARGET" seqeval==1.2.2 scikit-learn
SEQEVAL_PATH="$TARGET" $PY - <<'PYEOF'
import os, random, sys, warnings

from electra_ray import tagging

sys.path.append(os.environ["SEQEVAL_PATH"])  # after the venv's own packages: its numpy stays
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score  # noqa: E402
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402

warnings.simplefilter("ignore")  # seqeval warns where a score is undefined (and gives 0, as we do)
rng = random.Random(0)
for scheme, prefixes in [("bio", "BI"), ("iob", "IB"), ("bioes", "BIES"), ("bmes", "BMES")]:
    tags = ["O"] + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC")]
    as_seqeval = lambda seqs: [["I" + t[1:] if scheme == "bmes" and t[0] == "M" else t for t in s] for s in seqs]
    for _ in range(3000):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 5))]
        predicted = [[rng.choice(tags) for _ in s] for s in gold]
        ours = tagging.tagging_metrics(gold, predicted, scheme)
        g, p = as_seqeval(gold), as_seqeval(predicted)
        theirs = {"f1": f1_score(g, p), "precision": precision_score(g, p), "recall": recall_score(g, p),
                  "accuracy": accuracy_score(g, p)}
        assert all(abs(ours[k] - theirs[k]) < 1e-12 for k in theirs), (scheme, gold, predicted, ours, theirs)
        assert all(tagging.entities(s, "bioes") == get_entities(s) for s in g)
    print(scheme, "equal")
PYEOF
