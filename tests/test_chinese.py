"""Chinese end to end on a real local Ray: real Chinese reviews -> a character tokenizer trained in the
run -> whole-word masking with jieba's words -> 2 workers -> export."""

import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_pretrain import tiny_config

from electra_ray.pretrain import pretrain

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]


def test_a_chinese_corpus_pretrains_with_whole_word_masking_and_exports(chinese_lines, tmp_path):
    corpus = tmp_path / "zh"
    corpus.mkdir()
    pq.write_table(pa.table({"text": chinese_lines[:400]}), corpus / "part-0.parquet")
    settings = {"data.whole_word_mask": "true", "data.vocab_size": 3000, "train.max_steps": 30}
    cfg = tiny_config(str(corpus), "", tmp_path / "out", **settings)
    result = pretrain(cfg)

    losses = [h["loss"] for h in result.history]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0], losses

    from electra_ray.data import build_dataset
    from electra_ray.tokenizer import read_tokenizer_json

    tokenizer_json = read_tokenizer_json(os.path.join(result.run_dir, "tokenizer"))
    row = build_dataset(cfg.data, tokenizer_json).take(1)[0]
    assert set(row) == {"input_ids", "word_starts"} and 0 < row["word_starts"].sum() < (row["input_ids"] > 4).sum()

    from transformers import AutoTokenizer, ElectraForPreTraining

    directory = os.path.join(result.export, "discriminator")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.tokenize("北京大学的学生") == ["北", "京", "大", "学", "的", "学", "生"]
    discriminator = ElectraForPreTraining.from_pretrained(directory)
    assert len(tokenizer) == discriminator.config.vocab_size
