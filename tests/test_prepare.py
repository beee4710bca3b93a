"""The prepare verb: text and JSONL files, local or in S3, -> Parquet shards the pipeline reads."""

import gzip
import json

import pyarrow.parquet as pq
import pytest

from electra_ray import storage
from electra_ray.data import open_corpus
from electra_ray.errors import UserError
from electra_ray.prepare import prepare


@pytest.fixture
def inputs(tmp_path):
    directory = tmp_path / "in"
    directory.mkdir()
    # BERT's text layout: a sentence per line, a blank line between documents
    (directory / "a.txt").write_text("First doc, line one.\nLine two.\n\nSecond doc.\n\n\n\nThird doc.\n")
    with gzip.open(directory / "b.jsonl.gz", "wt") as f:
        for i in range(20):
            f.write(json.dumps({"body": f"json document {i} " + "word " * 30, "id": i}) + "\n")
    return directory


def test_text_and_jsonl_become_shards_of_about_the_requested_size(inputs, tmp_path):
    result = prepare([str(inputs)], str(tmp_path / "out"), field="body", shard_mb=0.0005)
    table = pq.read_table(str(tmp_path / "out"))
    texts = table.column("text").to_pylist()
    assert texts[:3] == ["First doc, line one.\nLine two.", "Second doc.", "Third doc."]
    assert texts[3:] == [f"json document {i} " + "word " * 30 for i in range(20)]  # JSON text verbatim
    assert set(table.column("source").to_pylist()) == {str(inputs / "a.txt"), str(inputs / "b.jsonl.gz")}
    assert result.documents == 23 and len(result.shards) > 5
    longest = max(len(text) for text in texts)
    for shard in result.shards[:-1]:  # each is cut at the first document that takes it past 500 bytes
        assert 500 <= sum(len(t) for t in pq.read_table(shard).column("text").to_pylist()) < 500 + longest
    assert open_corpus(str(tmp_path / "out")).count_rows() == 23

    with pytest.raises(UserError, match="already holds Parquet files"):
        prepare([str(inputs)], str(tmp_path / "out"), field="body")


def test_one_document_per_line_or_per_file(inputs, tmp_path):
    by_line = prepare([str(inputs / "a.txt")], str(tmp_path / "lines"), documents="line")
    by_file = prepare([str(inputs / "a.txt")], str(tmp_path / "files"), documents="file")
    assert (by_line.documents, by_file.documents) == (4, 1)


@pytest.mark.parametrize("line, message", [
    ('{"text": "ok"}\n{"text": ', r"b.jsonl:2: not JSON"),
    ('{"body": "no text field"}\n', r"b.jsonl:1: no field 'text' \(set --field\)"),
    ('{"text": 7}\n', r"b.jsonl:1: field 'text' holds int, not text"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    (tmp_path / "b.jsonl").write_text(line)
    with pytest.raises(UserError, match=message):
        prepare([str(tmp_path / "b.jsonl")], str(tmp_path / "out"))


def test_missing_or_empty_input(tmp_path):
    with pytest.raises(UserError, match="input not found"):
        prepare([str(tmp_path / "nothing")], str(tmp_path / "out"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="no documents in"):
        prepare([str(tmp_path / "empty.txt")], str(tmp_path / "out"))


def test_from_s3_to_s3(rclone_s3, inputs, tmp_path):
    for name in ("a.txt", "b.jsonl.gz"):
        filesystem, inner = storage.resolve(f"s3://electra/raw/{name}")
        with filesystem.open_output_stream(inner, compression=None) as stream:  # bytes as they are
            stream.write((inputs / name).read_bytes())
    result = prepare(["s3://electra/raw"], "s3://electra/prepared", field="body", shard_mb=0.001)
    assert result.shards[0] == "s3://electra/prepared/part-00000.parquet" and len(result.shards) > 1
    corpus = open_corpus("s3://electra/prepared")
    assert corpus.count_rows() == 23
    assert "s3://electra/raw/b.jsonl.gz" in corpus.to_table().column("source").to_pylist()
