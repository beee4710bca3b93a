"""The bench's peer: the ELECTRA implementation on PyPI, electra-pytorch 0.1.2 (lucidrains), set up
as its own pre-training script (pretraining/openwebtext/pretrain.py) sets it up: transformers'
ElectraForMaskedLM and ElectraForPreTraining behind adapters that return the logits, [CLS] and
[SEP] never masked, no random-token replacement, the generator's loss over every position's
logits and Gumbel-max sampling. It masks inside its forward, from the uncorrupted ids.

Installed by `make install` with --no-deps (it pins transformers 3.0.2; its module needs only torch).

`objective_check` shows the comparison is like for like: on one batch, given the peer's masking,
our objective computes the peer's MLM loss, and with sampling made deterministic, its RTD loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from electra_pytorch import Electra
from torch import nn

from electra_ray.model import ElectraPretrainingModel


class LogitsAdapter(nn.Module):
    """A transformers model called as the peer calls its networks: ids in, logits out."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.network(input_ids, **kwargs).logits


def peer_model(
    model: ElectraPretrainingModel,
    special: dict[str, int],
    mask_prob: float = 0.15,
    replace_prob: float = 0.85,
    temperature: float = 1.0,
) -> Electra:
    """The peer around `model`'s two networks (their embeddings already shared, as the peer's script
    ties them), with `model`'s lambda."""
    return Electra(
        LogitsAdapter(model.generator),
        LogitsAdapter(model.discriminator),
        num_tokens=model.generator.config.vocab_size,
        mask_token_id=special["[MASK]"],
        pad_token_id=special["[PAD]"],
        mask_prob=mask_prob,
        replace_prob=replace_prob,
        mask_ignore_token_ids=[special["[CLS]"], special["[SEP]"]],
        random_token_prob=0.0,
        disc_weight=model.rtd_weight,
        temperature=temperature,
    )


@dataclass
class ObjectiveCheck:
    peer_mlm: float
    ours_mlm: float
    peer_rtd: float
    ours_rtd: float
    masked: int

    @property
    def mlm_difference(self) -> float:
        return abs(self.peer_mlm - self.ours_mlm)

    @property
    def rtd_difference(self) -> float:
        return abs(self.peer_rtd - self.ours_rtd)


@torch.no_grad()
def objective_check(
    model: ElectraPretrainingModel,
    special: dict[str, int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    seed: int = 0,
) -> ObjectiveCheck:
    """Both objectives on one batch ([B, T] ids, padding where attention_mask is 0), in eval mode
    (no dropout). The peer draws its masking; every chosen position becomes [MASK] (replace_prob 1),
    so the generator's input alone says which positions it chose; ours gets exactly those. Sampling
    at temperature 1e-8 is the generator's argmax in both (Gumbel noise and our inverse-CDF draw
    alike), so both discriminators see the same corrupted ids."""
    temperature = 1e-8
    peer = peer_model(model, special, replace_prob=1.0, temperature=temperature)
    seen: dict[str, torch.Tensor] = {}
    hook = peer.generator.register_forward_pre_hook(lambda _, args: seen.update(generator_input=args[0]))
    was_training, saved_temperature = model.training, model.temperature
    model.eval()
    model.temperature = temperature
    try:
        torch.manual_seed(seed)
        peer_out = peer(input_ids, attention_mask=attention_mask)
        chosen = seen["generator_input"] == special["[MASK]"]  # [B, T]
        # Our batch layout: each row's chosen positions, padded with weight-0 slots.
        width = int(chosen.sum(1).max())
        order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)  # chosen positions first, in order
        positions = order[:, :width]
        weights = torch.gather(chosen, 1, positions).float()
        ours = model(
            input_ids=seen["generator_input"],
            original_ids=input_ids,
            attention_mask=attention_mask,
            positions=positions,
            weights=weights,
        )
    finally:
        hook.remove()
        model.temperature = saved_temperature
        model.train(was_training)
    return ObjectiveCheck(
        peer_mlm=float(peer_out.mlm_loss),
        ours_mlm=float(ours.mlm_loss),
        peer_rtd=float(peer_out.disc_loss),
        ours_rtd=float(ours.rtd_loss),
        masked=int(chosen.sum()),
    )
