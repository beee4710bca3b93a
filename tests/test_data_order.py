"""The order the workers train on, on a real local Ray, through the code they run: data.build_dataset
(files read in an order drawn from the seed), Ray Train's split as driver.data_config asks for it,
and data.shuffled_batches (the shuffle buffer, data.shuffle_buffer, with each epoch's seed). The
shipped corpus is one file of State of the Union addresses sorted by year: read in stored order
through the former 256-sequence buffer, a run trained 1790 -> 2021 and then again (Spearman's rho
of a sequence's place and its address's year, as test_an_epoch_does_not_follow_the_corpus_order
measures it: +0.85; through an 8192-sequence buffer +0.37, the default's +0.00).

The sequences are packed with data.packing=segments, where no sequence crosses a document: each
row of the dataset is one of the rows its document packs to alone (each document has its own
generator, seeded from its text), so the document of every row is known exactly. What orders them
does not depend on the packing."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from electra_ray.config import SHIPPED_CORPUS, DataConfig
from electra_ray.data import build_dataset, epoch_shuffle_seed, shuffled_batches, tokenize_and_pack
from electra_ray.documents import is_eval_document
from electra_ray.driver import data_config

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]

MICRO_BATCH = 16  # configs/tiny.yaml's batch on its one worker


def worker_shard(dataset):
    """The shard a single worker gets from Ray Train (the trainer's DataConfig, as build_trainer sets it)."""
    [shards] = data_config().configure({"train": dataset}, world_size=1, worker_handles=None, worker_node_ids=None)
    return shards["train"]


def epoch_rows(shard, cfg: DataConfig, epoch: int, seed: int = 0) -> np.ndarray:
    """One epoch of the shard, as rank 0 of a run with train.seed `seed` gets it: [N, seq_len]."""
    batches = shuffled_batches(shard, MICRO_BATCH, cfg.shuffle_buffer, epoch_shuffle_seed(seed, epoch, rank=0))
    return np.concatenate([batch["input_ids"] for batch in batches])


def rows_by_document(texts: list[str], labels: list, cfg: DataConfig, tokenizer_json: str) -> dict[bytes, object]:
    """The label of the document each training row comes from, keyed by the row's bytes."""
    label_of = {}
    for text, label in zip(texts, labels):
        if text and not is_eval_document(text, cfg.eval_fraction):
            packed = tokenize_and_pack([text], tokenizer_json, cfg.seq_len, cfg.packing, cfg.short_seq_prob)
            for row in packed["input_ids"]:
                label_of.setdefault(row.tobytes(), label)
    return label_of


def labels(rows: np.ndarray, label_of: dict[bytes, object]) -> np.ndarray:
    found = [label_of.get(row.tobytes()) for row in rows]
    assert None not in found, "a row the corpus's documents do not pack to"
    return np.array(found)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank (as Spearman's rho ranks them)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2)[inverse]


def spearman(values: np.ndarray) -> float:
    """Spearman's rho between each value's place in the sequence and the value."""
    return float(np.corrcoef(np.arange(len(values)), average_ranks(values))[0, 1])


@pytest.fixture(scope="module")
def shipped(tokenizer_json):
    """The shipped corpus's training rows in three epochs: epochs 0 and 1 of one worker's shard, and
    epoch 0 again from a dataset built anew (as a resumed run builds it), with the rows' years."""
    cfg = DataConfig(seq_len=128, packing="segments")  # data.shuffle_buffer at its default
    table = pq.read_table(SHIPPED_CORPUS, columns=["text", "year"])
    year_of = rows_by_document(table["text"].to_pylist(), table["year"].to_pylist(), cfg, tokenizer_json)
    shard = worker_shard(build_dataset(cfg, tokenizer_json, seed=0))
    first, second = epoch_rows(shard, cfg, epoch=0), epoch_rows(shard, cfg, epoch=1)
    again = epoch_rows(worker_shard(build_dataset(cfg, tokenizer_json, seed=0)), cfg, epoch=0)
    return {"first": first, "second": second, "again": again, "year_of": year_of}


def test_an_epoch_does_not_follow_the_corpus_order(shipped):
    years = labels(shipped["first"], shipped["year_of"])
    rho = spearman(years)
    print(f"\nfirst epoch, {len(years)} sequences: Spearman's rho of place and year {rho:+.3f}")
    assert len(years) > 0.99 * len(shipped["year_of"])  # the whole corpus, but for drop_last's rest
    assert abs(rho) < 0.1


def test_the_same_seed_gives_the_same_order_and_each_epoch_its_own(shipped):
    first, second, again = shipped["first"], shipped["second"], shipped["again"]
    np.testing.assert_array_equal(first, again)  # what a resumed run skips is what was trained on
    assert len(first) == len(second) and (first != second).any(axis=1).mean() > 0.99
    # the same sequences, but for what drop_last left out of each
    assert len({row.tobytes() for row in first} ^ {row.tobytes() for row in second}) < 2 * MICRO_BATCH


def files_in_order(shard, file_of: dict[bytes, int]) -> list[int]:
    """The files in the order one execution of the shard delivers their rows, before any local shuffle."""
    rows = np.concatenate([batch["input_ids"] for batch in shard.iter_batches(batch_size=256, batch_format="numpy")])
    return list(dict.fromkeys(labels(rows, file_of).tolist()))


def test_files_are_read_in_an_order_drawn_from_the_seed(tokenizer_json, tmp_path):
    """Ten files of ten addresses each (Ray Data's second Parquet reader, as for a sharded corpus:
    data.MANY_FILES). The files' order is read off the shard before the local shuffle, which would
    blur it: Ray's local shuffle permutes each block it takes in whole, and a block holds several files."""
    table = pq.read_table(SHIPPED_CORPUS, columns=["text"]).slice(0, 100)
    for index in range(10):
        pq.write_table(table.slice(10 * index, 10), tmp_path / f"part-{index:05d}.parquet")
    cfg = DataConfig(path=str(tmp_path), seq_len=128, packing="segments")
    file_of = rows_by_document(table["text"].to_pylist(), [i // 10 for i in range(100)], cfg, tokenizer_json)
    shard = worker_shard(build_dataset(cfg, tokenizer_json, seed=0))
    order = files_in_order(shard, file_of)
    other_seed = files_in_order(worker_shard(build_dataset(cfg, tokenizer_json, seed=1)), file_of)
    print(f"\nfiles read in the order {order} (seed 0), {other_seed} (seed 1)")
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert files_in_order(shard, file_of) == order  # every execution (epoch) reads the files in one order
    assert other_seed != order
