"""The pre-training objectives, pure PyTorch: ELECTRA's MLM loss + lambda * replaced-token-detection
loss, and BERT's masked-LM loss alone (the equal-compute baseline).

Shapes: B sequences, T tokens, P prediction slots per sequence (see masking.py), V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Order of the counters in ObjectiveOutput.stats (summed over batches and workers).
STAT_NAMES = (
    "mlm_loss_sum",
    "rtd_loss_sum",
    "masked",
    "gen_correct",
    "tokens",
    "disc_correct",
    "replaced",
    "predicted_replaced",
    "true_positive",
    "batches",
    "corrective_loss_sum",
)


class ObjectiveOutput(NamedTuple):  # a tuple, so DeepSpeed's ZeRO-3 hooks see its tensors
    loss: torch.Tensor  # scalar: mlm_loss + rtd_weight * rtd_loss
    mlm_loss: torch.Tensor  # scalar, mean over selected positions
    rtd_loss: torch.Tensor  # scalar, mean over non-pad tokens
    stats: torch.Tensor  # [len(STAT_NAMES)] float counters, detached


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one id per row of `logits` ([..., V]) from softmax(logits / temperature), in fp32, by
    inverting the CDF with one uniform number per row. Gumbel-max draws V numbers per row and
    takes two logs of each: on a CPU that was 8% of an ELECTRA-Small step. `probs`: the softmax
    at temperature 1, when the caller has it already. Discrete, so no gradient flows through it."""
    if probs is None or temperature != 1.0:
        probs = torch.softmax(logits.detach().float() / temperature, dim=-1)
    cdf = probs.detach().cumsum(dim=-1)
    # Scaled by the CDF's last value rather than 1: float rounding leaves it a little off 1.
    uniform = torch.rand(cdf.shape[:-1] + (1,), device=cdf.device, generator=generator) * cdf[..., -1:]
    return torch.searchsorted(cdf, uniform).squeeze(-1).clamp_(max=cdf.size(-1) - 1)


class _CrossEntropyWithProbs(torch.autograd.Function):
    """Per-row cross-entropy of logits [N, V] against targets [N], in fp32, that also returns the
    softmax (for sampling, no gradient). Its backward is (softmax - one-hot) * grad from the saved
    softmax: one [N, V] pass and buffer where log_softmax + nll_loss take three (on a CPU each
    fresh [N, V] buffer also costs its page faults)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        token_loss = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        probs = log_probs.exp_()
        ctx.save_for_backward(probs, targets)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(probs)
        return token_loss, probs

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_probs: torch.Tensor):
        probs, targets = ctx.saved_tensors
        grad = probs * grad_loss.unsqueeze(-1)
        grad.scatter_add_(-1, targets.unsqueeze(-1), -grad_loss.unsqueeze(-1))
        return grad.to(ctx.logits_dtype), None


def cross_entropy_with_probs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy per row [N], softmax [N, V]) of logits [N, V]."""
    return _CrossEntropyWithProbs.apply(logits, targets)


def generator_logits(
    generator,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of a masked LM (ELECTRA's generator, or the MLM baseline) at the selected positions
    only ([B, P, V]): the vocabulary projection is its most expensive layer, and only P of T
    positions need it."""
    hidden = generator.electra(
        input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
    ).last_hidden_state  # [B, T, H]
    return generator.generator_lm_head(generator.generator_predictions(gather_positions(hidden, positions)))


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, H] at positions [B, P] -> [B, P, H]."""
    return torch.gather(hidden, 1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))


def sampling_temperature(step: int, start: float, end: float, steps: int) -> float:
    """The generator's sampling temperature at optimizer step `step`: `start` at step 0, lowered
    linearly to `end` at `steps`, then `end` (steps 0: `end` throughout)."""
    if steps <= 0 or step >= steps:
        return end
    return start + (end - start) * step / steps


def replace_tokens(
    input_ids: torch.Tensor,
    original_ids: torch.Tensor,
    positions: torch.Tensor,
    weights: torch.Tensor,
    sampled: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the sampled ids into the used slots. Returns (corrupted ids [B, T], labels [B, T]):
    label 1 where the token differs from the original; a sample equal to the original is 0."""
    current = torch.gather(input_ids, 1, positions)
    corrupted = input_ids.scatter(1, positions, torch.where(weights > 0, sampled, current))
    return corrupted, (corrupted != original_ids).long()


def _masked_lm(model, input_ids, original_ids, attention_mask, positions, weights, token_type_ids=None):
    """(logits [B, P, V], softmax [B, P, V], targets [B, P], mean cross-entropy over the used
    slots, used slots)."""
    targets = torch.gather(original_ids, 1, positions)  # [B, P]
    logits = generator_logits(model, input_ids, attention_mask, positions, token_type_ids)  # [B, P, V]
    token_loss, probs = cross_entropy_with_probs(logits.flatten(0, 1), targets.flatten())
    n_masked = weights.sum().clamp(min=1.0)
    return logits, probs.view(logits.shape), targets, (token_loss * weights.flatten()).sum() / n_masked, n_masked


def discriminator_hidden(
    discriminator,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    embedding_delta: torch.Tensor | None = None,
) -> torch.Tensor:
    """The discriminator's last hidden states [B, T, H]. `embedding_delta` [V, E]: gradient-
    disentangled embedding sharing (DeBERTaV3): its token embeddings are stop-gradient(shared) +
    delta, so no RTD gradient reaches the shared matrix the generator trains."""
    if embedding_delta is None:
        return discriminator.electra(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
    # Detaching the looked-up rows stops the gradient to the shared matrix exactly as detaching the
    # matrix would, and calls the embedding module (ZeRO-3 gathers its weight around that call).
    shared = discriminator.electra.embeddings.word_embeddings(input_ids).detach()
    inputs_embeds = shared + F.embedding(input_ids, embedding_delta)
    return discriminator.electra(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, token_type_ids=token_type_ids
    ).last_hidden_state


def electra_loss(
    generator,
    discriminator,
    *,
    input_ids,
    original_ids,
    attention_mask,
    positions,
    weights,
    token_type_ids=None,
    rtd_weight: float = 50.0,
    temperature: float = 1.0,
    generator_rng: torch.Generator | None = None,
    embedding_delta: torch.Tensor | None = None,
    corrective_head=None,
    corrective_weight: float = 0.0,
) -> ObjectiveOutput:
    """MLM (generator) + rtd_weight * RTD (discriminator) [+ corrective_weight * the discriminator's
    corrective LM loss, when `corrective_head` is given: cross-entropy of the original token at
    the selected positions, predicted from the corrupted input]."""
    logits, probs, targets, mlm_loss, n_masked = _masked_lm(
        generator, input_ids, original_ids, attention_mask, positions, weights, token_type_ids
    )

    sampled = sample_tokens(logits, temperature, generator_rng, probs)  # [B, P]
    corrupted, labels = replace_tokens(input_ids, original_ids, positions, weights, sampled)
    labels = labels * attention_mask
    hidden = discriminator_hidden(discriminator, corrupted, attention_mask, token_type_ids, embedding_delta)
    disc_logits = discriminator.discriminator_predictions(hidden).float()  # [B, T]
    token_mask = attention_mask.float()
    n_tokens = token_mask.sum().clamp(min=1.0)
    rtd_loss = (
        F.binary_cross_entropy_with_logits(disc_logits, labels.float(), reduction="none") * token_mask
    ).sum() / n_tokens
    loss = mlm_loss + rtd_weight * rtd_loss
    corrective_loss = torch.zeros_like(mlm_loss)
    if corrective_head is not None:
        corrective_logits = corrective_head(gather_positions(hidden, positions), embedding_delta)  # [B, P, V]
        token_loss = F.cross_entropy(corrective_logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        corrective_loss = (token_loss * weights.flatten()).sum() / n_masked
        loss = loss + corrective_weight * corrective_loss

    stats = electra_counters(
        mlm_loss,
        rtd_loss,
        corrective_loss,
        n_masked,
        n_tokens,
        logits,
        targets,
        weights,
        disc_logits,
        labels,
        attention_mask,
    )
    return ObjectiveOutput(loss=loss, mlm_loss=mlm_loss, rtd_loss=rtd_loss, stats=stats)


@torch.no_grad()
def electra_counters(
    mlm_loss,
    rtd_loss,
    corrective_loss,
    n_masked,
    n_tokens,
    logits,
    targets,
    weights,
    disc_logits,
    labels,
    attention_mask,
) -> torch.Tensor:
    """The step's counters, in STAT_NAMES order (summed over micro-batches and workers, then summarized)."""
    predicted = (disc_logits > 0).long() * attention_mask
    token_mask = attention_mask.float()
    counters = [
        mlm_loss * n_masked,
        rtd_loss * n_tokens,
        n_masked,
        ((logits.argmax(-1) == targets).float() * weights).sum(),
        n_tokens,
        ((predicted == labels).float() * token_mask).sum(),
        labels.sum().float(),
        predicted.sum().float(),
        (predicted * labels).sum().float(),
        torch.ones((), device=n_tokens.device),
        corrective_loss * n_masked,
    ]
    return torch.stack(counters).detach().float()


def masked_lm_loss(
    model, *, input_ids, original_ids, attention_mask, positions, weights, token_type_ids=None
) -> ObjectiveOutput:
    """BERT's objective: cross-entropy of `model` (an ElectraForMaskedLM) at the selected positions.
    The RTD loss and the discriminator counters are 0."""
    logits, _, targets, mlm_loss, n_masked = _masked_lm(
        model, input_ids, original_ids, attention_mask, positions, weights, token_type_ids
    )
    with torch.no_grad():
        stats = torch.zeros(len(STAT_NAMES), device=mlm_loss.device)
        stats[STAT_NAMES.index("mlm_loss_sum")] = mlm_loss * n_masked
        stats[STAT_NAMES.index("masked")] = n_masked
        stats[STAT_NAMES.index("gen_correct")] = ((logits.argmax(-1) == targets).float() * weights).sum()
        stats[STAT_NAMES.index("tokens")] = attention_mask.sum()
        stats[STAT_NAMES.index("batches")] = 1
    return ObjectiveOutput(loss=mlm_loss, mlm_loss=mlm_loss, rtd_loss=torch.zeros_like(mlm_loss), stats=stats)


def summarize(stats: torch.Tensor | list[float]) -> dict[str, float]:
    """Counters (summed over steps/workers) -> mean losses, accuracies, precision, recall."""
    s = dict(zip(STAT_NAMES, [float(x) for x in stats]))
    mlm, rtd = s["mlm_loss_sum"] / max(s["masked"], 1), s["rtd_loss_sum"] / max(s["tokens"], 1)
    return {
        "mlm_loss": mlm,
        "rtd_loss": rtd,
        "gen_accuracy": s["gen_correct"] / max(s["masked"], 1),
        "disc_accuracy": s["disc_correct"] / max(s["tokens"], 1),
        "disc_precision": s["true_positive"] / max(s["predicted_replaced"], 1),
        "disc_recall": s["true_positive"] / max(s["replaced"], 1),
        "replaced_fraction": s["replaced"] / max(s["tokens"], 1),
        "corrective_loss": s.get("corrective_loss_sum", 0.0) / max(s["masked"], 1),
    }
