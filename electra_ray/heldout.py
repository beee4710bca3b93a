"""The fixed corruption of held-out text, and the discriminator's ROC-AUC on it: what `heldout_auc`
measures during training (train.eval_every) and evaluate's `auc_fixed_corruption` after it. The
same corruption for every model, so unlike the RTD loss it compares discriminators trained with
different generators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from electra_ray.objective import discriminator_hidden
from electra_ray.scoring import roc_auc


@dataclass
class FixedCorruption:
    """Held-out sequences with some tokens replaced, the same for every model that is measured."""

    input_ids: np.ndarray  # [N, L] int64, corrupted
    attention_mask: np.ndarray  # [N, L] int64
    replaced: np.ndarray  # [N, L] bool: the token differs from the original
    scored: np.ndarray  # [N, L] bool: real, non-special tokens (the ones the AUC counts)
    token_type_ids: np.ndarray | None = None  # [N, L] int64, segments (data.packing=segments)


def fixed_corruption(
    sequences: np.ndarray,
    special_ids,
    pad_id: int,
    replace_prob: float = 0.15,
    seed: int = 0,
    uniform_over_vocab: int = 0,
    token_type_ids: np.ndarray | None = None,
) -> FixedCorruption:
    """Replace `replace_prob` of the real tokens by tokens drawn from the sequences' own unigram
    distribution. Unigram draws look like ordinary tokens, so detecting them takes context, not a
    rare-token detector. `uniform_over_vocab=V`: draws uniform over the V-token vocabulary's
    non-special tokens instead (mostly rare ones: the easy test)."""
    ids = sequences.astype(np.int64)
    special = np.asarray(list(special_ids))
    scored = ~np.isin(ids, special)
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(uniform_over_vocab), special) if uniform_over_vocab else ids[scored]
    chosen = scored & (rng.random(ids.shape) < replace_prob)
    corrupted = ids.copy()
    corrupted[chosen] = pool[rng.integers(0, len(pool), int(chosen.sum()))]
    types = None if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
    return FixedCorruption(corrupted, (ids != pad_id).astype(np.int64), corrupted != ids, scored, types)


@torch.no_grad()
def detection_auc(
    discriminator,
    corruption: FixedCorruption,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    embedding_delta: torch.Tensor | None = None,
) -> float:
    """ROC-AUC of the discriminator's "replaced" logits on a fixed corruption (eval mode; the
    module's training mode is restored). `embedding_delta`: a discriminator in training with
    disentangled embeddings (model.disentangled_embeddings)."""
    was_training = discriminator.training
    discriminator.eval()
    scores = []
    for start in range(0, len(corruption.input_ids), batch_size):
        rows = slice(start, start + batch_size)
        types = (
            None if corruption.token_type_ids is None else torch.tensor(corruption.token_type_ids[rows], device=device)
        )
        hidden = discriminator_hidden(
            discriminator,
            torch.tensor(corruption.input_ids[rows], device=device),
            torch.tensor(corruption.attention_mask[rows], device=device),
            types,
            embedding_delta,
        )
        logits = discriminator.discriminator_predictions(hidden)
        scores.append(logits.float().cpu().numpy())
    discriminator.train(was_training)
    scores = np.concatenate(scores)
    return roc_auc(corruption.replaced[corruption.scored], scores[corruption.scored])
