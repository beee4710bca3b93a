"""The user's path: `python -m electra_ray.pretrain` in a fresh process, with its own local Ray."""

import os
import re
import subprocess
import sys

import pytest
from conftest import write_parquet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_pretrain(*overrides, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "electra_ray.pretrain", "--config", "configs/tiny.yaml", "--set", *overrides],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.mark.ray
def test_pretrain_cli_prints_checkpoint_and_export(small_corpus, tmp_path):
    run = run_pretrain(
        f"data.path={small_corpus}",
        "data.vocab_size=1000",
        "data.seq_len=64",
        "model.num_layers=2",
        "train.max_steps=6",
        "train.log_every=3",
        "train.batch_size=8",
        f"output.dir={tmp_path}",
        "output.name=cli",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-2] == f"checkpoint: {lines[-2].split(': ', 1)[1]}" and lines[-2].startswith("checkpoint: ")
    checkpoint, export = lines[-2].split(": ", 1)[1], lines[-1].split(": ", 1)[1]
    assert lines[-1].startswith("export: ") and export == str(tmp_path / "cli" / "export")
    assert os.path.isdir(checkpoint) and os.path.exists(os.path.join(export, "discriminator", "config.json"))
    assert "step 6/6 | loss" in run.stdout + run.stderr and "tok/s" in run.stdout + run.stderr
    assert os.path.exists(tmp_path / "cli" / "eval.json")
    # Ray Train's PlacementGroupCleaner is silent in a healthy run. It complained once a second
    # while the local Ray ran without the dashboard that serves the state API it polls.
    assert "PlacementGroupCleaner" not in run.stdout + run.stderr
    assert re.search(r"^Ray dashboard: http://127\.0\.0\.1:\d+$", run.stdout, re.MULTILINE)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda tmp: str(tmp / "missing"), "error: corpus path not found: {tmp}/missing"),
        (
            lambda tmp: write_parquet(tmp / "c.parquet", body=["x"]),
            "error: corpus {tmp}/c.parquet has no column 'text' (columns: body); set data.text_column",
        ),
        (
            lambda tmp: (
                write_parquet(
                    tmp / "c.parquet",
                    text=[None, ""],
                )
                and str(tmp)
            ),
            None,
        ),
    ],
)
def test_bad_corpus_is_a_one_line_error(tmp_path, setup, message):
    path = setup(tmp_path)
    run = run_pretrain(f"data.path={path}", f"output.dir={tmp_path}/out", timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    if message:
        assert run.stderr.strip().splitlines()[-1] == message.format(tmp=tmp_path)
    else:  # rows, but no text in any of them
        assert "no text" in run.stderr.strip().splitlines()[-1]


def test_empty_corpus_is_a_one_line_error(tmp_path):
    import pyarrow as pa

    path = write_parquet(tmp_path / "c.parquet", text=pa.array([], pa.string()))
    run = run_pretrain(f"data.path={path}", timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == f"error: corpus {path} is empty (0 rows)"
