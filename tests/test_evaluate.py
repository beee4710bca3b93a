"""The held-out measurements' arithmetic: ROC-AUC, entropies and the fixed corruptions."""

import itertools
import math

import numpy as np
import pytest

from electra_ray.evaluate import binary_entropy, fixed_corruption, roc_auc, unigram_entropy

SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]


def test_roc_auc_is_the_probability_a_positive_outranks_a_negative():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = rng.integers(0, 10, 200).astype(float)  # many ties: each counts one half
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
             for p, n in itertools.product(scores[labels], scores[~labels])]
    assert roc_auc(labels, scores) == pytest.approx(np.mean(pairs))
    assert roc_auc(labels, labels.astype(float)) == 1.0 and roc_auc(labels, -labels.astype(float)) == 0.0


def test_entropies():
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert unigram_entropy(np.array([7, 7, 9, 9])) == pytest.approx(math.log(2))
    assert unigram_entropy(np.array([7, 7, 7])) == pytest.approx(0.0)


def held_out(rows=64, length=32, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIAL), 60, (rows, length))  # text that uses a few common tokens only
    ids[:, 0], ids[:, -1] = 2, 3
    ids[::4, -8:] = 0  # some padding
    return ids


@pytest.mark.parametrize("uniform", [False, True])
def test_fixed_corruption_replaces_real_tokens_only_and_is_reproducible(uniform):
    ids = held_out()
    vocab = 1000
    corruption = fixed_corruption(ids, SPECIAL, 0, 0.15, seed=3, uniform_over_vocab=vocab if uniform else 0)
    changed = corruption.input_ids != ids
    assert (changed == corruption.replaced).all()
    assert not changed[np.isin(ids, SPECIAL)].any()  # [CLS], [SEP] and padding untouched
    assert (corruption.attention_mask == (ids != 0)).all()
    assert 0.12 < changed.sum() / corruption.scored.sum() < 0.18  # 15% chosen (sd 0.008), a few drawn unchanged
    new = corruption.input_ids[changed]
    assert not np.isin(new, SPECIAL).any() and new.max() < vocab
    if uniform:  # the whole vocabulary: mostly tokens the text never uses
        assert (new >= 60).mean() > 0.9
    else:  # the text's own tokens
        assert set(new) <= set(ids[corruption.scored])
    again = fixed_corruption(ids, SPECIAL, 0, 0.15, seed=3, uniform_over_vocab=vocab if uniform else 0)
    assert (again.input_ids == corruption.input_ids).all()
