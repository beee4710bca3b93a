"""Local attention at initialisation: the demo's way off the attention plateau, in plain BERT weights.

A fresh encoder attends uniformly (query·key ~ 0 at std 0.02), so every position sees the bag of
its sequence's words. To find a swapped word it must learn to attend to its neighbours, and the
gradient that would teach it passes through three small random matrices (query, key and the
position table, which has no relative structure): on the demo's budget it never does (the plateau
study: a discriminator alone on a unigram corruption stays at AUC 0.50 for 1,600 steps at any
rate, while a network handed its neighbours' embeddings reaches 0.78 in 500 steps).

`local_attention_init` hands the encoder its neighbours instead of asking it to find them:
- the position table becomes sinusoids (Vaswani et al. 2017) of frequencies chosen so that no two
  positions look alike (`frequencies`), in its first head_dim dimensions, at `position_scale` of
  the token embeddings' norm: then the position of j relative to i is a rotation of i's features;
- in each chosen layer, head h's key reads those features and its query reads them rotated by
  offset δ_h, so query_i · key_j = sharpness · Σ_f cos(ω_f (i + δ_h − j)): largest at j = i + δ_h.
  Heads get the offsets −1, +1, −2, +2, ... (the heads beyond `heads` stay random).

Everything else is BERT's initialisation, and the result is an ordinary `ElectraForPreTraining` /
`ElectraForMaskedLM`: training may move every weight, the export and fine-tuning are unchanged.
It is an initialisation, in the spirit of ALiBi's local bias (Press et al. 2022) without ALiBi's
change to the architecture. Applies where the layers read the embeddings directly
(embedding_size == hidden_size); a projected encoder (the generator at ¼ width) keeps its random
attention and gets the structured position table it shares.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def offsets(heads: int) -> list[int]:
    """−1, +1, −2, +2, ...: the relative position each local head attends to."""
    return [(-1 if h % 2 == 0 else 1) * (h // 2 + 1) for h in range(heads)]


def frequencies(count: int, max_positions: int, candidates: int = 2000) -> torch.Tensor:
    """`count` angular frequencies in (0.05, π) whose mean cosine kernel K(m) = mean_f cos(ω_f m) is 1 at
    m = 0 and as low as a seeded search finds for every other offset 1 <= |m| < max_positions (about
    0.3 at 16 frequencies and 128 positions). A local head's logits are sharpness · K(j − i − δ):
    the target neighbour stands out from every other position, with no alias at a period (evenly
    spaced frequencies alias; the transformer's geometric ones, made for smooth distance, give
    K(1) = 0.88, so a neighbour barely stands out from the next one)."""
    rng = torch.Generator().manual_seed(0)
    offsets_ = torch.arange(1, max(2, max_positions), dtype=torch.float32).unsqueeze(1)
    best, best_lobe = None, math.inf
    for _ in range(candidates):
        candidate = torch.sort(0.05 + (math.pi - 0.05) * torch.rand(count, generator=rng)).values
        lobe = float(torch.cos(offsets_ * candidate).mean(1).max())
        if lobe < best_lobe:
            best, best_lobe = candidate, lobe
    return best


def sinusoid_positions(table: torch.Tensor, count: int, norm: float) -> None:
    """`table` [positions, dim] in place: sin/cos of `count` frequencies in its first 2·count
    dimensions (sin in even, cos in odd), zero elsewhere, each row of L2 norm `norm`."""
    positions = torch.arange(table.size(0), dtype=torch.float32).unsqueeze(1)
    angles = positions * frequencies(count, table.size(0))
    table.zero_()
    table[:, 0 : 2 * count : 2] = torch.sin(angles)
    table[:, 1 : 2 * count : 2] = torch.cos(angles)
    table.mul_(norm / math.sqrt(count))


def rotation(omegas: torch.Tensor, offset: int) -> torch.Tensor:
    """[2·count, 2·count] block-diagonal: maps the (sin, cos) features of position i to those of i + offset."""
    count = len(omegas)
    block = torch.zeros(2 * count, 2 * count)
    for f, omega in enumerate(omegas.tolist()):
        c, s = math.cos(omega * offset), math.sin(omega * offset)
        # sin(a + b) = sin a cos b + cos a sin b; cos(a + b) = cos a cos b − sin a sin b
        block[2 * f : 2 * f + 2, 2 * f : 2 * f + 2] = torch.tensor([[c, s], [-s, c]])
    return block


@torch.no_grad()
def local_attention_init(
    encoder: nn.Module,
    layers: int = 1,
    heads: int = 2,
    sharpness: float = 8.0,
    position_scale: float = 1.0,
    message: float = 0.5,
    set_positions: bool = True,
) -> None:
    """Give `encoder` (an ElectraModel: `.embeddings`, `.encoder.layer`) local heads in its first
    `layers` layers (see the module docstring). `sharpness`: the attention logit of the target
    neighbour above the mean, before the LayerNorm's scale. `message`: the norm of what a local head
    adds to the residual stream, as a share of the stream's (BERT's std 0.02 value and output give
    ~0.03: a neighbour that whispers). `set_positions`: write the sinusoid
    table (False: it is shared and was written already)."""
    embeddings = encoder.embeddings
    table = embeddings.position_embeddings.weight
    attention = encoder.encoder.layer[0].attention.self
    head_dim, dim = attention.attention_head_size, table.size(1)
    count = head_dim // 2
    token_norm = float(embeddings.word_embeddings.weight.norm(dim=1).mean())
    if set_positions:
        sinusoid_positions(table, count, position_scale * token_norm)
    if getattr(encoder, "embeddings_project", None) is not None:
        return  # the layers read a random projection of the embeddings: no known position coordinates
    # After the embeddings' LayerNorm the position features have a norm of about sqrt(dim) |p| / |w + p|;
    # query·key / sqrt(head_dim) at the target is then scale² · feature_norm² / sqrt(head_dim).
    feature_norm = math.sqrt(dim) * position_scale / math.sqrt(1 + position_scale**2)
    scale = math.sqrt(sharpness * math.sqrt(head_dim)) / feature_norm
    omegas = frequencies(count, table.size(0))
    for layer in encoder.encoder.layer[:layers]:
        attention = layer.attention.self
        for h, offset in enumerate(offsets(min(heads, attention.num_attention_heads))):
            rows = slice(h * head_dim, h * head_dim + 2 * count)
            attention.key.weight[h * head_dim : (h + 1) * head_dim].zero_()
            attention.query.weight[h * head_dim : (h + 1) * head_dim].zero_()
            attention.key.weight[rows, : 2 * count] = scale * torch.eye(2 * count)
            attention.query.weight[rows, : 2 * count] = scale * rotation(omegas, offset)
            attention.key.bias[h * head_dim : (h + 1) * head_dim].zero_()
            attention.query.bias[h * head_dim : (h + 1) * head_dim].zero_()
            # value: a random projection that keeps the norm share; output: sized so |W_o W_v x| = message · |x|
            attention.value.weight[h * head_dim : (h + 1) * head_dim].normal_(0.0, 1.0 / math.sqrt(dim))
            layer.attention.output.dense.weight[:, h * head_dim : (h + 1) * head_dim].normal_(
                0.0, message / math.sqrt(head_dim)
            )
