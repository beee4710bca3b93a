import numpy as np
import pytest

from electra_ray.masking import mask_tokens, max_predictions

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = [PAD, UNK, CLS, SEP, MASK]
VOCAB = 1000


def packed_rows(rng, n=2000, seq_len=128, pad_tail=0):
    ids = rng.integers(5, VOCAB, size=(n, seq_len))
    ids[:, 0] = CLS
    ids[:, seq_len // 2] = SEP  # a document boundary inside the row
    ids[:, -1 - pad_tail] = SEP
    if pad_tail:
        ids[:, -pad_tail:] = PAD
    return ids


def mask(ids, rng, mask_token_prob=0.85, random_token_prob=0.0, mask_prob=0.15):
    return mask_tokens(
        ids,
        rng,
        mask_prob=mask_prob,
        mask_token_prob=mask_token_prob,
        random_token_prob=random_token_prob,
        mask_id=MASK,
        pad_id=PAD,
        special_ids=SPECIALS,
        vocab_size=VOCAB,
    )


def selected_mask(batch):
    selected = np.zeros(batch.original_ids.shape, dtype=bool)
    rows, slots = np.nonzero(batch.weights)
    selected[rows, batch.positions[rows, slots]] = True
    return selected


def test_electra_statistics_15_percent_then_85_mask_15_kept():
    rng = np.random.default_rng(0)
    ids = packed_rows(rng)
    batch = mask(ids, rng)
    selected = selected_mask(batch)
    candidates = ~np.isin(ids, SPECIALS)
    assert selected.sum() / candidates.sum() == pytest.approx(0.15, abs=0.003)
    masked = batch.input_ids == MASK
    kept = selected & (batch.input_ids == ids)
    assert masked.sum() / selected.sum() == pytest.approx(0.85, abs=0.01)
    assert kept.sum() / selected.sum() == pytest.approx(0.15, abs=0.01)
    assert not (selected & ~masked & ~kept).any()  # ELECTRA never puts a random token
    assert (batch.input_ids[~selected] == ids[~selected]).all()  # unselected positions untouched
    assert (batch.original_ids == ids).all()


def test_bert_statistics_80_10_10():
    rng = np.random.default_rng(1)
    ids = packed_rows(rng)
    batch = mask(ids, rng, mask_token_prob=0.8, random_token_prob=0.1)
    selected = selected_mask(batch)
    changed = selected & (batch.input_ids != ids) & (batch.input_ids != MASK)
    assert (batch.input_ids == MASK).sum() / selected.sum() == pytest.approx(0.8, abs=0.01)
    # a random draw equals the original 1 time in ~995: "random" is 10% less that sliver
    assert changed.sum() / selected.sum() == pytest.approx(0.1, abs=0.01)
    assert not np.isin(batch.input_ids[changed], SPECIALS).any()


def test_specials_and_padding_are_never_selected():
    rng = np.random.default_rng(2)
    ids = packed_rows(rng, n=500, pad_tail=40)
    batch = mask(ids, rng, mask_prob=0.5)
    selected = selected_mask(batch)
    assert not selected[np.isin(ids, SPECIALS)].any()
    assert not selected[:, 0].any()
    assert (batch.attention_mask == (ids != PAD)).all()


def test_slots_are_static_and_consistent():
    rng = np.random.default_rng(3)
    ids = packed_rows(rng, n=64, seq_len=128)
    batch = mask(ids, rng)
    assert batch.positions.shape == batch.weights.shape == (64, max_predictions(128, 0.15)) == (64, 19)
    assert (batch.positions[batch.weights == 0] == 0).all()
    for row in range(64):  # used slots point at distinct positions
        used = batch.positions[row][batch.weights[row] > 0]
        assert len(set(used.tolist())) == len(used)


def test_short_rows_select_at_least_one_and_never_exceed_candidates():
    rng = np.random.default_rng(4)
    ids = np.array([[CLS, 7, SEP, PAD, PAD, PAD, PAD, PAD], [CLS, SEP, PAD, PAD, PAD, PAD, PAD, PAD]])
    batch = mask(ids, rng)
    assert batch.weights[0].sum() == 1 and batch.positions[0, 0] == 1
    assert batch.weights[1].sum() == 0  # nothing to select


def test_dynamic_masks_differ_between_draws():
    rng = np.random.default_rng(5)
    ids = packed_rows(rng, n=8)
    first, second = mask(ids, rng), mask(ids, rng)
    assert (first.input_ids != second.input_ids).any()
