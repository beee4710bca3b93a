"""Dynamic masking, pure numpy (no torch, no Ray).

As google-research/electra's `pretrain_helpers.mask`: each sequence gets a fixed number of
prediction slots, `max_predictions = int((mask_prob + 0.005) * seq_len)`, so shapes are static
and the generator's vocabulary projection runs only on the selected positions.

Whole-word masking (data.whole_word_mask; `word_starts` given): whole words are selected, in a
random order, until the token budget is met, as BERT's create_pretraining_data.py and transformers'
DataCollatorForWholeWordMask do (a word that would overshoot is passed over for a shorter one), so
the rate still counts tokens. The [MASK] / random / keep choice is then made once per word, where
those two make it per token: a word is wholly [MASK], wholly kept, or wholly random tokens. Per
token, ELECTRA's 85 / 15 split would leave 28% of two-piece words (38% of three-piece ones) partly
visible, and the visible piece gives the masked one away: the very leak whole-word masking removes.
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
    word_starts: np.ndarray | None = None,
) -> MaskedBatch:
    """Select `mask_prob` of each row's non-special tokens (specials and position 0 are never
    selected); of those,
    `mask_token_prob` become [MASK], `random_token_prob` a uniformly drawn non-special token, the
    rest stay as they are. ELECTRA: 0.85 / 0 / 0.15; BERT: 0.8 / 0.1 / 0.1. `token_type_ids`, when
    given ([B, T]), passes through unchanged (as int64). `word_starts` ([B, T], nonzero where a token
    starts a word): select and corrupt whole words (see the module's notes); a token after a special
    one always starts a word, so a word cut by a row's start or a [SEP] is masked in the part here."""
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

    if word_starts is None:
        selected, action, order, weights = _select_tokens(candidate, n_select, slots, rng)
    else:
        if np.shape(word_starts) != ids.shape:
            raise ValueError(f"word_starts has shape {np.shape(word_starts)}, input ids {ids.shape}")
        selected, action, order, weights = _select_words(candidate, np.asarray(word_starts) != 0, n_select, slots, rng)
    positions = np.where(weights, order, 0)

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


def _select_tokens(candidate: np.ndarray, n_select: np.ndarray, slots: int, rng: np.random.Generator):
    """Token by token: a random score per token, specials pushed last; the n_select lowest scores
    are selected. Returns (selected [B, T], a uniform draw per token, slot order [B, P], used slots [B, P])."""
    scores = np.where(candidate, rng.random(candidate.shape), 2.0)
    order = np.argsort(scores, axis=1, kind="stable")[:, :slots]
    weights = np.arange(slots)[None, :] < n_select[:, None]
    selected = np.zeros_like(candidate)
    rows, used = np.nonzero(weights)
    selected[rows, order[rows, used]] = True
    return selected, rng.random(candidate.shape), order, weights


def _select_words(
    candidate: np.ndarray, starts: np.ndarray, n_select: np.ndarray, slots: int, rng: np.random.Generator
):
    """Whole words (the module's notes); returns what _select_tokens does, with one draw per word."""
    word_of = _words(candidate, starts)
    selected, word_action = _select_whole_words(word_of, n_select, rng)
    action = np.take_along_axis(word_action, np.maximum(word_of, 0), axis=1)
    # The selected positions in order; slots beyond a row's count point at position 0.
    order = np.argsort(~selected, axis=1, kind="stable")[:, :slots]
    weights = np.arange(slots)[None, :] < selected.sum(axis=1)[:, None]
    return selected, action, order, weights


def _words(candidate: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """[B, T] int64: each candidate token's word index in its row (0, 1, ...), -1 elsewhere."""
    follows_candidate = np.zeros_like(candidate)
    follows_candidate[:, 1:] = candidate[:, :-1]
    starts = candidate & (starts | ~follows_candidate)
    return np.where(candidate, np.cumsum(starts, axis=1) - 1, -1)


def _select_whole_words(word_of: np.ndarray, budget: np.ndarray, rng: np.random.Generator):
    """Whole words in a random order until each row's `budget` of tokens is met, passing over a word
    that would overshoot it (BERT's rule). Returns ([B, T] bool selected tokens, [B, W] a uniform
    draw per word for the mask / random / keep choice)."""
    batch = word_of.shape[0]
    n_words = word_of.max(axis=1) + 1
    width = max(1, int(n_words.max(initial=0)))
    rows = np.arange(batch)
    lengths = np.zeros((batch, width), dtype=np.int64)
    token_rows, token_cols = np.nonzero(word_of >= 0)
    np.add.at(lengths, (token_rows, word_of[token_rows, token_cols]), 1)
    # Words in a random order per row (the padding words, beyond n_words, last).
    order = np.argsort(np.where(np.arange(width) < n_words[:, None], rng.random((batch, width)), 2.0), axis=1)
    chosen = np.zeros((batch, width), dtype=bool)
    remaining = budget.astype(np.int64).copy()
    for rank in range(width):  # vectorised over rows; ends when every budget is met
        if not remaining.any():
            break
        word = order[:, rank]
        length = lengths[rows, word]
        fits = (length > 0) & (length <= remaining)
        chosen[rows, word] |= fits
        remaining -= np.where(fits, length, 0)
    selected = (word_of >= 0) & np.take_along_axis(chosen, np.maximum(word_of, 0), axis=1)
    return selected, rng.random((batch, width))


def _random_tokens(rng: np.random.Generator, n: int, vocab_size: int, special_ids: list[int]) -> np.ndarray:
    allowed = np.setdiff1d(np.arange(vocab_size), special_ids)
    return allowed[rng.integers(0, len(allowed), size=n)]
