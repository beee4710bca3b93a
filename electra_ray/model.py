"""Generator + discriminator as transformers ELECTRA classes, with shared embeddings; or, for the
MLM baseline, one masked LM of the discriminator's size.

`ElectraPretrainingModel` / `MaskedLMPretrainingModel` is the one module DeepSpeed trains: its
forward runs the objective. Attribute names (`generator`, `discriminator`, `mlm`) are checkpoint
keys and the export's directory names (`NETWORKS`): keep them stable.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from electra_ray.config import generator_shape
from electra_ray.local_init import local_attention_init
from electra_ray.objective import ObjectiveOutput, electra_loss, masked_lm_loss

ATTENTION = "electra_ray"  # SDPA, with our CPU dropout (below); the export's config does not name it


# -- dropout on CPU ------------------------------------------------------------------------------
# torch's CPU dropout draws every element's number from one serial Mersenne Twister (its parallel
# MKL path is for Intel CPUs only): 13% of an ELECTRA-Small step on this machine's AMD cores. One
# 64-bit draw here gives four 16-bit numbers, compared in parallel.


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout, faster on CPU: each element is dropped with probability round(p * 65536) / 65536
    (p to within 1e-5) and the kept ones are scaled to keep the expectation exactly."""
    if not training or p == 0.0:
        return x
    # Under torch.compile (train.compile) inductor generates its own parallel dropout; the in-place
    # draw below would break the graph at every layer.
    if x.device.type != "cpu" or p >= 1.0 or not x.is_floating_point() or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    dropped = round(p * 65536)
    bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits
    keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - 32768
    return x * keep.to(x.dtype).mul_(65536 / (65536 - dropped))


class Dropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' SDPA attention, except when training on CPU with dropout: there SDPA falls back
    to its math kernel with torch's dropout; this is the same math with ours."""
    if dropout == 0.0 or query.device.type != "cpu":
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.size(-1) ** -0.5)
    if attention_mask is not None:  # sdpa_mask's: True where a query may attend
        scores = (
            scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            if attention_mask.dtype == torch.bool
            else scores + attention_mask
        )
    probs = torch.softmax(scores, dim=-1)
    output = torch.matmul(fast_dropout(probs, dropout), value)
    return output.transpose(1, 2).contiguous(), probs


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_fast_cpu_dropout(net: nn.Module) -> nn.Module:
    """Our attention and dropout in a transformers ELECTRA model, in place (they differ from
    transformers' SDPA and dropout only when training on CPU). Saved configs do not name them."""
    net.config._attn_implementation = ATTENTION
    for module in list(net.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, Dropout(child.p))
    return net


def discriminator_config(model_cfg, vocab_size: int, pad_id: int = 0) -> ElectraConfig:
    return ElectraConfig(
        vocab_size=vocab_size,
        embedding_size=model_cfg.embedding_size,
        hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        intermediate_size=model_cfg.intermediate_size,
        max_position_embeddings=model_cfg.max_position_embeddings,
        hidden_dropout_prob=model_cfg.dropout,
        attention_probs_dropout_prob=model_cfg.dropout,
        pad_token_id=pad_id,
    )


def generator_config(model_cfg, vocab_size: int, pad_id: int = 0) -> ElectraConfig:
    if model_cfg.generator_layers:  # TEAMS: the discriminator's bottom layers, its width
        config = discriminator_config(model_cfg, vocab_size, pad_id)
        config.num_hidden_layers = model_cfg.generator_layers
        return config
    return scaled_generator_config(model_cfg, vocab_size, pad_id)


def scaled_generator_config(model_cfg, vocab_size: int, pad_id: int = 0) -> ElectraConfig:
    """Same depth and embeddings as the discriminator; hidden, heads and FFN scaled by
    `generator_size` (config.generator_shape)."""
    config = discriminator_config(model_cfg, vocab_size, pad_id)
    config.hidden_size, config.num_attention_heads, config.intermediate_size = generator_shape(
        model_cfg.hidden_size, model_cfg.num_heads, model_cfg.intermediate_size, model_cfg.generator_size
    )
    return config


class CorrectiveHead(nn.Module):
    """The discriminator's corrective LM head (after COCO-LM): hidden states at the selected
    positions -> logits over the vocabulary through the shared token embeddings (tied, as the
    generator's output layer is; with disentangled embeddings through stop-gradient(shared) +
    delta, the discriminator's own). Pre-training only: the export drops it."""

    def __init__(self, config: ElectraConfig, token_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.layer_norm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        # The shared Parameter itself, registered here too (as transformers ties an LM head): ZeRO-3
        # gathers a module's own parameters around its forward, and this forward reads it.
        self.weight = token_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, embedding_delta: torch.Tensor | None = None) -> torch.Tensor:
        matrix = self.weight if embedding_delta is None else self.weight.detach() + embedding_delta
        return F.linear(self.layer_norm(F.gelu(self.dense(hidden))), matrix, self.bias)


class ElectraPretrainingModel(nn.Module):
    NETWORKS = ("discriminator", "generator")

    def __init__(
        self,
        generator: ElectraForMaskedLM,
        discriminator: ElectraForPreTraining,
        rtd_weight: float = 50.0,
        temperature: float = 1.0,
        disentangled_embeddings: bool = False,
        corrective_weight: float = 0.0,
        shared_layers: int = 0,
    ):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        # Token, position (and token-type) embeddings and their LayerNorm are one module.
        self.discriminator.electra.embeddings = self.generator.electra.embeddings
        if shared_layers:  # TEAMS: the generator runs the discriminator's bottom layers (the same modules)
            if hasattr(discriminator.electra, "embeddings_project"):
                self.generator.electra.embeddings_project = self.discriminator.electra.embeddings_project
            for i in range(shared_layers):
                self.generator.electra.encoder.layer[i] = self.discriminator.electra.encoder.layer[i]
        token_embeddings = self.generator.electra.embeddings.word_embeddings
        self.embedding_delta = (
            nn.Parameter(torch.zeros_like(token_embeddings.weight)) if disentangled_embeddings else None
        )
        self.corrective = CorrectiveHead(discriminator.config, token_embeddings) if corrective_weight > 0 else None
        self.rtd_weight = rtd_weight
        self.corrective_weight = corrective_weight
        self.temperature = temperature  # the training loop sets it each step when it follows a schedule

    def forward(
        self,
        input_ids,
        original_ids,
        attention_mask,
        positions,
        weights,
        token_type_ids=None,
        generator_rng: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        return electra_loss(
            self.generator,
            self.discriminator,
            input_ids=input_ids,
            original_ids=original_ids,
            attention_mask=attention_mask,
            positions=positions,
            weights=weights,
            token_type_ids=token_type_ids,
            rtd_weight=self.rtd_weight,
            temperature=self.temperature,
            generator_rng=generator_rng,
            embedding_delta=self.embedding_delta,
            corrective_head=self.corrective,
            corrective_weight=self.corrective_weight,
        )

    def exported_networks(self) -> dict[str, nn.Module]:
        """The networks as the export writes them: with disentangled embeddings, the discriminator
        gets its own embeddings module, its token embeddings shared + delta, so that it is a plain
        ElectraForPreTraining."""
        if self.embedding_delta is None:
            return {name: getattr(self, name) for name in self.NETWORKS}
        discriminator = copy.deepcopy(self.discriminator)  # deep-copies the shared embeddings module too
        with torch.no_grad():
            discriminator.electra.embeddings.word_embeddings.weight.add_(self.embedding_delta)
        return {"discriminator": discriminator, "generator": self.generator}


class MaskedLMPretrainingModel(nn.Module):
    """The MLM baseline: an ElectraForMaskedLM whose encoder (`mlm.electra`) has the
    discriminator's shape, so it fine-tunes exactly as ELECTRA's discriminator does."""

    NETWORKS = ("mlm",)

    def __init__(self, mlm: ElectraForMaskedLM):
        super().__init__()
        self.mlm = mlm

    def forward(
        self,
        input_ids,
        original_ids,
        attention_mask,
        positions,
        weights,
        token_type_ids=None,
        generator_rng: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        return masked_lm_loss(
            self.mlm,
            input_ids=input_ids,
            original_ids=original_ids,
            attention_mask=attention_mask,
            positions=positions,
            weights=weights,
            token_type_ids=token_type_ids,
        )

    def exported_networks(self) -> dict[str, nn.Module]:
        return {"mlm": self.mlm}


def build_model(
    model_cfg,
    vocab_size: int,
    pad_id: int = 0,
    rtd_weight: float = 50.0,
    temperature: float = 1.0,
    objective: str = "electra",
    stock: bool = False,
    corrective_weight: float = 0.0,
) -> nn.Module:
    """`stock`: transformers' own SDPA attention and dropout (the bench's naive loop); else ours,
    which differ on CPU only (see `fast_dropout`)."""
    if objective == "mlm":
        networks = [ElectraForMaskedLM(discriminator_config(model_cfg, vocab_size, pad_id))]
    else:
        networks = [
            ElectraForMaskedLM(generator_config(model_cfg, vocab_size, pad_id)),
            ElectraForPreTraining(discriminator_config(model_cfg, vocab_size, pad_id)),
        ]
    for net in networks:
        if stock:
            net.config._attn_implementation = "sdpa"
        else:
            use_fast_cpu_dropout(net)
    if objective == "mlm":
        model = MaskedLMPretrainingModel(*networks)
    else:
        model = ElectraPretrainingModel(
            *networks,
            rtd_weight,
            temperature,
            disentangled_embeddings=model_cfg.disentangled_embeddings,
            corrective_weight=corrective_weight,
            shared_layers=model_cfg.generator_layers,
        )
    if model_cfg.local_attention:  # after the sharing: the shared position table is written once
        for index, name in enumerate(model.NETWORKS):
            encoder = getattr(model, name).electra
            local_attention_init(encoder, model_cfg.local_attention, set_positions=index == 0)
    return model


def compile_networks(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile each network's encoder (`electra`, the transformer layers: nearly all of a
    step's FLOPs) in place, for train.compile. In place (nn.Module.compile): parameter names,
    checkpoints and the export stay as without it. The heads and the objective stay eager: their
    shapes (selected positions) and the sampling would recompile or break the graph. `backend`:
    torch.compile's; the bench's CPU dry run traces with "eager" (seconds, not minutes)."""
    for name in model.NETWORKS:
        getattr(model, name).electra.compile(backend=backend)
    return model


def build_pretraining_model(cfg, vocab_size: int, pad_id: int = 0, stock: bool = False) -> nn.Module:
    """The joint model a run's Config describes (its objective, lambda, mu, temperature)."""
    t = cfg.train
    return build_model(
        cfg.model,
        vocab_size,
        pad_id,
        t.rtd_weight,
        t.temperature,
        t.objective,
        stock,
        corrective_weight=t.corrective_weight,
    )


def flops_per_token(
    model_cfg, vocab_size: int, seq_len: int, mask_prob: float, objective: str = "electra", corrective: bool = False
) -> float:
    """Training FLOPs per input token (forward + backward = 3x forward), generator included, in
    the spirit of google-research/electra's flops_computation: 2 FLOPs per multiply-add. For the
    MLM baseline: the discriminator-sized encoder and its masked-LM head. `corrective`: ELECTRA
    with the discriminator's corrective LM head (train.corrective_weight > 0), a masked-LM head of
    the discriminator's width on the selected positions."""

    def encoder(hidden: int, ffn: int, layers: int = model_cfg.num_layers) -> float:
        per_layer = 2 * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * 2 * seq_len * hidden  # dense + attention
        return layers * per_layer + 2 * model_cfg.embedding_size * hidden  # + embedding projection

    def masked_lm(hidden: int, ffn: int, layers: int = model_cfg.num_layers) -> float:
        emb = model_cfg.embedding_size
        return encoder(hidden, ffn, layers) + mask_prob * 2 * (hidden * emb + emb * vocab_size)  # masked positions only

    if objective == "mlm":
        return 3 * masked_lm(model_cfg.hidden_size, model_cfg.intermediate_size)
    gen = generator_config(model_cfg, vocab_size)
    discriminator = encoder(model_cfg.hidden_size, model_cfg.intermediate_size) + 2 * (
        model_cfg.hidden_size * model_cfg.hidden_size + model_cfg.hidden_size
    )
    if corrective:
        discriminator += (
            mask_prob * 2 * (model_cfg.hidden_size * model_cfg.embedding_size + model_cfg.embedding_size * vocab_size)
        )
    return 3 * (masked_lm(gen.hidden_size, gen.intermediate_size, gen.num_hidden_layers) + discriminator)


def run_flops_per_token(cfg, vocab_size: int) -> float:
    """flops_per_token of the model a run's Config trains."""
    return flops_per_token(
        cfg.model,
        vocab_size,
        cfg.data.seq_len,
        cfg.data.mask_prob,
        cfg.train.objective,
        corrective=cfg.train.objective == "electra" and cfg.train.corrective_weight > 0,
    )
