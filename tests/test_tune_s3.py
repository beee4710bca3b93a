"""A sweep on shared storage, as a multi-node cluster needs it: OUT is s3:// on a real S3 server
on 127.0.0.1 (moto: Ray's storage layer writes directory markers), configured by the AWS variables
alone. Two tiny trials, one at a time, interrupted (Ctrl-C) once the first has finished and resumed
from the s3:// prefix; then the experiment, the trials and the results are found in the bucket, and
nothing in a local output directory."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from conftest import S3Server, environment
from test_tune import SWEEP

pytestmark = pytest.mark.ray

OUT = "s3://sweeps/exp"


def tiny_sweep(corpus: str) -> dict:
    """test_tune's SWEEP made smaller: 2 trials of 10 steps, no ASHA, a 100-example fine-tune."""
    sweep = json.loads(json.dumps(SWEEP))
    sweep["pretrain"]["data"].update(path=corpus, vocab_size=1500)  # the sweep trains its tokenizer: into S3
    sweep["pretrain"]["train"].update(max_steps=10, log_every=5, checkpoint_every=10, eval_sequences=16)
    sweep["finetune"].update(max_train_examples=100, max_seq_len=32)
    sweep.update(space={"train.rtd_weight": [1, 50]}, asha=False, max_concurrent_trials=1, out=OUT)
    return sweep


def bucket_objects(client) -> dict[str, int]:
    """Key -> size of every object in the bucket."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sweeps")
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def finished_trials(client) -> set[str]:
    """The trials that ended with their fine-tune, as the driver's exp/trials.json says."""
    try:
        body = client.get_object(Bucket="sweeps", Key="exp/trials.json")["Body"].read()
    except client.exceptions.NoSuchKey:
        return set()
    records = json.loads(body)["trials"]
    return {r["name"] for r in records if r["status"] == "ended" and "finetune_score" in r["result"]}


def run_history(client, trial: str) -> list[dict]:
    """The trial's own pre-training records, as it published them (exp/trials/<trial>/metrics.jsonl)."""
    body = client.get_object(Bucket="sweeps", Key=f"exp/trials/{trial}/metrics.jsonl")["Body"].read().decode()
    return [r for r in map(json.loads, body.splitlines()) if "step" in r]


def test_sweep_on_s3_is_interrupted_resumed_and_summarized_there(tmp_path, small_corpus):
    server = S3Server("moto", str(tmp_path / "moto")).start()
    try:
        server.create_bucket("sweeps")
        with environment(server.env()):
            run_sweep_and_check(tmp_path, small_corpus)
    finally:
        server.stop()


def run_sweep_and_check(tmp_path, corpus):
    from electra_ray import storage

    client = storage.s3_client()
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(tiny_sweep(corpus)))
    cwd = tmp_path / "cwd"  # the command's working directory: where a local output (runs/...) would go
    cwd.mkdir()
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        first = subprocess.Popen(
            [sys.executable, "-m", "electra_ray.tune", "--config", str(config)], cwd=cwd, stdout=f, stderr=f
        )
    try:
        deadline = time.time() + 600
        # Ctrl-C once one trial has finished, fine-tune included (as Tune synced it to the bucket).
        while not finished_trials(client):
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no trial finished in 10 minutes"
            time.sleep(1)
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert f"continue with: python -m electra_ray.tune --resume {OUT}" in log.read_text(), log.read_text()[-3000:]
    assert not storage.exists(f"{OUT}/results.csv")
    done_before = finished_trials(client)
    assert len(done_before) == 1

    resumed = subprocess.run(
        [sys.executable, "-m", "electra_ray.tune", "--resume", OUT],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"results: {OUT}/results.csv" in resumed.stdout and "| train.rtd_weight | status |" in resumed.stdout

    objects = bucket_objects(client)
    rows = list(csv.DictReader(io.StringIO(storage.read_text(f"{OUT}/results.csv"))))
    assert sorted(float(r["train.rtd_weight"]) for r in rows) == [1.0, 50.0]
    for row in rows:
        assert row["status"] == "finished" and int(row["step"]) == 10 and row["rank"] in ("1", "2"), row
        # The trial's pre-training run (named as the row's trial): config, checkpoint (Ray Train's
        # storage), records, export, and its fine-tune's metrics, which the row shows.
        trial = row["trial"]
        prefix = f"exp/trials/{trial}/"
        assert {f"{prefix}config.json", f"{prefix}metrics.jsonl", f"{prefix}finetune.json"} <= set(objects)
        assert any(k.startswith(f"{prefix}checkpoint_") and k.endswith("run_state.json") for k in objects)
        assert storage.read_manifest(f"{OUT}/trials/{trial}/export").kind == "export"
        finetune = json.loads(storage.read_text(f"{OUT}/trials/{trial}/finetune.json"))
        assert float(row["finetune_score"]) == finetune["summary"][finetune["metric"]]["median"]
        assert run_history(client, trial)[-1]["step"] == 10
    # The trial that had finished before the interruption was not run again.
    for name in done_before:
        assert [r["step"] for r in run_history(client, name)] == [5, 10]
    # Tune's experiment (one state file per session), the shared tokenizer and task files, the results.
    assert len([k for k in objects if k.startswith("exp/tune/experiment_state-")]) == 2
    assert any(k.startswith("exp/tune/") and "events.out.tfevents" in k for k in objects)
    assert storage.read_manifest(f"{OUT}/tokenizer").kind == "tokenizer"
    assert {"exp/sweep.json", "exp/trials.json", "exp/data/train.parquet", "exp/data/dev.parquet"} <= set(objects)
    assert "exp/score.png" in objects
    best = yaml.safe_load(storage.read_text(f"{OUT}/best.yaml"))
    assert best["data"]["tokenizer"] == f"{OUT}/tokenizer" and best["train"]["rtd_weight"] in (1, 50)

    # Nothing in a local output directory, and the trials' local scratch is gone.
    assert os.listdir(cwd) == []
    scratch = json.loads(storage.read_text(f"{OUT}/sweep.json"))["settings"]["scratch"]
    assert scratch and not os.path.exists(os.path.join(tempfile.gettempdir(), "electra-ray-sweeps", scratch))
    # No credential in anything the sweep wrote: configs, Tune's state (pickles included), records,
    # checkpoints, exports.
    secret = S3Server.SECRET_KEY.encode()
    leaks = [k for k in objects if secret in client.get_object(Bucket="sweeps", Key=k)["Body"].read()]
    assert len(objects) > 30 and not leaks
