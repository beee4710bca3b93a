"""One small-budget pre-training variant in a single process (no Ray, no DeepSpeed), measured the way
`make pretrain` measures its export (electra_ray.evaluate.held_out_metrics). A research harness for
docs/small-budget.md: the same model, objective, masking, data and schedule code as a run of
`python -m electra_ray.pretrain`, minus the cluster plumbing, so variants cost minutes.

    python experiments/small_budget/harness.py NAME [--set KEY=VALUE ...] [--threads 1]
        [--disc-lr-mult X] [--curve-every 200]

Starts from configs/tiny.yaml; writes experiments/small_budget/results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from electra_ray.config import load_config  # noqa: E402
from electra_ray.data import load_sequences, mask_batch, tokenizer_from_json  # noqa: E402
from electra_ray.evaluate import detection_auc, fixed_corruption, held_out_metrics  # noqa: E402
from electra_ray.model import build_pretraining_model  # noqa: E402
from electra_ray.objective import sampling_temperature, summarize  # noqa: E402
from electra_ray.optim import lr_lambda, param_groups  # noqa: E402
from electra_ray.tokenizer import train_tokenizer  # noqa: E402

CACHE = os.environ.get("SMALL_BUDGET_CACHE", "/tmp/small-budget-cache")


def tokenizer_json(cfg) -> str:
    from electra_ray.data import iter_documents

    path = os.path.join(CACHE, f"tokenizer-{cfg.data.vocab_size}.json")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        texts = iter_documents(cfg.data.path, cfg.data.text_column, "train", cfg.data.eval_fraction)
        train_tokenizer(texts, cfg.data.vocab_size).save(path + ".tmp")
        os.replace(path + ".tmp", path)
    with open(path) as f:
        return f.read()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.yaml"))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--disc-lr-mult", type=float, default=1.0)
    parser.add_argument("--curve-every", type=int, default=200)
    parser.add_argument("--eval-sequences", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    tok = tokenizer_json(cfg)
    tokenizer, special = tokenizer_from_json(tok)
    vocab = tokenizer.get_vocab_size()
    train_columns = load_sequences(cfg.data, tok, "train")
    held_out_columns = load_sequences(cfg.data, tok, "eval", args.eval_sequences)
    train, train_types = train_columns["input_ids"], train_columns.get("token_type_ids")
    held_out, held_out_types = held_out_columns["input_ids"], held_out_columns.get("token_type_ids")
    special_ids = np.array(sorted(special.values()))
    curve_corruption = fixed_corruption(
        held_out[:64],
        special_ids,
        special["[PAD]"],
        cfg.data.mask_prob,
        0,
        token_type_ids=None if held_out_types is None else held_out_types[:64],
    )

    torch.manual_seed(cfg.train.seed)
    model = build_pretraining_model(cfg, vocab, special["[PAD]"])
    groups = param_groups(model, cfg.train.weight_decay)
    if args.disc_lr_mult != 1.0:  # the discriminator's own parameters (not the shared embeddings) at a higher lr
        disc = {id(p) for n, p in model.named_parameters() if n.startswith("discriminator.")}
        groups = [
            {
                **g,
                "params": [p for p in g["params"] if (id(p) in disc) == side],
                "lr": cfg.train.lr * (args.disc_lr_mult if side else 1.0),
            }
            for g in groups
            for side in (False, True)
        ]
    if cfg.train.optimizer == "electra":
        from electra_ray.optim import AdamWNoBiasCorrection, electra_lr_lambda

        optimizer = AdamWNoBiasCorrection(
            groups, lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas), eps=cfg.train.adam_eps
        )
        schedule = electra_lr_lambda(cfg.train.warmup_steps, cfg.train.max_steps)
    else:
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas), eps=cfg.train.adam_eps
        )
        schedule = lr_lambda(cfg.train.warmup_steps, cfg.train.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = np.random.default_rng(cfg.train.seed)
    sample_rng = torch.Generator().manual_seed(cfg.train.seed)
    t = cfg.train
    curve, stats, start, step = [], None, time.perf_counter(), 0
    order = rng.permutation(len(train))
    cursor = 0
    while step < t.max_steps:
        if cursor + t.batch_size > len(order):
            order, cursor = rng.permutation(len(train)), 0
        ids = train[order[cursor : cursor + t.batch_size]]
        types = None if train_types is None else train_types[order[cursor : cursor + t.batch_size]]
        cursor += t.batch_size
        batch = mask_batch(ids, cfg.data, special, vocab, rng, types)
        inputs = {k: torch.from_numpy(v) for k, v in vars(batch).items() if v is not None}
        if t.objective == "electra" and t.temperature_steps:
            model.temperature = sampling_temperature(step, t.temperature_start, t.temperature, t.temperature_steps)
        out = model(**inputs, generator_rng=sample_rng)
        out.loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stats = out.stats if stats is None else stats + out.stats
        step += 1
        if step % args.curve_every == 0 or step == t.max_steps:
            point = {"step": step, "elapsed_s": time.perf_counter() - start, **summarize(stats)}
            if t.objective == "electra":
                disc = model.exported_networks()["discriminator"]
                point["auc_fixed_corruption_64"] = detection_auc(disc, curve_corruption)
            curve.append(point)
            stats = None
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in point.items()}), flush=True)
    train_s = time.perf_counter() - start
    networks = model.exported_networks()
    for net in networks.values():
        net.eval()
    if t.objective == "electra":
        metrics = held_out_metrics(
            networks["generator"], networks["discriminator"], held_out, cfg, special, token_type_ids=held_out_types
        )
        metrics["rtd_gap"] = metrics["rtd_loss_constant"] - metrics["rtd_loss_generator"]
    else:
        metrics = held_out_metrics(networks["mlm"], None, held_out, cfg, special, token_type_ids=held_out_types)
    result = {
        "name": args.name,
        "set": args.set,
        "disc_lr_mult": args.disc_lr_mult,
        "threads": args.threads,
        "train_s": train_s,
        "metrics": metrics,
        "curve": curve,
    }
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"name": args.name, "train_s": round(train_s), **{k: round(v, 4) for k, v in metrics.items()}}))


if __name__ == "__main__":
    main()
