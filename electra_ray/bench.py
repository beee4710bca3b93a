"""`make bench`: how fast is each part, measured as ratios within one run.

    python -m electra_ray.bench [--rounds 3] [--steps 5] [--batch-size 16] [--out bench] [--memory] [--quick]

1. data pipeline: tokens/s of tokenize+pack and of masking on one core, against what our path
   trains on per second;
2. training step, small config at seq 128, each round in this order:
   - ours: our full path (Ray Data + Ray Train + DeepSpeed, 1 worker);
   - floor: the plain loop as the train function of a 1-worker Ray Train run, no Ray Data, no
     DeepSpeed: Ray's own cost, the floor under ours;
   - in one fresh process, alternated step by step over the same batches: plain (a single-process
     loop of our model and objective), compiled (plain with train.compile), naive (transformers
     alone, generator head over every position) and peer (electra-pytorch, peer.py);
   and the peer's objective checked against ours on one batch (same masking, same losses);
3. MFU: analytic FLOPs per token x tokens/s / measured fp32 matmul peak, the highest of readings
   at the start and after each round (datasheet bf16 on GPU);
4. with --memory, memory per worker under ZeRO stages 0-3 with 2 workers (small config):
   model-state bytes against theory, and peak resident memory.

Ratios are medians over rounds of the ratio within a round. Writes OUT/results.json and prints a
table. --quick: every arm once, tiny config, torch.compile's eager backend (tracing only), no memory
section: the suite's smoke test.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m electra_ray.bench`: a bad flag is refused before the imports
    from electra_ray.bench_args import bench_parser  # below (torch, Ray: seconds); main() re-reads it

    bench_parser(__doc__).parse_args(sys.argv[1:])

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

import numpy as np
import ray
import torch
import torch.nn.functional as F

from electra_ray.bench_args import CONFIGS, LOOPS, ROOT, bench_parser
from electra_ray.config import Config, ScalingConfig, load_config
from electra_ray.data import iter_documents, load_sequences, mask_batch, tokenize_and_pack, tokenizer_from_json
from electra_ray.driver import build_trainer, start_local_ray
from electra_ray.meter import measure_matmul_flops, peak_flops
from electra_ray.model import build_model, compile_networks, flops_per_token
from electra_ray.optim import lr_lambda, param_groups
from electra_ray.peer import objective_check, peer_model
from electra_ray.pretrain import pretrain
from electra_ray.report import markdown_table
from electra_ray.tokenizer import read_tokenizer_json, save_tokenizer, train_tokenizer


def bench_config(name: str, tokenizer_dir: str, batch_size: int, extra: list[str] = ()) -> Config:
    return load_config(
        CONFIGS[name],
        [
            f"data.tokenizer={tokenizer_dir}",
            f"train.batch_size={batch_size}",
            "scaling.use_gpu=false",
            "train.zero_stage=0",
            "train.warmup_steps=10",
            "train.checkpoint_every=1000000",
            *extra,
        ],
    )


# -- the single-process loops -------------------------------------------------------------------


def naive_loss(model, batch: dict, rtd_weight: float) -> torch.Tensor:
    """What a user writes with transformers alone: the generator's head (and its loss) over every
    position, Gumbel-max sampling at the masked ones (as the reference implementations do)."""
    labels = torch.full_like(batch["original_ids"], -100)
    rows = torch.arange(labels.size(0)).unsqueeze(1).expand_as(batch["positions"])
    used = batch["weights"] > 0
    labels[rows[used], batch["positions"][used]] = batch["original_ids"][rows[used], batch["positions"][used]]
    out = model.generator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    selected = labels != -100
    logits = out.logits[selected].detach()
    sampled = (logits - torch.log(-torch.log(torch.rand_like(logits).clamp(1e-9, 1 - 1e-9)))).argmax(-1)
    corrupted = batch["input_ids"].clone()
    corrupted[selected] = sampled
    is_replaced = (corrupted != batch["original_ids"]).float()
    logits = model.discriminator(input_ids=corrupted, attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].float()
    rtd = (F.binary_cross_entropy_with_logits(logits, is_replaced, reduction="none") * mask).sum() / mask.sum()
    return out.loss + rtd_weight * rtd


class Loop:
    """One single-process training loop of the step comparison, with its own model, optimizer and
    step times:
    - plain: our model and objective, fused AdamW (what our path runs, without Ray or DeepSpeed);
    - compiled: plain with train.compile's torch.compile of both encoders (compiled in warm-up);
    - naive: transformers alone (see `naive_loss`);
    - peer: electra-pytorch around transformers' networks, as its pre-training script sets it up
      (it masks inside its forward, so it is given the unmasked rows)."""

    def __init__(self, kind: str, cfg: Config, special: dict[str, int], vocab_size: int, compile_backend: str):
        torch.manual_seed(cfg.train.seed)  # every loop starts from the same weights
        self.kind, self.cfg, self.special, self.vocab_size = kind, cfg, special, vocab_size
        stock = kind in ("naive", "peer")
        self.model = build_model(cfg.model, vocab_size, special["[PAD]"], cfg.train.rtd_weight, stock=stock)
        if kind == "compiled":
            compile_networks(self.model, compile_backend)
        self.peer = peer_model(self.model, special, cfg.data.mask_prob) if kind == "peer" else None
        t = cfg.train
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, t.weight_decay),
            lr=t.lr,
            betas=tuple(t.adam_betas),
            eps=t.adam_eps,
            fused=not stock,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(t.warmup_steps, t.max_steps))
        self.rng = np.random.default_rng(t.seed)
        self.times: list[float] = []

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        if self.peer is not None:
            ids = torch.from_numpy(rows).long()
            return self.peer(ids, attention_mask=(ids != self.special["[PAD]"]).long()).loss
        masked = mask_batch(rows, self.cfg.data, self.special, self.vocab_size, self.rng)
        batch = {k: torch.from_numpy(v) for k, v in vars(masked).items() if v is not None}
        return (
            naive_loss(self.model, batch, self.cfg.train.rtd_weight)
            if self.kind == "naive"
            else self.model(**batch).loss
        )

    def step(self, rows: np.ndarray) -> None:
        start = time.perf_counter()
        self.loss(rows).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - start)


def measure_loops(
    cfg: Config, steps: int, warmup: int, kinds: tuple[str, ...] = ("plain",), compile_backend: str = "inductor"
) -> dict[str, dict]:
    """Mean step time of each loop of `kinds` over the same batches, alternated step by step (the
    first loop of each step rotates), so that a busy moment of a shared machine falls on all."""
    tokenizer_json = read_tokenizer_json(cfg.data.tokenizer)
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    batch_size = cfg.train.batch_size
    rows = load_sequences(cfg.data, tokenizer_json, "train", batch_size * (steps + warmup))["input_ids"]
    loops = [Loop(kind, cfg, special, tokenizer.get_vocab_size(), compile_backend) for kind in kinds]
    for step in range(steps + warmup):
        batch = rows[step * batch_size : (step + 1) * batch_size]
        turn = step % len(loops)
        for loop in loops[turn:] + loops[:turn]:
            loop.step(batch)
    results = {}
    for loop in loops:
        step_s = statistics.fmean(loop.times[warmup:])  # a mean, like the intervals of our path
        results[loop.kind] = {"step_s": step_s, "tokens_per_s": batch_size * cfg.data.seq_len / step_s}
    return results


def measure_ours(cfg: Config, warmup: int) -> dict:
    """Our full path: Ray Data -> Ray Train -> DeepSpeed; tokens/s of the steady intervals."""
    started = time.perf_counter()
    result = pretrain(cfg, export_and_evaluate=False)
    wall_s = time.perf_counter() - started
    # Steady state: the intervals after `warmup` steps. Before, Ray Data is still tokenizing the
    # corpus on the same cores and the allocator is still growing.
    steady = [h for h in result.history if h["step"] > warmup]
    tokens_per_s = statistics.median(h["tokens_per_s"] for h in steady)
    return {
        "tokens_per_s": tokens_per_s,
        "step_s": cfg.train.batch_size * cfg.data.seq_len / tokens_per_s,
        "mfu": statistics.median(h["mfu"] for h in steady),
        "warmup_tokens_per_s": result.history[0]["tokens_per_s"],
        "wall_s": wall_s,
        "model_state_mb": result.history[-1]["model_state_mb"],
        "peak_rss_mb": result.history[-1]["peak_rss_mb"],
    }


def measure_loop_in_ray_train(cfg: Config, steps: int, work: str, name: str) -> dict:
    """The plain loop run as the train function of a 1-worker Ray Train run (no Ray Data, no
    DeepSpeed): what Ray alone costs that loop, the floor under our path's overhead."""
    threads, out = os.cpu_count() or 1, os.path.join(work, f"{name}.json")

    def train_fn() -> None:
        torch.set_num_threads(threads)  # as connect_ray gives a single local worker
        result = measure_loops(cfg, steps, warmup=3)["plain"]
        with open(out, "w") as f:  # same machine: a file is the shortest way back
            json.dump(result, f)

    build_trainer(train_fn, {}, ScalingConfig(num_workers=1), name=name, storage_dir=work).fit()
    with open(out) as f:
        return json.load(f)


def run_measure(
    kinds: tuple[str, ...], model: str, tokenizer_dir: str, batch_size: int, steps: int, compile_backend: str
) -> dict:
    """`measure_loops` in a fresh process, so rounds do not share warm state."""
    command = [sys.executable, "-m", "electra_ray.bench", "--measure", ",".join(kinds), "--model", model]
    command += ["--tokenizer", tokenizer_dir, "--batch-size", str(batch_size), "--steps", str(steps)]
    command += ["--compile-backend", compile_backend]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode:
        raise RuntimeError(f"bench --measure {','.join(kinds)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the sections -------------------------------------------------------------------------------


def measure_data(cfg: Config, tokenizer_json: str) -> dict:
    texts = list(iter_documents(cfg.data.path, cfg.data.text_column, "train", cfg.data.eval_fraction))[:60]
    start = time.perf_counter()
    rows = tokenize_and_pack(texts, tokenizer_json, cfg.data.seq_len, cfg.data.packing, cfg.data.short_seq_prob)[
        "input_ids"
    ]
    tokenize_s = time.perf_counter() - start
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(5):
        for i in range(0, len(rows), 128):
            mask_batch(rows[i : i + 128], cfg.data, special, tokenizer.get_vocab_size(), rng)
    mask_s = (time.perf_counter() - start) / 5
    return {
        "tokenize_pack_tokens_per_s_per_core": rows.size / tokenize_s,
        "mask_tokens_per_s_per_core": rows.size / mask_s,
    }


def theoretical_state(zero_stage: int, workers: int) -> float:
    """Bytes per parameter of model state (fp32 weights 4, gradients 4, AdamW moments 8) under the
    ZeRO paper's partitioning."""
    weights, grads, adam = 4.0, 4.0, 8.0
    if zero_stage >= 1:
        adam /= workers
    if zero_stage >= 2:
        grads /= workers
    if zero_stage >= 3:
        weights /= workers
    return weights + grads + adam


def deepspeed_state_bytes(model: torch.nn.Module, zero_stage: int, workers: int) -> float:
    """Model-state bytes per worker as DeepSpeed lays them out in fp32 + AdamW, between steps:
    - its ZeRO optimizers add an fp32 master partition (4/N bytes per parameter), even when the
      model itself trains in fp32;
    - ZeRO-1 and ZeRO-2 alike keep only this rank's gradient partition once backward's reduction
      is done (they differ during the backward pass: ZeRO-1 holds the full gradients until its end);
    - ZeRO-3 keeps every parameter of at most stage3_param_persistence_threshold elements (our
      config leaves DeepSpeed's default) whole on every rank."""
    # Here: importing DeepSpeed detects the accelerator and loads its ops (seconds); only this
    # section needs it, as in the worker loop (engine.build_engine).
    from deepspeed.runtime.config_utils import get_config_default
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    sizes = [p.numel() for p in model.parameters()]
    n = sum(sizes)
    if zero_stage == 0:
        return 16.0 * n
    weights = 4.0 * n
    if zero_stage == 3:
        persistence_threshold = get_config_default(DeepSpeedZeroConfig, "param_persistence_threshold")
        weights = 4.0 * (n / workers + sum(s for s in sizes if s <= persistence_threshold))
    return weights + 4.0 * n / workers + 12.0 * n / workers


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args(argv)

    if args.gpu:
        from electra_ray.bench_gpu import run_gpu_bench  # imports nothing of Ray or DeepSpeed

        run_gpu_bench(args.out, args.dry_run, args.budget, args.tokenizer or "")
        print(open(os.path.join(args.out, "gpu.md")).read())
        return
    if args.measure:
        kinds = tuple(args.measure.split(","))
        if not set(kinds) <= set(LOOPS):
            parser.error(f"--measure: loops are {', '.join(LOOPS)}")
        cfg = bench_config(args.model, args.tokenizer, args.batch_size)
        print(json.dumps(measure_loops(cfg, args.steps, warmup=2, kinds=kinds, compile_backend=args.compile_backend)))
        return
    if args.quick:
        args.model, args.rounds, args.steps, args.warmup, args.batch_size = "tiny", 1, 2, 2, 8
        args.compile_backend = "eager"  # traces as inductor would, without its minute of code generation
        args.memory = False
    run_bench(args)


def run_bench(args) -> dict:
    """Every section in turn (see the module's docstring); writes OUT/results.json and results.md."""
    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="electra-bench-")
    model_cfg = load_config(CONFIGS[args.model])
    tokenizer_dir = os.path.join(work, "tokenizer")
    texts = iter_documents(model_cfg.data.path, "text", "train", model_cfg.data.eval_fraction)
    save_tokenizer(train_tokenizer(texts, model_cfg.data.vocab_size), tokenizer_dir)
    tokenizer_json = read_tokenizer_json(tokenizer_dir)
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    vocab_size = tokenizer.get_vocab_size()
    cores = os.cpu_count() or 1
    peak = peak_flops(torch.device("cpu"), cores)
    results: dict = {
        "machine": {"cores": cores, "torch_threads": cores, "peak_flops_fp32": peak, "torch": torch.__version__},
        "model": args.model,
        "seq_len": model_cfg.data.seq_len,
        "batch_size": args.batch_size,
        "quick": args.quick,
        "compile_backend": args.compile_backend,
    }
    print(f"peak fp32 matmul: {peak / 1e9:.0f} GFLOP/s on {cores} cores", flush=True)

    # 1. data pipeline, per core
    results["data"] = measure_data(model_cfg, tokenizer_json)
    print(f"data: {results['data']}", flush=True)

    # 2. training step: ours, the plain loop in Ray Train, and the single-process loops, alternated
    results["peer_objective"] = check_peer_objective(model_cfg, tokenizer_json, special, vocab_size)
    runs, peak = compare_steps(args, tokenizer_dir, work, peak)
    results["machine"]["peak_flops_fp32"] = peak
    results["step"] = step_ratios(runs)
    median = results["step"]["median_tokens_per_s"]
    results["data"]["trainer_tokens_per_s"] = median["ours"]
    results["data"]["data_over_trainer"] = results["data"]["tokenize_pack_tokens_per_s_per_core"] / median["ours"]

    # 3. MFU (analytic FLOPs, generator included); the naive and peer loops' useful FLOPs only
    flops = flops_per_token(model_cfg.model, vocab_size, model_cfg.data.seq_len, model_cfg.data.mask_prob)
    results["mfu"] = {"flops_per_token": flops, **{kind: flops * tps / peak for kind, tps in median.items()}}

    # 4. memory per worker under ZeRO 0-3
    if args.memory:
        results["memory"] = measure_memory(model_cfg, vocab_size, tokenizer_dir, work, args.batch_size)
    results["wall_s"] = time.perf_counter() - started
    write_results(results, args.out)
    return results


def check_peer_objective(cfg: Config, tokenizer_json: str, special: dict[str, int], vocab_size: int) -> dict:
    """The peer's objective against ours on one batch of the corpus (peer.objective_check)."""
    rows = load_sequences(cfg.data, tokenizer_json, "train", 8)["input_ids"]
    ids = torch.from_numpy(rows).long()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, vocab_size, special["[PAD]"], cfg.train.rtd_weight)
    check = objective_check(model, special, ids, (ids != special["[PAD]"]).long())
    return {**vars(check), "mlm_difference": check.mlm_difference, "rtd_difference": check.rtd_difference}


def compare_steps(args, tokenizer_dir: str, work: str, peak: float) -> tuple[dict[str, list[dict]], float]:
    """`args.rounds` rounds of: our path, then the plain loop as the train function of a 1-worker
    Ray Train run (Ray's own cost, the floor under ours), then the single-process loops (LOOPS,
    alternated step by step in one fresh process). Ray runs only during the first two, as it would
    for a user of each. Returns (each kind's measurements, the peak FLOP/s: the highest of `peak`
    and a reading after each round)."""
    cores = os.cpu_count() or 1
    runs: dict[str, list[dict]] = {kind: [] for kind in ("ours", "floor", *LOOPS)}
    log_every = math.gcd(args.warmup, args.steps)
    for round_index in range(args.rounds):
        cfg = bench_config(
            args.model,
            tokenizer_dir,
            args.batch_size,
            [
                f"train.max_steps={args.warmup + args.steps}",
                f"train.log_every={log_every}",
                f"output.dir={work}",
                f"output.name=ours-{round_index}",
            ],
        )
        in_ray = {
            "ours": partial(measure_ours, cfg, args.warmup),
            "floor": partial(measure_loop_in_ray_train, cfg, args.steps, work, f"floor-{round_index}"),
        }
        for kind, measure in in_ray.items():
            # A Ray of its own for each: the first run after Ray starts shares the cores with the
            # rest of Ray's start-up (its dashboard and agents settle for a minute), so neither
            # may run in a Ray the other has already warmed.
            start_local_ray(cores + 2)
            try:
                runs[kind].append(measure())
            finally:
                ray.shutdown()
        measured = run_measure(LOOPS, args.model, tokenizer_dir, args.batch_size, args.steps, args.compile_backend)
        for kind, result in measured.items():
            runs[kind].append(result)
        # The peak as the highest of several readings: one taken while the shared machine is busy
        # would inflate every MFU.
        peak = max(peak, measure_matmul_flops(cores))
        print(
            f"round {round_index + 1}: "
            + ", ".join(f"{k} {v[-1]['tokens_per_s']:,.0f} tok/s" for k, v in runs.items()),
            flush=True,
        )
    return runs, peak


# Each ratio, numerator over denominator, as the median over rounds of the ratio within a round.
RATIOS = {
    "ours_over_floor": ("ours", "floor"),
    "ours_over_plain": ("ours", "plain"),
    "ours_over_naive": ("ours", "naive"),
    "ours_over_peer": ("ours", "peer"),
    "floor_over_plain": ("floor", "plain"),
    "compiled_over_plain": ("compiled", "plain"),
}


def step_ratios(runs: dict[str, list[dict]]) -> dict:
    """The step comparison's medians, and the medians of the ratios within each round."""
    step = {
        "runs": runs,
        "median_tokens_per_s": {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()},
    }
    for name, (a, b) in RATIOS.items():
        step[name] = statistics.median(x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs[a], runs[b]))
    return step


def measure_memory(small: Config, vocab_size: int, tokenizer_dir: str, work: str, batch_size: int) -> dict:
    """Model state per worker under ZeRO stages 0-3, 2 workers, small config, against theory.
    Measured at step 2: AdamW creates its moments at the first step."""
    memory = {}
    model = build_model(small.model, vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    start_local_ray((os.cpu_count() or 1) + 2)
    try:
        for stage in (0, 1, 2, 3):
            cfg = bench_config(
                "small",
                tokenizer_dir,
                batch_size,
                [
                    "train.max_steps=2",
                    "train.log_every=2",
                    f"train.zero_stage={stage}",
                    "scaling.num_workers=2",
                    f"output.dir={work}",
                    f"output.name=zero{stage}",
                ],
            )
            history = pretrain(cfg, export_and_evaluate=False).history
            memory[stage] = {
                "model_state_mb": history[-1]["model_state_mb"],
                "peak_rss_mb": history[-1]["peak_rss_mb"],
                "zero_paper_mb": theoretical_state(stage, 2) * n_params / 2**20,
                "deepspeed_mb": deepspeed_state_bytes(model, stage, 2) / 2**20,
            }
    finally:
        ray.shutdown()
    for stage in memory:
        memory[stage]["measured_vs_zero0"] = memory[stage]["model_state_mb"] / memory[0]["model_state_mb"]
        memory[stage]["zero_paper_vs_zero0"] = theoretical_state(stage, 2) / theoretical_state(0, 2)
        memory[stage]["deepspeed_vs_zero0"] = memory[stage]["deepspeed_mb"] / memory[0]["deepspeed_mb"]
    return {"config": "small", "parameters": n_params, "workers": 2, "stages": memory}


def write_results(results: dict, out: str) -> None:
    """OUT/results.json and the table, in OUT/results.md and on stdout."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = format_table(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)


def format_table(r: dict) -> str:
    d, s, m, peer = r["data"], r["step"], r["mfu"], r["peer_objective"]
    med = s["median_tokens_per_s"]
    shape = f"{r['model']} seq {r['seq_len']} batch {r['batch_size']}"
    rows = [
        ("tokenize+pack, 1 core", f"{d['tokenize_pack_tokens_per_s_per_core']:,.0f} tokens/s"),
        ("masking, 1 core", f"{d['mask_tokens_per_s_per_core']:,.0f} tokens/s"),
        ("tokenize+pack on 1 core / what our path trains on", f"{d['data_over_trainer']:.1f}x"),
        (
            f"step, {shape}: ours / floor / plain / compiled / naive / peer",
            " / ".join(f"{med[k]:,.0f}" for k in ("ours", "floor", *LOOPS)) + " tokens/s",
        ),
        (
            "ours / floor: the plain loop in a 1-worker Ray Train run (our code's cost on top of Ray)",
            f"{s['ours_over_floor']:.3f}x",
        ),
        ("floor / plain (Ray's own cost)", f"{s['floor_over_plain']:.3f}x"),
        ("ours / plain single-process loop", f"{s['ours_over_plain']:.3f}x"),
        ("ours / naive transformers loop", f"{s['ours_over_naive']:.2f}x"),
        ("ours / peer (electra-pytorch 0.1.2)", f"{s['ours_over_peer']:.2f}x"),
        (
            f"compiled / plain (train.compile's torch.compile, {r['compile_backend']})",
            f"{s['compiled_over_plain']:.3f}x",
        ),
        (
            "peer's objective vs ours, one batch, same masking",
            f"MLM {peer['peer_mlm']:.5f} vs {peer['ours_mlm']:.5f}, RTD {peer['peer_rtd']:.5f} vs "
            f"{peer['ours_rtd']:.5f} ({peer['masked']} masked positions)",
        ),
        (
            f"MFU ours / plain / compiled (peak {r['machine']['peak_flops_fp32'] / 1e9:.0f} GFLOP/s)",
            f"{m['ours']:.1%} / {m['plain']:.1%} / {m['compiled']:.1%}",
        ),
    ]
    for stage, v in r.get("memory", {}).get("stages", {}).items():
        rows.append(
            (
                f"ZeRO-{stage}, 2 workers, {r['model']}: model state per worker",
                f"{v['model_state_mb']:.1f} MB = {v['measured_vs_zero0']:.3f} of ZeRO-0 (DeepSpeed's layout "
                f"{v['deepspeed_vs_zero0']:.3f}, ZeRO paper {v['zero_paper_vs_zero0']:.3f}); peak RSS "
                f"{v['peak_rss_mb']:.0f} MB",
            )
        )
    rows.append(("rounds; bench wall time", f"{len(s['runs']['ours'])}; {r['wall_s']:.0f} s"))
    return markdown_table(("measure", "value"), rows)


if __name__ == "__main__":
    main()
