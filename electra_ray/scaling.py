"""A scaling model on paper (docs/scaling.md): per-step compute and ZeRO communication of
ELECTRA-Small, -Base and -Large, the weak-scaling efficiency they imply at 8, 64 and 512 GPUs, and
the CPU cores Ray Data needs per GPU. Pure arithmetic, no torch or Ray: `python -m
electra_ray.scaling [--out FILE]` prints (and writes) the tables; `--measure-pack` measures the
tokenize+pack rate per core that PACK_TOKENS_PER_CORE_S records."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from electra_ray.report import markdown_table

BYTES_PER_VALUE = 2  # bf16 gradients and parameters on the wire
MFU = 0.40  # assumed model FLOPs utilisation of the datasheet peak (a well-tuned BERT-size run gets 0.35-0.5)
GPUS_PER_NODE = 8
GPU_COUNTS = (8, 64, 512)
NETWORK_GBIT_S = (100, 200, 400)  # inter-node bandwidth per GPU
# Measured 2026-12-03 on the project's 2-core CPU box (busy: other jobs ran), one thread, best of 3:
# `python -m electra_ray.scaling --measure-pack` = data.tokenize_and_pack, packing="concatenate", seq 512,
# over the shipped corpus (sotu.parquet) with a 30,522-token WordPiece vocabulary trained on it by
# electra_ray.tokenizer. Packed tokens ([CLS]/[SEP]/padding included) per second per core.
PACK_TOKENS_PER_CORE_S = 273_000.0


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_flops: float  # dense bf16, datasheet
    nvlink_bytes_s: float  # effective all-reduce bus bandwidth within a node of 8


GPUS = (Gpu("A100", 312e12, 300e9), Gpu("H100", 989e12, 450e9))


@dataclass(frozen=True)
class Shape:
    """An ELECTRA model as its config (electra_ray/configs/*.yaml) and the paper's batch give it."""

    name: str
    layers: int
    hidden: int
    embedding: int
    heads: int
    ffn: int
    generator_size: float
    seq_len: int
    mask_prob: float
    paper_batch: int  # global sequences per step, Clark et al. 2020
    micro_batch: int  # sequences per GPU per forward, as the shipped configs run them
    vocab: int = 30522
    positions: int = 512


MODELS = (
    Shape("ELECTRA-Small", 12, 256, 128, 4, 1024, 0.25, 128, 0.15, 128, 128),
    Shape("ELECTRA-Base", 12, 768, 768, 12, 3072, 1 / 3, 512, 0.15, 256, 32),
    Shape("ELECTRA-Large", 24, 1024, 1024, 16, 4096, 0.25, 512, 0.25, 2048, 32),
)


def generator_width(m: Shape) -> tuple[int, int]:
    """(hidden, feed-forward) of the generator, as config.generator_shape rounds them."""
    return max(1, round(m.hidden * m.generator_size)), max(1, round(m.ffn * m.generator_size))


def encoder_params(hidden: int, ffn: int, layers: int, embedding: int) -> int:
    """transformers' ElectraModel less its (shared) embeddings: the projection and the layers."""
    project = embedding * hidden + hidden if embedding != hidden else 0
    per_layer = 4 * (hidden * hidden + hidden) + 2 * hidden * ffn + ffn + hidden + 4 * hidden  # + 2 LayerNorms
    return project + layers * per_layer


def parameter_count(m: Shape) -> int:
    """Trainable parameters of the joint model (model.ElectraPretrainingModel): one embeddings
    module shared by both networks, the generator's output layer tied to the token embeddings."""
    embeddings = (m.vocab + m.positions + 2) * m.embedding + 2 * m.embedding
    gen_hidden, gen_ffn = generator_width(m)
    generator = encoder_params(gen_hidden, gen_ffn, m.layers, m.embedding)
    generator += gen_hidden * m.embedding + m.embedding + 2 * m.embedding + m.vocab  # head; output bias
    discriminator = encoder_params(m.hidden, m.ffn, m.layers, m.embedding) + m.hidden * m.hidden + 2 * m.hidden + 1
    return embeddings + generator + discriminator


def flops_per_token(m: Shape) -> float:
    """Training FLOPs per input token, generator included: the formula of model.flops_per_token
    (google-research/electra's counting, backward = 2x forward), restated here without torch."""

    def encoder(hidden: int, ffn: int) -> float:
        per_layer = 2 * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * 2 * m.seq_len * hidden
        return m.layers * per_layer + 2 * m.embedding * hidden

    gen_hidden, gen_ffn = generator_width(m)
    generator = encoder(gen_hidden, gen_ffn) + m.mask_prob * 2 * (gen_hidden * m.embedding + m.embedding * m.vocab)
    discriminator = encoder(m.hidden, m.ffn) + 2 * (m.hidden * m.hidden + m.hidden)
    return 3 * (generator + discriminator)


def comm_bytes_per_gpu(params: float, n: int, zero_stage: int, bytes_per_value: int = BYTES_PER_VALUE) -> float:
    """Bytes each GPU sends per optimizer step with ring collectives. ZeRO-0: all-reduce of the
    gradients, 2(n-1)/n P b. ZeRO-1/2: reduce-scatter of gradients + all-gather of the updated
    parameters, (n-1)/n P b each: the same total. ZeRO-3: the parameters are gathered again for
    the forward and again for the backward, 3 (n-1)/n P b."""
    one_pass = (n - 1) / n * params * bytes_per_value
    return (3 if zero_stage == 3 else 2) * one_pass


def link_bytes_s(gpu: Gpu, n: int, network_gbit_s: float) -> float:
    """A ring is as fast as its slowest link: NVLink within one node, the network beyond."""
    return gpu.nvlink_bytes_s if n <= GPUS_PER_NODE else network_gbit_s * 1e9 / 8


def efficiency(compute_s: float, comm_s: float, overlap: float) -> float:
    """Weak-scaling efficiency: compute / step time, where `overlap` (0..1) is the fraction of the
    communication hidden behind compute (it cannot hide more than the compute time)."""
    exposed = max(comm_s * (1 - overlap), comm_s - compute_s)
    return compute_s / (compute_s + exposed)


def compute_seconds(m: Shape, sequences: float, gpu: Gpu, mfu: float = MFU) -> float:
    return flops_per_token(m) * sequences * m.seq_len / (gpu.peak_flops * mfu)


def efficiency_cell(m: Shape, gpu: Gpu, n: int, zero_stage: int, network: float, sequences: float) -> str:
    """'no overlap-full overlap' efficiency of n GPUs, each computing `sequences` per step."""
    if n == 1:
        return "1.00"
    compute = compute_seconds(m, sequences, gpu)
    comm = comm_bytes_per_gpu(parameter_count(m), n, zero_stage) / link_bytes_s(gpu, n, network)
    return f"{efficiency(compute, comm, 0.0):.2f}-{efficiency(compute, comm, 1.0):.2f}"


def model_table() -> str:
    headers = ("model", "seq", "params (gen+disc)", "GFLOPs/token", "micro-batch/GPU", "TFLOPs/micro-step")
    headers += ("A100 ms", "H100 ms", "ZeRO-0/1/2 GB/GPU/step @8", "ZeRO-3 GB @8")
    rows = []
    for m in MODELS:
        p, tflops = parameter_count(m), flops_per_token(m) * m.micro_batch * m.seq_len / 1e12
        ms = [compute_seconds(m, m.micro_batch, g) * 1e3 for g in GPUS]
        rows.append(
            (m.name, m.seq_len, f"{p / 1e6:.1f}M", f"{flops_per_token(m) / 1e9:.3f}", m.micro_batch, f"{tflops:.2f}")
            + (f"{ms[0]:.1f}", f"{ms[1]:.1f}", f"{comm_bytes_per_gpu(p, 8, 1) / 1e9:.3f}")
            + (f"{comm_bytes_per_gpu(p, 8, 3) / 1e9:.3f}",)
        )
    return markdown_table(headers, rows)


def efficiency_table(gpu: Gpu, per_gpu_sequences) -> str:
    """Rows of model x ZeRO stage; columns: 8 GPUs on NVLink, 64 and 512 at each network speed."""
    heads = ["8 (NVLink)"] + [f"{n} @ {g} Gb/s" for n in GPU_COUNTS[1:] for g in NETWORK_GBIT_S]
    rows = []
    for m in MODELS:
        for stage, label in ((1, "0/1/2"), (3, "3")):
            cells = [efficiency_cell(m, gpu, 8, stage, 0, per_gpu_sequences(m, 8))]
            cells += [
                efficiency_cell(m, gpu, n, stage, g, per_gpu_sequences(m, n))
                for n in GPU_COUNTS[1:]
                for g in NETWORK_GBIT_S
            ]
            rows.append([m.name, label, *cells])
    return markdown_table(["model", "ZeRO", *heads], rows)


def batch_table() -> str:
    """The global batch weak scaling gives, and what keeping the paper's global batch needs."""
    headers = ("model", "paper batch", "GPUs", "weak scaling: global batch (accum 1)")
    headers += ("paper batch: sequences/GPU/step", "paper batch: accumulation at the micro-batch")
    rows = []
    for m in MODELS:
        for n in GPU_COUNTS:
            per_gpu = m.paper_batch / n
            accum = max(1, math.ceil(per_gpu / m.micro_batch))
            per_gpu_text = f"{per_gpu:g}" if per_gpu >= 1 else f"{per_gpu:g} (< 1: impossible)"
            rows.append((m.name, m.paper_batch, n, f"{m.micro_batch * n:,}", per_gpu_text, accum))
    return markdown_table(headers, rows)


def cores_table() -> str:
    headers = ("model", "GPU", "tokens/s per GPU at the assumed MFU", "CPU cores per GPU for tokenize+pack")
    rows = []
    for m in MODELS:
        for gpu in GPUS:
            tokens_s = gpu.peak_flops * MFU / flops_per_token(m)
            rows.append((m.name, gpu.name, f"{tokens_s:,.0f}", f"{tokens_s / PACK_TOKENS_PER_CORE_S:.2f}"))
    return markdown_table(headers, rows)


def nvidia_base_check() -> list[str]:
    """NVIDIA's ELECTRA-Base (seq 128) on A100: 955 seq/s on one GPU, 7,512 on eight (98%). Our
    model with their measured compute rate in place of the assumed MFU, for a range of per-GPU
    batches (theirs is not restated here) and no gradient accumulation."""
    base = MODELS[1]
    m = Shape(**{**base.__dict__, "seq_len": 128})
    a100 = GPUS[0]
    mfu = flops_per_token(m) * 128 * 955 / a100.peak_flops
    summary = (
        f"ELECTRA-Base seq 128: {flops_per_token(m) / 1e9:.3f} GFLOPs/token; 955 seq/s = MFU {mfu:.2f} of 312 TFLOP/s."
    )
    headers = ("sequences/GPU/step", "compute ms", "ZeRO-0 all-reduce ms (NVLink 300 GB/s)")
    headers += ("efficiency, no overlap - full",)
    rows = []
    for sequences in (16, 32, 64, 176):
        compute = sequences / 955
        comm = comm_bytes_per_gpu(parameter_count(m), 8, 0) / a100.nvlink_bytes_s
        overlap = f"{efficiency(compute, comm, 0):.3f} - {efficiency(compute, comm, 1):.3f}"
        rows.append((sequences, f"{compute * 1e3:.1f}", f"{comm * 1e3:.2f}", overlap))
    return summary + "\n\n" + markdown_table(headers, rows)


def weak_batch(m: Shape, n: int) -> float:
    """Weak scaling: each GPU keeps its micro-batch."""
    return m.micro_batch


def paper_batch(m: Shape, n: int) -> float:
    """Strong scaling: the paper's global batch split over n GPUs (at least one sequence each)."""
    return max(m.paper_batch / n, 1)


def report() -> str:
    out = [f"Assumed MFU {MFU}; bf16 ({BYTES_PER_VALUE} bytes) on the wire; ring collectives; latency ignored.", ""]
    out += ["## Models, compute and communication per micro-step", "", model_table()]
    for gpu in GPUS:
        peak, nvlink = gpu.peak_flops / 1e12, gpu.nvlink_bytes_s / 1e9
        title = f"## Weak-scaling efficiency, {gpu.name} ({peak:.0f} TFLOP/s, NVLink {nvlink:.0f} GB/s)"
        out += ["", title, "", "Per-GPU micro-batch fixed, accumulation 1; each cell no overlap-full overlap.", ""]
        out.append(efficiency_table(gpu, weak_batch))
    for gpu in GPUS[:1]:
        out += ["", f"## Efficiency at the paper's global batch, {gpu.name} (strong scaling)", ""]
        out.append(efficiency_table(gpu, paper_batch))
    out += ["", "## Batch and gradient accumulation", "", batch_table()]
    rate = f"{PACK_TOKENS_PER_CORE_S:,.0f}"
    out += ["", f"## CPU cores per GPU for Ray Data (tokenize+pack {rate} tokens/s per core)", "", cores_table()]
    out += ["", "## NVIDIA's ELECTRA-Base on 8 A100s (98% published)", "", nvidia_base_check()]
    return "\n".join(out) + "\n"


def measure_pack_rate(vocab_size: int = 30522, seq_len: int = 512, rounds: int = 3) -> float:
    """Input tokens per second of data.tokenize_and_pack on one thread over the shipped corpus
    (the best of `rounds`). Imports the tokenizers lazily: the model above needs none of them."""
    import os
    import time

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: a Ray Data task's share
    os.environ["RAYON_NUM_THREADS"] = "1"
    import pyarrow.parquet as pq

    from electra_ray.data import tokenize_and_pack
    from electra_ray.tokenizer import train_tokenizer

    corpus = os.path.join(os.path.dirname(__file__), "corpus", "sotu.parquet")
    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    tokenizer_json = train_tokenizer(iter(texts), vocab_size).to_str()
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        ids = tokenize_and_pack(texts, tokenizer_json, seq_len)["input_ids"]
        best = max(best, ids.size / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m electra_ray.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    parser.add_argument("--measure-pack", action="store_true", help="measure tokenize+pack tokens/s on one core")
    args = parser.parse_args(argv)
    if args.measure_pack:
        print(f"tokenize+pack: {measure_pack_rate():,.0f} tokens/s on one thread")
        return
    text = report()
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
