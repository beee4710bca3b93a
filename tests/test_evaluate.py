"""The held-out measurements' arithmetic: ROC-AUC, entropies and the fixed corruptions."""

import itertools
import math

import numpy as np
import pytest

from electra_ray.evaluate import binary_entropy, fixed_corruption, roc_auc, unigram_entropy

SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]


def test_roc_auc_is_the_probability_a_positive_outranks_a_negative():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = rng.integers(0, 10, 200).astype(float)  # many ties: each counts one half
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(scores[labels], scores[~labels])]
    assert roc_auc(labels, scores) == pytest.approx(np.mean(pairs))
    assert roc_auc(labels, labels.astype(float)) == 1.0 and roc_auc(labels, -labels.astype(float)) == 0.0


def test_entropies():
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert unigram_entropy(np.array([7, 7, 9, 9])) == pytest.approx(math.log(2))
    assert unigram_entropy(np.array([7, 7, 7])) == pytest.approx(0.0)


def held_out(rows=64, length=32, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIAL), 60, (rows, length))  # text that uses a few common tokens only
    ids[:, 0], ids[:, -1] = 2, 3
    ids[::4, -8:] = 0  # some padding
    return ids


@pytest.mark.parametrize("uniform", [False, True])
def test_fixed_corruption_replaces_real_tokens_only_and_is_reproducible(uniform):
    ids = held_out()
    vocab = 1000
    corruption = fixed_corruption(ids, SPECIAL, 0, 0.15, seed=3, uniform_over_vocab=vocab if uniform else 0)
    changed = corruption.input_ids != ids
    assert (changed == corruption.replaced).all()
    assert not changed[np.isin(ids, SPECIAL)].any()  # [CLS], [SEP] and padding untouched
    assert (corruption.attention_mask == (ids != 0)).all()
    assert 0.12 < changed.sum() / corruption.scored.sum() < 0.18  # 15% chosen (sd 0.008), a few drawn unchanged
    new = corruption.input_ids[changed]
    assert not np.isin(new, SPECIAL).any() and new.max() < vocab
    if uniform:  # the whole vocabulary: mostly tokens the text never uses
        assert (new >= 60).mean() > 0.9
    else:  # the text's own tokens
        assert set(new) <= set(ids[corruption.scored])
    again = fixed_corruption(ids, SPECIAL, 0, 0.15, seed=3, uniform_over_vocab=vocab if uniform else 0)
    assert (again.input_ids == corruption.input_ids).all()


# -- what evaluate accepts as an export (issue 16) -------------------------------------------------


@pytest.fixture(scope="module")
def untrained_export(small_corpus, tokenizer_dir, tmp_path_factory):
    """An export of a freshly initialised tiny ELECTRA: the files evaluate reads, without training."""
    from test_pretrain import tiny_config

    from electra_ray.data import tokenizer_from_json
    from electra_ray.export import write_export
    from electra_ray.model import build_model
    from electra_ray.tokenizer import read_tokenizer_json

    directory = tmp_path_factory.mktemp("export") / "export"
    cfg = tiny_config(small_corpus, tokenizer_dir, directory.parent)
    tokenizer_json = read_tokenizer_json(tokenizer_dir)
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    model = build_model(cfg.model, tokenizer.get_vocab_size(), special["[PAD]"], cfg.train.rtd_weight)
    write_export(model, cfg, tokenizer_json, "untrained", str(directory))
    return str(directory)


def test_not_an_export_is_a_one_line_error(tmp_path):
    from electra_ray.evaluate import ExportError, evaluate_export

    with pytest.raises(ExportError, match=r"^export not found: .*nowhere$"):
        evaluate_export(str(tmp_path / "nowhere"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ExportError, match=r"model is not an electra-ray export \(no electra_ray.json\)"):
        evaluate_export(str(tmp_path / "model"))
    (tmp_path / "model" / "electra_ray.json").write_text('{"config": {"train": {"lr": ')  # cut short
    with pytest.raises(ExportError, match=r"model/electra_ray.json is not valid JSON \(Expecting value: line 1"):
        evaluate_export(str(tmp_path / "model"))
    (tmp_path / "model" / "electra_ray.json").write_text('{"config": {"train": {"lr": "fast"}}}')
    with pytest.raises(ExportError, match=r"model/electra_ray.json: config key 'train.lr' expects float"):
        evaluate_export(str(tmp_path / "model"))
    (tmp_path / "model" / "electra_ray.json").write_text("[1, 2]")
    with pytest.raises(ExportError, match=r"model/electra_ray.json holds no 'config' mapping"):
        evaluate_export(str(tmp_path / "model"))


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_max_sequences_must_be_positive(untrained_export, value):
    from electra_ray.errors import UserError
    from electra_ray.evaluate import evaluate_export

    with pytest.raises(UserError, match=rf"^--max-sequences must be an integer >= 1, got {value!r}$"):
        evaluate_export(untrained_export, max_sequences=value)


def test_an_incomplete_export_names_the_missing_network(untrained_export, tmp_path):
    import shutil

    from electra_ray.evaluate import ExportError, evaluate_export

    copy = tmp_path / "copy"
    shutil.copytree(untrained_export, copy)
    shutil.rmtree(copy / "discriminator")
    with pytest.raises(ExportError, match=r"copy is incomplete: no discriminator/config.json"):
        evaluate_export(str(copy), max_sequences=4)
    (copy / "generator" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ExportError, match=r"^cannot load .*copy/generator: "):
        evaluate_export(str(copy), max_sequences=4)


def test_cli_errors_are_one_line(tmp_path, capsys):
    import os
    import subprocess
    import sys

    from electra_ray.evaluate import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [sys.executable, "-m", "electra_ray.evaluate", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"error: export not found: {tmp_path}/nowhere"]
    for value, shown in (("0", "0"), ("many", "'many'")):  # in this process: run_cli's path, no new interpreter
        with pytest.raises(SystemExit) as exit:
            main([str(tmp_path), "--max-sequences", value])
        assert exit.value.code == 2
        assert capsys.readouterr().err == f"error: --max-sequences must be an integer >= 1, got {shown}\n"


def test_an_s3_export_is_fetched_and_measured(untrained_export, rclone_s3):
    from electra_ray import storage
    from electra_ray.evaluate import evaluate_export

    local = evaluate_export(untrained_export, max_sequences=4)
    assert local["sequences"] == 4 and 0 <= local["auc_fixed_corruption"] <= 1
    storage.publish_directory(untrained_export, "s3://electra/exports/untrained")
    assert evaluate_export("s3://electra/exports/untrained", max_sequences=4) == pytest.approx(local)

    client = storage.s3_client()
    client.put_object(Bucket="electra", Key="exports/unfinished/electra_ray.json", Body=b"{}")  # no manifest
    with pytest.raises(storage.StorageError, match=r"s3://electra/exports/unfinished is not a complete export"):
        evaluate_export("s3://electra/exports/unfinished")


def test_the_yardstick_is_measured_beside_the_networks_and_cached_beside_the_export(untrained_export, monkeypatch):
    """evaluate_export adds the bigram counts' figures on the same positions and corruption, counts
    the training split once and reads the counts from beside the export after that."""
    import glob
    import os

    from transformers import ElectraForMaskedLM

    from electra_ray import yardstick
    from electra_ray.data import load_sequences, tokenizer_from_json
    from electra_ray.evaluate import evaluate_export, held_out_metrics, read_export_config, training_bigrams

    measured = evaluate_export(untrained_export, max_sequences=4)
    assert measured["bigram_mlm_loss"] < measured["unigram_entropy"]  # 40 addresses already hold bigram signal
    assert 0.6 < measured["bigram_auc_fixed_corruption"] <= 1 and 0 <= measured["auc_fixed_corruption"] <= 1
    (cache,) = glob.glob(os.path.join(os.path.dirname(untrained_export), "bigram-counts-*.npz"))

    def counting_again(*args, **kwargs):
        raise AssertionError("counted again despite the cache")

    monkeypatch.setattr(yardstick.BigramCounts, "from_sequences", counting_again)
    assert evaluate_export(untrained_export, max_sequences=4) == measured  # from the cache, the same figures
    # the MLM baseline's masked LM: the loss's yardstick, no AUC
    cfg = read_export_config(untrained_export)
    with open(os.path.join(untrained_export, "generator", "tokenizer.json")) as f:
        tokenizer_json = f.read()
    special = tokenizer_from_json(tokenizer_json)[1]
    sequences = load_sequences(cfg.data, tokenizer_json, "eval", 4)["input_ids"]
    generator = ElectraForMaskedLM.from_pretrained(os.path.join(untrained_export, "generator")).eval()
    bigrams = training_bigrams(cfg, tokenizer_json, os.path.dirname(cache))
    baseline = held_out_metrics(generator, None, sequences, cfg, special, bigrams=bigrams)
    assert baseline["bigram_mlm_loss"] == pytest.approx(measured["bigram_mlm_loss"])  # the same positions
    assert "bigram_auc_fixed_corruption" not in baseline
    assert "bigram_mlm_loss" not in held_out_metrics(generator, None, sequences, cfg, special)
