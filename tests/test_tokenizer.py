import os
import subprocess
import sys

from electra_ray.tokenizer import SPECIAL_TOKENS, save_tokenizer, train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_saved_tokenizer_loads_with_plain_transformers(tokenizer_dir):
    from transformers import AutoTokenizer, ElectraTokenizerFast

    auto = AutoTokenizer.from_pretrained(tokenizer_dir)
    electra = ElectraTokenizerFast.from_pretrained(tokenizer_dir)
    assert len(auto) == len(electra) == 2000
    assert [auto.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (auto.pad_token, auto.mask_token, auto.cls_token, auto.sep_token) == ("[PAD]", "[MASK]", "[CLS]", "[SEP]")
    ids = auto("The Congress of the United States")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and 1 not in ids  # [CLS] ... [SEP], no unknown word
    assert auto.decode(ids, skip_special_tokens=True) == "the congress of the united states"


def test_cjk_characters_are_one_token_each(tmp_path):
    texts = ["中文字符测试 hello world", "中国人民 hello there"] * 50
    tokenizer = train_tokenizer(texts, 200)
    tokens = tokenizer.encode("中文测试", add_special_tokens=False).tokens
    assert tokens == ["中", "文", "测", "试"]
    save_tokenizer(tokenizer, str(tmp_path))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path)).tokenize("中国") == ["中", "国"]


def test_cli_trains_and_saves(small_corpus, tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "electra_ray.tokenizer",
            "--input",
            small_corpus,
            "--vocab-size",
            "500",
            "--out",
            str(tmp_path / "tok"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "500 tokens" in run.stdout
    assert os.path.exists(tmp_path / "tok" / "tokenizer.json")


def test_cli_bad_corpus_is_one_line_error(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "electra_ray.tokenizer",
            "--input",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "tok"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"error: corpus path not found: {tmp_path / 'none'}"
