import numpy as np
import pytest

from conftest import write_parquet
from electra_ray.config import DataConfig
from electra_ray.data import DataError, is_eval_document, load_sequences, open_corpus, pack

CLS, SEP, PAD = 2, 3, 0


def test_pack_concatenates_documents_into_fixed_rows():
    rows = pack([[10, 11, 12], [20, 21], [30, 31, 32, 33]], seq_len=6, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    # stream: 10 11 12 SEP 20 21 SEP 30 31 32 33, cut into bodies of 4
    assert rows.tolist() == [
        [CLS, 10, 11, 12, SEP, SEP],
        [CLS, 20, 21, SEP, 30, SEP],
        [CLS, 31, 32, 33, SEP, PAD],
    ]
    assert rows.dtype == np.int32


def test_pack_keeps_every_token_in_order():
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 100, size=rng.integers(1, 300)).tolist() for _ in range(50)]
    rows = pack(docs, seq_len=32, cls_id=CLS, sep_id=SEP, pad_id=PAD)
    assert rows.shape[1] == 32 and (rows[:, 0] == CLS).all()
    body = rows[:, 1:-1].ravel()
    body = body[body != PAD]
    assert [t for t in body.tolist() if t != SEP] == [t for doc in docs for t in doc]
    assert (rows[:-1, -1] == SEP).all()


def test_pack_empty():
    assert pack([], 16, CLS, SEP, PAD).shape == (0, 16)


def test_eval_split_is_deterministic_and_about_the_fraction():
    texts = [f"document number {i}" for i in range(20000)]
    chosen = [is_eval_document(t, 0.05) for t in texts]
    assert chosen == [is_eval_document(t, 0.05) for t in texts]
    assert np.mean(chosen) == pytest.approx(0.05, abs=0.01)
    assert not any(is_eval_document(t, 0.0) for t in texts)


def test_load_sequences_splits_are_disjoint(small_corpus, tokenizer_json):
    cfg = DataConfig(path=small_corpus, seq_len=64, eval_fraction=0.1)
    train = load_sequences(cfg, tokenizer_json, "train")
    held_out = load_sequences(cfg, tokenizer_json, "eval")
    assert train.shape[1] == held_out.shape[1] == 64 and len(train) > 3 * len(held_out) > 0
    assert not {r.tobytes() for r in train} & {r.tobytes() for r in held_out}


def test_missing_corpus_path(tmp_path):
    with pytest.raises(DataError, match="corpus path not found: .*nowhere"):
        open_corpus(str(tmp_path / "nowhere"))


def test_missing_text_column_names_the_columns(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", body=["a", "b"], year=[1, 2])
    with pytest.raises(DataError, match=r"has no column 'text' \(columns: body, year\)"):
        open_corpus(path)


def test_non_text_column(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", text=[1, 2])
    with pytest.raises(DataError, match="column 'text' .* holds int64, not text"):
        open_corpus(path)


def test_empty_corpus(tmp_path):
    import pyarrow as pa

    path = write_parquet(tmp_path / "c.parquet", text=pa.array([], pa.string()))
    with pytest.raises(DataError, match=r"is empty \(0 rows\)"):
        open_corpus(path)


def test_corrupt_parquet(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="cannot read Parquet corpus"):
        open_corpus(str(tmp_path))


def test_directory_without_parquet(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="no Parquet files under"):
        open_corpus(str(tmp_path / "sub"))


# -- corpora electra_ray.prepare did not finish; text that is not UTF-8 (issue 16) ----------------

def corpus_dir(tmp_path, *markers, **files):
    """A directory with one good shard, `markers` (name -> text) and more `files`."""
    directory = tmp_path / "corpus"
    directory.mkdir()
    write_parquet(directory / "part-00000.parquet", text=["one document", "another"])
    for name, text in dict(markers, **files).items():
        (directory / name).write_text(text)
    return str(directory)


def test_a_corpus_prepare_did_not_finish_is_refused(tmp_path):
    path = corpus_dir(tmp_path, ("_PREPARING", '{"started": "2026-01-01T00:00:00Z"}'))
    with pytest.raises(DataError, match=r"^corpus .* was not finished by electra_ray.prepare: it has _PREPARING "
                                        r"and no _SUCCESS; run prepare again"):
        open_corpus(path)


def test_a_partial_shard_is_refused(tmp_path):
    path = corpus_dir(tmp_path, ("part-00001.parquet.partial-0123456789ab", "half a shard"))
    with pytest.raises(DataError, match=r"was not finished by electra_ray.prepare: it has "
                                        r"part-00001.parquet.partial-0123456789ab; run prepare again"):
        open_corpus(path)


def test_corpora_without_markers_or_with_a_foreign_success_marker_open(tmp_path):
    assert open_corpus(corpus_dir(tmp_path)).count_rows() == 2
    spark = tmp_path / "spark"
    spark.mkdir()
    write_parquet(spark / "part-0.parquet", text=["a"])
    (spark / "_SUCCESS").write_text("")  # Spark's (and Hadoop's) empty marker
    assert open_corpus(str(spark)).count_rows() == 1


def test_a_shard_listed_in_success_must_be_there_whole(tmp_path):
    import json
    import os

    path = corpus_dir(tmp_path)
    size = os.path.getsize(os.path.join(path, "part-00000.parquet"))
    shards = [{"name": "part-00000.parquet", "rows": 2, "bytes": size}]

    def success(listed):
        with open(os.path.join(path, "_SUCCESS"), "w") as f:
            json.dump({"shards": listed, "documents": 2, "text_bytes": 19}, f)

    success(shards)
    (tmp_path / "corpus" / "_PREPARING").write_text("{}")  # beside _SUCCESS: the run got that far, it is complete
    assert open_corpus(path).count_rows() == 2
    success(shards + [{"name": "part-00001.parquet", "rows": 5, "bytes": 100}])
    with pytest.raises(DataError, match=r"is incomplete: its _SUCCESS lists part-00001.parquet, which is missing"):
        open_corpus(path)
    success([dict(shards[0], bytes=size + 1)])
    with pytest.raises(DataError, match=rf"part-00000.parquet has {size} bytes, its _SUCCESS says {size + 1}"):
        open_corpus(path)


def invalid_utf8_corpus(tmp_path):
    import pyarrow as pa

    # Parquet does not check UTF-8: a writer can store any bytes in a string column.
    text = pa.array([b"good text", b"bad \xff\xfe bytes", b"more good text"], pa.binary()).view(pa.string())
    return write_parquet(tmp_path / "bad.parquet", text=text)


def test_invalid_utf8_is_decoded_with_replacement_and_a_warning(tmp_path, capsys):
    from electra_ray.data import iter_documents

    path = invalid_utf8_corpus(tmp_path)
    assert list(iter_documents(path, "text", "train", 0.0)) == ["good text", "bad \ufffd\ufffd bytes",
                                                                  "more good text"]
    assert capsys.readouterr().err == (f"warning: column 'text' of {path} holds text that is not valid UTF-8; "
                                       f"decoded with replacement characters\n")
    list(iter_documents(path, "text", "train", 0.0))
    assert capsys.readouterr().err == ""  # once per file and process


def test_ray_data_blocks_with_invalid_utf8_tokenize(tmp_path, tokenizer_json):
    import pyarrow.parquet as pq

    from electra_ray.data import _tokenize_block

    table = pq.read_table(invalid_utf8_corpus(tmp_path))
    out = _tokenize_block(table, column="text", tokenizer_json=tokenizer_json, seq_len=16, eval_fraction=0.0,
                          split="train", corpus="c")
    assert out["input_ids"].shape[1] == 16 and len(out["input_ids"]) >= 1
