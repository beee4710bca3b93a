"""Held-out sets (evaluate, train.eval_every) read only the start of a corpus of many shards, and are
exactly the first sequences a read of the whole held-out split gives (no Ray)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from electra_ray.config import SHIPPED_CORPUS, DataConfig
from electra_ray.data import load_sequences, split_sentences, tokenize_and_pack
from electra_ray.documents import ReadStats, is_eval_document

SHARDS, ROWS = 40, 200
EVAL_FRACTION = 0.05
WANTED = 64


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> tuple[str, list[str]]:
    """40 Parquet shards of 200 documents: 8,000 distinct documents of eight sentences of the shipped corpus."""
    texts = pq.read_table(SHIPPED_CORPUS, columns=["text"]).column("text").to_pylist()
    sentences = [s for text in texts for s in split_sentences(text)]
    documents = [" ".join(sentences[i * 8 : i * 8 + 8]) for i in range(SHARDS * ROWS)]
    assert len(set(documents)) == len(documents) and all(documents)
    directory = tmp_path_factory.mktemp("many-shards")
    for shard in range(SHARDS):
        rows = documents[shard * ROWS : (shard + 1) * ROWS]
        pq.write_table(pa.table({"text": rows}), directory / f"part-{shard:05d}.parquet")
    return str(directory), documents


def fewest_documents(held_out: list[str], tokenizer_json: str, cfg: DataConfig, first_rows: dict) -> int:
    """How many leading held-out documents pack into the same first rows: what a bounded read needs."""
    for count in range(1, len(held_out) + 1):
        packed = tokenize_and_pack(held_out[:count], tokenizer_json, cfg.seq_len, cfg.packing, cfg.short_seq_prob)
        if len(packed["input_ids"]) >= WANTED and all(
            np.array_equal(packed[name][:WANTED], rows) for name, rows in first_rows.items()
        ):
            return count
    raise AssertionError("the held-out split is too small for the test")


@pytest.mark.parametrize("packing", ["concatenate", "segments"])
def test_held_out_sequences_read_only_the_shards_they_need(many_shards, tokenizer_json, packing):
    path, documents = many_shards
    cfg = DataConfig(path=path, seq_len=64, eval_fraction=EVAL_FRACTION, packing=packing)
    everything, bounded = ReadStats(), ReadStats()
    full = load_sequences(cfg, tokenizer_json, "eval", None, everything)
    first = load_sequences(cfg, tokenizer_json, "eval", WANTED, bounded)
    assert (everything.files, everything.rows) == (SHARDS, SHARDS * ROWS)  # a full scan reads it all
    assert len(full["input_ids"]) > 4 * WANTED
    # the same sequences as the full read's first ones: the held-out set does not depend on how much is read
    assert first.keys() == full.keys() and len(first["input_ids"]) == WANTED
    for name, rows in first.items():
        assert np.array_equal(rows, full[name][:WANTED])
    # and read up to the shard holding the last document they need, no further (a shard is one batch)
    held_out = [i for i, text in enumerate(documents) if is_eval_document(text, EVAL_FRACTION)]
    needed = fewest_documents([documents[i] for i in held_out], tokenizer_json, cfg, first)
    shards = held_out[needed - 1] // ROWS + 1
    assert (bounded.files, bounded.rows) == (shards, shards * ROWS)
    assert bounded.rows <= SHARDS * ROWS // 5


def test_evaluating_an_export_reads_a_bounded_part_of_the_corpus(many_shards, tokenizer_dir, tmp_path):
    from test_pretrain import tiny_config

    from electra_ray.data import tokenizer_from_json
    from electra_ray.evaluate import evaluate_export
    from electra_ray.export import write_export
    from electra_ray.model import build_model
    from electra_ray.tokenizer import read_tokenizer_json

    path, _ = many_shards
    cfg = tiny_config(path, tokenizer_dir, tmp_path, **{"data.eval_fraction": EVAL_FRACTION})
    tokenizer_json = read_tokenizer_json(tokenizer_dir)
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    model = build_model(cfg.model, tokenizer.get_vocab_size(), special["[PAD]"], cfg.train.rtd_weight)
    write_export(model, cfg, tokenizer_json, "untrained", str(tmp_path / "export"))

    bounded, again = ReadStats(), ReadStats()
    metrics = evaluate_export(str(tmp_path / "export"), max_sequences=WANTED, stats=bounded)
    assert metrics["sequences"] == WANTED and 0 <= metrics["auc_fixed_corruption"] <= 1
    assert 0 < bounded.files <= SHARDS // 8 and 0 < bounded.rows <= SHARDS * ROWS // 8
    # the same held-out set, so the same figures, each time (runs and resumes stay comparable)
    assert evaluate_export(str(tmp_path / "export"), max_sequences=WANTED, stats=again) == metrics
    assert again == bounded
