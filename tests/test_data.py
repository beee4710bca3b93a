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
    train = load_sequences(cfg, tokenizer_json, "train")["input_ids"]
    held_out = load_sequences(cfg, tokenizer_json, "eval")["input_ids"]
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
    with pytest.raises(
        DataError,
        match=r"^corpus .* was not finished by electra_ray.prepare: it has _PREPARING "
        r"and no _SUCCESS; run prepare again",
    ):
        open_corpus(path)


def test_a_partial_shard_is_refused(tmp_path):
    path = corpus_dir(tmp_path, ("part-00001.parquet.partial-0123456789ab", "half a shard"))
    with pytest.raises(
        DataError,
        match=r"was not finished by electra_ray.prepare: it has "
        r"part-00001.parquet.partial-0123456789ab; run prepare again",
    ):
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
    assert list(iter_documents(path, "text", "train", 0.0)) == ["good text", "bad \ufffd\ufffd bytes", "more good text"]
    assert capsys.readouterr().err == (
        f"warning: column 'text' of {path} holds text that is not valid UTF-8; decoded with replacement characters\n"
    )
    list(iter_documents(path, "text", "train", 0.0))
    assert capsys.readouterr().err == ""  # once per file and process


def test_ray_data_blocks_with_invalid_utf8_tokenize(tmp_path, tokenizer_json):
    import pyarrow.parquet as pq

    from electra_ray.data import _tokenize_block

    table = pq.read_table(invalid_utf8_corpus(tmp_path))
    out = _tokenize_block(
        table, column="text", tokenizer_json=tokenizer_json, seq_len=16, eval_fraction=0.0, split="train", corpus="c"
    )
    assert out["input_ids"].shape[1] == 16 and len(out["input_ids"]) >= 1


# -- packing="segments" (google-research/electra's ExampleBuilder) ---------------------------------


def disjoint_documents(n_docs=6, n_sentences=40, seed=0):
    """Documents of sentences; document k's tokens all lie in [100 (k + 1), 100 (k + 1) + 50)."""
    rng = np.random.default_rng(seed)
    return [
        [rng.integers(100 * (k + 1), 100 * (k + 1) + 50, size=rng.integers(1, 30)).tolist() for _ in range(n_sentences)]
        for k in range(n_docs)
    ]


def segments_of(row, types):
    """(A, B or None) of a `[CLS] A [SEP] (B [SEP]) PAD...` row, checking its layout and token types."""
    assert row[0] == CLS
    seps = np.flatnonzero(row == SEP).tolist()
    assert len(seps) in (1, 2) and seps[0] > 1  # A is never empty
    end = seps[-1]
    assert (row[end + 1 :] == PAD).all() and (row[1:end] != PAD).all() and (row[1:end] != CLS).all()
    assert (types[: seps[0] + 1] == 0).all() and (types[end + 1 :] == 0).all()  # [CLS] A [SEP], padding
    if len(seps) == 1:
        return row[1 : seps[0]], None
    assert seps[1] > seps[0] + 1 and (types[seps[0] + 1 : end + 1] == 1).all()  # B [SEP]
    return row[1 : seps[0]], row[seps[0] + 1 : end]


def test_segments_never_cross_documents_and_have_google_layout():
    from electra_ray.data import pack_segments

    docs = disjoint_documents()
    ids, types = pack_segments(docs, 64, CLS, SEP, PAD)
    assert ids.shape == types.shape and ids.shape[1] == 64 and ids.dtype == types.dtype == np.int32
    owners, n_two = [], 0
    for row, row_types in zip(ids, types):
        a, b = segments_of(row, row_types)
        n_two += b is not None
        tokens = np.concatenate([a, b]) if b is not None else a
        owner = set((tokens // 100 - 1).tolist())
        assert len(owner) == 1  # every token of a row comes from one document
        owners.append(owner.pop())
    assert owners == sorted(owners) and set(owners) == set(range(len(docs)))  # documents in order
    assert 0.6 * len(ids) < n_two < len(ids)  # mostly two segments (google: 90% aim at two), some one


def test_segments_split_sentences_by_googles_rule():
    from electra_ray.data import _two_segments

    class Fixed:  # a generator whose every draw is `value`
        def __init__(self, value):
            self.value = value

        def random(self):
            return self.value

    sentences = [[1] * 10, [2] * 30, [3] * 5, [4] * 20]
    # aim (64 - 3) // 2 = 30: 10 -> A (empty); 30 would put A at 40 -> B (the 50% draw says no); 5 keeps A
    # at 15 < 30 -> A (google's rule: after B has started); 20 -> B, cut to 64 - 15 - 3 = 46 tokens
    first, second = _two_segments(sentences, 64, 64, Fixed(0.99))
    assert first == [1] * 10 + [3] * 5 and second == [2] * 30 + [4] * 16
    first, second = _two_segments(sentences, 64, 64, Fixed(0.3))  # 30 joins A by the 50% draw
    assert first == [1] * 10 + [2] * 30 and second == [3] * 5 + [4] * 16
    first, second = _two_segments(sentences, 64, 64, Fixed(0.0))  # the 10% one-segment case, cut to 62
    assert first == ([1] * 10 + [2] * 30 + [3] * 5 + [4] * 20)[:62] and second == []


def test_short_seq_prob_makes_short_rows():
    from electra_ray.data import pack_segments

    docs = disjoint_documents(n_docs=4, n_sentences=120)

    def short_fraction(prob):
        ids, _ = pack_segments(docs, 64, CLS, SEP, PAD, short_seq_prob=prob)
        doc_of_row = ids[:, 1] // 100
        not_last = doc_of_row[:-1] == doc_of_row[1:]  # a document's last row holds what is left: any length
        lengths = (ids != PAD).sum(axis=1)[:-1][not_last]
        return np.mean(lengths < 63)  # a full row: 64 tokens, or 63 when B is cut to nothing

    assert short_fraction(0.0) == 0
    assert short_fraction(1.0) > 0.5


def test_segments_are_deterministic_and_per_document():
    from electra_ray.data import pack_segments

    docs = disjoint_documents()
    ids, types = pack_segments(docs, 32, CLS, SEP, PAD, short_seq_prob=0.3)
    again = pack_segments(docs, 32, CLS, SEP, PAD, short_seq_prob=0.3)
    assert (ids == again[0]).all() and (types == again[1]).all()
    # each document packs the same alone as with others: Ray Data's block boundaries change nothing
    alone = [pack_segments([doc], 32, CLS, SEP, PAD, short_seq_prob=0.3) for doc in docs]
    assert (ids == np.concatenate([a for a, _ in alone])).all()
    assert (types == np.concatenate([t for _, t in alone])).all()
    seeded = pack_segments(docs, 32, CLS, SEP, PAD, short_seq_prob=0.3, seeds=list(range(len(docs))))
    assert not np.array_equal(seeded[0], ids)  # the seed is what draws the split points


def test_a_sentence_longer_than_a_row_is_cut_not_dropped():
    from electra_ray.data import pack_segments

    tokens = list(range(100, 1100))  # one 1000-token "sentence" (no sentence end anywhere)
    ids, types = pack_segments([[tokens]], 64, CLS, SEP, PAD, short_seq_prob=0.0)
    kept = ids[(ids != CLS) & (ids != SEP) & (ids != PAD)]
    assert (np.diff(kept) > 0).all() and len(kept) > 0.9 * len(tokens)  # in order, 2-3 tokens lost per row


def test_split_sentences():
    from electra_ray.data import split_sentences

    assert split_sentences('One. Two? "Three!" Four\nfive six\n\n  seven.') == [
        "One.",
        "Two?",
        '"Three!"',
        "Four",
        "five six",
        "  seven.",
    ]
    assert split_sentences("no end at all") == ["no end at all"]
    assert split_sentences("") == []


def test_concatenate_packing_is_unchanged(tokenizer_json):
    from electra_ray.data import _tokenize_block, tokenize_and_pack, tokenizer_from_json

    tokenizer, special = tokenizer_from_json(tokenizer_json)
    texts = ["The first document. It has two sentences.", "", "A second one\nwith a newline."]
    columns = tokenize_and_pack(texts, tokenizer_json, 16)
    expected = pack(
        [e.ids for e in tokenizer.encode_batch([t for t in texts if t], add_special_tokens=False)],
        16,
        special["[CLS]"],
        special["[SEP]"],
        special["[PAD]"],
    )
    assert list(columns) == ["input_ids"] and np.array_equal(columns["input_ids"], expected)
    import pyarrow as pa

    block = _tokenize_block(
        pa.table({"text": texts}),
        column="text",
        tokenizer_json=tokenizer_json,
        seq_len=16,
        eval_fraction=0.0,
        split="train",
    )
    assert list(block) == ["input_ids"] and np.array_equal(block["input_ids"], expected)
    segments = _tokenize_block(
        pa.table({"text": texts}),
        column="text",
        tokenizer_json=tokenizer_json,
        seq_len=16,
        eval_fraction=0.0,
        split="train",
        packing="segments",
    )
    assert sorted(segments) == ["input_ids", "token_type_ids"]
    assert segments["input_ids"].shape == segments["token_type_ids"].shape


def test_masking_passes_token_types_and_never_selects_specials():
    from electra_ray.data import mask_batch, masked_batches, pack_segments

    special = {"[PAD]": PAD, "[UNK]": 1, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": 4}
    cfg = DataConfig(mask_prob=0.5)  # many selections: a [SEP] or pad picked would show
    ids, types = pack_segments(disjoint_documents(), 64, CLS, SEP, PAD, short_seq_prob=0.5)
    rng = np.random.default_rng(0)
    batch = mask_batch(ids, cfg, special, 1000, rng, token_type_ids=types)
    assert batch.token_type_ids.dtype == np.int64 and np.array_equal(batch.token_type_ids, types)
    picked = np.take_along_axis(ids, batch.positions, axis=1)[batch.weights > 0]
    assert len(picked) and not np.isin(picked, list(special.values())).any()
    assert mask_batch(ids, cfg, special, 1000, rng).token_type_ids is None  # concatenate: no token types

    class Shard:  # what masked_batches reads of a Ray Data shard
        def __init__(self, columns):
            self.columns = columns

        def iter_batches(self, **_):
            yield self.columns

    [with_types] = masked_batches(
        Shard({"input_ids": ids, "token_type_ids": types}), cfg, len(ids), special, 1000, rng, shuffle_seed=0
    )
    [without] = masked_batches(Shard({"input_ids": ids}), cfg, len(ids), special, 1000, rng, shuffle_seed=0)
    assert np.array_equal(with_types.token_type_ids, types) and without.token_type_ids is None


def test_load_sequences_with_segments_on_the_shipped_corpus(tokenizer_json):
    from electra_ray.data import iter_documents, tokenize_and_pack

    cfg = DataConfig(seq_len=128, packing="segments", eval_fraction=0.1)  # the shipped corpus
    columns = load_sequences(cfg, tokenizer_json, "eval")
    ids, types = columns["input_ids"], columns["token_type_ids"]
    assert ids.shape == types.shape and ids.shape[1] == 128 and len(ids) > 100
    assert set(np.unique(types).tolist()) == {0, 1}
    # no row crosses documents: the corpus packs exactly as its documents do one by one
    alone = [
        tokenize_and_pack([text], tokenizer_json, 128, "segments")
        for text in iter_documents(cfg.path, cfg.text_column, "eval", cfg.eval_fraction)
    ]
    assert len(alone) > 5
    assert np.array_equal(ids, np.concatenate([a["input_ids"] for a in alone]))
    assert np.array_equal(types, np.concatenate([a["token_type_ids"] for a in alone]))
    assert np.array_equal(load_sequences(cfg, tokenizer_json, "eval", 7)["token_type_ids"], types[:7])
