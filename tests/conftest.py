import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from electra_ray.config import SHIPPED_CORPUS

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for one test module (modules that start Ray use it: pytestmark)."""
    import ray

    ray.init(num_cpus=4, logging_level="warning",
             runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "DS_ACCELERATOR": "cpu"}})
    yield
    ray.shutdown()


def write_parquet(path, **columns) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)
