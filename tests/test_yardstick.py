"""The bigram yardstick (electra_ray/yardstick.py): counts that stay sparse, the two reference figures
on text whose bigram structure is known, and the cache."""

import math
import os

import numpy as np
import pytest

from electra_ray import yardstick
from electra_ray.evaluate import format_report
from electra_ray.heldout import fixed_corruption
from electra_ray.scoring import unigram_entropy
from electra_ray.yardstick import BigramCounts, detection_auc, load_or_count, masked_token_loss

PAD, CLS, SEP = 0, 2, 3
SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]
FIRST, PAIRS = 10, 20  # tokens 10..29 are each always followed by their partner, 30..49


def paired(rows: int, seed: int, length: int = 64) -> np.ndarray:
    """[CLS] a b a' b' ... [SEP]: each a drawn at random from 10..29, each b = a + 20 (b always follows a)."""
    rng = np.random.default_rng(seed)
    first = rng.integers(FIRST, FIRST + PAIRS, (rows, (length - 2) // 2))
    body = np.stack([first, first + PAIRS], axis=2).reshape(rows, -1)
    return np.concatenate([np.full((rows, 1), CLS), body, np.full((rows, 1), SEP)], axis=1)


def iid(rows: int, seed: int, length: int = 64, vocab: int = 64) -> np.ndarray:
    """[CLS] tokens [SEP], the tokens independent draws from a skewed (Zipf-like) unigram distribution."""
    rng = np.random.default_rng(seed)
    tokens = np.arange(len(SPECIAL), vocab)
    weights = 1.0 / np.arange(1, len(tokens) + 1)
    body = rng.choice(tokens, (rows, length - 2), p=weights / weights.sum())
    return np.concatenate([np.full((rows, 1), CLS), body, np.full((rows, 1), SEP)], axis=1)


def every_token(sequences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every non-special token: the positions a masking could select."""
    return np.nonzero(~np.isin(sequences, SPECIAL))


def corruption_auc(counts: BigramCounts, held_out: np.ndarray) -> float:
    """The figure on evaluate's fixed corruption: 15% unigram replacements, seed 0."""
    corrupted = fixed_corruption(held_out, SPECIAL, PAD, 0.15, 0)
    return detection_auc(counts, corrupted.input_ids, corrupted.replaced, corrupted.scored)


def test_counts_are_adjacent_pairs_within_rows_without_padding():
    sequences = np.array([[CLS, 5, 6, 5, SEP, PAD], [CLS, 6, 5, SEP, PAD, PAD]])
    counts = BigramCounts.from_sequences([sequences], vocab_size=8, pad_id=PAD)
    assert counts.unigram.tolist() == [0, 0, 2, 2, 0, 3, 2, 0]  # [PAD] never counted
    pairs = {divmod(int(k), 8): int(c) for k, c in zip(counts.pair_keys, counts.pair_counts)}
    # [CLS] and [SEP] are context; no pair spans two rows or touches [PAD]
    assert pairs == {(CLS, 5): 1, (5, 6): 1, (6, 5): 2, (5, SEP): 2, (CLS, 6): 1}
    assert counts.pair_count(np.array([6, 5, -1]), np.array([5, 5, 5])).tolist() == [2, 0, 0]
    # each row of p(. | a) sums to 1 over the vocabulary
    rows = counts.next_probability(np.repeat(np.arange(8), 8), np.tile(np.arange(8), 8)).reshape(8, 8)
    assert np.allclose(rows.sum(axis=1), 1.0)


def test_streamed_counting_equals_counting_at_once(monkeypatch):
    sequences = iid(400, seed=3)
    whole = BigramCounts.from_sequences([sequences], vocab_size=64, pad_id=PAD)
    monkeypatch.setattr(yardstick, "FLUSH_PAIRS", 500)  # a merge every few chunks
    streamed = BigramCounts.from_sequences(np.array_split(sequences, 37), vocab_size=64, pad_id=PAD)
    assert np.array_equal(whole.pair_keys, streamed.pair_keys)
    assert np.array_equal(whole.pair_counts, streamed.pair_counts)
    assert np.array_equal(whole.unigram, streamed.unigram)


def test_a_deterministic_bigram_is_predicted_and_its_corruption_detected():
    counts = BigramCounts.from_sequences([paired(2000, seed=0)], vocab_size=64, pad_id=PAD)
    held_out = paired(100, seed=1)
    rows, cols = every_token(held_out)
    # b from a (its left), and a from b (its right): both neighbours pin every token down
    assert masked_token_loss(counts, held_out, rows, cols) < 0.05
    # a token drawn from the unigram distribution breaks the pair it lands in
    assert corruption_auc(counts, held_out) > 0.93  # 0.96: a replacement also breaks its neighbours' pairs


def test_independent_tokens_give_the_unigram_entropy_and_chance():
    counts = BigramCounts.from_sequences([iid(8000, seed=0)], vocab_size=64, pad_id=PAD)
    held_out = iid(200, seed=1)
    rows, cols = every_token(held_out)
    loss = masked_token_loss(counts, held_out, rows, cols)
    entropy = unigram_entropy(held_out[rows, cols])
    assert loss == pytest.approx(entropy, abs=0.05) and loss > entropy - 0.02  # no context to use
    assert corruption_auc(counts, held_out) == pytest.approx(0.5, abs=0.03)


def test_the_loss_uses_the_original_neighbours_and_normalises_over_the_vocabulary():
    counts = BigramCounts.from_sequences([paired(500, seed=0)], vocab_size=64, pad_id=PAD)
    held_out = paired(4, seed=1)
    rows, cols = np.array([0, 0]), np.array([1, 2])  # two adjacent positions, both "masked"
    one_at_a_time = [masked_token_loss(counts, held_out, rows[i : i + 1], cols[i : i + 1]) for i in range(2)]
    assert masked_token_loss(counts, held_out, rows, cols) == pytest.approx(np.mean(one_at_a_time))
    # against a brute force over the vocabulary, with p(t | left) p(right | t)
    left, target, right = held_out[0, 1], held_out[0, 2], held_out[0, 3]
    vocab = np.arange(64)
    joint = counts.next_probability(np.full(64, left), vocab) * counts.next_probability(vocab, np.full(64, right))
    assert one_at_a_time[1] == pytest.approx(-math.log(joint[target] / joint.sum()))
    assert math.isnan(masked_token_loss(counts, held_out, np.zeros(0, int), np.zeros(0, int)))


def test_a_large_vocabulary_stays_sparse(monkeypatch):
    vocab = 30522  # BERT's: a dense V x V matrix would be 7.5 GB
    rng = np.random.default_rng(0)
    sequences = rng.integers(len(SPECIAL), vocab, (2000, 128))
    counts = BigramCounts.from_sequences([sequences], vocab_size=vocab, pad_id=PAD)
    arrays = [v for v in vars(counts).values() if isinstance(v, np.ndarray)]
    assert max(a.size for a in arrays) <= max(vocab + 1, sequences.size)
    assert counts.nbytes < 24 * sequences.size + 48 * (vocab + 1)  # pairs + per-token arrays, no V^2
    assert len(counts.pair_keys) <= sequences.size  # distinct pairs: at most the pairs counted
    held_out = rng.integers(len(SPECIAL), vocab, (4, 128))
    positions = np.nonzero(rng.random(held_out.shape) < 0.15)
    loss = masked_token_loss(counts, held_out, *positions)  # in batches of DENSE_ENTRIES // V positions
    monkeypatch.setattr(yardstick, "DENSE_ENTRIES", 3 * vocab)  # three positions a batch: the same loss
    assert masked_token_loss(counts, held_out, *positions) == pytest.approx(loss) and math.isfinite(loss)


def test_the_cache_round_trips_and_a_mismatched_key_counts_again(tmp_path):
    made = []

    def count(seed=0):
        made.append(seed)
        return BigramCounts.from_sequences([paired(50, seed)], vocab_size=64, pad_id=PAD)

    path = str(tmp_path / "bigram-counts.npz")
    first = load_or_count(path, "key-a", count)
    again = load_or_count(path, "key-a", count)
    assert len(made) == 1 and os.path.isfile(path)  # the second came from the file
    for name in ("unigram", "pair_keys", "pair_counts", "left_totals", "row_ptr", "col_ptr", "by_right"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert (again.vocab_size, again.pad_id) == (64, PAD)
    other = load_or_count(path, "key-b", lambda: count(seed=7))  # another tokenizer or corpus: counted again
    assert made == [0, 7] and not np.array_equal(other.unigram, first.unigram)
    assert BigramCounts.load(path, "key-a") is None and BigramCounts.load(path, "key-b") is not None
    (tmp_path / "bigram-counts.npz").write_bytes(b"PK\x03\x04 cut short")  # a corrupt file: counted again
    load_or_count(path, "key-b", count)
    assert len(made) == 3 and BigramCounts.load(path, "key-b") is not None
    # no place to write: no cache, no error, nothing left behind
    assert load_or_count(str(tmp_path / "missing" / "counts.npz"), "key-a", count).vocab_size == 64
    assert load_or_count("", "key-a", count).vocab_size == 64 and len(made) == 5
    assert sorted(os.listdir(tmp_path)) == ["bigram-counts.npz"]


def test_cache_keys_follow_what_the_counts_depend_on():
    key = yardstick.cache_key(tokenizer="abc", corpus="c.parquet", seq_len=128)
    assert key == yardstick.cache_key(seq_len=128, corpus="c.parquet", tokenizer="abc")
    assert key != yardstick.cache_key(tokenizer="abc", corpus="c.parquet", seq_len=64)


def test_the_report_shows_each_figure_beside_its_yardstick():
    electra = {
        "sequences": 256,
        "unigram_entropy": 6.2,
        "bigram_mlm_loss": 3.57,
        "generator_mlm_loss": 5.41,
        "rtd_loss_generator": 0.3,
        "rtd_loss_constant": 0.31,
        "replaced_fraction_generator": 0.1,
        "auc_generator_replacements": 0.6,
        "auc_fixed_corruption": 0.51,
        "bigram_auc_fixed_corruption": 0.91,
        "auc_random_replacements": 0.8,
    }
    report = format_report(electra)
    assert "generator MLM loss 5.410 nats (unigram entropy 6.200, bigram counts 3.570)" in report
    assert "fixed unigram corruption: ROC-AUC 0.510 (chance 0.5, bigram counts 0.910)" in report
    mlm = {"sequences": 256, "unigram_entropy": 6.2, "mlm_loss": 6.06, "bigram_mlm_loss": 3.57}
    assert "  MLM loss 6.060 nats (unigram entropy 6.200, bigram counts 3.570)" in format_report(mlm)
    # figures measured without the yardstick (an older eval.json) still print
    del mlm["bigram_mlm_loss"]
    assert format_report(mlm).splitlines()[1] == "  MLM loss 6.060 nats (unigram entropy 6.200)"
