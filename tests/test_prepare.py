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


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "ok"}\n{"text": ', r"b.jsonl:2: not JSON"),
        ('{"body": "no text field"}\n', r"b.jsonl:1: no field 'text' \(set --field\)"),
        ('{"text": 7}\n', r"b.jsonl:1: field 'text' holds int, not text"),
    ],
)
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


# -- an output that is complete or visibly not (issue 16) -----------------------------------------


def test_shards_are_renamed_into_place_and_success_is_written_last(inputs, tmp_path, monkeypatch):
    import os
    import re

    from electra_ray import prepare as prepare_module

    renames = []
    real_replace = os.replace

    def recording_replace(source, target):
        renames.append((os.path.basename(source), os.path.basename(target)))
        present = sorted(os.listdir(os.path.dirname(target)))
        if os.path.basename(target) != "_PREPARING":  # while shards are written, OUT reads as unfinished
            assert "_PREPARING" in present and "_SUCCESS" not in present
        real_replace(source, target)

    monkeypatch.setattr(prepare_module.os, "replace", recording_replace)
    out = tmp_path / "out"
    result = prepare([str(inputs)], str(out), field="body", shard_mb=0.0005)

    shards = [os.path.basename(s) for s in result.shards]
    assert [target for _, target in renames] == ["_PREPARING", *shards, "_SUCCESS"]
    for source, target in renames:  # a random temporary name beside the final one, never the final one
        assert re.fullmatch(re.escape(target) + r"\.partial-[0-9a-f]{12}", source), source
    assert sorted(os.listdir(out)) == ["_SUCCESS", *shards]  # _PREPARING removed, no partial file left
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["documents"] == result.documents == 23 and success["text_bytes"] == result.text_bytes
    assert success["shards"] == [
        {"name": name, "rows": pq.read_metadata(out / name).num_rows, "bytes": (out / name).stat().st_size}
        for name in shards
    ]
    assert sum(shard["rows"] for shard in success["shards"]) == 23


@pytest.mark.parametrize(
    "marker, message",
    [
        ("_SUCCESS", r"already holds _SUCCESS \(a finished corpus\)"),
        ("_PREPARING", r"already holds _PREPARING \(an unfinished prepare\)"),
        ("part-00000.parquet.partial-0123456789ab", "already holds part-00000.parquet.partial-0123456789ab"),
    ],
)
def test_an_output_with_markers_is_refused_and_left_alone(inputs, tmp_path, marker, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / marker).write_text("{}")
    with pytest.raises(UserError, match=message):
        prepare([str(inputs)], str(out), field="body")
    assert [p.name for p in out.iterdir()] == [marker]


def test_a_failed_run_removes_what_it_wrote_and_nothing_else(inputs, tmp_path):
    import os

    (inputs / "c.jsonl").write_text('{"body": "fine"}\n{"body": ')  # read last: shards are written before
    with pytest.raises(UserError, match=r"c.jsonl:2: not JSON"):
        prepare([str(inputs)], str(tmp_path / "new"), field="body", shard_mb=0.0005)
    assert not (tmp_path / "new").exists()  # it made the directory: it removes it

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match=r"c.jsonl:2: not JSON"):
        prepare([str(inputs)], str(mine), field="body", shard_mb=0.0005)
    assert os.listdir(mine) == ["notes.txt"]
    os.remove(inputs / "c.jsonl")
    assert prepare([str(inputs)], str(mine), field="body").documents == 23  # and the next run starts afresh


@pytest.mark.parametrize("name, codec", [("gz", "gzip"), ("bz2", "bz2"), ("zst", "zstd")])
def test_corrupt_compressed_input_is_an_error_naming_the_file(tmp_path, name, codec):
    (tmp_path / f"bad.txt.{name}").write_bytes(b"this is not compressed data\n" * 10)
    with pytest.raises(
        UserError,
        match=rf"^cannot read .*bad\.txt\.{name}: .* \(a corrupt or truncated {codec} "
        rf"file\?\)$",
    ):
        prepare([str(tmp_path / f"bad.txt.{name}")], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path):
    data = gzip.compress(("a sentence of some length\n" * 2000).encode())
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])  # a download cut short
    with pytest.raises(UserError, match=r"cut\.txt\.gz: Truncated compressed stream"):
        prepare([str(tmp_path / "cut.txt.gz")], str(tmp_path / "out"))


@pytest.mark.parametrize("shard_mb", [0, -1.0, float("nan"), float("inf")])
def test_shard_size_must_be_positive(inputs, tmp_path, shard_mb):
    with pytest.raises(UserError, match=r"^--shard-mb must be a finite number > 0, got "):
        prepare([str(inputs)], str(tmp_path / "out"), shard_mb=shard_mb)
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line(inputs, tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (inputs / "z.txt.gz").write_bytes(b"not gzip")
    for args, last in (
        (["--shard-mb", "0"], "error: --shard-mb must be a finite number > 0, got 0.0"),
        (["--shard-mb", "many"], "error: --shard-mb must be a finite number > 0, got 'many'"),
        (
            [],
            f"error: cannot read {inputs}/z.txt.gz: zlib inflate failed: incorrect header check "
            f"(a corrupt or truncated gzip file?)",
        ),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "electra_ray.prepare", str(inputs), str(tmp_path / "out"), "--field", "body", *args],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
        )
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.strip().splitlines() == [last]
        assert not (tmp_path / "out").exists()


def test_s3_shards_are_copied_into_place_and_a_failed_run_cleans_up(rclone_s3, inputs, tmp_path):
    client = storage.s3_client()

    def keys(prefix):
        listed = client.list_objects_v2(Bucket="electra", Prefix=prefix).get("Contents", [])
        return sorted(item["Key"].removeprefix(prefix) for item in listed)

    result = prepare([str(inputs)], "s3://electra/staged", field="body", shard_mb=0.001)
    shards = [s.rpartition("/")[2] for s in result.shards]
    assert keys("staged/") == ["_SUCCESS", *shards]  # no partial object, no _PREPARING
    success = json.loads(client.get_object(Bucket="electra", Key="staged/_SUCCESS")["Body"].read())
    sizes = {
        item["Key"]: item["Size"] for item in client.list_objects_v2(Bucket="electra", Prefix="staged/")["Contents"]
    }
    assert [(s["name"], s["bytes"]) for s in success["shards"]] == [(n, sizes[f"staged/{n}"]) for n in shards]
    assert open_corpus("s3://electra/staged").count_rows() == 23
    with pytest.raises(UserError, match="already holds Parquet files"):
        prepare([str(inputs)], "s3://electra/staged", field="body")

    (inputs / "c.jsonl").write_text('{"body": ')
    with pytest.raises(UserError, match=r"c.jsonl:1: not JSON"):
        prepare([str(inputs)], "s3://electra/failed", field="body", shard_mb=0.001)
    assert keys("failed") == []
