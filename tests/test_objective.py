import numpy as np
import pytest
import torch

from electra_ray.config import ModelConfig
from electra_ray.masking import mask_tokens
from electra_ray.model import (
    ATTENTION,
    Dropout,
    attention,
    build_model,
    fast_dropout,
    flops_per_token,
    generator_config,
)
from electra_ray.objective import (
    cross_entropy_with_probs,
    generator_logits,
    replace_tokens,
    sample_tokens,
    summarize,
)

VOCAB = 300
TINY = ModelConfig(
    num_layers=2,
    hidden_size=64,
    embedding_size=32,
    num_heads=4,
    intermediate_size=128,
    generator_size=0.25,
    max_position_embeddings=64,
    dropout=0.0,
)


def make_batch(seed=0, batch=4, seq_len=32):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(batch, seq_len))
    ids[:, 0], ids[:, -1] = 2, 3
    masked = mask_tokens(
        ids,
        rng,
        mask_prob=0.15,
        mask_token_prob=0.85,
        random_token_prob=0.0,
        mask_id=4,
        pad_id=0,
        special_ids=[0, 1, 2, 3, 4],
        vocab_size=VOCAB,
    )
    return {k: torch.from_numpy(v) for k, v in vars(masked).items() if v is not None}


def tiny_model(rtd_weight=50.0, seed=0):
    torch.manual_seed(seed)
    return build_model(TINY, VOCAB, rtd_weight=rtd_weight)


def test_generator_is_a_quarter_of_the_discriminator():
    gen = generator_config(TINY, VOCAB)
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == (16, 1, 32)
    assert gen.num_hidden_layers == TINY.num_layers and gen.embedding_size == TINY.embedding_size


def test_embeddings_are_one_tensor():
    model = tiny_model()
    gen, disc = model.generator.electra.embeddings, model.discriminator.electra.embeddings
    assert gen.word_embeddings.weight is disc.word_embeddings.weight
    assert gen.position_embeddings.weight is disc.position_embeddings.weight
    assert model.generator.generator_lm_head.weight is gen.word_embeddings.weight  # tied output layer
    names = [n for n, _ in model.named_parameters()]
    assert sum("word_embeddings" in n for n in names) == 1


def test_sample_equal_to_original_is_labelled_original():
    original = torch.tensor([[2, 10, 11, 12, 3]])
    masked = torch.tensor([[2, 4, 11, 4, 3]])
    positions = torch.tensor([[1, 3, 0]])
    weights = torch.tensor([[1.0, 1.0, 0.0]])
    sampled = torch.tensor([[10, 99, 77]])  # slot 0 samples the original; slot 2 is unused
    corrupted, labels = replace_tokens(masked, original, positions, weights, sampled)
    assert corrupted.tolist() == [[2, 10, 11, 99, 3]]
    assert labels.tolist() == [[0, 0, 0, 1, 0]]


def test_no_gradient_reaches_the_generator_from_the_rtd_loss():
    model = tiny_model()
    out = model(**make_batch())
    out.rtd_loss.backward()
    generator_only = [p for n, p in model.generator.named_parameters() if not n.startswith("electra.embeddings")]
    assert all(p.grad is None or not p.grad.any() for p in generator_only)
    assert model.generator.electra.embeddings.word_embeddings.weight.grad.abs().sum() > 0  # shared: it learns
    assert all(p.grad is not None for n, p in model.discriminator.named_parameters() if "pooler" not in n)


def test_mlm_loss_trains_the_generator_only():
    model = tiny_model()
    model(**make_batch()).mlm_loss.backward()
    assert model.generator.electra.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    disc_only = [p for n, p in model.discriminator.named_parameters() if not n.startswith("electra.embeddings")]
    assert all(p.grad is None or not p.grad.any() for p in disc_only)


def test_loss_is_mlm_plus_lambda_rtd():
    batch = make_batch()
    results = {}
    for weight in (1.0, 50.0):
        model = tiny_model(rtd_weight=weight).eval()
        results[weight] = model(**batch, generator_rng=torch.Generator().manual_seed(0))
    one, fifty = results[1.0], results[50.0]
    assert torch.allclose(one.mlm_loss, fifty.mlm_loss) and torch.allclose(one.rtd_loss, fifty.rtd_loss)
    assert torch.allclose(fifty.loss, fifty.mlm_loss + 50.0 * fifty.rtd_loss)
    assert torch.allclose(fifty.loss - one.loss, 49.0 * one.rtd_loss)


def test_head_at_masked_positions_equals_full_head():
    model = tiny_model().eval()
    batch = make_batch()
    fast = generator_logits(model.generator, batch["input_ids"], batch["attention_mask"], batch["positions"])
    full = model.generator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.gather(full, 1, batch["positions"].unsqueeze(-1).expand(-1, -1, VOCAB))
    assert torch.allclose(fast, expected, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampling_follows_the_softmax(temperature):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).expand(200_000, 5)
    expected = torch.softmax(logits[0] / temperature, -1)
    draws = {"logits": sample_tokens(logits, temperature, torch.Generator().manual_seed(0))}
    if temperature == 1.0:  # the loss's softmax, reused
        draws["probs"] = sample_tokens(logits, 1.0, torch.Generator().manual_seed(1), probs=torch.softmax(logits, -1))
    for samples in draws.values():
        frequencies = torch.bincount(samples, minlength=5).float() / len(samples)
        assert torch.allclose(frequencies, expected, atol=0.005), frequencies
        assert samples.max() <= 3  # a token of probability 1e-14 is (almost surely) never drawn
        assert not samples.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_with_probs_matches_torch(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(37, 300) * 4).to(dtype).requires_grad_()
    reference_logits = logits.detach().clone().requires_grad_()
    targets = torch.randint(0, 300, (37,))
    weights = torch.rand(37)
    token_loss, probs = cross_entropy_with_probs(logits, targets)
    expected = torch.nn.functional.cross_entropy(reference_logits.float(), targets, reduction="none")
    assert token_loss.dtype == torch.float32 and torch.allclose(token_loss, expected, atol=1e-5)
    assert torch.allclose(probs, torch.softmax(logits.detach().float(), -1), atol=1e-6) and not probs.requires_grad
    (token_loss * weights).sum().backward()
    (expected * weights).sum().backward()
    assert logits.grad.dtype == dtype
    assert torch.allclose(
        logits.grad.float(), reference_logits.grad.float(), atol=1e-6 if dtype == torch.float32 else 1e-2
    )


def test_fast_dropout_is_dropout():
    x = torch.ones(1_000_000, requires_grad=True)
    y = fast_dropout(x, 0.1)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.002  # 6 standard deviations
    assert torch.allclose(y[kept], torch.tensor(65536 / (65536 - 6554)))  # scaled to keep the mean exact
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask and scale
    torch.manual_seed(3)
    first = fast_dropout(torch.ones(4, 5, 6), 0.5)
    torch.manual_seed(3)
    assert torch.equal(first, fast_dropout(torch.ones(4, 5, 6), 0.5))  # torch's generator: resumable
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0) is x
    assert not torch.equal(fast_dropout(torch.ones(4, 5, 6), 0.5), first)


def test_attention_with_dropout_is_sdpa_with_its_mask():
    """With dropout (here one that keeps everything) our attention is the math SDPA does,
    padding mask included; without it, it is SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 4, 16, 8) for _ in range(3))
    padding = torch.ones(2, 16, dtype=torch.bool)
    padding[1, 10:] = False
    mask = padding[:, None, None, :].expand(2, 1, 16, 16)  # sdpa_mask's format: True where a query may attend
    module = torch.nn.Module()
    module.is_causal = False
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=0.0, scaling=0.3)
    ours, _ = attention(module, query, key, value, mask, dropout=1e-9, scaling=0.3)
    assert torch.allclose(ours, expected, atol=1e-5)
    dropped, _ = attention(module, query, key, value, mask, dropout=0.5, scaling=0.3)
    assert not torch.allclose(dropped, expected, atol=1e-3)


def test_model_uses_our_cpu_kernels_and_exports_stock_config(tmp_path):
    model = tiny_model()
    assert model.discriminator.config._attn_implementation == ATTENTION
    model.discriminator.save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / "config.json").read_text()
    stock = build_model(TINY, VOCAB, stock=True)
    assert stock.discriminator.config._attn_implementation == "sdpa"
    assert isinstance(model.discriminator.electra.encoder.layer[0].output.dropout, Dropout)
    assert not any(isinstance(m, Dropout) for m in stock.modules())


def test_sampling_never_leaves_the_vocabulary():
    logits = torch.full((10_000, 3), -1e4)
    logits[:, 2] = 0.0  # all the mass on the last id: a uniform draw at the CDF's end picks it
    assert torch.equal(sample_tokens(logits), torch.full((10_000,), 2))


def test_counters_match_the_losses():
    model = tiny_model().eval()
    batch = make_batch()
    out = model(**batch)
    summary = summarize(out.stats)
    assert summary["mlm_loss"] == pytest.approx(out.mlm_loss.item(), rel=1e-5)
    assert summary["rtd_loss"] == pytest.approx(out.rtd_loss.item(), rel=1e-5)
    assert 0 < summary["replaced_fraction"] <= 0.2
    assert 0 <= summary["gen_accuracy"] <= 1 and 0 <= summary["disc_accuracy"] <= 1


def test_mlm_baseline_is_one_discriminator_sized_masked_lm():
    torch.manual_seed(0)
    model = build_model(TINY, VOCAB, objective="mlm")
    config = model.mlm.config
    assert model.NETWORKS == ("mlm",) and [n for n, _ in model.named_children()] == ["mlm"]
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads) == (64, 128, 4)
    batch = make_batch()
    out = model(**batch)
    # BERT's loss: the cross-entropy of the full masked-LM head, at the used slots only
    logits = model.mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    picked = torch.gather(logits, 1, batch["positions"].unsqueeze(-1).expand(-1, -1, VOCAB))
    targets = torch.gather(batch["original_ids"], 1, batch["positions"])
    token_loss = torch.nn.functional.cross_entropy(picked.flatten(0, 1), targets.flatten(), reduction="none")
    expected = (token_loss * batch["weights"].flatten()).sum() / batch["weights"].sum()
    assert torch.allclose(out.mlm_loss, expected, atol=1e-5) and torch.equal(out.loss, out.mlm_loss)
    summary = summarize(out.stats)
    assert summary["mlm_loss"] == pytest.approx(out.mlm_loss.item(), rel=1e-5) and summary["rtd_loss"] == 0
    assert out.rtd_loss.item() == 0 and 0 <= summary["gen_accuracy"] <= 1
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_mlm_flops_are_the_encoder_and_its_head_at_masked_positions():
    h, f, e, layers, seq, p = 64, 128, 32, 2, 32, 0.15
    encoder = layers * (2 * (4 * h * h + 2 * h * f) + 2 * 2 * seq * h) + 2 * e * h
    mlm = flops_per_token(TINY, VOCAB, seq, p, objective="mlm")
    assert mlm == pytest.approx(3 * (encoder + p * 2 * (h * e + e * VOCAB)))
    assert flops_per_token(TINY, VOCAB, seq, p) > mlm  # ELECTRA adds its generator
