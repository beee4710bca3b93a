"""Dynamic masking, pure numpy (no torch, no Ray).

As google-research/electra's `pretrain_helpers.mask`: each sequence gets a fixed number of
prediction slots, `max_predictions = int((mask_prob + 0.005) * seq_len)`, so shapes are static
and the generator's vocabulary projection runs only on the selected positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MaskedBatch:
    """One batch after masking. B sequences of T tokens, P prediction slots per sequence."""

    input_ids: np.ndarray  # [B, T] int64, the corrupted input ([MASK], kept or random tokens)
    original_ids: np.ndarray  # [B, T] int64, the sequence before masking
    attention_mask: np.ndarray  # [B, T] int64, 1 for real tokens, 0 for [PAD]
    positions: np.ndarray  # [B, P] int64, selected positions (0 in unused slots)
    weights: np.ndarray  # [B, P] float32, 1 for a used slot, 0 for an unused one
    # [B, T] int64, 0 on [CLS] A [SEP] and padding, 1 on B [SEP] (data.packing=segments); None: not given,
    # and then not passed to the model (callers build tensors only from the fields that are not None).
    token_type_ids: np.ndarray | None = None


def max_predictions(seq_len: int, mask_prob: float) -> int:
    return max(1, int((mask_prob + 0.005) * seq_len))


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_prob: float,
    mask_token_prob: float,
    random_token_prob: float,
    mask_id: int,
    pad_id: int,
    special_ids: list[int],
    vocab_size: int,
    token_type_ids: np.ndarray | None = None,
) -> MaskedBatch:
    """Select `mask_prob` of each row's non-special tokens (specials and position 0 are never
    selected); of those,
    `mask_token_prob` become [MASK], `random_token_prob` a uniformly drawn non-special token, the
    rest stay as they are. ELECTRA: 0.85 / 0 / 0.15; BERT: 0.8 / 0.1 / 0.1. `token_type_ids`, when
    given ([B, T]), passes through unchanged (as int64)."""
    ids = np.asarray(ids, dtype=np.int64)
    batch, seq_len = ids.shape
    if token_type_ids is not None:
        token_type_ids = np.asarray(token_type_ids, dtype=np.int64)
        if token_type_ids.shape != ids.shape:
            raise ValueError(f"token_type_ids has shape {token_type_ids.shape}, input ids {ids.shape}")
    slots = max_predictions(seq_len, mask_prob)
    candidate = ~np.isin(ids, special_ids)
    # Position 0 ([CLS] in packed data) is never selected: unused slots point at it, so a
    # scatter into the used slots can never collide with an unused one.
    candidate[:, 0] = False
    n_candidates = candidate.sum(axis=1)
    # Rounding probabilistically keeps the expected selected fraction exactly mask_prob.
    n_select = np.floor(n_candidates * mask_prob + rng.random(batch)).astype(np.int64)
    n_select = np.clip(n_select, np.minimum(1, n_candidates), slots)

    # A random score per token, specials pushed last; the n_select lowest scores are selected.
    scores = np.where(candidate, rng.random((batch, seq_len)), 2.0)
    order = np.argsort(scores, axis=1, kind="stable")[:, :slots]
    weights = np.arange(slots)[None, :] < n_select[:, None]
    positions = np.where(weights, order, 0)

    selected = np.zeros_like(candidate)
    rows, used = np.nonzero(weights)
    selected[rows, order[rows, used]] = True
    action = rng.random((batch, seq_len))
    to_mask = selected & (action < mask_token_prob)
    to_random = selected & (action >= mask_token_prob) & (action < mask_token_prob + random_token_prob)

    input_ids = ids.copy()
    input_ids[to_mask] = mask_id
    if to_random.any():
        input_ids[to_random] = _random_tokens(rng, int(to_random.sum()), vocab_size, special_ids)
    return MaskedBatch(
        input_ids=input_ids,
        original_ids=ids,
        attention_mask=(ids != pad_id).astype(np.int64),
        positions=positions.astype(np.int64),
        weights=weights.astype(np.float32),
        token_type_ids=token_type_ids,
    )


def _random_tokens(rng: np.random.Generator, n: int, vocab_size: int, special_ids: list[int]) -> np.ndarray:
    allowed = np.setdiff1d(np.arange(vocab_size), special_ids)
    return allowed[rng.integers(0, len(allowed), size=n)]
