"""train.deepspeed end to end on a real local Ray: the user's file reaches every worker's DeepSpeed
engine (read back from the config DeepSpeed saves into its own checkpoint), here under bf16 on CPU."""

import glob
import json
import os

import pytest
import torch
from test_pretrain import tiny_config

from electra_ray.checkpoint import safe_loading
from electra_ray.pretrain import pretrain

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]


def test_the_users_deepspeed_file_reaches_the_engine(small_corpus, tokenizer_dir, tmp_path):
    # Harmless but visible under ZeRO-2: the sizes of the gradient reduction and parameter gather buckets.
    user = {"zero_optimization": {"reduce_bucket_size": 200_000, "allgather_bucket_size": 300_000}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    settings = {
        "train.max_steps": 4,
        "train.log_every": 2,
        "train.checkpoint_every": 4,
        "train.zero_stage": 2,
        "train.precision": "bf16",
        "train.deepspeed": str(path),
    }
    result = pretrain(
        tiny_config(small_corpus, tokenizer_dir, tmp_path / "runs", **settings), export_and_evaluate=False
    )

    assert [h["step"] for h in result.history] == [2, 4]
    assert all(h["overflow_steps"] == 0 and "loss_scale" not in h and h["mfu"] > 0 for h in result.history)
    # DeepSpeed saves the config its engine ran with (engine.config) with every rank's states.
    files = sorted(glob.glob(os.path.join(result.checkpoint, "model", "*.pt")))
    assert len(files) == 3  # the model states and both ranks' ZeRO-2 optimizer shards
    for file in files:
        with safe_loading():
            used = torch.load(file, map_location="cpu", weights_only=True)["ds_config"]
        assert used["zero_optimization"] == {
            "stage": 2,
            "stage3_gather_16bit_weights_on_model_save": False,
            "reduce_bucket_size": 200_000,
            "allgather_bucket_size": 300_000,
        }
        assert used["bf16"] == {"enabled": True} and used["train_batch_size"] == 16
        assert used["train_micro_batch_size_per_gpu"] == 8 and used["optimizer"]["params"]["lr"] == 2e-3
