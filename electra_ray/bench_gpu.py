"""`make bench-gpu` / `python -m electra_ray.bench --gpu`: the GPU check, one command, on one GPU in
at most 8 minutes including start-up (`--budget`, seconds of this process; every section checks
the time left before it starts and results are written after each, so it always ends with a file).

Sections, most valuable first:
1. the GPU and its datasheet peak for the run's precision (bf16; fp16 where the GPU has no bf16),
   and the SDPA kernels eligible for each shape's attention;
2. throughput of our model and objective in a single-process loop (autocast, fused AdamW), for
   ELECTRA-Small at seq 128 and ELECTRA-Base at seq 128 and 512: sequences/s, tokens/s, MFU
   against the datasheet peak, peak memory, the SDPA kernel the step ran (from the profiler's op
   names), and the largest micro-batch that fits (doubling until out of memory or a cap);
3. torch.compile (model.compile_networks, train.compile's): compilation time and steady step time
   against eager;
4. bf16 vs fp32 loss parity: 300 steps of ELECTRA-Small from the same initial weights on the same
   batches, the smoothed losses compared;
5. in the time left, ELECTRA-Small pre-training on the shipped corpus through our full path (Ray
   Data -> Ray Train -> DeepSpeed, bf16), in a child process killed at the budget, with the
   held-out AUC (heldout.detection_auc) at each logging step.

Writes OUT/gpu.json and OUT/gpu.md. `--dry-run` runs the same code on the CPU with tiny shapes
and a few steps (tests/test_bench_gpu.py), so GPU minutes are never spent on a bug.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch

from electra_ray.config import SHIPPED_CONFIGS, Config, load_config
from electra_ray.data import iter_documents, load_sequences, mask_batch, tokenizer_from_json
from electra_ray.meter import cpu_matmul_flops, gpu_model, gpu_peak_flops, peak_rss_bytes
from electra_ray.model import build_pretraining_model, compile_networks, flops_per_token
from electra_ray.optim import param_groups
from electra_ray.report import markdown_table
from electra_ray.tokenizer import read_tokenizer_json, save_tokenizer, train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Shape:
    """One measured configuration: a shipped config's model at `seq_len`, timed at micro-batch
    `batch` (the paper's per-GPU batch), largest micro-batch searched up to `max_batch`."""

    label: str
    config: str  # a config of electra_ray/configs
    seq_len: int
    batch: int
    max_batch: int


@dataclass(frozen=True)
class Plan:
    """What a run measures: the GPU check's sizes, or the dry run's tiny ones on the CPU."""

    device: str
    shapes: tuple[Shape, ...]
    steps: int  # timed steps per throughput measurement
    warmup: int
    parity_steps: int
    compile_backend: str
    pretrain_config: str
    pretrain_batch: int
    pretrain_max_steps: int
    pretrain_margin_s: float  # time kept back for start-up and the final write


GPU_PLAN = Plan(
    device="cuda",
    shapes=(
        Shape("ELECTRA-Small, seq 128", "small", 128, 128, 8192),
        Shape("ELECTRA-Base, seq 128", "base", 128, 128, 4096),
        Shape("ELECTRA-Base, seq 512", "base", 512, 32, 1024),
    ),
    steps=20,
    warmup=5,
    parity_steps=300,
    compile_backend="inductor",
    pretrain_config="small",
    pretrain_batch=128,
    pretrain_max_steps=20000,
    pretrain_margin_s=20.0,
)
DRY_PLAN = Plan(
    device="cpu",
    shapes=(Shape("tiny, seq 32", "tiny", 32, 2, 4), Shape("tiny, seq 64", "tiny", 64, 2, 4)),
    steps=2,
    warmup=1,
    parity_steps=4,
    compile_backend="eager",  # dynamo's tracing, without minutes of CPU code generation
    pretrain_config="tiny",
    pretrain_batch=4,
    pretrain_max_steps=4,
    pretrain_margin_s=5.0,
)


class Budget:
    """Seconds left of the run's budget, counted from the process's start of this check."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


# -- set-up ---------------------------------------------------------------------------------------


def choose_precision(device: torch.device) -> str:
    """bf16 where the device has it, else fp16 (V100, T4: DeepSpeed's loss scaling in our path,
    torch's GradScaler here)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def device_info(device: torch.device, precision: str) -> dict:
    info = {"device": device.type, "precision": precision, "torch": torch.__version__, "cores": os.cpu_count()}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        gpu = gpu_model(name)
        info.update(
            name=name,
            cuda=torch.version.cuda,
            memory_gb=torch.cuda.get_device_properties(device).total_memory / 2**30,
            table_entry=gpu.model if gpu else None,
            peak_flops=gpu_peak_flops(name, precision),
        )
    else:  # the dry run: a measured fp32 matmul stands in for the datasheet
        info.update(name="cpu", peak_flops=cpu_matmul_flops(torch.get_num_threads()))
    return info


def shape_config(shape: Shape, tokenizer_dir: str, extra: tuple[str, ...] = ()) -> Config:
    return load_config(
        os.path.join(SHIPPED_CONFIGS, f"{shape.config}.yaml"),
        [f"data.tokenizer={tokenizer_dir}", f"data.seq_len={shape.seq_len}", "scaling.use_gpu=false", *extra],
    )


def make_tokenizer(work: str, vocab_size: int) -> str:
    """A WordPiece vocabulary of the paper's size, trained on the shipped corpus (seconds)."""
    directory = os.path.join(work, "tokenizer")
    corpus = load_config(os.path.join(SHIPPED_CONFIGS, "small.yaml")).data
    save_tokenizer(
        train_tokenizer(iter_documents(corpus.path, "text", "train", corpus.eval_fraction), vocab_size), directory
    )
    return directory


class Batches:
    """Masked micro-batches of the shipped corpus at one shape, on the device: a pool of a few,
    masked before timing starts, so that the host's masking is not in the GPU's time."""

    def __init__(self, cfg: Config, tokenizer_json: str, device: torch.device, rows_needed: int, seed: int = 0):
        tokenizer, self.special = tokenizer_from_json(tokenizer_json)
        self.vocab_size = tokenizer.get_vocab_size()
        rows = load_sequences(cfg.data, tokenizer_json, "train", rows_needed)["input_ids"]
        repeats = -(-rows_needed // len(rows))  # a small corpus: its rows again
        self.rows = np.concatenate([rows] * repeats)[:rows_needed]
        self.cfg, self.device, self.rng = cfg, device, np.random.default_rng(seed)

    def masked(self, batch: int, index: int = 0) -> dict[str, torch.Tensor]:
        start = (index * batch) % max(1, len(self.rows) - batch + 1)
        masked = mask_batch(self.rows[start : start + batch], self.cfg.data, self.special, self.vocab_size, self.rng)
        return {k: torch.from_numpy(v).to(self.device) for k, v in vars(masked).items() if v is not None}

    def pool(self, batch: int, size: int = 4) -> list[dict[str, torch.Tensor]]:
        return [self.masked(batch, i) for i in range(size)]


# -- one training loop ----------------------------------------------------------------------------


class Trainer:
    """Our pre-training model and objective with torch's fused AdamW, in autocast at `precision`
    (fp32: none), on one device; `compile_backend`: model.compile_networks first."""

    def __init__(
        self, cfg: Config, vocab_size: int, pad_id: int, device: torch.device, precision: str, compile_backend=""
    ):
        torch.manual_seed(cfg.train.seed)
        self.model = build_pretraining_model(cfg, vocab_size, pad_id).to(device)
        if compile_backend:
            compile_networks(self.model, compile_backend)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.train.weight_decay), lr=cfg.train.lr, eps=cfg.train.adam_eps, fused=True
        )
        self.device, self.precision, self.grad_clip = device, precision, cfg.train.grad_clip
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.sample_rng = torch.Generator(device=device).manual_seed(cfg.train.seed)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, batch: dict[str, torch.Tensor]):
        with self.autocast():
            output = self.model(**batch, generator_rng=self.sample_rng)
        if self.scaler is not None:
            self.scaler.scale(output.loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            output.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return output

    def timed(self, pool: list[dict], steps: int, warmup: int) -> float:
        """Mean seconds per step over `steps` after `warmup` untimed ones."""
        for i in range(warmup):
            self.step(pool[i % len(pool)])
        synchronize(self.device)
        start = time.perf_counter()
        for i in range(steps):
            self.step(pool[i % len(pool)])
        synchronize(self.device)
        return (time.perf_counter() - start) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated device memory since the last reset (on CPU: the process's peak RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_bytes() / 2**30


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# -- the sections ---------------------------------------------------------------------------------


SDPA_OPS = (  # aten op names of SDPA's kernels, as the profiler records them
    ("flash", "flash_attention"),
    ("mem-efficient", "efficient_attention"),
    ("cudnn", "cudnn_attention"),
    ("math", "attention_math"),
)


def sdpa_kernels_run(trainer: Trainer, batch: dict) -> list[str]:
    """The SDPA kernels one training step ran, read from the profiler's aten op names (CPU-side
    op records: no CUDA profiling needed). Empty: attention ran without SDPA (on CPU with dropout,
    model.attention's own math)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step(batch)
        synchronize(trainer.device)
    names = {event.key for event in prof.key_averages()}
    return [kernel for kernel, op in SDPA_OPS if any(op in name for name in names)]


def sdpa_kernels_eligible(cfg: Config, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, bool]:
    """Which of SDPA's kernels accept the discriminator's attention at this shape, in training
    (gradients, dropout): each forced alone with torch.nn.attention.sdpa_kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, head_dim = cfg.model.num_heads, cfg.model.hidden_size // cfg.model.num_heads
    q, k, v = (
        torch.randn(batch, heads, cfg.data.seq_len, head_dim, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    )
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "mem-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    eligible = {}
    for name, backend in backends.items():
        try:
            with sdpa_kernel([backend]):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=cfg.model.dropout)
                out.float().sum().backward()
            eligible[name] = True
        except RuntimeError:  # "No available kernel"
            eligible[name] = False
    return eligible


def measure_shape(shape: Shape, tokenizer_dir: str, plan: Plan, device, precision: str, peak, budget: Budget) -> dict:
    """Section 2 for one shape: throughput at the paper's micro-batch, then the largest that fits."""
    cfg = shape_config(shape, tokenizer_dir)
    tokenizer_json = read_tokenizer_json(tokenizer_dir)
    data = Batches(cfg, tokenizer_json, device, shape.max_batch)
    trainer = Trainer(cfg, data.vocab_size, data.special["[PAD]"], device, precision)
    flops = flops_per_token(cfg.model, data.vocab_size, shape.seq_len, cfg.data.mask_prob)
    parameters = sum(p.numel() for p in trainer.model.parameters())
    reset_peak_memory(device)
    step_s = trainer.timed(data.pool(shape.batch), plan.steps, plan.warmup)
    result = {
        "shape": asdict(shape),
        "parameters": parameters,
        "flops_per_token": flops,
        **rates(shape.batch, shape.seq_len, step_s, flops, peak),
        "peak_memory_gb": peak_memory_gb(device),
        "sdpa_kernels_run": sdpa_kernels_run(trainer, data.masked(shape.batch)),
    }
    result["sdpa_kernels_eligible"] = sdpa_kernels_eligible(cfg, shape.batch, device, trainer.dtype or torch.float32)
    result["largest_batch"] = largest_batch(trainer, data, shape, flops, peak, budget)
    del trainer
    reset_peak_memory(device)
    return result


def rates(batch: int, seq_len: int, step_s: float, flops: float, peak) -> dict:
    tokens_per_s = batch * seq_len / step_s
    return {
        "batch": batch,
        "step_s": step_s,
        "sequences_per_s": batch / step_s,
        "tokens_per_s": tokens_per_s,
        "mfu": flops * tokens_per_s / peak if peak else None,
    }


def largest_batch(trainer: Trainer, data: Batches, shape: Shape, flops: float, peak, budget: Budget) -> dict:
    """Double the micro-batch from the paper's until a step runs out of memory (or the cap, or
    20 s of budget are left); each size is timed over 2 steps after one."""
    tried, batch, fits = [], shape.batch * 2, shape.batch
    while batch <= shape.max_batch and budget.left() > 20:
        try:
            reset_peak_memory(trainer.device)
            step_s = trainer.timed(data.pool(batch, size=1), steps=2, warmup=1)
            tried.append(
                {**rates(batch, shape.seq_len, step_s, flops, peak), "peak_memory_gb": peak_memory_gb(trainer.device)}
            )
            fits, batch = batch, batch * 2
        except Exception as error:  # out of memory: the answer; anything else: a finding too
            trainer.optimizer.zero_grad(set_to_none=True)
            tried.append({"batch": batch, "error": "out of memory" if is_out_of_memory(error) else repr(error)[:300]})
            break
    reset_peak_memory(trainer.device)
    capped = bool(tried) and "error" not in tried[-1]
    return {"fits": fits, "reached_cap_or_budget": capped or not tried, "tried": tried}


def measure_compile(plan: Plan, tokenizer_dir: str, device, precision: str, eager: dict) -> dict:
    """Section 3: ELECTRA-Small (the first shape) with model.compile_networks, against the eager
    step of section 2 at the same batch."""
    shape = plan.shapes[0]
    cfg = shape_config(shape, tokenizer_dir)
    data = Batches(cfg, read_tokenizer_json(tokenizer_dir), device, shape.batch * 4)
    trainer = Trainer(cfg, data.vocab_size, data.special["[PAD]"], device, precision, plan.compile_backend)
    pool = data.pool(shape.batch)
    start = time.perf_counter()
    for batch in pool[:2]:  # the first steps compile (forward, then backward)
        trainer.step(batch)
    synchronize(device)
    compile_s = time.perf_counter() - start
    step_s = trainer.timed(pool, plan.steps, plan.warmup)
    return {
        "backend": plan.compile_backend,
        "shape": shape.label,
        "compile_s": compile_s,
        "step_s": step_s,
        "eager_step_s": eager["step_s"],
        "speedup": eager["step_s"] / step_s,
        "breakeven_steps": compile_s / max(eager["step_s"] - step_s, 1e-9) if step_s < eager["step_s"] else None,
    }


def loss_curve(plan: Plan, tokenizer_dir: str, device, precision: str) -> dict[str, list[float]]:
    """`plan.parity_steps` steps of ELECTRA-Small (the first shape) in `precision`: the same
    initial weights, batches (masking seed) and sampling seed for every precision."""
    shape = plan.shapes[0]
    cfg = shape_config(shape, tokenizer_dir, ("train.warmup_steps=30",))
    data = Batches(cfg, read_tokenizer_json(tokenizer_dir), device, shape.batch * plan.parity_steps, seed=1)
    trainer = Trainer(cfg, data.vocab_size, data.special["[PAD]"], device, precision)
    losses = []
    for step in range(plan.parity_steps):
        output = trainer.step(data.masked(shape.batch, step))
        losses.append(torch.stack([output.loss, output.mlm_loss, output.rtd_loss]).detach().float())
    curve = torch.stack(losses).cpu().numpy()  # one host sync, at the end
    return {"loss": curve[:, 0].tolist(), "mlm_loss": curve[:, 1].tolist(), "rtd_loss": curve[:, 2].tolist()}


def measure_parity(plan: Plan, tokenizer_dir: str, device, precision: str) -> dict:
    """Section 4: the low-precision run's losses against fp32's; the verdict compares the mean
    loss of the last fifth of the steps (sampling makes single steps diverge by design)."""
    started = time.perf_counter()
    low = loss_curve(plan, tokenizer_dir, device, precision)
    full = loss_curve(plan, tokenizer_dir, device, "fp32")
    window = max(1, plan.parity_steps // 5)
    result = {"precision": precision, "steps": plan.parity_steps, "window": window}
    for key in ("loss", "mlm_loss", "rtd_loss"):
        a, b = statistics.fmean(low[key][-window:]), statistics.fmean(full[key][-window:])
        result[key] = {precision: a, "fp32": b, "relative_difference": abs(a - b) / max(abs(b), 1e-9)}
    result["first_step_loss"] = {precision: low["loss"][0], "fp32": full["loss"][0]}
    result["within_5_percent"] = result["loss"]["relative_difference"] < 0.05
    result["curves"] = {precision: low["loss"], "fp32": full["loss"]}
    result["wall_s"] = time.perf_counter() - started
    return result


# -- section 5: pre-training through our full path, in a child process ------------------------------

PROGRESS = re.compile(r"step (\d+)/\d+ \| loss ([\d.]+).*?\| ([\d,]+) tok/s \| MFU ([\d.]+%|n/a)")
AUC = re.compile(r"held-out AUC ([\d.]+)")


def pretrain_overrides(plan: Plan, tokenizer_dir: str, work: str, steps: int, device, precision: str) -> list[str]:
    log_every = max(1, steps // 5)
    steps = log_every * (steps // log_every)
    return [
        f"data.tokenizer={tokenizer_dir}",
        f"train.batch_size={plan.pretrain_batch}",
        f"train.max_steps={steps}",
        f"train.warmup_steps={max(1, steps // 10)}",
        f"train.log_every={log_every}",
        f"train.eval_every={log_every}",
        f"train.eval_sequences={256 if device.type == 'cuda' else 16}",
        f"train.checkpoint_every={steps}",
        f"train.precision={precision}",
        f"scaling.use_gpu={'true' if device.type == 'cuda' else 'false'}",
        f"output.dir={work}",
        "output.name=pretrain",
    ]


def pretrain_steps(plan: Plan, small: dict | None, seconds: float) -> int:
    """Steps that fit `seconds` (after ~75 s of Ray, data and DeepSpeed start-up), at half the
    single-process rate of section 2 (our path's host side on an unknown machine)."""
    if small is None or plan.device == "cpu":
        return plan.pretrain_max_steps
    steps = int((seconds - 75) * small["sequences_per_s"] * 0.5 / plan.pretrain_batch)
    return max(20, min(plan.pretrain_max_steps, steps))


def run_pretraining(plan: Plan, tokenizer_dir: str, work: str, device, precision: str, small, budget: Budget) -> dict:
    """Section 5. The child is killed (its process group) at the budget; what it printed by then
    (progress lines, held-out AUCs) is the result."""
    timeout = budget.left() - plan.pretrain_margin_s
    steps = pretrain_steps(plan, small, timeout)
    overrides = pretrain_overrides(plan, tokenizer_dir, work, steps, device, precision)
    command = [sys.executable, "-m", "electra_ray.bench_gpu", "--pretrain-child", plan.pretrain_config, *overrides]
    started = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        output, _ = child.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)  # our own child's group: its driver and the Ray it started
        output, _ = child.communicate()
        timed_out = True
    return parse_pretraining(output, overrides, child.returncode, timed_out, time.perf_counter() - started)


def parse_pretraining(output: str, overrides: list[str], returncode: int, timed_out: bool, wall_s: float) -> dict:
    logged = []
    for line in output.splitlines():
        progress = PROGRESS.search(line)
        if progress:
            auc = AUC.search(line)
            mfu = progress.group(4)
            logged.append(
                {
                    "step": int(progress.group(1)),
                    "loss": float(progress.group(2)),
                    "tokens_per_s": float(progress.group(3).replace(",", "")),
                    "mfu": float(mfu[:-1]) / 100 if mfu != "n/a" else None,
                    "heldout_auc": float(auc.group(1)) if auc else None,
                }
            )
    result = {
        "overrides": overrides,
        "logged": logged,
        "returncode": returncode,
        "timed_out": timed_out,
        "wall_s": wall_s,
    }
    if returncode and not timed_out:
        result["output_tail"] = output[-3000:]
    return result


def pretrain_child(config: str, overrides: list[str]) -> None:
    """The child of section 5: our full path, no export (its evaluation is not this check's)."""
    from electra_ray.pretrain import pretrain

    cfg = load_config(os.path.join(SHIPPED_CONFIGS, f"{config}.yaml"), overrides)
    result = pretrain(cfg, export_and_evaluate=False)
    print(f"history: {json.dumps(result.history)}", flush=True)


# -- the run --------------------------------------------------------------------------------------

SECTION_SECONDS = {"shape": 25, "compile": 150, "parity": 45, "pretrain": 120}


class Sections:
    """Runs the check's sections in order while the budget lasts: a section that needs more time
    than is left is skipped, one that fails is recorded and the next still runs, and the results
    are written after each, so a cut-off run still leaves them."""

    def __init__(self, results: dict, budget: Budget, out: str, device: torch.device, scale: float):
        self.results, self.budget, self.out, self.device, self.scale = results, budget, out, device, scale

    def run(self, name: str, seconds: float, fn, store: dict | None = None):
        results = self.results
        if self.budget.left() < seconds * self.scale:
            results["skipped"].append(f"{name}: needs ~{seconds:.0f} s, {self.budget.left():.0f} s left")
            return None
        print(f"bench --gpu: {name} ({self.budget.left():.0f} s of budget left)", flush=True)
        try:
            value = fn()
            (store if store is not None else results)[name] = value
            return value
        except Exception as error:  # a finding to report; the sections after it still run
            results["errors"][name] = "".join(traceback.format_exception_only(type(error), error)).strip()[-2000:]
            print(f"bench --gpu: {name} failed: {results['errors'][name]}", flush=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None
        finally:
            results["elapsed_s"] = results["budget_s"] - self.budget.left()
            write_gpu_results(results, self.out)


def run_gpu_bench(out: str, dry_run: bool = False, budget_s: float = 450.0, tokenizer_dir: str = "") -> dict:
    """Every section that the budget leaves time for; OUT/gpu.json and OUT/gpu.md after each."""
    from electra_ray.errors import UserError

    budget = Budget(budget_s)
    plan = DRY_PLAN if dry_run else GPU_PLAN
    if not dry_run and not torch.cuda.is_available():
        raise UserError("bench --gpu: torch sees no CUDA GPU here (--dry-run runs the same code on the CPU)")
    device = torch.device(plan.device)
    precision = choose_precision(device)
    results: dict = {"mode": "dry-run" if dry_run else "gpu", "budget_s": budget_s}
    results.update(shapes={}, errors={}, skipped=[], info=device_info(device, precision))
    peak = results["info"]["peak_flops"]
    work = tempfile.mkdtemp(prefix="electra-bench-gpu-")
    tokenizer_dir = tokenizer_dir or make_tokenizer(work, 2000 if dry_run else 30522)
    sections = Sections(results, budget, out, device, scale=0.0 if dry_run else 1.0)

    for shape in plan.shapes:
        measure = partial(measure_shape, shape, tokenizer_dir, plan, device, precision, peak, budget)
        sections.run(shape.label, SECTION_SECONDS["shape"], measure, results["shapes"])
    small = results["shapes"].get(plan.shapes[0].label)
    if small is not None:
        compiled = partial(measure_compile, plan, tokenizer_dir, device, precision, small)
        sections.run("compile", SECTION_SECONDS["compile"], compiled)
    sections.run("parity", SECTION_SECONDS["parity"], partial(measure_parity, plan, tokenizer_dir, device, precision))
    pretraining = partial(run_pretraining, plan, tokenizer_dir, work, device, precision, small, budget)
    sections.run("pretrain", SECTION_SECONDS["pretrain"], pretraining)
    return results


def write_gpu_results(results: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = format_gpu_table(results)
    with open(os.path.join(out, "gpu.md"), "w") as f:
        f.write(table + "\n")


def percent(value) -> str:
    return f"{value:.1%}" if value is not None else "n/a"


def format_gpu_table(r: dict) -> str:
    info = r["info"]
    peak = f"{info['peak_flops'] / 1e12:.1f} TFLOP/s" if info.get("peak_flops") else "not in meter.GPU_PEAKS"
    rows = [("device", f"{info['name']} ({r['mode']}), torch {info['torch']}, {info['precision']}, peak {peak}")]
    for label, s in r["shapes"].items():
        largest = s["largest_batch"]
        rows.append(
            (
                f"{label}, micro-batch {s['batch']}",
                f"{s['sequences_per_s']:,.0f} seq/s, {s['tokens_per_s']:,.0f} tokens/s, MFU {percent(s['mfu'])}, "
                f"peak memory {s['peak_memory_gb']:.1f} GB; SDPA ran {'/'.join(s['sdpa_kernels_run']) or 'none'} "
                f"(eligible: {', '.join(k for k, v in s['sdpa_kernels_eligible'].items() if v)}); largest "
                f"micro-batch fitting {largest['fits']}{' (cap or budget)' * largest['reached_cap_or_budget']}",
            )
        )
    if "compile" in r:
        c = r["compile"]
        rows.append(
            (
                f"torch.compile ({c['backend']}), {c['shape']}",
                f"{c['speedup']:.2f}x eager ({c['step_s'] * 1e3:.1f} vs {c['eager_step_s'] * 1e3:.1f} ms/step), "
                f"compilation {c['compile_s']:.0f} s",
            )
        )
    if "parity" in r:
        p = r["parity"]
        rows.append(
            (
                f"{p['precision']} vs fp32, {p['steps']} steps, mean loss of the last {p['window']}",
                f"{p['loss'][p['precision']]:.3f} vs {p['loss']['fp32']:.3f} "
                f"({p['loss']['relative_difference']:.1%}; within 5%: {p['within_5_percent']})",
            )
        )
    if "pretrain" in r:
        p = r["pretrain"]
        aucs = [f"{x['step']}: {x['heldout_auc']:.3f}" for x in p["logged"] if x["heldout_auc"] is not None]
        last = p["logged"][-1] if p["logged"] else None
        rate = f"{last['tokens_per_s']:,.0f} tokens/s, MFU {percent(last['mfu'])}; " if last else ""
        rows.append(
            (
                "pre-training, our full path (Ray + DeepSpeed)",
                f"{rate}held-out AUC by step {', '.join(aucs) or 'none logged'}"
                f"{' (stopped at the budget)' if p['timed_out'] else ''}",
            )
        )
    rows += [(f"error: {name}", text.splitlines()[-1][:200]) for name, text in r["errors"].items()]
    rows += [("skipped", s) for s in r["skipped"]]
    rows.append(("elapsed", f"{r.get('elapsed_s', 0):.0f} s of a {r['budget_s']:.0f} s budget"))
    return markdown_table(("measure", "value"), rows)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--pretrain-child"]:
        pretrain_child(argv[1], argv[2:])
        return
    raise SystemExit("python -m electra_ray.bench --gpu runs the GPU check")


if __name__ == "__main__":
    main()
