"""Chinese end to end on a real local Ray: real Chinese reviews laid out as a fortune file -> `prepare`
-> a character tokenizer trained in the run -> whole-word masking with jieba's words -> 2 workers ->
export -> fine-tuned on Chinese sentiment (the full-size run: experiments/chinese)."""

import math
import os

import pyarrow.parquet as pq
import pytest
from test_pretrain import tiny_config

from electra_ray.chinese_sentiment import sentiment_split
from electra_ray.finetune import FinetuneConfig, finetune
from electra_ray.prepare import prepare
from electra_ray.pretrain import pretrain

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]


def test_a_chinese_corpus_pretrains_with_whole_word_masking_exports_and_fine_tunes(
    chinese_lines, chinese_reviews, tmp_path
):
    fortunes = tmp_path / "fortunes"
    fortunes.write_text("".join(f"\x1b[32m{line}\x1b[m\n%\n" for line in chinese_lines[:400]), encoding="utf-8")
    corpus = tmp_path / "zh"
    assert prepare([str(fortunes)], str(corpus), documents="fortunes").documents == 400
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

    # the export fine-tunes on Chinese sentiment (a small sample: this checks the chain, the full
    # run measures it)
    reviews = {name: open(path, encoding="utf-8").read().splitlines() for name, path in chinese_reviews.items()}
    split = sentiment_split(reviews["pos"], reviews["neg"])
    pq.write_table(split.train.slice(0, 300), tmp_path / "train.parquet")
    pq.write_table(split.dev.slice(0, 200), tmp_path / "dev.parquet")
    cfg = FinetuneConfig(
        model=result.export,
        train=str(tmp_path / "train.parquet"),
        eval=str(tmp_path / "dev.parquet"),
        lr=3e-3,
        epochs=2,
        seeds=[0],
        max_seq_len=64,
        num_workers=0,
        threads=1,
        out=str(tmp_path / "ft"),
    )
    metrics = finetune(cfg).metrics
    assert metrics["labels"] == [0, 1] and metrics["eval_examples"] == 200
    assert 0 <= metrics["summary"]["accuracy"]["median"] <= 1
