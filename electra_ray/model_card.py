"""The model card (`README.md`, Hugging Face's convention) of each network of an export.

YAML front matter (library_name, tags, pipeline_tag fill-mask for the masked LMs; the license is
left for the user, who knows the corpus's and the weights' terms), then: what the network is, how
it was trained (objective, shape, steps, batch, tokens seen, corpus), the held-out figures the run
measured, and how to load it with transformers. Written from the checkpoint's config and run
state, never from the environment: no credentials, endpoints or local user names beyond the
corpus path given in the config (with any `user:password@` masked).
"""

from __future__ import annotations

import json
import os

import yaml

from electra_ray import storage
from electra_ray.config import Config

MODEL_CARD = "README.md"
# What each exported network is, and the transformers class that loads it.
NETWORKS = {
    "discriminator": (
        "ElectraForPreTraining",
        "the ELECTRA discriminator: for every token, the logit that the generator replaced it "
        "(replaced token detection). This is the network to fine-tune for downstream tasks "
        "(`ElectraForSequenceClassification.from_pretrained` on this directory drops the detection "
        "head and adds a classifier).",
    ),
    "generator": (
        "ElectraForMaskedLM",
        "the ELECTRA generator: a small masked language model, trained jointly with the "
        "discriminator, whose samples at the masked positions are the replacements the "
        "discriminator learns to detect. It fills in `[MASK]` tokens (fill-mask); it is not a "
        "left-to-right text generator.",
    ),
    "mlm": (
        "ElectraForMaskedLM",
        "a masked language model (BERT's objective), trained as the baseline ELECTRA is compared "
        "with; its encoder has the discriminator's shape. It fills in `[MASK]` tokens (fill-mask).",
    ),
}
# Held-out figures (evaluate.evaluate_export, and heldout_auc from train.eval_every): label, unit.
# The bigram rows are the yardstick (yardstick.py), beside the figures they are read against.
FIGURES = {
    "sequences": "held-out sequences measured",
    "generator_mlm_loss": "generator MLM loss at masked positions (nats)",
    "mlm_loss": "MLM loss at masked positions (nats)",
    "unigram_entropy": "unigram entropy of the held-out tokens (nats; a context-free predictor's best loss)",
    "bigram_mlm_loss": "bigram counts' loss at the same masked positions (nats; the yardstick)",
    "rtd_loss_generator": "discriminator RTD loss on generator replacements",
    "rtd_loss_constant": "RTD loss of the best constant predictor",
    "replaced_fraction_generator": "fraction of tokens the generator replaced",
    "auc_generator_replacements": "discriminator ROC-AUC on generator replacements",
    "auc_fixed_corruption": "discriminator ROC-AUC on a fixed unigram corruption",
    "bigram_auc_fixed_corruption": "bigram counts' ROC-AUC on the same fixed corruption (the yardstick)",
    "auc_random_replacements": "discriminator ROC-AUC on uniformly random replacements",
    "heldout_auc": "discriminator ROC-AUC on the fixed corruption, measured during training",
}

YARDSTICK_NOTE = (
    "\n\nRead each figure between two references: the unigram entropy and an AUC of 0.5 are what a "
    "network that learned nothing reaches; the bigram counts' figures are what counting adjacent tokens "
    "of the training split gives, measured the same way (the same masked positions, the same corruption)."
)


def front_matter(network: str) -> dict:
    tags = ["electra", "electra-ray", network, "pretraining"]
    values = {"library_name": "transformers", "tags": tags}
    if network != "discriminator":
        values["pipeline_tag"] = "fill-mask"
    return values


def training_rows(network, cfg: Config, step: int) -> list[tuple[str, str]]:
    """(what, value) rows of the training table; the shape is the saved network's own."""
    shape = network.config
    train, data = cfg.train, cfg.data
    objective = (
        f"ELECTRA: generator MLM loss + {train.rtd_weight:g} × replaced-token-detection loss"
        if train.objective == "electra"
        else "masked language modelling (the MLM baseline)"
    )
    tokens = step * train.batch_size * data.seq_len
    return [
        ("objective", objective),
        ("layers", str(shape.num_hidden_layers)),
        ("hidden size", str(shape.hidden_size)),
        ("attention heads", str(shape.num_attention_heads)),
        ("intermediate size", str(shape.intermediate_size)),
        ("embedding size", str(shape.embedding_size)),
        ("vocabulary", f"{shape.vocab_size} tokens"),
        ("max positions", str(shape.max_position_embeddings)),
        ("parameters", f"{sum(p.numel() for p in network.parameters()):,}"),
        ("optimizer steps", f"{step} (of train.max_steps {train.max_steps})"),
        ("batch", f"{train.batch_size} sequences × {data.seq_len} tokens"),
        ("tokens seen", f"{tokens:,} (steps × batch × sequence length)"),
        ("masking", f"{data.mask_prob:.0%} of tokens"),
        ("learning rate", f"{train.lr:g}, {train.warmup_steps} warm-up steps, linear decay"),
        ("corpus", f"`{storage.redact(data.path)}` (text column `{data.text_column}`)"),
    ] + ([("initial weights", f"`{storage.redact(cfg.model.init_from)}`")] if cfg.model.init_from else [])


def figure_rows(figures: dict) -> list[tuple[str, str]]:
    rows = []
    for key, label in FIGURES.items():
        value = figures.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((label, f"{value:.4f}" if isinstance(value, float) else str(value)))
    return rows


def usage(network: str, name: str) -> str:
    """How to load the network: with transformers alone, from this directory."""
    loader = NETWORKS[network][0]
    lines = [
        f"from transformers import AutoTokenizer, {loader}" + (", pipeline" if network != "discriminator" else ""),
        "",
        f'model = {loader}.from_pretrained("path/to/{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("path/to/{name}")',
    ]
    if network == "discriminator":
        lines += [
            'inputs = tokenizer("the state of the union is strong", return_tensors="pt")',
            "replaced = model(**inputs).logits > 0  # True where the discriminator sees a replaced token",
        ]
    else:
        lines += [
            "",
            f'fill = pipeline("fill-mask", model="path/to/{name}")',
            'print(fill(f"the state of the {fill.tokenizer.mask_token} is strong"))',
        ]
    return "\n".join(lines)


def table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {what} | {value} |" for what, value in rows)])


def model_card(network_name: str, network, cfg: Config, step: int, figures: dict | None = None) -> str:
    """The README.md of one exported network (`network_name`: discriminator, generator or mlm)."""
    header = yaml.safe_dump(front_matter(network_name), sort_keys=False)
    header += "# license: set the license of these weights here (e.g. apache-2.0), as the corpus's terms allow\n"
    figures = figures or {}
    rows = figure_rows(figures)
    layers = network.config.num_hidden_layers
    measured = (
        table(rows) + (YARDSTICK_NOTE if "bigram_mlm_loss" in figures else "")
        if rows
        else "Not measured: export the run's final checkpoint with `python -m electra_ray.pretrain` (which "
        "evaluates it), or run `python -m electra_ray.evaluate` on the export."
    )
    return "\n".join(
        [
            f"---\n{header}---",
            "",
            f"# ELECTRA {network_name}: {layers} layer{'s' if layers != 1 else ''}, hidden size "
            f"{network.config.hidden_size}, pre-trained with electra-ray",
            "",
            f"`{NETWORKS[network_name][0]}`: {NETWORKS[network_name][1]}",
            "",
            "## Training",
            "",
            f"Pre-trained from {'the initial weights below' if cfg.model.init_from else 'scratch'} by "
            f"electra-ray (Ray Train + DeepSpeed) for {step} optimizer steps.",
            "",
            table(training_rows(network, cfg, step)),
            "",
            "## Held-out evaluation",
            "",
            measured,
            "",
            "## How to use",
            "",
            "```python",
            usage(network_name, network_name),
            "```",
            "",
        ]
    )


def run_figures(checkpoint: str, step: int) -> dict:
    """Held-out figures the run recorded for this checkpoint's step, if its records are beside it
    (a local run's directory): heldout_auc of train.eval_every from metrics.jsonl."""
    if storage.is_remote(checkpoint):
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "metrics.jsonl")
    if not os.path.isfile(path):
        return {}
    figures = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill: metrics.read_history skips it too
            if isinstance(record, dict) and record.get("step") == step and "heldout_auc" in record:
                figures["heldout_auc"] = record["heldout_auc"]
    return figures


def write_model_cards(directory: str, networks: dict, cfg: Config, step: int, figures: dict | None = None) -> None:
    """README.md beside the weights of each network in `directory` (an export being written)."""
    for name, network in networks.items():
        with open(os.path.join(directory, name, MODEL_CARD), "w", encoding="utf-8") as f:
            f.write(model_card(name, network, cfg, step, figures))
