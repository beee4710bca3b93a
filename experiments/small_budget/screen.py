"""The plateau study's fast screen: a discriminator trained alone on a fresh unigram corruption of
each batch (no generator), single process, one thread. If an encoder cannot learn to spot unigram
swaps here, it will not learn it inside ELECTRA either; a lever that moves this AUC in 400-800 steps
is worth a full `make pretrain`.

    python experiments/small_budget/screen.py NAME [--set KEY=VALUE ...] [--steps 600]
        [--position-init sinusoid --position-scale 1.0] [--qk-scale 1.0] [--init-range 0.02]
        [--lr-embeddings-mult 1.0]

Starts from configs/tiny.yaml; writes experiments/small_budget/screen/NAME.json: the held-out AUC
on `evaluate`'s fixed unigram corruption (256 sequences) every --curve-every steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import tokenizer_json  # noqa: E402

from electra_ray.config import load_config  # noqa: E402
from electra_ray.data import load_sequences, tokenizer_from_json  # noqa: E402
from electra_ray.heldout import detection_auc, fixed_corruption  # noqa: E402
from electra_ray.local_init import local_attention_init  # noqa: E402
from electra_ray.model import discriminator_config, use_fast_cpu_dropout  # noqa: E402
from electra_ray.optim import lr_lambda  # noqa: E402


def sinusoids(n: int, dim: int) -> torch.Tensor:
    position = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table


class WindowDetector(torch.nn.Module):
    """The yardstick network: each token scored from its own and its two neighbours' embeddings (no
    attention to learn). If this learns the task in the screen's steps and the transformer does not,
    the transformer's attention is the bottleneck, not the data or the number of updates."""

    def __init__(self, vocab_size: int, width: int = 128):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(3 * width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, 1)
        )
        torch.nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        left = torch.nn.functional.pad(x[:, :-1], (0, 0, 1, 0))
        right = torch.nn.functional.pad(x[:, 1:], (0, 0, 0, 1))
        return self.mlp(torch.cat([left, x, right], -1)).squeeze(-1)


def window_auc(net, fixed) -> float:
    from electra_ray.scoring import roc_auc

    with torch.no_grad():
        scores = net(torch.from_numpy(fixed.input_ids)).numpy()
    return roc_auc(fixed.replaced[fixed.scored], scores[fixed.scored])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.yaml"))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--curve-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--position-init", choices=["normal", "sinusoid"], default="normal")
    parser.add_argument("--position-scale", type=float, default=1.0, help="the sinusoid table's std after scaling")
    parser.add_argument("--init-range", type=float, default=0.02)
    parser.add_argument("--qk-scale", type=float, default=1.0, help="query/key init multiplied by this")
    parser.add_argument("--zero-queries", action="store_true")
    parser.add_argument("--lr-embeddings-mult", type=float, default=1.0)
    parser.add_argument("--corrupt-prob", type=float, default=0.15)
    parser.add_argument("--arch", choices=["electra", "window"], default="electra")
    parser.add_argument("--local-layers", type=int, default=0, help="electra_ray.local_init: layers with local heads")
    parser.add_argument("--local-heads", type=int, default=2)
    parser.add_argument("--sharpness", type=float, default=8.0)
    parser.add_argument("--message", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    tok = tokenizer_json(cfg)
    _, special = tokenizer_from_json(tok)
    train = load_sequences(cfg.data, tok, "train")["input_ids"]
    held_out = load_sequences(cfg.data, tok, "eval", 256)["input_ids"]
    special_ids = np.array(sorted(special.values()))
    pad = special["[PAD]"]
    fixed = fixed_corruption(held_out, special_ids, pad, 0.15, 0)
    pool = train[~np.isin(train, special_ids)].astype(np.int64)  # the training text's unigram draws

    torch.manual_seed(cfg.train.seed)
    config = discriminator_config(cfg.model, len(json.loads(tok)["model"]["vocab"]), pad)
    config.initializer_range = args.init_range
    from transformers import ElectraForPreTraining

    net = use_fast_cpu_dropout(ElectraForPreTraining(config))
    if args.arch == "window":
        net = WindowDetector(config.vocab_size)
    with torch.no_grad():
        if args.arch == "electra":
            table = net.electra.embeddings.position_embeddings.weight
            if args.position_init == "sinusoid":
                s = sinusoids(table.size(0), table.size(1))
                table.copy_(s / s.std() * args.position_scale)
            for layer in net.electra.encoder.layer:
                attention = layer.attention.self
                attention.query.weight.mul_(0.0 if args.zero_queries else args.qk_scale)
                attention.key.weight.mul_(args.qk_scale)
    if args.local_layers:
        local_attention_init(
            net.electra, args.local_layers, args.local_heads, args.sharpness, args.position_scale, args.message
        )
    embedding_module = net.electra.embeddings if args.arch == "electra" else net.embed
    embeddings = {id(p) for p in embedding_module.parameters()}
    groups = [
        {"params": [p for p in net.parameters() if id(p) in embeddings], "lr": cfg.train.lr * args.lr_embeddings_mult},
        {"params": [p for p in net.parameters() if id(p) not in embeddings], "lr": cfg.train.lr},
    ]
    t = cfg.train
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, args.steps))
    rng = np.random.default_rng(t.seed)
    curve, start, losses = [], time.perf_counter(), []
    for step in range(1, args.steps + 1):
        ids = train[rng.integers(0, len(train), t.batch_size)].astype(np.int64)
        scored = ~np.isin(ids, special_ids)
        chosen = scored & (rng.random(ids.shape) < args.corrupt_prob)
        corrupted = ids.copy()
        corrupted[chosen] = pool[rng.integers(0, len(pool), int(chosen.sum()))]
        labels = torch.from_numpy((corrupted != ids).astype(np.float32))
        mask = torch.from_numpy((ids != pad).astype(np.int64))
        logits = net(input_ids=torch.from_numpy(corrupted), attention_mask=mask)
        logits = logits if args.arch == "window" else logits.logits
        weight = mask.float()
        loss = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weight).sum() / weight.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if step % args.curve_every == 0 or step == args.steps:
            auc = window_auc(net, fixed) if args.arch == "window" else detection_auc(net, fixed)
            point = {"step": step, "s": round(time.perf_counter() - start), "loss": float(np.mean(losses)), "auc": auc}
            losses = []
            curve.append(point)
            print(json.dumps(point), flush=True)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "screen")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{args.name}.json"), "w") as f:
        json.dump({"name": args.name, "argv": sys.argv[1:], "curve": curve}, f, indent=1)


if __name__ == "__main__":
    main()
