"""s3:// paths against a real S3-compatible server (rclone) on 127.0.0.1: publishing, fetching,
and the one-line errors a user sees for each way S3 can be unusable."""

import os
import subprocess
import sys
import threading

import pytest

from conftest import _free_port
from electra_ray import storage


def write_tree(root, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return str(root)


def read_tree(root) -> dict[str, str]:
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name)) as f:
                found[os.path.relpath(os.path.join(directory, name), root)] = f.read()
    return found


def test_publish_replaces_the_previous_copy_and_fetch_gets_exactly_it(rclone_s3, tmp_path):
    url = "s3://electra/published/model"
    written = []
    storage.publish_directory(write_tree(tmp_path / "v1", {"a.txt": "one", "sub/b.txt": "two"}), url,
                              progress=written.append)
    assert written == ["a.txt", "sub/b.txt"] * 2  # uploaded to the staging prefix, then copied into place
    storage.publish_directory(write_tree(tmp_path / "v2", {"a.txt": "uno", "c.txt": "tres"}), url)

    fetched = read_tree(storage.fetch_directory(url, str(tmp_path / "got")))
    assert fetched == {"a.txt": "uno", "c.txt": "tres"}  # sub/b.txt of v1 did not survive
    bucket_dir = os.path.join(rclone_s3.data_dir, "electra", "published")
    assert sorted(os.listdir(bucket_dir)) == ["model"]  # no staging prefix left behind
    assert storage.MANIFEST in os.listdir(os.path.join(bucket_dir, "model"))


def test_fetch_refuses_a_prefix_without_manifest(rclone_s3, tmp_path):
    storage.write_text("s3://electra/half/config.json", "{}")
    with pytest.raises(storage.StorageError, match=r"s3://electra/half is not a complete export \(no _MANIFEST.json\)"):
        storage.fetch_directory("s3://electra/half", str(tmp_path))


def test_a_short_outage_is_retried(rclone_s3, tmp_path):
    """The server is down when the upload starts and back a second later: backoff bridges it."""
    rclone_s3.stop()
    restart = threading.Timer(1.0, rclone_s3.start)
    restart.start()
    try:
        storage.publish_directory(write_tree(tmp_path / "v", {"weights.bin": "x" * 1000}), "s3://electra/retried")
    finally:
        restart.join()
    assert read_tree(storage.fetch_directory("s3://electra/retried", str(tmp_path / "got"))) == {"weights.bin": "x" * 1000}


def test_tokenizer_verb_writes_to_and_pipeline_reads_from_s3(rclone_s3, small_corpus, tmp_path):
    from transformers import AutoTokenizer

    from electra_ray.tokenizer import read_tokenizer_json

    result = run_verb(["electra_ray.tokenizer", "--input", small_corpus, "--vocab-size", "2000",
                       "--out", "s3://electra/tokenizers/sotu"], {})
    assert result.returncode == 0, result.stderr[-2000:]
    local = storage.fetch_directory("s3://electra/tokenizers/sotu", str(tmp_path))  # published whole
    assert read_tokenizer_json("s3://electra/tokenizers/sotu") == read_tokenizer_json(local)
    tokenizer = AutoTokenizer.from_pretrained(local)
    assert len(tokenizer) == 2000
    assert tokenizer.decode(tokenizer("The Congress of the United States")["input_ids"],
                            skip_special_tokens=True) == "the congress of the united states"


def run_verb(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                  "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.mark.parametrize("case, args, env, message", [
    ("missing bucket", ["electra_ray.pretrain", "--set", "data.path=s3://no-such-bucket/corpus"], {},
     "error: bucket 'no-such-bucket' does not exist at endpoint http://127.0.0.1:{port} (s3://no-such-bucket/corpus)"),
    ("missing output bucket", ["electra_ray.pretrain", "--set", "output.dir=s3://no-such-bucket/runs"], {},
     "error: bucket 'no-such-bucket' does not exist at endpoint http://127.0.0.1:{port} (s3://no-such-bucket/runs)"),
    ("access denied", ["electra_ray.pretrain", "--set", "data.path=s3://electra/corpus"],
     {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
     "error: access denied to s3://electra/corpus at endpoint http://127.0.0.1:{port}: check the credentials"),
    ("no credentials", ["electra_ray.export", "/nonexistent", "s3://electra/models/m"], NO_CREDENTIALS,
     "error: no AWS credentials found for s3://electra/models/m: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ("unreachable endpoint", ["electra_ray.pretrain", "--set", "data.tokenizer=s3://electra/tokenizer"],
     {"AWS_ENDPOINT_URL": "http://127.0.0.1:{closed}"},
     "error: cannot reach the S3 endpoint http://127.0.0.1:{closed} for s3://electra/tokenizer: check AWS_ENDPOINT_URL"),
    ("unsupported scheme", ["electra_ray.prepare", "gs://bucket/texts", "out"], {},
     "error: unsupported URL scheme 'gs://' in gs://bucket/texts"),
])
def test_each_s3_failure_is_one_clear_line(rclone_s3, case, args, env, message):
    closed = str(_free_port())
    env = {key: value.format(closed=closed) for key, value in env.items()}
    result = run_verb(args, env)
    assert result.returncode == 2, (case, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(port=rclone_s3.port, closed=closed)), result.stderr
    assert rclone_s3.SECRET_KEY not in result.stdout + result.stderr
