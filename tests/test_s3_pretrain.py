"""Pre-training through s3:// only, as a user on AWS would: a sharded corpus made by the prepare
verb, checkpoints (Ray Train storage) and the export in a real S3 server on 127.0.0.1, configured by
the AWS environment variables alone. Then an export interrupted by the server going away."""

import glob
import json
import os

import pyarrow.parquet as pq
import pytest
import ray
import torch
from conftest import S3Server, environment, start_test_ray
from test_pretrain import tiny_config

from electra_ray import storage
from electra_ray.checkpoint import RUN_STATE
from electra_ray.export import export
from electra_ray.prepare import prepare
from electra_ray.pretrain import pretrain

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """moto's server: Ray Train's storage layer writes directory markers, which rclone rejects."""
    server = S3Server("moto", str(tmp_path_factory.mktemp("moto"))).start()
    server.create_bucket("electra")
    with environment(server.env()):
        yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_run(moto_s3, small_corpus, tmp_path_factory):
    """Started after the AWS variables are set, so Ray's workers inherit them (as on a machine
    whose environment or instance role provides them)."""
    start_test_ray()
    texts = tmp_path_factory.mktemp("texts")
    with open(texts / "addresses.jsonl", "w") as f:
        for text in pq.read_table(small_corpus, columns=["text"]).column("text").to_pylist():
            f.write(json.dumps({"text": text}) + "\n")
    prepared = prepare([str(texts)], "s3://electra/corpus", shard_mb=0.3)
    local = tmp_path_factory.mktemp("local")
    cfg = tiny_config(
        "s3://electra/corpus",
        "",
        "s3://electra/runs",
        **{
            "data.vocab_size": 1500,
            "train.max_steps": 10,
            "train.checkpoint_every": 5,
            "train.keep_checkpoints": 1,
            "output.local_dir": str(local / "run"),
        },
    )
    result = pretrain(cfg)
    # a local copy for the export tests: the resume test below rotates this checkpoint away
    checkpoint = storage.download_directory(result.checkpoint, str(local / "checkpoint"))
    yield prepared, cfg, result, checkpoint
    ray.shutdown()


def test_pretrain_checkpoint_and_export_through_s3(s3_run, tmp_path, capfd):
    prepared, cfg, result, _ = s3_run
    assert len(prepared.shards) >= 3 and prepared.documents == 40
    assert result.checkpoint.startswith("s3://electra/runs/run/checkpoint_")
    assert result.export == "s3://electra/runs/run/export"
    assert [h["step"] for h in result.history] == [5, 10]

    # keep_checkpoints=1: Ray Train removed the step-5 checkpoint from the bucket
    filesystem, inner = storage.resolve("s3://electra/runs/run")
    from pyarrow.fs import FileSelector, FileType

    entries = filesystem.get_file_info(FileSelector(inner))
    assert len([e for e in entries if e.type == FileType.Directory and "checkpoint_" in e.path]) == 1
    assert storage.exists("s3://electra/runs/run/metrics.jsonl") and storage.exists("s3://electra/runs/run/eval.json")

    from transformers import AutoTokenizer, ElectraForPreTraining

    local_export = storage.fetch_directory(result.export, str(tmp_path / "export"))
    discriminator = ElectraForPreTraining.from_pretrained(os.path.join(local_export, "discriminator"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(local_export, "discriminator"))
    assert len(tokenizer) == discriminator.config.vocab_size == 1500  # trained on the S3 corpus
    with storage.local_directory(result.checkpoint) as checkpoint_dir:
        from electra_ray.export import load_pretraining_model

        model, _, _ = load_pretraining_model(checkpoint_dir)
    for name, tensor in discriminator.state_dict().items():
        torch.testing.assert_close(tensor, model.discriminator.state_dict()[name], rtol=0, atol=0)

    # No credential in anything written: local run directory, checkpoint, export.
    secret = S3Server.SECRET_KEY.encode()
    with storage.local_directory(result.checkpoint) as checkpoint_dir:
        written = (
            glob.glob(f"{checkpoint_dir}/**", recursive=True)
            + glob.glob(f"{result.run_dir}/**", recursive=True)
            + glob.glob(f"{local_export}/**", recursive=True)
        )
        leaks = [path for path in written if os.path.isfile(path) and secret in open(path, "rb").read()]
    assert len(written) > 20 and not leaks


def test_naming_an_s3_run_again_continues_from_its_checkpoint(s3_run):
    _, cfg, first, _ = s3_run
    cfg.train.max_steps = 15
    result = pretrain(cfg, export_and_evaluate=False)
    assert [h["step"] for h in result.history][-1] == 15
    with storage.local_directory(result.checkpoint) as checkpoint_dir:
        assert json.load(open(os.path.join(checkpoint_dir, RUN_STATE)))["step"] == 15
    assert result.checkpoint != first.checkpoint


@pytest.mark.parametrize("phase", ["upload", "manifest"])
def test_export_interrupted_by_the_server_going_away(s3_run, phase, tmp_path):
    """rclone keeps its data on disk, so the server can be stopped mid-export and started again:
    during the upload of the files, or after it, when only the manifest is left to write. Either
    way the previous export stays complete and readable."""
    _, _, result, checkpoint = s3_run
    data = tmp_path / "rclone"
    data.mkdir()
    server = S3Server("rclone", str(data)).start()
    server.create_bucket("models")
    url = "s3://models/electra-tiny"
    try:
        with environment({**server.env(), "AWS_MAX_ATTEMPTS": "2"}):
            export(checkpoint, url)  # a complete older export is there when the next one fails
            before = storage.read_manifest(url)
            files = sum(len(names) for _, _, names in os.walk(os.path.join(result.run_dir, "export"))) - 1
            stop_at = 1 if phase == "upload" else files  # files: every file of the export uploaded
            written = []

            def stop_server(name):
                written.append(name)
                if len(written) == stop_at:
                    server.stop()

            with pytest.raises(storage.StorageError, match=f"cannot reach the S3 endpoint {server.endpoint}"):
                export(checkpoint, url, progress=stop_server, overwrite=True)
            server.start()
            assert storage.read_manifest(url) == before  # the previous export is untouched and still complete
            assert os.path.isdir(storage.fetch_directory(url, str(tmp_path / "old")))

            export(checkpoint, url, overwrite=True)  # the retry
            fetched = storage.fetch_directory(url, str(tmp_path / "fetched"))
            after = storage.read_manifest(url)
    finally:
        server.stop()
    from transformers import ElectraForMaskedLM

    assert ElectraForMaskedLM.from_pretrained(os.path.join(fetched, "generator")).config.hidden_size == 16
    versions = os.listdir(os.path.join(data, "models", "electra-tiny", storage.VERSIONS))
    assert after.version in versions and before.version not in versions  # the old version's files are gone
