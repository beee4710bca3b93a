"""End to end on a real local Ray: Ray Data -> Ray Train (2 workers, gloo) -> DeepSpeed -> export."""

import glob
import os

import pytest
import torch

from electra_ray.config import load_config
from electra_ray.export import consolidated_state_dict, export, read_run_state
from electra_ray.pretrain import pretrain

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]


def tiny_config(corpus, tokenizer_dir, out, **overrides):
    return load_config(None, tiny_overrides(corpus, tokenizer_dir, out, **overrides))


def tiny_overrides(corpus, tokenizer_dir, out, **overrides) -> list[str]:
    """`--set` arguments of a 2-layer, 64-wide model trained with 2 workers."""
    values = {
        "model.num_layers": 2,
        "model.hidden_size": 64,
        "model.embedding_size": 64,
        "model.num_heads": 4,
        "model.intermediate_size": 128,
        "model.max_position_embeddings": 64,
        "data.path": corpus,
        "data.tokenizer": tokenizer_dir,
        "data.seq_len": 64,
        "data.eval_fraction": 0.1,
        "train.batch_size": 16,
        "train.lr": 2e-3,
        "train.warmup_steps": 5,
        "train.log_every": 5,
        "scaling.num_workers": 2,
        "scaling.cpus_per_worker": 1,
        "output.dir": str(out),
        "output.name": "run",
    }
    values.update(overrides)
    return [f"{k}={v}" for k, v in values.items()]


def test_two_workers_zero2_learn_checkpoint_and_export(small_corpus, tokenizer_dir, tmp_path, capsys):
    cfg = tiny_config(
        small_corpus,
        tokenizer_dir,
        tmp_path,
        **{"train.max_steps": 40, "train.zero_stage": 2, "train.checkpoint_every": 20},
    )
    result = pretrain(cfg)

    losses = [h["loss"] for h in result.history]
    assert [h["step"] for h in result.history] == list(range(5, 45, 5))
    assert sum(losses[-2:]) / 2 < 0.8 * losses[0], losses
    assert all(h["tokens_per_s"] > 0 and 0 < h["mfu"] < 1 for h in result.history)
    assert all(h["model_state_mb"] > 0 and h["peak_rss_mb"] > h["model_state_mb"] for h in result.history)
    assert os.path.exists(os.path.join(result.run_dir, "tensorboard"))

    # every rank's ZeRO-2 optimizer shard reached the checkpoint
    shards = sorted(os.path.basename(p) for p in glob.glob(os.path.join(result.checkpoint, "model", "*optim*")))
    assert len(shards) == 2 and "zero_pp_rank_0" in shards[0] and "zero_pp_rank_1" in shards[1]

    from transformers import AutoTokenizer, ElectraForMaskedLM, ElectraForPreTraining

    discriminator = ElectraForPreTraining.from_pretrained(os.path.join(result.export, "discriminator"))
    generator = ElectraForMaskedLM.from_pretrained(os.path.join(result.export, "generator"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(result.export, "discriminator"))
    assert len(tokenizer) == discriminator.config.vocab_size == generator.config.vocab_size == 2000
    assert generator.config.hidden_size == 16 and discriminator.config.hidden_size == 64
    weights = consolidated_state_dict(result.checkpoint, zero_stage=2)
    for name, tensor in discriminator.state_dict().items():
        assert torch.equal(tensor, weights[f"discriminator.{name}"]), name
    for name, tensor in generator.state_dict().items():
        key = f"generator.{name}"
        if key in weights:
            assert torch.equal(tensor, weights[key]), name
    assert torch.equal(
        generator.electra.embeddings.word_embeddings.weight, discriminator.electra.embeddings.word_embeddings.weight
    )  # shared when trained
    with torch.no_grad():
        encoded = tokenizer("The state of the union is strong.", return_tensors="pt")
        assert torch.isfinite(discriminator(**encoded).logits).all()
    assert set(result.evaluation) >= {
        "generator_mlm_loss",
        "auc_fixed_corruption",
        "auc_generator_replacements",
        "auc_random_replacements",
        "bigram_mlm_loss",
        "bigram_auc_fixed_corruption",
    }
    # the final report reads each figure against the yardstick, counted once into the run's directory
    report = capsys.readouterr().out
    assert f"bigram counts {result.evaluation['bigram_mlm_loss']:.3f})" in report
    assert f"(chance 0.5, bigram counts {result.evaluation['bigram_auc_fixed_corruption']:.3f})" in report
    assert len(glob.glob(os.path.join(result.run_dir, "bigram-counts-*.npz"))) == 1


def test_zero3_with_accumulation_resumes_and_exports_full_weights(small_corpus, tokenizer_dir, tmp_path):
    settings = {"train.max_steps": 4, "train.zero_stage": 3, "train.log_every": 2, "train.grad_accum": 2}
    first_run = pretrain(tiny_config(small_corpus, tokenizer_dir, tmp_path, **settings))
    assert [h["step"] for h in first_run.history] == [2, 4]
    # Naming the same run again continues it from its latest checkpoint.
    result = pretrain(tiny_config(small_corpus, tokenizer_dir, tmp_path, **{**settings, "train.max_steps": 6}))
    assert [h["step"] for h in result.history] == [2, 4, 6]
    assert read_run_state(result.checkpoint)["step"] == 6
    again = export(result.checkpoint, str(tmp_path / "again"))  # the on-demand verb, same checkpoint

    from transformers import ElectraForPreTraining

    model, info = ElectraForPreTraining.from_pretrained(os.path.join(again, "discriminator"), output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    query = model.electra.encoder.layer[0].attention.self.query.weight
    assert query.shape == (64, 64) and query.abs().sum() > 0
    first = ElectraForPreTraining.from_pretrained(os.path.join(result.export, "discriminator"))
    for (name, a), b in zip(model.state_dict().items(), first.state_dict().values()):
        assert torch.equal(a, b), name
