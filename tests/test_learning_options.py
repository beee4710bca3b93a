"""The options for learning at small budgets (docs/small-budget.md): each one's math, pinned."""

import dataclasses

import pytest
import torch
from test_objective import TINY, VOCAB, make_batch  # the same tiny shapes and masked batch

from electra_ray.model import build_model
from electra_ray.objective import sampling_temperature


def model_with(disentangled=False, corrective_weight=0.0, seed=0):
    torch.manual_seed(seed)
    return build_model(
        dataclasses.replace(TINY, disentangled_embeddings=disentangled), VOCAB, corrective_weight=corrective_weight
    )


def test_disentangled_embeddings_keep_rtd_gradients_off_the_shared_matrix():
    model = model_with(disentangled=True)
    shared = model.generator.electra.embeddings.word_embeddings.weight
    out = model(**make_batch(), generator_rng=torch.Generator().manual_seed(0))
    out.rtd_loss.backward()
    assert shared.grad is None or shared.grad.abs().max() == 0  # no RTD gradient on the generator's embeddings
    assert model.embedding_delta.grad is not None and model.embedding_delta.grad.abs().max() > 0

    model.zero_grad()
    out = model(**make_batch(), generator_rng=torch.Generator().manual_seed(0))
    out.mlm_loss.backward()
    assert shared.grad.abs().max() > 0  # the generator's MLM loss still trains them
    assert model.embedding_delta.grad is None or model.embedding_delta.grad.abs().max() == 0


def test_plain_sharing_lets_rtd_gradients_reach_the_shared_matrix():
    # The contrast to the test above: without the option the RTD loss does train the shared matrix.
    model = model_with(disentangled=False)
    assert model.embedding_delta is None
    model(**make_batch(), generator_rng=torch.Generator().manual_seed(0)).rtd_loss.backward()
    assert model.generator.electra.embeddings.word_embeddings.weight.grad.abs().max() > 0


def test_disentangled_delta_starts_at_zero_and_the_discriminator_reads_shared_plus_delta():
    model = model_with(disentangled=True).eval()
    assert torch.equal(model.embedding_delta, torch.zeros_like(model.embedding_delta))
    with torch.no_grad():
        model.embedding_delta.normal_()
    exported = model.exported_networks()["discriminator"].eval()
    shared = model.generator.electra.embeddings.word_embeddings.weight
    # The export's own embedding matrix is shared + delta, and the shared one is untouched.
    assert torch.allclose(exported.electra.embeddings.word_embeddings.weight, shared + model.embedding_delta)
    assert exported.electra.embeddings is not model.generator.electra.embeddings
    # The exported (plain ElectraForPreTraining) discriminator computes what training computed.
    from electra_ray.objective import discriminator_hidden

    ids = make_batch()["original_ids"]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        trained = model.discriminator.discriminator_predictions(
            discriminator_hidden(model.discriminator, ids, mask, embedding_delta=model.embedding_delta)
        )
        plain = exported(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(trained, plain, atol=1e-5)


def test_disentangled_export_round_trips_through_a_checkpoint(tmp_path):
    from transformers import ElectraForPreTraining

    model = model_with(disentangled=True)
    with torch.no_grad():
        model.embedding_delta.normal_()
    model.exported_networks()["discriminator"].save_pretrained(tmp_path / "discriminator")
    loaded = ElectraForPreTraining.from_pretrained(tmp_path / "discriminator")
    shared = model.generator.electra.embeddings.word_embeddings.weight
    assert torch.allclose(loaded.electra.embeddings.word_embeddings.weight, shared + model.embedding_delta)


def test_temperature_schedule_values():
    assert sampling_temperature(0, 3.0, 1.0, 100) == 3.0
    assert sampling_temperature(50, 3.0, 1.0, 100) == pytest.approx(2.0)
    assert sampling_temperature(75, 3.0, 1.0, 100) == pytest.approx(1.5)
    assert sampling_temperature(100, 3.0, 1.0, 100) == 1.0
    assert sampling_temperature(10_000, 3.0, 1.0, 100) == 1.0
    assert sampling_temperature(0, 3.0, 1.0, 0) == 1.0  # no schedule: the final temperature throughout


def test_corrective_loss_is_the_discriminators_cross_entropy_at_the_selected_positions():
    model = model_with(corrective_weight=0.5)
    batch = make_batch()
    out = model(**batch, generator_rng=torch.Generator().manual_seed(0))
    # Recompute by hand from the same sample (same generator seed -> same corruption).
    plain = model_with(corrective_weight=0.5)
    plain.load_state_dict(model.state_dict())
    from electra_ray.objective import (
        discriminator_hidden,
        gather_positions,
        generator_logits,
        replace_tokens,
        sample_tokens,
    )

    with torch.no_grad():
        logits = generator_logits(plain.generator, batch["input_ids"], batch["attention_mask"], batch["positions"])
        sampled = sample_tokens(logits, 1.0, torch.Generator().manual_seed(0))
        corrupted, _ = replace_tokens(
            batch["input_ids"], batch["original_ids"], batch["positions"], batch["weights"], sampled
        )
        hidden = gather_positions(
            discriminator_hidden(plain.discriminator, corrupted, batch["attention_mask"]), batch["positions"]
        )
        head = plain.corrective
        vocab_logits = (
            head.layer_norm(torch.nn.functional.gelu(head.dense(hidden)))
            @ plain.generator.electra.embeddings.word_embeddings.weight.T
            + head.bias
        )
        targets = torch.gather(batch["original_ids"], 1, batch["positions"])
        per_slot = torch.nn.functional.cross_entropy(vocab_logits.flatten(0, 1), targets.flatten(), reduction="none")
        expected = (per_slot * batch["weights"].flatten()).sum() / batch["weights"].sum()
    total = out.mlm_loss + 50.0 * out.rtd_loss + 0.5 * expected
    assert torch.allclose(out.loss, total, atol=1e-5)
    assert torch.allclose(out.stats[-1] / batch["weights"].sum(), expected, atol=1e-4)


def test_corrective_head_is_tied_to_the_shared_embeddings_and_not_exported():
    model = model_with(corrective_weight=1.0)
    assert model.corrective.weight is model.generator.electra.embeddings.word_embeddings.weight
    exported = model.exported_networks()
    assert set(exported) == {"discriminator", "generator"}
    assert not any("corrective" in name for net in exported.values() for name, _ in net.named_parameters())
    assert model_with(corrective_weight=0.0).corrective is None


def test_teams_generator_runs_the_discriminators_bottom_layers():
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, generator_layers=1), VOCAB)
    gen, disc = model.generator.electra, model.discriminator.electra
    assert gen.config.hidden_size == disc.config.hidden_size and len(gen.encoder.layer) == 1
    assert gen.encoder.layer[0] is disc.encoder.layer[0]
    model(**make_batch(), generator_rng=torch.Generator().manual_seed(0)).mlm_loss.backward()
    bottom = disc.encoder.layer[0].attention.self.query.weight.grad
    top = disc.encoder.layer[1].attention.self.query.weight.grad
    assert bottom is not None and bottom.abs().max() > 0  # the MLM loss trains the shared bottom layer
    assert top is None or top.abs().max() == 0  # and nothing above it


def test_teams_export_is_a_plain_generator_with_the_shared_weights(tmp_path):
    from transformers import ElectraForMaskedLM

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, generator_layers=1), VOCAB)
    model.exported_networks()["generator"].save_pretrained(tmp_path / "generator")
    loaded = ElectraForMaskedLM.from_pretrained(tmp_path / "generator")
    assert loaded.config.num_hidden_layers == 1
    shared = model.discriminator.electra.encoder.layer[0].output.dense.weight
    assert torch.equal(loaded.electra.encoder.layer[0].output.dense.weight, shared)


def test_a_generator_deeper_than_the_discriminator_is_refused():
    from electra_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="generator_layers"):
        load_config(None, ["model.num_layers=2", "model.generator_layers=3"])


def test_the_corrective_head_and_teams_generator_count_in_the_flops():
    from electra_ray.model import flops_per_token

    seq, p, vocab = 128, 0.15, 8192
    plain = flops_per_token(TINY, vocab, seq, p)
    head = 3 * p * 2 * (TINY.hidden_size * TINY.embedding_size + TINY.embedding_size * vocab)
    assert flops_per_token(TINY, vocab, seq, p, corrective=True) == pytest.approx(plain + head)
    # A TEAMS generator of the discriminator's width costs more than the paper's 1/4-width one.
    assert flops_per_token(dataclasses.replace(TINY, generator_layers=1), vocab, seq, p) > plain
