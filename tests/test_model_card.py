"""Model cards and the generator's use: the README's fill-mask example, run as written against a
real (tiny, untrained) export, and each network's README.md model card read back."""

import os
import re

import pytest
import yaml
from conftest import TINY_MODEL

from electra_ray.export import export

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def tiny_export(stage0_checkpoint, tmp_path_factory) -> str:
    return export(stage0_checkpoint, str(tmp_path_factory.mktemp("card") / "export"))


def fill_mask_example() -> str:
    """The README's Python block that uses the generator with pipeline("fill-mask")."""
    blocks = re.findall(r"```python\n(.*?)```", open(README, encoding="utf-8").read(), re.DOTALL)
    (block,) = [b for b in blocks if 'pipeline("fill-mask"' in b]
    return block


def test_readme_fill_mask_example_runs_on_a_real_export(tiny_export):
    code = fill_mask_example()
    assert 'model="runs/run-…/export/generator"' in code
    namespace = {}
    exec(code.replace("runs/run-…/export", tiny_export), namespace)  # the README's code, on a real export
    predictions = namespace["predictions"]
    tokenizer = namespace["fill_mask"].tokenizer
    assert len(predictions) == 5
    for prediction in predictions:
        # [MASK] filled by a token of the vocabulary: the sequence is the sentence with it in place.
        assert prediction["token"] in tokenizer.get_vocab().values()
        assert prediction["token"] != tokenizer.mask_token_id
        assert "[MASK]" not in prediction["sequence"] and prediction["sequence"].startswith("the state of the ")
        assert 0.0 <= prediction["score"] <= 1.0


def read_card(path: str) -> tuple[dict, str]:
    text = open(path, encoding="utf-8").read()
    match = re.match(r"---\n(.*?\n)---\n(.*)", text, re.DOTALL)
    assert match, text[:300]
    return yaml.safe_load(match.group(1)), match.group(2)


def test_each_network_has_a_model_card_with_its_real_shape_and_step(tiny_export, stage0_checkpoint):
    import json

    from transformers import AutoConfig

    step = json.load(open(os.path.join(stage0_checkpoint, "run_state.json")))["step"]
    for network in ("discriminator", "generator"):
        meta, body = read_card(os.path.join(tiny_export, network, "README.md"))
        assert meta["library_name"] == "transformers"
        assert "electra" in meta["tags"] and network in meta["tags"]
        assert meta.get("pipeline_tag") == ("fill-mask" if network == "generator" else None)
        shape = AutoConfig.from_pretrained(os.path.join(tiny_export, network))
        assert f"| layers | {shape.num_hidden_layers} |" in body
        assert f"| hidden size | {shape.hidden_size} |" in body
        assert f"| vocabulary | {shape.vocab_size} tokens |" in body
        assert f"| optimizer steps | {step} (of train.max_steps" in body
        assert "## Held-out evaluation" in body and "## How to use" in body
        # The card's own example runs on the network it describes.
        (example,) = re.findall(r"```python\n(.*?)```", body, re.DOTALL)
        namespace = {}
        exec(example.replace(f"path/to/{network}", os.path.join(tiny_export, network)), namespace)
        if network == "generator":
            assert namespace["fill"].tokenizer.mask_token == "[MASK]"
    # The generator's width is a fraction of the discriminator's, and each card states its own.
    assert (
        f"| hidden size | {TINY_MODEL['hidden_size']} |"
        in read_card(os.path.join(tiny_export, "discriminator", "README.md"))[1]
    )
    # The card is an added file: the export's layout is otherwise the same.
    assert sorted(os.listdir(os.path.join(tiny_export, "generator"))) == sorted(
        ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    )


def test_the_cards_carry_the_held_out_figures_measured_before_publishing(stage0_checkpoint, tmp_path):
    """As pretrain exports its run: evaluate_export measures the export before it is published."""
    from electra_ray.evaluate import evaluate_export
    from electra_ray.storage import verify_directory

    measured = {}

    def measure(directory):
        measured.update(evaluate_export(directory, max_sequences=64))
        return measured

    out = export(stage0_checkpoint, str(tmp_path / "export"), measure=measure)
    _, body = read_card(os.path.join(out, "generator", "README.md"))
    figures = body.split("## Held-out evaluation")[1].split("## How to use")[0]
    assert f"| held-out sequences measured | {measured['sequences']} |" in figures
    assert (
        f"| discriminator ROC-AUC on a fixed unigram corruption | {measured['auc_fixed_corruption']:.4f} |" in figures
    )
    assert f"| generator MLM loss at masked positions (nats) | {measured['generator_mlm_loss']:.4f} |" in figures
    # the yardstick beside them: what bigram counts of the training split reach, measured the same way
    loss, auc = measured["bigram_mlm_loss"], measured["bigram_auc_fixed_corruption"]
    assert f"| bigram counts' loss at the same masked positions (nats; the yardstick) | {loss:.4f} |" in figures
    assert f"| bigram counts' ROC-AUC on the same fixed corruption (the yardstick) | {auc:.4f} |" in figures
    assert "what counting adjacent tokens of the training split gives" in figures
    verify_directory(out)  # the cards were written before the manifest: every hash matches
