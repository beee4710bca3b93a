"""The bigram yardstick: what counting adjacent tokens in the training split gives on the held-out
measurements, so a model's figures read between "nothing learned" (the unigram entropy, an AUC of
0.5) and "what counting gives" (this module). On the demo corpus the networks sat near the unigram
end (5.4-6.1 nats against a unigram entropy of 6.2, AUC 0.50-0.54) while bigram counts reach
3.6 nats and an AUC of 0.91: the data holds the signal, the networks had not learned to use
adjacent positions. Without such a reference a loss of 5.4 nats or an AUC of 0.51 says nothing
about whether the data or the model is the limit.

Pure numpy. BigramCounts holds the counts sparsely: a sorted array of the distinct adjacent pairs'
keys (left * V + right, int64) with their counts, its transpose's order, and per-token totals:
24 bytes per distinct pair plus 48 per vocabulary entry (9 MB on the demo), never a dense V x V
matrix (7 GB at V = 30522). Distinct pairs grow with the text counted (0.37 M on the demo's 2.1 M
tokens) and never exceed the pairs counted, whatever V. Counting streams: it holds the distinct
pairs plus at most FLUSH_PAIRS pending keys, and np.unique's copies while merging them.

Smoothing (Witten-Bell): p(t | a) = (c(a, t) + k_a p(t)) / (c(a, .) + k_a), the pair counts
interpolated with the unigram distribution p (itself add-one smoothed over the vocabulary), with
k_a the number of distinct tokens seen after a: additive smoothing whose added mass follows the
unigram, larger for a context that is followed by many different tokens (where an unseen pair is
more likely). No constant to tune on held-out text: on the demo it beats every fixed k tried (see
SMOOTHING's note). p(right | t) is the same distribution read the other way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from electra_ray.scoring import roc_auc

# None: Witten-Bell (the module's note); a number: that fixed pseudo-count k for every context. On
# the demo's held-out set (V 8192, 2.1 M training tokens, 256 held-out sequences) Witten-Bell gives
# 3.57 nats and an AUC of 0.911; a fixed k of 8 / 32 / 128 / 512 gives 3.90 / 3.74 / 3.68 / 3.78
# nats and 0.892 / 0.894 / 0.893 / 0.888.
SMOOTHING: float | None = None
CACHE_FORMAT = 1  # in every cache key: a change of what is stored invalidates old files
FLUSH_PAIRS = 1 << 22  # pending pair keys merged into the counts at this many (~32 MB)
# Positions x vocabulary per batch of masked_token_loss: 16 MB a float64 array, ~60 MB at the peak.
DENSE_ENTRIES = 1 << 21
NO_TOKEN = -1  # a missing neighbour: the edge of the row, or [PAD]


@dataclass
class BigramCounts:
    """Unigram and adjacent-pair counts of packed sequences, sparse (see the module's note).
    [PAD] is never counted, in a pair or alone; [CLS] and [SEP] are, as the context they are."""

    vocab_size: int
    pad_id: int
    unigram: np.ndarray  # [V] int64, each token's count
    pair_keys: np.ndarray  # [P] int64, left * V + right, ascending (distinct pairs)
    pair_counts: np.ndarray  # [P] int64
    smoothing: float | None = SMOOTHING
    left_totals: np.ndarray = field(init=False)  # [V] float64, pairs with the token on the left
    row_alpha: np.ndarray = field(init=False)  # [V] float64, each left token's pseudo-count
    row_ptr: np.ndarray = field(init=False)  # [V + 1]: pairs with left a are pair_keys[row_ptr[a]:row_ptr[a + 1]]
    by_right: np.ndarray = field(init=False)  # [P] int64: pair indices ordered by (right, left)
    col_ptr: np.ndarray = field(init=False)  # [V + 1]: pairs with right b are by_right[col_ptr[b]:col_ptr[b + 1]]
    unigram_p: np.ndarray = field(init=False)  # [V] float64, add-one smoothed

    def __post_init__(self) -> None:
        v = self.vocab_size
        left, right = np.divmod(self.pair_keys, v)
        self.left_totals = np.bincount(left, weights=self.pair_counts, minlength=v).astype(np.float64)
        self.row_ptr = np.searchsorted(self.pair_keys, np.arange(v + 1, dtype=np.int64) * v)
        self.by_right = np.argsort(right * v + left, kind="stable")
        self.col_ptr = np.searchsorted(right[self.by_right], np.arange(v + 1))
        self.unigram_p = (self.unigram + 1.0) / (self.unigram.sum() + v)
        if self.smoothing is None:  # Witten-Bell: as many pseudo-counts as distinct continuations
            self.row_alpha = np.maximum(np.diff(self.row_ptr), 1).astype(np.float64)
        else:
            self.row_alpha = np.full(v, float(self.smoothing))

    @property
    def nbytes(self) -> int:
        """Bytes the counts and their index hold (the memory bound of the module's note)."""
        arrays = (self.unigram, self.pair_keys, self.pair_counts, self.left_totals, self.row_alpha)
        arrays += (self.row_ptr, self.by_right, self.col_ptr, self.unigram_p)
        return sum(a.nbytes for a in arrays)

    @classmethod
    def from_sequences(
        cls, chunks: Iterable[np.ndarray], vocab_size: int, pad_id: int, smoothing: float = SMOOTHING
    ) -> BigramCounts:
        """Count `chunks` of packed sequences ([N, L] token ids each, e.g. the training split in
        blocks), streamed: pending pair keys are merged into the distinct pairs every FLUSH_PAIRS,
        so memory is the distinct pairs plus one chunk. Pairs are adjacent within a row only (each
        row is a sequence of its own to the model)."""
        unigram = np.zeros(vocab_size, dtype=np.int64)
        keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        pending: list[np.ndarray] = []
        for chunk in chunks:
            ids = _checked_ids(chunk, vocab_size)
            unigram += np.bincount(ids[ids != pad_id], minlength=vocab_size)
            left, right = ids[:, :-1], ids[:, 1:]
            real = (left != pad_id) & (right != pad_id)
            pending.append(left[real] * vocab_size + right[real])
            if sum(len(p) for p in pending) >= FLUSH_PAIRS:
                keys, counts = _merge(keys, counts, pending)
                pending = []
        keys, counts = _merge(keys, counts, pending)
        return cls(vocab_size, pad_id, unigram, keys, counts, smoothing)

    def pair_count(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """c(left, right) of each pair of the two arrays (0 where either is NO_TOKEN)."""
        left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
        if len(self.pair_keys) == 0:
            return np.zeros(np.broadcast(left, right).shape, dtype=np.int64)
        wanted = left * self.vocab_size + right
        at = np.minimum(np.searchsorted(self.pair_keys, wanted), len(self.pair_keys) - 1)
        found = (left >= 0) & (right >= 0) & (self.pair_keys[at] == wanted)
        return np.where(found, self.pair_counts[at], 0)

    def next_probability(self, left: np.ndarray, token: np.ndarray) -> np.ndarray:
        """p(token | left), smoothed; the unigram p(token) where `left` is NO_TOKEN."""
        left, token = np.asarray(left, np.int64), np.asarray(token, np.int64)
        safe = np.maximum(left, 0)
        alpha = self.row_alpha[safe]
        smoothed = (self.pair_count(left, token) + alpha * self.unigram_p[token]) / (self.left_totals[safe] + alpha)
        return np.where(left >= 0, smoothed, self.unigram_p[token])

    def save(self, path: str, key: str) -> bool:
        """Write the counts to `path` (.npz) under `key`, atomically (a temporary file beside it,
        renamed into place). False, and nothing left behind, where the place is not writable: a
        cache is optional."""
        try:
            handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz.partial")
        except OSError:
            return False
        try:
            with os.fdopen(handle, "wb") as f:
                np.savez(f, **self._arrays(key))
            os.replace(temporary, path)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            return False

    def _arrays(self, key: str) -> dict[str, np.ndarray]:
        return {
            "key": np.array(key),
            "vocab_size": np.array(self.vocab_size),
            "pad_id": np.array(self.pad_id),
            "unigram": self.unigram,
            "pair_keys": self.pair_keys,
            "pair_counts": self.pair_counts,
        }

    @classmethod
    def load(cls, path: str, key: str, smoothing: float = SMOOTHING) -> BigramCounts | None:
        """The counts saved at `path` under `key`; None when there are none, they were saved under
        another key, or the file is unreadable (then the caller counts again)."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["key"]) != key:
                    return None
                return cls(
                    int(saved["vocab_size"]),
                    int(saved["pad_id"]),
                    saved["unigram"],
                    saved["pair_keys"],
                    saved["pair_counts"],
                    smoothing,
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None


def _checked_ids(chunk: np.ndarray, vocab_size: int) -> np.ndarray:
    ids = np.asarray(chunk, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"packed sequences must be [N, L], got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids outside the vocabulary of {vocab_size}: {ids.min()}..{ids.max()}")
    return ids


def _merge(keys: np.ndarray, counts: np.ndarray, pending: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys and their counts: `keys`/`counts` plus one count per key in `pending`."""
    if not pending:
        return keys, counts
    new, new_counts = np.unique(np.concatenate(pending), return_counts=True)
    merged, inverse = np.unique(np.concatenate([keys, new]), return_inverse=True)
    totals = np.zeros(len(merged), dtype=np.int64)
    np.add.at(totals, inverse, np.concatenate([counts, new_counts.astype(np.int64)]))
    return merged, totals


# -- the two reference figures -------------------------------------------------------------------


def neighbours(sequences: np.ndarray, rows: np.ndarray, cols: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) tokens of the positions (rows[i], cols[i]) of `sequences`; NO_TOKEN past a
    row's edge or where the neighbour is [PAD]."""
    length = sequences.shape[1]
    left = np.where(cols > 0, sequences[rows, np.maximum(cols - 1, 0)], NO_TOKEN).astype(np.int64)
    right = np.where(cols + 1 < length, sequences[rows, np.minimum(cols + 1, length - 1)], NO_TOKEN).astype(np.int64)
    return np.where(left == pad_id, NO_TOKEN, left), np.where(right == pad_id, NO_TOKEN, right)


def masked_token_loss(counts: BigramCounts, sequences: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    """The cross-entropy (nats) of predicting each token at (rows[i], cols[i]) from both of its
    neighbours, p(t | left, right) ∝ p(t | left) p(right | t), normalised over the whole
    vocabulary, averaged over the positions: the masked LM's loss on the same positions
    (evaluate.masked_lm_pass), had it learned bigram statistics.

    The neighbours are the ORIGINAL tokens of `sequences`, even where a neighbour is itself masked
    in the model's input (the choice behind the issue's figure). An optimistic reference where
    masked tokens are adjacent (27% of the demo's masked positions have a masked neighbour;
    hiding those neighbours instead gives 3.89 nats against 3.57), but one that does not depend on
    how a masking corrupts the input, so the same figure serves the generator and the MLM baseline
    (whose masking differs: BERT's 80/10/10)."""
    sequences = np.asarray(sequences, dtype=np.int64)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if len(rows) == 0:
        return float("nan")
    left, right = neighbours(sequences, rows, cols, counts.pad_id)
    targets = sequences[rows, cols]
    step = max(1, DENSE_ENTRIES // counts.vocab_size)
    total = 0.0
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        joint = _next_rows(counts, left[part])  # [P, V]: p(t | left) p(right | t), unnormalised
        joint *= _previous_columns(counts, right[part])
        total += float((np.log(joint.sum(axis=1)) - np.log(joint[np.arange(len(joint)), targets[part]])).sum())
    return total / len(rows)


def _next_rows(counts: BigramCounts, left: np.ndarray) -> np.ndarray:
    """[P, V]: p(t | left[i]) over t; the unigram where left is NO_TOKEN. A dense base (the
    smoothing's share of the unigram) plus the left token's sparse row of pair counts."""
    known = left >= 0
    normaliser = counts.left_totals + counts.row_alpha  # [V]: each row's total, smoothed
    scale = np.where(known, counts.row_alpha[np.maximum(left, 0)] / normaliser[np.maximum(left, 0)], 1.0)
    dense = scale[:, None] * counts.unigram_p[None, :]
    at, entries = _gather(counts.row_ptr, np.where(known, left, NO_TOKEN))
    right = counts.pair_keys[entries] % counts.vocab_size
    dense[at, right] += counts.pair_counts[entries] / normaliser[left[at]]
    return dense


def _previous_columns(counts: BigramCounts, right: np.ndarray) -> np.ndarray:
    """[P, V]: p(right[i] | t) over t; 1 (no factor) where right is NO_TOKEN. A dense base plus the
    right token's sparse column of pair counts, each divided by its row's normaliser."""
    known = right >= 0
    normaliser = counts.left_totals + counts.row_alpha  # [V]: each t's row total, smoothed
    base = np.where(known, counts.unigram_p[np.maximum(right, 0)], 0.0)
    dense = base[:, None] * (counts.row_alpha / normaliser)[None, :]
    dense[~known] = 1.0
    at, entries = _gather(counts.col_ptr, np.where(known, right, NO_TOKEN))
    pairs = counts.by_right[entries]
    left = counts.pair_keys[pairs] // counts.vocab_size
    dense[at, left] += counts.pair_counts[pairs] / normaliser[left]
    return dense


def _gather(ptr: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For tokens[i] (NO_TOKEN: none), the entries ptr[t]..ptr[t + 1] of a CSR-like index, flat:
    (the position i of each entry, the entry's index)."""
    known = tokens >= 0
    starts = np.where(known, ptr[np.maximum(tokens, 0)], 0)
    lengths = np.where(known, ptr[np.maximum(tokens, 0) + 1] - starts, 0)
    at = np.repeat(np.arange(len(tokens)), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return at, starts[at] + offsets


def replacement_scores(counts: BigramCounts, input_ids: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """How unlikely each token at (rows[i], cols[i]) is beside its neighbours in `input_ids`:
    minus its pointwise mutual information with both, -[log p(t | left) / p(t) + log p(right | t) /
    p(right)] (a missing neighbour's term is 0). A replaced token rarely fits both neighbours, so
    it scores high."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    left, right = neighbours(input_ids, rows, cols, counts.pad_id)
    token = input_ids[rows, cols]
    before = np.log(counts.next_probability(left, token) / counts.unigram_p[token])
    after = np.log(counts.next_probability(token, right) / counts.unigram_p[np.maximum(right, 0)])
    return -(np.where(left >= 0, before, 0.0) + np.where(right >= 0, after, 0.0))


def detection_auc(counts: BigramCounts, input_ids: np.ndarray, replaced: np.ndarray, scored: np.ndarray) -> float:
    """ROC-AUC of replacement_scores on a corruption (heldout.fixed_corruption's arrays: the
    corrupted ids, which tokens were replaced, which are scored): the discriminator's
    auc_fixed_corruption, had it learned bigram statistics."""
    rows, cols = np.nonzero(scored)
    return roc_auc(np.asarray(replaced)[rows, cols], replacement_scores(counts, input_ids, rows, cols))


# -- the cache -----------------------------------------------------------------------------------


def cache_key(**identity) -> str:
    """A digest of what the counts depend on (the tokenizer, the corpus and how it is split and
    packed, how much is counted; the caller names them) and CACHE_FORMAT."""
    text = json.dumps({"format": CACHE_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_or_count(path: str, key: str, count: Callable[[], BigramCounts]) -> BigramCounts:
    """The counts cached at `path` under `key`, else `count()` saved there for next time. An empty
    `path`, or one that cannot be written, just means no cache."""
    cached = BigramCounts.load(path, key) if path else None
    if cached is not None:
        return cached
    counts = count()
    if path:
        counts.save(path, key)
    return counts
