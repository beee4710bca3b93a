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
