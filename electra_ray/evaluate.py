"""Has the exported model learned anything? Held-out measurements of both networks (of the one
masked LM, for the MLM baseline).

    python -m electra_ray.evaluate EXPORT_DIR [--max-sequences 512]

EXPORT_DIR: a directory written by electra_ray.export (or pretrain's OUT/export), local or s3://
(an S3 export is downloaded to a temporary directory first, its manifest checked).

- generator: MLM loss on held-out masked positions, against the unigram entropy of the held-out
  tokens (the best loss a context-free predictor can reach on them);
- discriminator on generator replacements: RTD loss against the best constant predictor (the
  binary entropy of the replaced fraction) and ROC-AUC;
- discriminator on a fixed corruption (15% of tokens swapped for tokens drawn from the held-out
  text's own unigram distribution, seeded): ROC-AUC. The same corruption for every model, so unlike
  the RTD loss it compares discriminators trained with different generators (sweeps rank by it);
- discriminator on random replacements (15% swapped for tokens drawn uniformly from the
  vocabulary, seeded): ROC-AUC, the easy test: mostly rare tokens, which a small model spots first;
- the yardstick (yardstick.py): what bigram counts of the training split reach on the same masked
  positions (bigram_mlm_loss) and the same fixed corruption (bigram_auc_fixed_corruption), so each
  figure reads between "nothing learned" (unigram entropy, AUC 0.5) and "what counting gives". The
  counts are cached beside a local export (bigram-counts-KEY.npz in its parent directory: the run's
  directory for pretrain's export), so only the first evaluation counts.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m electra_ray.evaluate`: a bad flag is refused before the imports
    from electra_ray.cli import run_cli  # below (torch, transformers: seconds); main() re-reads it
    from electra_ray.evaluate_args import checked_args

    run_cli(lambda: checked_args(sys.argv[1:], __doc__))

import contextlib
import functools
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from electra_ray import storage
from electra_ray.cli import run_cli
from electra_ray.config import Config
from electra_ray.data import load_sequences, mask_batch, tokenize_and_pack, tokenizer_from_json
from electra_ray.documents import ReadStats, iter_documents
from electra_ray.errors import UserError
from electra_ray.evaluate_args import check_max_sequences, checked_args
from electra_ray.export import EXPORT_METADATA
from electra_ray.heldout import FixedCorruption, detection_auc, fixed_corruption
from electra_ray.masking import MaskedBatch
from electra_ray.objective import generator_logits, replace_tokens, sample_tokens
from electra_ray.scoring import binary_entropy, roc_auc, unigram_entropy
from electra_ray.yardstick import BigramCounts, cache_key, load_or_count, masked_token_loss
from electra_ray.yardstick import detection_auc as bigram_detection_auc

# The yardstick counts at most this many training tokens (the first ones of the training split, in
# corpus order): all of the demo's 2.1 M, a bounded read (~10 s of tokenizing) of a larger corpus.
BIGRAM_TOKENS = 4_000_000


class ExportError(UserError):
    """The path is not a usable export: missing, not an export, incomplete or corrupt."""


@contextlib.contextmanager
def local_export(export_dir: str) -> Iterator[str]:
    """A local export directory: the path itself, or an s3:// export downloaded to a temporary
    directory (storage.fetch_directory: refused unless its upload completed). A local export with
    a manifest is checked against it first, as a fetched one is: every file's sha256."""
    if not storage.is_remote(export_dir):
        if os.path.isdir(export_dir) and os.path.isfile(os.path.join(export_dir, storage.MANIFEST)):
            storage.verify_directory(export_dir)
        yield export_dir
        return
    storage.check(export_dir)
    with tempfile.TemporaryDirectory(prefix="electra-ray-evaluate-") as temporary:
        # A new subdirectory: fetch_directory stages beside its target, here inside the temporary one.
        yield storage.fetch_directory(export_dir, os.path.join(temporary, "export"))


def read_export_config(export_dir: str, shown: str = "") -> Config:
    """The pre-training config an export records in electra_ray.json, after checking that
    `export_dir` is an export; every problem is an ExportError naming `shown` (default: the path)."""
    shown = shown or export_dir
    if not os.path.exists(export_dir):
        raise ExportError(f"export not found: {shown}")
    if not os.path.isdir(export_dir):
        raise ExportError(f"{shown} is a file, not an export directory")
    path = os.path.join(export_dir, EXPORT_METADATA)
    if not os.path.isfile(path):
        raise ExportError(
            f"{shown} is not an electra-ray export (no {EXPORT_METADATA}): pass the directory "
            f"written by electra_ray.export (a pre-training run's export/)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ExportError(
            f"{storage.join(shown, EXPORT_METADATA)} is not valid JSON ({error}): export the checkpoint again"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ExportError(
            f"{storage.join(shown, EXPORT_METADATA)} holds no 'config' mapping: export the checkpoint again"
        )
    try:
        return Config.from_dict(record["config"])
    except UserError as error:
        raise ExportError(f"{storage.join(shown, EXPORT_METADATA)}: {error}") from None


def _load_network(kind, directory: str, shown: str):
    """A network of the export, or an ExportError when its files are missing or unreadable."""
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise ExportError(f"export {shown} is incomplete: no {os.path.basename(directory)}/config.json")
    try:
        return kind.from_pretrained(directory).eval()
    except Exception as error:  # missing or corrupt weights: OSError, safetensors' own error, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"cannot load {storage.join(shown, os.path.basename(directory))}: {reason}") from None


def evaluate_export(
    export_dir: str,
    max_sequences: int | None = 512,
    batch_size: int = 64,
    seed: int = 0,
    stats: ReadStats | None = None,
    yardstick: bool = True,
) -> dict:
    """Held-out measurements of an export (a local directory or s3:// prefix). For the MLM baseline
    (no discriminator) only the masked LM's loss and the unigram entropy. `max_sequences`: at most
    that many held-out sequences, the corpus read only as far as they take (None: all of it).
    `stats`: counts the corpus rows and files read for the held-out set. `yardstick`: also the
    bigram counts' figures (training_bigrams: up to BIGRAM_TOKENS of the training split, read once
    and cached beside a local export)."""
    check_max_sequences(max_sequences)
    with local_export(export_dir) as local:
        return _evaluate_local(local, export_dir, max_sequences, batch_size, seed, stats, yardstick)


@torch.no_grad()
def _evaluate_local(
    export_dir: str,
    shown: str,
    max_sequences: int | None,
    batch_size: int,
    seed: int,
    stats: ReadStats | None,
    yardstick: bool = True,
) -> dict:
    cfg = read_export_config(export_dir, shown)
    electra = cfg.train.objective == "electra"
    masked_lm_dir = os.path.join(export_dir, "generator" if electra else "mlm")
    tokenizer_path = os.path.join(masked_lm_dir, "tokenizer.json")
    if not os.path.isfile(tokenizer_path):
        raise ExportError(f"export {shown} is incomplete: no {os.path.basename(masked_lm_dir)}/tokenizer.json")
    with open(tokenizer_path, encoding="utf-8") as f:
        tokenizer_json = f.read()
    try:
        _, special = tokenizer_from_json(tokenizer_json)
    except Exception as error:  # tokenizers raises its own exception type for an unparsable file
        raise ExportError(
            f"{storage.join(shown, os.path.basename(masked_lm_dir), 'tokenizer.json')} is not a "
            f"tokenizer ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None
    generator = _load_network(ElectraForMaskedLM, masked_lm_dir, shown)
    discriminator = (
        _load_network(ElectraForPreTraining, os.path.join(export_dir, "discriminator"), shown) if electra else None
    )
    columns = load_sequences(cfg.data, tokenizer_json, "eval", max_sequences, stats)
    # The cache beside the export: a run's directory holds its export, so pretrain's evaluation
    # counts and every later one reads. An S3 export is a temporary copy here: no cache.
    cache_dir = "" if storage.is_remote(shown) else os.path.dirname(os.path.abspath(export_dir))
    bigrams = training_bigrams(cfg, tokenizer_json, cache_dir) if yardstick else None
    return held_out_metrics(
        generator,
        discriminator,
        columns["input_ids"],
        cfg,
        special,
        batch_size,
        seed,
        columns.get("token_type_ids"),
        bigrams,
    )


def training_bigrams(
    cfg: Config, tokenizer_json: str, cache_dir: str = "", max_tokens: int = BIGRAM_TOKENS
) -> BigramCounts:
    """Bigram counts of the training split's first `max_tokens` tokens (yardstick.py): read from
    `cache_dir` when it holds counts under the same key (the tokenizer, the corpus and how it is
    split and packed, max_tokens), else counted and saved there ("": no cache; an unwritable
    directory: not saved)."""
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    data = cfg.data
    key = cache_key(
        tokenizer=hashlib.sha256(tokenizer_json.encode()).hexdigest(),
        corpus=data.path,
        text_column=data.text_column,
        eval_fraction=data.eval_fraction,
        seq_len=data.seq_len,
        packing=data.packing,
        short_seq_prob=data.short_seq_prob,
        docs_per_block=data.docs_per_block,
        max_tokens=max_tokens,
    )
    path = os.path.join(cache_dir, f"bigram-counts-{key[:16]}.npz") if cache_dir else ""
    return load_or_count(
        path,
        key,
        lambda: BigramCounts.from_sequences(
            training_blocks(data, tokenizer_json, max_tokens), tokenizer.get_vocab_size(), special["[PAD]"]
        ),
    )


def training_blocks(data_cfg, tokenizer_json: str, max_tokens: int) -> Iterator[np.ndarray]:
    """The training split's packed sequences, [N, seq_len] per block, until `max_tokens` tokens:
    packed as training packs them, in blocks of data.docs_per_block documents in corpus order.
    (Training's blocks are docs_per_block rows of the corpus, held-out ones included and then
    dropped, so a few rows may start or end elsewhere: a handful of [CLS]/[SEP] pairs differ.)
    The documents are streamed: the rest of a larger corpus is never read."""
    documents = iter_documents(data_cfg.path, data_cfg.text_column, "train", data_cfg.eval_fraction)
    remaining = max_tokens
    try:
        while remaining > 0:
            block = list(itertools.islice(documents, data_cfg.docs_per_block))
            if not block:
                return
            packed = tokenize_and_pack(
                block, tokenizer_json, data_cfg.seq_len, data_cfg.packing, data_cfg.short_seq_prob
            )
            ids = packed["input_ids"][: -(-remaining // data_cfg.seq_len)]
            remaining -= ids.size
            yield ids
    finally:
        documents.close()


@torch.no_grad()
def held_out_metrics(
    generator,
    discriminator,
    sequences: np.ndarray,
    cfg: Config,
    special: dict[str, int],
    batch_size: int = 64,
    seed: int = 0,
    token_type_ids: np.ndarray | None = None,
    bigrams: BigramCounts | None = None,
) -> dict:
    """The measurements of `evaluate_export` on networks in memory (eval mode is the caller's);
    `discriminator` None: the MLM baseline's. `token_type_ids`: the sequences' segments
    (data.packing=segments). `bigrams`: the training split's counts (training_bigrams), for the
    yardstick's figures on the same positions and corruption (bigram_mlm_loss,
    bigram_auc_fixed_corruption); None: without them."""
    special_ids = np.array(sorted(special.values()))
    mlm_loss, gen_labels, gen_scores = masked_lm_pass(
        generator, discriminator, sequences, cfg, special, batch_size, seed, token_type_ids
    )
    tokens = sequences[~np.isin(sequences, special_ids)]
    metrics = {"sequences": int(len(sequences)), "unigram_entropy": unigram_entropy(tokens)}
    masking = (cfg, special, generator.config.vocab_size, batch_size, seed, token_type_ids)  # masked_lm_pass's
    yardstick = functools.partial(yardstick_figures, bigrams, sequences, *masking)
    if discriminator is None:
        return {**metrics, "mlm_loss": mlm_loss, **yardstick()}
    rtd_loss = float(
        F.binary_cross_entropy_with_logits(torch.from_numpy(gen_scores), torch.from_numpy(gen_labels).float())
    )
    corruption = functools.partial(
        fixed_corruption,
        sequences,
        special_ids,
        special["[PAD]"],
        cfg.data.mask_prob,
        seed,
        token_type_ids=token_type_ids,
    )
    fixed = corruption()
    return {
        **metrics,
        "generator_mlm_loss": mlm_loss,
        "rtd_loss_generator": rtd_loss,
        "rtd_loss_constant": binary_entropy(float(gen_labels.mean())),
        "replaced_fraction_generator": float(gen_labels.mean()),
        "auc_generator_replacements": roc_auc(gen_labels, gen_scores),
        "auc_fixed_corruption": detection_auc(discriminator, fixed, batch_size),
        "auc_random_replacements": detection_auc(
            discriminator, corruption(uniform_over_vocab=generator.config.vocab_size), batch_size
        ),
        **yardstick(fixed),
    }


def yardstick_figures(
    bigrams: BigramCounts | None,
    sequences: np.ndarray,
    cfg: Config,
    special: dict[str, int],
    vocab_size: int,
    batch_size: int,
    seed: int,
    token_type_ids: np.ndarray | None,
    corruption: FixedCorruption | None = None,
) -> dict:
    """What bigram counts reach where the networks are measured (held_out_metrics' arguments):
    bigram_mlm_loss at masked_lm_pass's masked positions and, given the fixed corruption,
    bigram_auc_fixed_corruption on it. Nothing without `bigrams`."""
    if bigrams is None:
        return {}
    rows, cols = masked_positions(sequences, cfg, special, vocab_size, batch_size, seed, token_type_ids)
    figures = {"bigram_mlm_loss": masked_token_loss(bigrams, sequences, rows, cols)}
    if corruption is not None:
        figures["bigram_auc_fixed_corruption"] = bigram_detection_auc(
            bigrams, corruption.input_ids, corruption.replaced, corruption.scored
        )
    return figures


@torch.no_grad()
def masked_lm_pass(
    generator,
    discriminator,
    sequences: np.ndarray,
    cfg: Config,
    special: dict[str, int],
    batch_size: int,
    seed: int,
    token_type_ids: np.ndarray | None,
) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """The sequences masked as in training (seeded), through the masked LM and, when there is one,
    the discriminator on the generator's replacements. Returns (the MLM loss over the masked
    positions, and at the real, non-special tokens the replaced labels and the discriminator's
    logits; None without a discriminator)."""
    vocab_size = generator.config.vocab_size
    special_ids = np.array(sorted(special.values()))
    torch_rng = torch.Generator().manual_seed(seed)
    mlm_loss_sum, n_masked = 0.0, 0
    gen_labels, gen_scores = [], []
    for _, batch in masked_batches(sequences, cfg, special, vocab_size, batch_size, seed, token_type_ids):
        scored = ~np.isin(batch.original_ids, special_ids)  # real, non-special tokens
        tensors = {k: torch.from_numpy(v) for k, v in vars(batch).items() if v is not None}
        types = tensors.get("token_type_ids")
        logits = generator_logits(
            generator, tensors["input_ids"], tensors["attention_mask"], tensors["positions"], types
        )
        targets = torch.gather(tensors["original_ids"], 1, tensors["positions"])
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        mlm_loss_sum += float((loss * tensors["weights"].flatten()).sum())
        n_masked += int(tensors["weights"].sum())
        if discriminator is None:
            continue
        sampled = sample_tokens(logits, cfg.train.temperature, torch_rng)
        corrupted, labels = replace_tokens(
            tensors["input_ids"], tensors["original_ids"], tensors["positions"], tensors["weights"], sampled
        )
        scores = discriminator(
            input_ids=corrupted, attention_mask=tensors["attention_mask"], token_type_ids=types
        ).logits
        gen_labels.append(labels.numpy()[scored])
        gen_scores.append(scores.numpy()[scored])
    mlm_loss = mlm_loss_sum / max(n_masked, 1)
    if discriminator is None:
        return mlm_loss, None, None
    return mlm_loss, np.concatenate(gen_labels), np.concatenate(gen_scores)


def masked_batches(
    sequences: np.ndarray,
    cfg: Config,
    special: dict[str, int],
    vocab_size: int,
    batch_size: int,
    seed: int,
    token_type_ids: np.ndarray | None,
) -> Iterator[tuple[int, MaskedBatch]]:
    """The sequences masked as in training, batch by batch, from one seeded stream: the same
    positions for every pass with the same arguments (the masked LM's and the yardstick's).
    Yields (the batch's first row, the batch)."""
    rng = np.random.default_rng(seed)
    for start in range(0, len(sequences), batch_size):
        ids = sequences[start : start + batch_size].astype(np.int64)
        types = None if token_type_ids is None else token_type_ids[start : start + batch_size].astype(np.int64)
        yield start, mask_batch(ids, cfg.data, special, vocab_size, rng, types)


def masked_positions(
    sequences: np.ndarray,
    cfg: Config,
    special: dict[str, int],
    vocab_size: int,
    batch_size: int,
    seed: int,
    token_type_ids: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of `sequences` that masked_lm_pass predicts with the same arguments."""
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, batch in masked_batches(sequences, cfg, special, vocab_size, batch_size, seed, token_type_ids):
        row, slot = np.nonzero(batch.weights)
        rows.append(start + row)
        cols.append(batch.positions[row, slot])
    return np.concatenate(rows), np.concatenate(cols)


def format_report(metrics: dict) -> str:
    """The evaluation as text: each figure beside its yardstick, from "nothing learned" (the
    unigram entropy; an AUC of 0.5) to "what counting gives" (bigram counts), when measured."""
    loss_key = "mlm_loss" if "mlm_loss" in metrics else "generator_mlm_loss"
    unigram = f"unigram entropy {metrics['unigram_entropy']:.3f}"
    lines = [
        f"held-out ({metrics['sequences']} sequences):",
        f"  {'MLM' if loss_key == 'mlm_loss' else 'generator MLM'} loss {metrics[loss_key]:.3f} nats "
        f"({_yardstick_text(metrics, 'bigram_mlm_loss', unigram)})",
    ]
    if loss_key == "generator_mlm_loss":
        lines += [
            f"  discriminator on generator replacements: RTD loss {metrics['rtd_loss_generator']:.4f} vs constant "
            f"predictor {metrics['rtd_loss_constant']:.4f} ({metrics['replaced_fraction_generator']:.1%} replaced), "
            f"ROC-AUC {metrics['auc_generator_replacements']:.3f}",
            f"  discriminator on a fixed unigram corruption: ROC-AUC {metrics['auc_fixed_corruption']:.3f} "
            f"({_yardstick_text(metrics, 'bigram_auc_fixed_corruption', 'chance 0.5')})",
            f"  discriminator on random replacements (uniform over the vocabulary): ROC-AUC "
            f"{metrics['auc_random_replacements']:.3f}",
        ]
    if "bigram_mlm_loss" in metrics:
        lines.append(
            "  (unigram / chance: nothing learned; bigram counts: what counting adjacent tokens of the training "
            "split gives, yardstick.py)"
        )
    return "\n".join(lines)


def _yardstick_text(metrics: dict, key: str, unigram: str) -> str:
    return f"{unigram}, bigram counts {metrics[key]:.3f}" if key in metrics else unigram


def main(argv: list[str] | None = None) -> None:
    def run():
        args = checked_args(argv, __doc__)
        metrics = evaluate_export(args.export, args.max_sequences)
        print(format_report(metrics))
        if args.json:
            try:
                with open(args.json, "w") as f:
                    json.dump(metrics, f, indent=1)
            except OSError as error:
                raise UserError(f"cannot write --json {args.json}: {error.strerror or error}") from None

    run_cli(run)


if __name__ == "__main__":
    main()
