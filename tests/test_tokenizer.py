import json
import os
import subprocess
import sys

from tokenizers import Tokenizer

from electra_ray.tokenizer import SPECIAL_TOKENS, read_tokenizer_json, save_tokenizer, train_tokenizer

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


def test_cased_training_keeps_case_and_accents(tmp_path):
    from transformers import AutoTokenizer

    texts = ["The Café in Paris serves Crème brûlée", "Obama met Merkel in Berlin"] * 50
    cased = train_tokenizer(texts, 300, cased=True)
    assert cased.encode("Café Berlin", add_special_tokens=False).tokens == ["Café", "Berlin"]
    assert train_tokenizer(texts, 300).encode("Café Berlin", add_special_tokens=False).tokens == ["cafe", "berlin"]
    save_tokenizer(cased, str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.tokenize("Café Berlin") == ["Café", "Berlin"]
    assert read_tokenizer_json(str(tmp_path))  # and it passes the checks a run makes


def test_cli_cased_flag(small_corpus, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "electra_ray.tokenizer", "--input", small_corpus, "--vocab-size", "500", "--cased"]
        + ["--out", str(tmp_path / "tok")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    tokenizer = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    assert "Congress" in tokenizer.encode("Congress", add_special_tokens=False).tokens


def test_chinese_corpus_trains_a_character_vocabulary(chinese_lines):
    tokenizer = train_tokenizer(chinese_lines[:2000], 8000)
    cjk = [t for t in tokenizer.get_vocab() if any("\u4e00" <= c <= "\u9fff" for c in t)]
    assert len(cjk) > 1500 and all(len(t.removeprefix("##")) == 1 for t in cjk)  # characters, never words
    tokens = tokenizer.encode(chinese_lines[2500], add_special_tokens=False).tokens
    assert sum(len(t) == 1 and "\u4e00" <= t <= "\u9fff" for t in tokens) > 0.7 * len(tokens)


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def roberta_style_directory(directory, specials=ROBERTA_SPECIALS, **settings) -> str:
    """A byte-level BPE tokenizer saved the way RoBERTa's is: <s> </s> <pad> <mask> <unk>, declared in
    its tokenizer_config.json."""
    from tokenizers import models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in specials else None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    texts = ["The state of the union is strong, said the president.", "Congress passed the bill."] * 50
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    defaults = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>")
    defaults.update(unk_token="<unk>", mask_token="<mask>")
    defaults.update(settings)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **defaults).save_pretrained(str(directory))
    return str(directory)


def test_an_own_tokenizer_with_roberta_specials_is_mapped_end_to_end(tmp_path):
    import numpy as np
    from transformers import AutoTokenizer

    from electra_ray.config import load_config
    from electra_ray.data import mask_batch, tokenize_and_pack, tokenizer_from_json

    directory = roberta_style_directory(tmp_path / "roberta")
    tokenizer_json = read_tokenizer_json(directory)
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    names = {"[CLS]": "<s>", "[PAD]": "<pad>", "[SEP]": "</s>", "[UNK]": "<unk>", "[MASK]": "<mask>"}
    assert special == {role: tokenizer.token_to_id(token) for role, token in names.items()}
    # The workers' path: packing and masking with the mapped ids (the crash this replaces).
    data_cfg = load_config(None, ["data.whole_word_mask=true"]).data
    texts = ["The state of the union is strong, said the president."] * 20
    columns = tokenize_and_pack(texts, tokenizer_json, 32, whole_word_mask=True)
    assert (columns["input_ids"][:, 0] == special["[CLS]"]).all()
    batch = mask_batch(
        columns["input_ids"],
        data_cfg,
        special,
        tokenizer.get_vocab_size(),
        np.random.default_rng(0),
        None,
        columns["word_starts"],
    )
    assert (batch.input_ids == special["[MASK]"]).any() and batch.weights.sum() > 0
    # A word and its byte-level pieces start once.
    encoding = tokenizer.encode("antidisestablishmentarianism", add_special_tokens=False)
    assert len(encoding.ids) > 1
    assert tokenize_and_pack(["antidisestablishmentarianism"], tokenizer_json, 64, whole_word_mask=True)["word_starts"][
        0, 1 : len(encoding.ids) + 1
    ].tolist() == [1] + [0] * (len(encoding.ids) - 1)
    # The export's path: saved with its own spellings, no token added.
    save_tokenizer(Tokenizer.from_str(tokenizer_json), str(tmp_path / "export"))
    exported = AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    assert (exported.cls_token, exported.sep_token, exported.pad_token, exported.mask_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<mask>",
    )
    assert len(exported) == tokenizer.get_vocab_size()


def run_pretrain_cli(*overrides):
    return subprocess.run(
        [sys.executable, "-m", "electra_ray.pretrain", "--set", *overrides],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_a_tokenizer_without_a_mask_token_is_a_one_line_error_before_ray_starts(small_corpus, tmp_path):
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    directory = roberta_style_directory(tmp_path / "nomask", specials, mask_token=None)
    run = run_pretrain_cli(f"data.path={small_corpus}", f"data.tokenizer={directory}", f"output.dir={tmp_path / 'out'}")
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip() == (
        f"error: tokenizer {directory}/tokenizer.json lacks the special tokens [MASK] or <mask>: ELECTRA needs "
        "[PAD] [UNK] [CLS] [SEP] [MASK] (or their RoBERTa-style equivalents) in its vocabulary"
    )
    assert not os.path.exists(tmp_path / "out")


def test_special_token_settings_that_cannot_be_mapped_are_one_line_errors(tmp_path):
    import pytest

    from electra_ray.errors import UserError

    directory = roberta_style_directory(tmp_path / "odd", [*ROBERTA_SPECIALS, "<|mask|>"], mask_token="<|mask|>")
    with pytest.raises(UserError, match=r"its settings name mask_token '<\|mask\|>'; electra-ray maps \[MASK\] only"):
        read_tokenizer_json(directory)
    directory = roberta_style_directory(tmp_path / "absent")
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path) as f:
        settings = json.load(f)
    with open(config_path, "w") as f:
        json.dump({**settings, "mask_token": "<MASK>"}, f)
    with pytest.raises(UserError, match="its settings name mask_token '<MASK>', which its vocabulary lacks"):
        read_tokenizer_json(directory)
