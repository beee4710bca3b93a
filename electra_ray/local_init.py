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
change to the architecture. A narrower encoder that reads the shared embeddings through a
projection (the generator at ¼ width, one head a layer) keeps BERT's attention and shares the
structured position table; `through_projection` gives it local heads too (position features copied
through the projection, the offsets in turn layer by layer), which on the demo cost its MLM loss.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn


def offsets(heads: int) -> list[int]:
    """−1, +1, −2, +2, ...: the relative position each local head attends to."""
    return [(-1 if h % 2 == 0 else 1) * (h // 2 + 1) for h in range(heads)]


def frequencies(count: int, max_positions: int, candidates: int = 2000) -> torch.Tensor:
    """`searched_frequencies` as a float32 tensor (a new one each call: callers may keep it)."""
    return torch.tensor(searched_frequencies(count, max_positions, candidates), dtype=torch.float32)


@functools.lru_cache(maxsize=8)
def searched_frequencies(count: int, max_positions: int, candidates: int = 2000) -> tuple[float, ...]:
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
    # Cached: a model build asks for the same table three times (the position table, each
    # encoder's heads), and the search takes ~70 ms on a CPU.
    return tuple(best.tolist())


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
    through_projection: bool = False,
) -> None:
    """Give `encoder` (an ElectraModel: `.embeddings`, `.encoder.layer`) local heads in its first
    `layers` layers (see the module docstring). `sharpness`: the attention logit of the target
    neighbour above the mean, before the LayerNorm's scale. `message`: the norm of what a local head
    adds to the residual stream, as a share of the stream's (BERT's std 0.02 value and output give
    ~0.03: a neighbour that whispers). `set_positions`: write the sinusoid table (False: it is
    shared and was written already, by the call for the encoder whose head size sets its width).
    `through_projection`: an encoder behind an embedding projection gets local heads too, reading
    position features copied through the projection (off by default: on the demo that generator's
    MLM loss was 6.20 at step 900 against 5.88 without, its 32 dimensions half given to positions);
    without it such an encoder keeps BERT's attention and only shares the position table."""
    embeddings = encoder.embeddings
    table = embeddings.position_embeddings.weight
    head_dim = encoder.encoder.layer[0].attention.self.attention_head_size
    if set_positions:
        token_norm = float(embeddings.word_embeddings.weight.norm(dim=1).mean())
        sinusoid_positions(table, head_dim // 2, position_scale * token_norm)
    count = int((table.abs().sum(0) > 0).sum()) // 2  # the table's frequencies, whoever wrote it
    omegas = frequencies(count, table.size(0))
    # After the embeddings' LayerNorm the position features have a norm of about sqrt(dim) |p| / |w + p|.
    feature_norm = math.sqrt(table.size(1)) * position_scale / math.sqrt(1 + position_scale**2)
    project = getattr(encoder, "embeddings_project", None)
    used = list(range(count))  # the frequencies the local heads read
    if project is not None and not through_projection:
        return  # measured: copying position features through the generator's projection costs its MLM loss
    if project is not None:  # a narrower encoder: half its head size carries every other frequency
        used = list(range(0, count, 2))[: head_dim // 4]
        feature_norm = position_features_through(project, used, feature_norm * math.sqrt(len(used) / count))
    # query·key / sqrt(head_dim) at the target is scale² · feature_norm² / sqrt(head_dim) = sharpness.
    scale = math.sqrt(sharpness * math.sqrt(head_dim)) / feature_norm
    width = 2 * len(used)
    wanted = offsets(heads)
    for index, layer in enumerate(encoder.encoder.layer[:layers]):
        attention = layer.attention.self
        local = min(heads, attention.num_attention_heads)  # with fewer heads, the offsets go on in the next layer
        for h in range(local):
            offset = wanted[(index * local + h) % len(wanted)]
            head = slice(h * head_dim, (h + 1) * head_dim)
            rows = slice(h * head_dim, h * head_dim + width)
            inputs = slice(0, width) if project is not None else _feature_columns(used)
            for linear in (attention.key, attention.query):
                linear.weight[head].zero_()
                linear.bias[head].zero_()
            attention.key.weight[rows, inputs] = scale * torch.eye(width)
            attention.query.weight[rows, inputs] = scale * rotation(omegas[used], offset)
            # value: a random projection that keeps the norm share; output: sized so |W_o W_v x| = message · |x|
            hidden = attention.value.weight.size(1)
            attention.value.weight[head].normal_(0.0, 1.0 / math.sqrt(hidden))
            layer.attention.output.dense.weight[:, head].normal_(0.0, message / math.sqrt(head_dim))


def _feature_columns(used: list[int]) -> list[int]:
    return [column for f in used for column in (2 * f, 2 * f + 1)]


def position_features_through(project: nn.Linear, used: list[int], norm: float) -> float:
    """Set the first 2·len(used) outputs of `project` (the embeddings' projection to a narrower
    width) to copy those position features, scaled to the size of its other outputs (BERT's std
    0.02 over the embedding's unit-scale coordinates), and clear their bias. Returns their norm."""
    width, columns = 2 * len(used), _feature_columns(used)
    project.weight[:width].zero_()
    project.bias[:width].zero_()
    per_coordinate = norm / math.sqrt(width)  # each copied feature's size before the copy
    gain = 0.02 * math.sqrt(project.weight.size(1)) / per_coordinate
    project.weight[:width, columns] = gain * torch.eye(width)
    return gain * norm
