"""Bad input, across every verb: exit status 2, one line `error: ...` naming the problem, no
traceback, no process left behind, and nothing written or removed anywhere but the target.

Each case runs the real command (`python -m electra_ray.<verb>`) in its own directory, which holds
user files (some of them exactly where the output would go). The directory, and the S3 bucket, are
snapshotted before and after: a case passes only if both are unchanged. The cases run up front (a
module fixture), two at a time, each a forked child running the verb's `main` (what `python -m`
runs); the two that start Ray run as real interpreters, one at a time."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_MODEL

BUCKET = "electra"


@dataclasses.dataclass
class Case:
    id: str
    argv: list[str]  # after `python -m electra_ray.`; {dir} {corpus} {tok} {ckpt} {s3} are filled in
    message: str  # what the one error line must contain ({dir} filled in)
    setup: Callable[[str, dict], None] = lambda directory, ctx: None
    starts_ray: bool = False  # run alone: two local Rays starting at once race for Ray's token file


def user_files(directory: str, *names: str) -> None:
    """Files of the user's, e.g. where an output would go."""
    for name in names:
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"precious {name}\n")


def write(directory: str, name: str, content: str | bytes) -> None:
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)


def saved_run(directory: str, ctx: dict, **model) -> None:
    """runs/old: a run started with a 32-wide model (its config.json), and a file of its own."""
    from electra_ray.config import load_config

    values = {**TINY_MODEL, **model}
    cfg = load_config(
        None,
        [f"model.{k}={v}" for k, v in values.items()]
        + [f"data.path={ctx['corpus']}", f"data.tokenizer={ctx['tok']}", "data.seq_len=32"],
    )
    write(directory, "runs/old/config.json", json.dumps(cfg.to_dict()))
    user_files(directory, "runs/old/checkpoint_000000/electra_ray.json")


def tokenizer_without_specials(directory: str, ctx: dict) -> None:
    from tokenizers import Tokenizer, models

    write(directory, "tok/tokenizer.json", Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="b")).to_str())


def an_export(directory: str, ctx: dict, where: str = "export") -> None:
    from electra_ray.export import export

    export(ctx["ckpt"], os.path.join(directory, where))


def tampered_export(directory: str, ctx: dict) -> None:
    an_export(directory, ctx)
    path = os.path.join(directory, "export", "discriminator", "config.json")
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(b"[" if first != b"[" else b"{")  # same size, other bytes


def s3_objects(directory: str, ctx: dict) -> None:
    """The user's objects under this case's own prefix (cases run side by side)."""
    for name in ("data/a.parquet", "data/notes.txt"):
        ctx["s3"].put_object(Bucket=BUCKET, Key=f"{ctx['prefix']}/{name}", Body=b"user data")


def corrupt_gzip(directory: str, ctx: dict) -> None:
    write(directory, "texts/a.txt.gz", b"\x1f\x8b\x08\x00 this is not deflate data at all")


def float_labels(directory: str, ctx: dict) -> None:
    pq.write_table(
        pa.table({"text": ["good", "bad", "fine"], "label": [0.5, 1.25, 2.0]}), os.path.join(directory, "train.parquet")
    )


def nan_targets(directory: str, ctx: dict) -> None:
    pq.write_table(
        pa.table({"text": ["good", "bad"], "label": [0.5, float("nan")]}), os.path.join(directory, "train.parquet")
    )


def unfinished_corpus(directory: str, ctx: dict) -> None:
    import shutil

    shutil.copytree(ctx["corpus"], os.path.join(directory, "corpus"))
    write(directory, "corpus/_PREPARING", "{}")


def mixed_schemas(directory: str, ctx: dict) -> None:
    os.makedirs(os.path.join(directory, "corpus"))
    texts = ["a few words of text " * 40] * 50
    pq.write_table(pa.table({"text": texts}), os.path.join(directory, "corpus", "a.parquet"))
    pq.write_table(
        pa.table({"text": pa.array(texts, pa.large_string())}), os.path.join(directory, "corpus", "b.parquet")
    )


def tiny_corpus(directory: str, ctx: dict) -> None:
    pq.write_table(pa.table({"text": ["the cat sat", "on the mat"]}), os.path.join(directory, "tiny.parquet"))


def null_texts(directory: str, ctx: dict) -> None:
    pq.write_table(
        pa.table({"text": pa.array([None, None, None], pa.string())}), os.path.join(directory, "nulls.parquet")
    )


def with_config(where: str, change: Callable[[dict], None]) -> Callable[[str, dict], None]:
    """An export at `export/`, its `where` config.json changed by `change`."""

    def setup(directory: str, ctx: dict) -> None:
        an_export(directory, ctx)
        path = os.path.join(directory, "export", where, "config.json")
        with open(path) as f:
            config = json.load(f)
        change(config)
        with open(path, "w") as f:
            json.dump(config, f)

    return setup


def squad_file(directory: str, answer_start: int, name: str = "qa.json") -> None:
    context = "Marie Curie won the Nobel Prize in 1903."
    question = {"id": "q1", "question": "Who won?", "answers": [{"text": "Marie Curie", "answer_start": answer_start}]}
    write(directory, name, json.dumps({"data": [{"paragraphs": [{"context": context, "qas": [question]}]}]}))


def a_sweep(directory: str, ctx: dict, change: Callable[[dict], None] = lambda saved: None) -> None:
    """sweep/: a new sweep as `tune` leaves it before any trial, its sweep.json then changed."""
    from electra_ray.tune import SWEEP_FILE, load_sweep_config, new_sweep

    overrides = [f"pretrain.data.path={ctx['corpus']}", f"pretrain.data.tokenizer={ctx['tok']}"]
    _, settings = new_sweep(load_sweep_config(None, [*overrides, f"out={directory}/sweep"]))
    path = os.path.join(settings.out, SWEEP_FILE)
    with open(path) as f:
        saved = json.load(f)
    change(saved)
    write(directory, f"sweep/{SWEEP_FILE}", json.dumps(saved))


def sweep_with_scratch(directory: str, ctx: dict) -> None:
    """A sweep whose sweep.json names the user's directory as its scratch (a path, not our name)."""
    user_files(directory, "home/notes.txt")
    a_sweep(directory, ctx, lambda saved: saved["settings"].update(scratch=os.path.join(directory, "home")))


def finetune_args(*more: str, model: str = "{dir}/export", train: str = "{dir}/train.parquet") -> list[str]:
    return ["finetune", "--model", model, "--train", train, "--eval", train, "--num-workers", "0", *more]


CFG = ["--set", "output.dir={dir}/runs", "data.path={corpus}", "data.tokenizer={tok}"]

CASES = [
    # pretrain: config values, each named with its key
    Case("batch size 0", ["pretrain", *CFG, "train.batch_size=0"], "config key 'train.batch_size' must be >= 1, got 0"),
    Case("lr nan", ["pretrain", *CFG, "train.lr=nan"], "'train.lr' must be finite and > 0, got nan"),
    Case("lr negative", ["pretrain", *CFG, "train.lr=-1e-3"], "'train.lr' must be"),
    Case("grad accum 0", ["pretrain", *CFG, "train.grad_accum=0"], "'train.grad_accum' must be >= 1, got 0"),
    Case("heads 0", ["pretrain", *CFG, "model.num_heads=0"], "'model.num_heads' must be >= 1, got 0"),
    Case("temperature 0", ["pretrain", *CFG, "train.temperature=0"], "'train.temperature' must be"),
    Case("mask token prob < 0", ["pretrain", *CFG, "data.mask_token_prob=-0.1"], "'data.mask_token_prob' must be"),
    Case("dropout > 1", ["pretrain", *CFG, "model.dropout=1.5"], "'model.dropout' must be"),
    Case("vocab size 0", ["pretrain", *CFG, "data.vocab_size=0"], "'data.vocab_size' must be"),
    Case("beta 1", ["pretrain", *CFG, "train.adam_betas=[0.9, 1.0]"], "train.adam_betas"),
    Case("max failures -2", ["pretrain", *CFG, "train.max_failures=-2"], "'train.max_failures' must be >= -1"),
    Case("unknown key", ["pretrain", *CFG, "train.nope=1"], "unknown config key 'train.nope'"),
    Case("malformed --set", ["pretrain", *CFG, "train.adam_betas=[0.9,"], "malformed YAML"),
    Case(
        "malformed config file",
        ["pretrain", "--config", "{dir}/bad.yaml"],
        "bad.yaml",
        lambda d, ctx: write(d, "bad.yaml", "train: {lr: [1,\n"),
    ),
    Case("missing corpus", ["pretrain", *CFG, "data.path={dir}/nothing"], "{dir}/nothing"),
    Case(
        "tokenizer not a tokenizer",
        ["pretrain", *CFG, "data.tokenizer={dir}/tok"],
        "is not a tokenizer",
        lambda d, ctx: write(d, "tok/tokenizer.json", "hello"),
    ),
    Case(
        "tokenizer without specials",
        ["pretrain", *CFG, "data.tokenizer={dir}/tok"],
        # Each role with the spellings it is mapped from (a RoBERTa-style tokenizer is accepted too).
        "lacks the special tokens [PAD] or <pad>, [UNK] or <unk>, [CLS] or <s> or <cls>, [SEP] or </s> or <sep>, "
        "[MASK] or <mask>: ELECTRA needs [PAD] [UNK] [CLS] [SEP] [MASK]",
        tokenizer_without_specials,
    ),
    Case(
        "run of another model",
        [
            "pretrain",
            *CFG,
            "output.name=old",
            "model.hidden_size=64",
            "data.seq_len=32",
            *[f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "hidden_size"],
        ],
        "was started with other settings (model.hidden_size 32 -> 64;",
        saved_run,
    ),
    Case(
        "resume with another objective",
        ["pretrain", "--resume", "{dir}/runs/old", "--set", "train.objective=mlm"],
        "(train.objective 'electra' -> 'mlm')",
        saved_run,
    ),
    Case(
        "output name is not a run",
        ["pretrain", *CFG, "output.name=mine"],
        "is not a run of electra_ray.pretrain",
        lambda d, ctx: user_files(d, "runs/mine/thesis.tex"),
    ),
    Case(
        "a run whose export/ is not an export",
        ["pretrain", "--resume", "{dir}/runs/old"],
        "runs/old/export already exists and is not an export",
        lambda d, ctx: (saved_run(d, ctx), user_files(d, "runs/old/export/my-model.bin")),
    ),
    Case(
        "a run whose export/ holds the user's file",
        ["pretrain", "--resume", "{dir}/runs/old"],
        "runs/old/export holds files its _MANIFEST.json does not list (notes.txt)",
        lambda d, ctx: (
            saved_run(d, ctx),
            an_export(d, ctx, "runs/old/export"),
            user_files(d, "runs/old/export/notes.txt"),
        ),
    ),
    Case(
        "resume a non-run",
        ["pretrain", "--resume", "{dir}/home"],
        "cannot resume",
        lambda d, ctx: user_files(d, "home/notes.txt"),
    ),
    Case("unfinished corpus", ["pretrain", *CFG, "data.path={dir}/corpus"], "_PREPARING", unfinished_corpus),
    Case("gpu on a cluster without", ["pretrain", *CFG, "scaling.use_gpu=true"], "missing GPU", starts_ray=True),
    Case(
        "resource no node has",
        ["pretrain", *CFG, "scaling.data_resource=data_node"],
        "data_node (no node has it)",
        starts_ray=True,
    ),
    # export: never onto user data
    Case(
        "export onto a run",
        ["export", "{ckpt}", "{dir}/runs/x"],
        "already exists and is not an export",
        lambda d, ctx: user_files(d, "runs/x/checkpoint_000001/model.pt", "runs/x/config.json"),
    ),
    Case(
        "export onto the current directory",
        ["export", "{ckpt}", "."],
        "already exists and is not an export",
        lambda d, ctx: user_files(d, "thesis.tex"),
    ),
    Case("export onto an export", ["export", "{ckpt}", "{dir}/export"], "already holds an export", an_export),
    Case(
        "export onto a file",
        ["export", "{ckpt}", "{dir}/notes.txt"],
        "exists and is not a directory",
        lambda d, ctx: user_files(d, "notes.txt"),
    ),
    Case(
        "export onto S3 user data",
        ["export", "{ckpt}", "{s3}/data"],
        "already holds objects that are not an export",
        s3_objects,
    ),
    Case("export a missing checkpoint", ["export", "{dir}/nothing", "{dir}/out"], "no checkpoint directory"),
    Case(
        "export a non-checkpoint",
        ["export", "{dir}/home", "{dir}/out"],
        "is not an electra-ray checkpoint",
        lambda d, ctx: user_files(d, "home/notes.txt"),
    ),
    Case(
        "export a corrupt run state",
        ["export", "{dir}/ckpt", "{dir}/out"],
        "is not a readable run state",
        lambda d, ctx: write(d, "ckpt/electra_ray.json", '{"config": '),
    ),
    Case(
        "verify a tampered export", ["export", "--verify", "{dir}/export"], "does not match the sha256", tampered_export
    ),
    # tokenizer
    Case(
        "tokenizer onto user files",
        ["tokenizer", "--input", "{corpus}", "--vocab-size", "200", "--out", "{dir}/home"],
        "already exists and is not a tokenizer",
        lambda d, ctx: user_files(d, "home/notes.txt"),
    ),
    Case(
        "tokenizer onto S3 user data",
        ["tokenizer", "--input", "{corpus}", "--vocab-size", "200", "--out", "{s3}/data"],
        "already holds objects",
        s3_objects,
    ),
    Case(
        "tokenizer vocab 0",
        ["tokenizer", "--input", "{corpus}", "--vocab-size", "0", "--out", "{dir}/t"],
        "--vocab-size must be",
    ),
    Case("tokenizer missing input", ["tokenizer", "--input", "{dir}/nothing", "--out", "{dir}/t"], "{dir}/nothing"),
    # prepare
    Case("prepare missing input", ["prepare", "{dir}/nothing", "{dir}/out"], "input not found: {dir}/nothing"),
    Case(
        "prepare shard size 0",
        ["prepare", "{dir}/texts", "{dir}/out", "--shard-mb", "0"],
        "shard-mb",
        lambda d, ctx: user_files(d, "texts/a.txt"),
    ),
    Case("prepare corrupt gzip", ["prepare", "{dir}/texts", "{dir}/out"], "a.txt.gz", corrupt_gzip),
    Case(
        "prepare not JSON",
        ["prepare", "{dir}/texts", "{dir}/out"],
        "a.jsonl:1: not JSON",
        lambda d, ctx: write(d, "texts/a.jsonl", "{not json\n"),
    ),
    Case(
        "prepare onto a corpus",
        ["prepare", "{dir}/texts", "{dir}/out"],
        "already holds",
        lambda d, ctx: (user_files(d, "texts/a.txt"), write(d, "out/part-00000.parquet", "x")),
    ),
    # evaluate
    Case("evaluate a missing export", ["evaluate", "{dir}/nothing"], "{dir}/nothing"),
    Case(
        "evaluate a non-export",
        ["evaluate", "{dir}/home"],
        "{dir}/home",
        lambda d, ctx: user_files(d, "home/notes.txt"),
    ),
    Case("evaluate max sequences 0", ["evaluate", "{dir}/export", "--max-sequences", "0"], "max-sequences", an_export),
    # finetune
    Case(
        "finetune a missing model",
        [
            "finetune",
            "--model",
            "{dir}/nothing",
            "--train",
            "{dir}/train.parquet",
            "--eval",
            "{dir}/train.parquet",
            "--out",
            "{dir}/ft",
        ],
        "{dir}/nothing",
        float_labels,
    ),
    Case(
        "finetune lr nan",
        [
            "finetune",
            "--model",
            "{dir}/export",
            "--train",
            "{dir}/train.parquet",
            "--eval",
            "{dir}/train.parquet",
            "--lr",
            "nan",
            "--out",
            "{dir}/ft",
        ],
        "lr",
        float_labels,
    ),
    Case(
        "finetune float labels as classes",
        [
            "finetune",
            "--model",
            "{dir}/export",
            "--train",
            "{dir}/train.parquet",
            "--eval",
            "{dir}/train.parquet",
            "--num-workers",
            "0",
            "--out",
            "{dir}/ft",
        ],
        "regression",
        lambda d, ctx: (float_labels(d, ctx), an_export(d, ctx)),
    ),
    Case(
        "finetune nan targets",
        [
            "finetune",
            "--model",
            "{dir}/export",
            "--train",
            "{dir}/train.parquet",
            "--eval",
            "{dir}/train.parquet",
            "--task",
            "regression",
            "--num-workers",
            "0",
            "--out",
            "{dir}/ft",
        ],
        "train.parquet",
        lambda d, ctx: (nan_targets(d, ctx), an_export(d, ctx)),
    ),
    Case(
        "finetune onto user files",
        [
            "finetune",
            "--model",
            "{dir}/export",
            "--train",
            "{dir}/train.parquet",
            "--eval",
            "{dir}/train.parquet",
            "--task",
            "regression",
            "--num-workers",
            "0",
            "--out",
            "{dir}/home",
        ],
        "is not a fine-tuning output",
        lambda d, ctx: (float_labels(d, ctx), an_export(d, ctx), user_files(d, "home/notes.txt")),
    ),
    # tune and compare
    Case("tune samples 0", ["tune", "--set", "num_samples=0", "out={dir}/sweep"], "num_samples"),
    Case(
        "tune malformed config",
        ["tune", "--config", "{dir}/bad.yaml"],
        "bad.yaml",
        lambda d, ctx: write(d, "bad.yaml", "space: [1, 2\n"),
    ),
    Case(
        "tune onto user files",
        ["tune", "--set", "out={dir}/home", "pretrain.data.path={corpus}"],
        "not empty",
        lambda d, ctx: user_files(d, "home/notes.txt"),
    ),
    Case(
        "tune resume a non-sweep",
        ["tune", "--resume", "{dir}/home"],
        "cannot resume",
        lambda d, ctx: user_files(d, "home/notes.txt"),
    ),
    Case("compare points 0", ["compare", "--set", "points=0", "out={dir}/cmp"], "points"),
    Case(
        "compare onto user files",
        ["compare", "--set", "out={dir}/home"],
        "not empty",
        lambda d, ctx: user_files(d, "home/notes.txt"),
    ),
    Case("compare bad key", ["compare", "--set", "pretrain.train.lr=-1"], "'pretrain.train.lr' must be"),
    # -- issue 30: new inputs, and the findings of trying them as a new user would ------------------
    # pretrain: outputs, corpora, the cluster address, a DeepSpeed file, init_from
    Case(
        "output dir under a file",
        ["pretrain", *CFG, "output.dir={dir}/notes.txt/runs"],
        "{dir}/notes.txt exists and is not a directory",
        lambda d, ctx: user_files(d, "notes.txt"),
    ),
    Case(
        "local dir under a file",
        ["pretrain", *CFG, "output.local_dir={dir}/notes.txt/run"],
        "{dir}/notes.txt exists and is not a directory",
        lambda d, ctx: user_files(d, "notes.txt"),
    ),
    Case(
        "corpus smaller than a batch",
        ["pretrain", *CFG, "data.path={dir}/tiny.parquet", "data.eval_fraction=0"],
        "is too small: its training split packs into",
        tiny_corpus,
    ),
    Case(
        "corpus files of two schemas",
        ["pretrain", *CFG, "data.path={dir}/corpus"],
        "every file must have the same schema",
        mixed_schemas,
    ),
    Case("text column missing", ["pretrain", *CFG, "data.text_column=body"], "has no column 'body'"),
    Case("tokenizer path missing", ["pretrain", *CFG, "data.tokenizer={dir}/nothing"], "{dir}/nothing"),
    Case(
        "ray address where nothing listens",
        ["pretrain", *CFG, "scaling.ray_address=127.0.0.1:1"],
        "no Ray cluster answers at 127.0.0.1:1",
    ),
    Case(
        "deepspeed zero_optimization true",
        ["pretrain", *CFG, "train.deepspeed={dir}/ds.json"],
        "zero_optimization must be a mapping",
        lambda d, ctx: write(d, "ds.json", '{"zero_optimization": true}'),
    ),
    Case(
        "deepspeed file malformed",
        ["pretrain", *CFG, "train.deepspeed={dir}/ds.json"],
        "malformed JSON",
        lambda d, ctx: write(d, "ds.json", '{"zero_optimization": {"stage": 2,}}'),
    ),
    Case(
        "deepspeed file sets the batch",
        ["pretrain", *CFG, "train.deepspeed={dir}/ds.yaml"],
        "train.deepspeed sets train_batch_size=7",
        lambda d, ctx: write(d, "ds.yaml", "train_batch_size: 7\n"),
    ),
    Case("deepspeed file missing", ["pretrain", *CFG, "train.deepspeed={dir}/ds.json"], "not found"),
    Case(
        "init_from architectures not a list",
        ["pretrain", "--set", "output.dir={dir}/runs", "data.path={corpus}", "model.init_from={dir}/export"],
        "architectures must list class names",
        with_config("discriminator", lambda c: c.update(architectures="ElectraForMaskedLM")),
    ),
    Case(
        "init_from generator config incomplete",
        ["pretrain", "--set", "output.dir={dir}/runs", "data.path={corpus}", "model.init_from={dir}/export"],
        "generator/config.json lacks a positive integer",
        with_config("generator", lambda c: c.pop("num_attention_heads")),
    ),
    Case(
        "init_from not a model",
        ["pretrain", "--set", "output.dir={dir}/runs", "data.path={corpus}", "model.init_from={dir}/home"],
        "no config.json",
        lambda d, ctx: user_files(d, "home/notes.txt"),
    ),
    Case(
        "init_from and a tokenizer",
        ["pretrain", *CFG, "model.init_from={dir}/export"],
        "data.tokenizer and model.init_from are both set",
        an_export,
    ),
    Case(
        "tracker uri with a password",
        ["pretrain", *CFG, "output.trackers=[mlflow]", "output.mlflow_tracking_uri=https://me:s3cret@example.com"],
        "MLFLOW_TRACKING_PASSWORD",
    ),
    Case("unknown tracker", ["pretrain", *CFG, "output.trackers=[tensorboard, foo]"], "'output.trackers' takes"),
    # tokenizer, prepare, export, evaluate: outputs under files, inputs without text
    Case(
        "tokenizer on a null column",
        ["tokenizer", "--input", "{dir}/nulls.parquet", "--vocab-size", "200", "--out", "{dir}/t"],
        "no text in column 'text'",
        null_texts,
    ),
    Case(
        "tokenizer column missing",
        ["tokenizer", "--input", "{corpus}", "--column", "body", "--vocab-size", "200", "--out", "{dir}/t"],
        "has no column 'body'",
    ),
    Case(
        "tokenizer out under a file",
        ["tokenizer", "--input", "{corpus}", "--vocab-size", "200", "--out", "{dir}/notes.txt/t"],
        "notes.txt",
        lambda d, ctx: user_files(d, "notes.txt"),
    ),
    Case(
        "prepare onto a file",
        ["prepare", "{dir}/texts", "{dir}/notes.txt"],
        "notes.txt exists and is not a directory",
        lambda d, ctx: user_files(d, "texts/a.txt", "notes.txt"),
    ),
    Case(
        "prepare onto an unfinished prepare",
        ["prepare", "{dir}/texts", "{dir}/out"],
        "_PREPARING",
        lambda d, ctx: (user_files(d, "texts/a.txt"), write(d, "out/_PREPARING", "{}")),
    ),
    Case(
        "export out under a file",
        ["export", "{ckpt}", "{dir}/notes.txt/export"],
        "notes.txt",
        lambda d, ctx: user_files(d, "notes.txt"),
    ),
    Case(
        "evaluate a tampered export",
        ["evaluate", "{dir}/export"],
        "does not match the sha256",
        tampered_export,
    ),
    # finetune: flags, model configs, QA and tagging files
    Case("finetune batch size 0", finetune_args("--batch-size", "0"), "--batch-size must be an integer >= 1, got 0"),
    Case("finetune dropout 5", finetune_args("--dropout", "5"), "--dropout must be a number in [0, 1), got 5"),
    Case("finetune seed twice", finetune_args("--seeds", "1", "1"), "--seeds lists a seed twice"),
    Case(
        "finetune missing train file",
        finetune_args("--out", "{dir}/ft", train="{dir}/nothing.parquet"),
        "task file not found: {dir}/nothing.parquet",
        an_export,
    ),
    Case(
        "finetune a corrupt model config",
        finetune_args("--out", "{dir}/ft"),
        "config.json cannot be read",
        lambda d, ctx: (float_labels(d, ctx), an_export(d, ctx), write(d, "export/discriminator/config.json", "{")),
    ),
    Case(
        "finetune qa stride too long",
        [*finetune_args("--task", "qa", "--max-seq-len", "128", "--doc-stride", "100", train="{dir}/qa.json")],
        "--doc-stride (100) must be below the context tokens of a window",
        lambda d, ctx: squad_file(d, 0),
    ),
    Case(
        "finetune qa negative answer start",
        [*finetune_args("--task", "qa", "--out", "{dir}/ft", train="{dir}/qa.json")],
        "answer_start",
        lambda d, ctx: (an_export(d, ctx), squad_file(d, -5)),
    ),
    Case(
        "finetune qa not json",
        [*finetune_args("--task", "qa", "--out", "{dir}/ft", train="{dir}/qa.json")],
        "qa.json",
        lambda d, ctx: (an_export(d, ctx), write(d, "qa.json", '{"data": [')),
    ),
    Case(
        "finetune tagging file without tags",
        [*finetune_args("--task", "tagging", "--out", "{dir}/ft", train="{dir}/tags.txt")],
        "tags.txt",
        lambda d, ctx: (an_export(d, ctx), write(d, "tags.txt", "EU B-ORG\nrejects\n\n")),
    ),
    Case(
        "finetune probe on regression",
        finetune_args("--task", "regression", "--probe"),
        "--probe needs classes",
    ),
    # tune: sweep directories that must not delete or be trusted, sweeps on S3
    Case(
        "tune resume a sweep whose scratch is a user directory",
        ["tune", "--resume", "{dir}/sweep"],
        "names the scratch directory",
        sweep_with_scratch,
    ),
    Case(
        "tune resume a corrupt sweep.json",
        ["tune", "--resume", "{dir}/sweep"],
        "its sweep.json is not readable JSON",
        lambda d, ctx: (a_sweep(d, ctx), write(d, "sweep/sweep.json", '{"sweep": {')),
    ),
    Case(
        "tune resume a trial record naming a path",
        ["tune", "--resume", "{dir}/sweep"],
        "is not a trial name electra_ray.tune gives",
        lambda d, ctx: (
            a_sweep(d, ctx),
            write(
                d,
                "sweep/trials.json",
                json.dumps(
                    {
                        "trials": [
                            {"name": "../../elsewhere", "params": {}, "status": "ended", "result": {}, "error": ""}
                        ]
                    }
                ),
            ),
        ),
    ),
    Case(
        "tune a key that is no config key",
        ["tune", "--set", "out={dir}/sweep", "space.train.nope=[1, 2]"],
        "train.nope",
    ),
    Case(
        "tune onto S3 user data",
        ["tune", "--set", "out={s3}/data", "pretrain.data.path={corpus}"],
        "{s3}/data",
        s3_objects,
    ),
    Case(
        "compare out under a file",
        ["compare", "--set", "out={dir}/notes.txt/cmp"],
        "notes.txt",
        lambda d, ctx: user_files(d, "notes.txt"),
    ),
    # tasks: never over the user's files
    Case(
        "tasks onto the user's files",
        ["tasks", "movie-reviews", "--out", "{dir}/data"],
        "{dir}/data",
        lambda d, ctx: user_files(d, "data/train.parquet", "data/dev.parquet", "data/test.parquet"),
    ),
]


def snapshot(directory: str, client, prefix: str) -> dict:
    """Every file under `directory` (name -> sha256) and every object under `prefix` (key -> etag)."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    objects = {
        item["Key"]: item["ETag"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
        for item in page.get("Contents", [])
    }
    return {"files": files, "objects": objects}


def session_processes(session: int) -> list[int]:
    """Live processes (zombies aside) of the session the command led."""
    left = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.getsid(int(name)) == session:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] != "Z":
                        left.append(int(name))
        except (OSError, IndexError):  # gone meanwhile
            pass
    return left


def processes_after(session: int, grace_s: float = 20.0) -> list[int]:
    """What is still running `grace_s` after the command ended (Ray's daemons take seconds to see
    their driver go)."""
    deadline = time.monotonic() + grace_s
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.5)
    return session_processes(session)


def fork_verb(verb: str, args: list[str], directory: str, output: str) -> int:
    """`python -m electra_ray.<verb> ARGS` as a forked child of this process, leading a session
    of its own, its stdout and stderr in `output`.{out,err}: the verb's `main(argv)`, which is all
    `python -m` runs, without paying the interpreter's start and torch's import again (seconds a
    case). Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        os.chdir(directory)
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(f"{output}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False) for fd in (1, 2))
        sys.argv = [f"python -m electra_ray.{verb}", *args]
        importlib.import_module(f"electra_ray.{verb}").main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_for(pid: int, timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.killpg(pid, 9)
    os.waitpid(pid, 0)
    return -9


def start_case(case: Case, directory: str, ctx: dict) -> dict:
    os.makedirs(directory)
    ctx = {**ctx, "prefix": os.path.basename(directory)}
    case.setup(directory, ctx)
    fill = {
        "dir": directory,
        "corpus": ctx["corpus"],
        "tok": ctx["tok"],
        "ckpt": ctx["ckpt"],
        "s3": f"s3://{BUCKET}/{ctx['prefix']}",
    }
    args = [arg.format(**fill) for arg in case.argv[1:]]
    started = {
        "directory": directory,
        "ctx": ctx,
        "output": f"{directory}.log",
        "message": case.message.format(**fill),
        "before": snapshot(directory, ctx["s3"], ctx["prefix"]),
    }
    if case.starts_ray:  # a real interpreter: Ray's start is not for a forked child
        with open(f"{started['output']}.out", "w") as out, open(f"{started['output']}.err", "w") as err:
            started["pid"] = subprocess.Popen(
                [sys.executable, "-m", f"electra_ray.{case.argv[0]}", *args],
                cwd=directory,
                stdout=out,
                stderr=err,
                start_new_session=True,
            ).pid
    else:
        started["pid"] = fork_verb(case.argv[0], args, directory, started["output"])
    return started


def finish_case(started: dict) -> dict:
    returncode = wait_for(started["pid"])
    left = processes_after(started["pid"])
    with open(f"{started['output']}.out") as out, open(f"{started['output']}.err") as err:
        stdout, stderr = out.read(), err.read()
    ctx = started["ctx"]
    return {
        "returncode": returncode,
        "stdout": stdout,
        "stderr": stderr,
        "left": left,
        "message": started["message"],
        "unchanged": snapshot(started["directory"], ctx["s3"], ctx["prefix"]) == started["before"],
    }


@pytest.fixture(scope="module")
def outcomes(rclone_s3, small_corpus, tokenizer_dir, stage0_checkpoint, tmp_path_factory) -> dict[str, dict]:
    from electra_ray import storage

    for verb in sorted({case.argv[0] for case in CASES}):  # imported once, here, for every forked case
        importlib.import_module(f"electra_ray.{verb}")
    ctx = {"corpus": small_corpus, "tok": tokenizer_dir, "ckpt": stage0_checkpoint, "s3": storage.s3_client()}
    root = tmp_path_factory.mktemp("bad-inputs")
    results, running = {}, []
    for number, case in enumerate(CASES):  # two at a time; a case that starts Ray alone (Ray's token file)
        while running and (len(running) == 2 or case.starts_ray):
            name, started = running.pop(0)
            results[name] = finish_case(started)
        running.append((case.id, start_case(case, str(root / f"case-{number}"), ctx)))
        if case.starts_ray:
            name, started = running.pop()
            results[name] = finish_case(started)
    for name, started in running:
        results[name] = finish_case(started)
    return results


def test_the_battery_covers_every_verb():
    verbs = {case.argv[0] for case in CASES}
    assert verbs >= {"pretrain", "prepare", "tokenizer", "export", "evaluate", "finetune", "tune", "compare"}
    assert len({case.id for case in CASES}) == len(CASES) >= 90


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_harms_nothing(outcomes, case):
    outcome = outcomes[case.id]
    lines = outcome["stderr"].strip().splitlines()
    assert outcome["returncode"] == 2, outcome["stderr"][-3000:]
    assert "Traceback" not in outcome["stderr"], outcome["stderr"][-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], outcome["stderr"][-3000:]
    assert outcome["message"] in errors[0]
    assert outcome["unchanged"], "files or objects were written or removed"
    assert not outcome["left"], f"processes left running: {outcome['left']}"
