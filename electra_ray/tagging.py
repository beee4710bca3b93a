"""Token tagging (named entities, part of speech): CoNLL-style files, label alignment, entity metrics.

A tagging file holds one token per line, its tag in another column, and a blank line between
sentences (CoNLL 2003, MSRA, the files `python -m electra_ray.tasks msra|brown` writes):

    EU B-ORG
    rejects O
    German B-MISC

Columns are split on whitespace (or `separator`); `token_column` and `tag_column` pick the two
(Python indices: -1 is the last column). `-DOCSTART-` lines (CoNLL 2003) are skipped. The tag
scheme says which tags are valid and how tags make entities:

| scheme | tags | entities |
|---|---|---|
| bio (IOB2) | O, B-X, I-X | B starts one, I continues it |
| iob (IOB1) | O, I-X, B-X | I starts one unless it continues the same type; B separates two adjacent |
| bioes (IOBES) | O, B-X, I-X, E-X, S-X | E ends one, S is one of a single token |
| bmes | O, B-X, M-X, E-X, S-X | BIOES with M for I (Chinese NER: MSRA) |
| none | any | none: tags are classes of their own (part of speech); scored by token accuracy |

Entities and their precision / recall / F1 follow seqeval's default (conlleval-compatible) mode,
micro-averaged over entities: an entity counts when its type, first and last word all match.
Ill-formed sequences are read leniently as conlleval does (an I-X after O starts an entity).

Each word's tag is learned and predicted on its first sub-token; the other sub-tokens, [CLS] and
[SEP] carry -100 (ignored by the loss). A sentence with more sub-tokens than fit in max_seq_len is
split, between words, into consecutive pieces that each fit: every word is trained on and predicted,
and an entity that crosses a cut is predicted in two parts. A single word longer than a whole piece
keeps its first max_seq_len - 2 sub-tokens (its label is on the first, so it is still predicted).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from pyarrow.fs import FileType

from electra_ray import storage
from electra_ray.errors import UserError

SCHEMES = ("bio", "iob", "bioes", "bmes", "none")
# The tag prefixes each scheme allows (besides the bare "O").
PREFIXES = {"bio": "BI", "iob": "IB", "bioes": "BIES", "bmes": "BMES"}
OUTSIDE = "O"
IGNORE = -100  # the label of sub-tokens that are not a word's first: torch's cross-entropy skips it
DOCSTART = "-DOCSTART-"


class TaggingDataError(UserError):
    """A tagging file cannot be used: a malformed line, a tag its scheme does not allow, ..."""


@dataclass(frozen=True)
class TaggingFormat:
    """How a tagging file's lines are laid out."""

    scheme: str = "bio"  # one of SCHEMES
    token_column: int = 0
    tag_column: int = -1
    separator: str = ""  # "": any run of whitespace; else exactly this string (e.g. "\t")


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    line: int  # the file's line (1-based) of its first word, for messages


# -- reading and checking ------------------------------------------------------------------------


def read_tagging_file(path: str, fmt: TaggingFormat) -> list[Sentence]:
    """The sentences of a CoNLL-style file (local or s3://), every tag checked against fmt.scheme.
    A problem is a TaggingDataError naming the file and line."""
    check_scheme(fmt.scheme)
    filesystem, inner = storage.resolve(path)
    with storage.s3_errors(path):
        kind = filesystem.get_file_info(inner).type
    if kind == FileType.Directory:
        raise TaggingDataError(f"tagging file {path} is a directory: pass a file")
    if kind != FileType.File:
        raise TaggingDataError(f"tagging file not found: {path}")
    with storage.s3_errors(path), filesystem.open_input_stream(inner, compression=None) as stream:
        data = stream.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TaggingDataError(f"tagging file {path}, line {line}: not valid UTF-8 text") from None
    sentences = parse_tagging_text(text, path, fmt)
    if not sentences:
        raise TaggingDataError(f"tagging file {path} has no sentences")
    return sentences


def parse_tagging_text(text: str, path: str, fmt: TaggingFormat) -> list[Sentence]:
    """The sentences of a tagging file's text (`path` only names it in messages)."""
    sentences, words, tags, first = [], [], [], 0
    # split("\n"), not splitlines(): that would also cut at \x1c, \u2028, ... inside a token.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            if words:
                sentences.append(Sentence(tuple(words), tags=tuple(tags), line=first))
            words, tags = [], []
            continue
        word, tag = split_line(line, path, number, fmt)
        if word == DOCSTART:
            continue
        check_tag(tag, fmt.scheme, path, number)
        first = first if words else number
        words.append(word)
        tags.append(tag)
    if words:
        sentences.append(Sentence(tuple(words), tuple(tags), first))
    return sentences


def split_line(line: str, path: str, number: int, fmt: TaggingFormat) -> tuple[str, str]:
    columns = line.split(fmt.separator) if fmt.separator else line.split()
    needed = max(index if index >= 0 else -index - 1 for index in (fmt.token_column, fmt.tag_column)) + 1
    if len(columns) < max(needed, 2):
        raise TaggingDataError(
            f"tagging file {path}, line {number}: expected a token and a tag "
            f"({max(needed, 2)} columns), got {len(columns)}: {line.strip()[:80]!r}"
        )
    word, tag = columns[fmt.token_column].strip(), columns[fmt.tag_column].strip()
    if not word or not tag:
        raise TaggingDataError(f"tagging file {path}, line {number}: an empty {'token' if not word else 'tag'}")
    return word, tag


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise TaggingDataError(f"unknown tag scheme {scheme!r} (known: {', '.join(SCHEMES)})")


def check_tag(tag: str, scheme: str, path: str, number: int) -> None:
    """A tag the scheme allows: O, or PREFIX-TYPE with one of its prefixes (any tag for none)."""
    if scheme == "none" or tag == OUTSIDE:
        return
    prefix, dash, kind = tag.partition("-")
    if len(prefix) != 1 or prefix not in PREFIXES[scheme] or not dash or not kind:
        allowed = ", ".join(f"{p}-TYPE" for p in PREFIXES[scheme])
        raise TaggingDataError(
            f"tagging file {path}, line {number}: tag {tag!r} is not valid in the {scheme} scheme (O, {allowed})"
        )


def check_sentence(words, tags, path: str, number: int) -> None:
    """A sentence given as two lists (not read from lines) has a tag for every token."""
    if len(words) != len(tags):
        raise TaggingDataError(
            f"{path}, sentence {number}: {len(words)} tokens but {len(tags)} tags (one tag per token)"
        )


def tag_labels(sentences: list[Sentence]) -> list[str]:
    """The distinct tags, sorted: label i is the i-th."""
    return sorted({tag for sentence in sentences for tag in sentence.tags})


def fallback_tag(sentences: list[Sentence], scheme: str) -> str:
    """The prediction for a word the model gives none (one the tokenizer turns into no token):
    O in an entity scheme, else the most frequent training tag."""
    if scheme != "none":
        return OUTSIDE
    return Counter(tag for sentence in sentences for tag in sentence.tags).most_common(1)[0][0]


# -- entities and metrics ------------------------------------------------------------------------


def entities(tags: list[str], scheme: str) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity of one sentence's tags, as seqeval's default
    mode reads them (BMES: M read as I)."""
    check_scheme(scheme)
    if scheme == "none":
        return []
    found, start, prev_tag, prev_type = [], 0, OUTSIDE, ""
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, kind = tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"
        prefix = "I" if scheme == "bmes" and prefix == "M" else prefix
        if ends_entity(prev_tag, prefix, prev_type, kind):
            found.append((prev_type, start, i - 1))
        if starts_entity(prev_tag, prefix, prev_type, kind):
            start = i
        prev_tag, prev_type = prefix, kind
    return found


def ends_entity(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """Whether an entity ended before this word (conlleval's endOfChunk)."""
    return (
        prev_tag in "ES"
        or (prev_tag in "BI" and tag in "BSO")
        or (prev_tag not in (OUTSIDE, ".") and prev_type != kind)
    )


def starts_entity(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    """Whether an entity starts at this word (conlleval's startOfChunk)."""
    return tag in "BS" or (prev_tag in "ESO" and tag in "EI") or (tag not in (OUTSIDE, ".") and prev_type != kind)


def entity_scores(gold: list[list[str]], predicted: list[list[str]], scheme: str) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (0 where undefined, as seqeval)."""
    true, found = set(), set()
    for index, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted)):
        true |= {(index, *entity) for entity in entities(gold_tags, scheme)}
        found |= {(index, *entity) for entity in entities(predicted_tags, scheme)}
    correct = len(true & found)
    precision = correct / len(found) if found else 0.0
    recall = correct / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def token_accuracy(gold: list[list[str]], predicted: list[list[str]]) -> float:
    pairs = [(g, p) for gold_tags, predicted_tags in zip(gold, predicted) for g, p in zip(gold_tags, predicted_tags)]
    return sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0


def tagging_metrics(gold: list[list[str]], predicted: list[list[str]], scheme: str) -> dict[str, float]:
    """accuracy (of words' tags) for every scheme; entity precision, recall and f1 too, except for none."""
    for index, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted)):
        check_sentence(gold_tags, predicted_tags, "predictions", index + 1)
    metrics = {"accuracy": token_accuracy(gold, predicted)}
    if scheme != "none":
        metrics.update(entity_scores(gold, predicted, scheme))
    return metrics


def metric_names(scheme: str) -> tuple[str, ...]:
    return ("accuracy",) if scheme == "none" else ("f1", "precision", "recall", "accuracy")


def default_metric(scheme: str) -> str:
    return "accuracy" if scheme == "none" else "f1"


# -- alignment: words to sub-tokens and back -----------------------------------------------------


@dataclass(frozen=True)
class TaggedPieces:
    """Tokenized pieces of sentences (a sentence is one piece unless it is too long), padded."""

    input_ids: np.ndarray  # [P, L] int64
    token_type_ids: np.ndarray  # [P, L] int64, all 0
    lengths: np.ndarray  # [P] tokens of each piece, [CLS] and [SEP] included
    labels: np.ndarray  # [P, L] int64: a word's label on its first sub-token, IGNORE elsewhere
    words: np.ndarray  # [P, L] int64: at a first sub-token, its word's index in the sentence; -1 elsewhere
    sentence: np.ndarray  # [P] the sentence of each piece


def piece_bounds(word_tokens: list[int], budget: int) -> list[tuple[int, int]]:
    """[start, end) word ranges that cut a sentence, between words, into pieces of at most
    `budget` sub-tokens (a word longer than that alone is one piece)."""
    bounds, start, used = [], 0, 0
    for index, count in enumerate(word_tokens):
        if used + count > budget and index > start:
            bounds.append((start, index))
            start, used = index, 0
        used += count
    bounds.append((start, len(word_tokens)))
    return bounds


def sub_token_counts(tokenizer, sentences: list[Sentence]) -> list[list[int]]:
    """How many sub-tokens the tokenizer makes of each word of each sentence."""
    encoded = tokenizer([list(s.words) for s in sentences], is_split_into_words=True, add_special_tokens=False)
    counts = []
    for index, sentence in enumerate(sentences):
        per_word = [0] * len(sentence.words)
        for word in encoded.word_ids(index):
            if word is not None:
                per_word[word] += 1
        counts.append(per_word)
    return counts


def align(tokenizer, sentences: list[Sentence], label_ids: dict[str, int], max_len: int) -> TaggedPieces:
    """The sentences as model inputs: cut into pieces that fit max_len, each word's label on its
    first sub-token. A tag outside label_ids (an eval tag the training data never had) gets
    IGNORE: it is still scored, as a word the model cannot get right."""
    budget = max_len - tokenizer.num_special_tokens_to_add()
    if budget < 1:
        raise TaggingDataError(f"max_seq_len {max_len} leaves no room for a token besides the special tokens")
    pieces = [
        (index, start, end)
        for index, counts in enumerate(sub_token_counts(tokenizer, sentences))
        for start, end in piece_bounds(counts, budget)
    ]
    encoded = tokenizer(
        [list(sentences[i].words[start:end]) for i, start, end in pieces],
        is_split_into_words=True,
        truncation=True,
        max_length=max_len,
        padding=True,
        return_tensors="np",
    )
    labels = np.full(encoded["input_ids"].shape, IGNORE, dtype=np.int64)
    words = np.full(encoded["input_ids"].shape, -1, dtype=np.int64)
    for row, (index, start, _) in enumerate(pieces):
        previous = None
        for position, word in enumerate(encoded.word_ids(row)):
            if word is not None and word != previous:
                words[row, position] = start + word
                labels[row, position] = label_ids.get(sentences[index].tags[start + word], IGNORE)
            previous = word
    return TaggedPieces(
        input_ids=encoded["input_ids"].astype(np.int64),
        token_type_ids=np.zeros_like(encoded["input_ids"], dtype=np.int64),
        lengths=encoded["attention_mask"].sum(axis=1).astype(np.int64),
        labels=labels,
        words=words,
        sentence=np.array([index for index, _, _ in pieces], dtype=np.int64),
    )


def word_predictions(
    pieces: TaggedPieces, token_predictions: np.ndarray, sentences: list[Sentence], labels: list[str], fallback: str
) -> list[list[str]]:
    """Each sentence's predicted tags, one per word: the prediction at the word's first sub-token
    (`token_predictions`: [P, L] label indices); `fallback` for a word that has no sub-token."""
    predicted = [[fallback] * len(sentence.words) for sentence in sentences]
    rows, positions = np.nonzero(pieces.words >= 0)
    for row, position in zip(rows.tolist(), positions.tolist()):
        predicted[pieces.sentence[row]][pieces.words[row, position]] = labels[token_predictions[row, position]]
    return predicted


# -- writing -------------------------------------------------------------------------------------


def format_tagging_text(sentences) -> str:
    """Sentences ((words, tags) pairs or Sentence) as a tagging file: `word tag` lines, a blank line
    after each sentence. A word with whitespace in it could not be read back, so it is refused."""
    lines = []
    for number, sentence in enumerate(sentences, start=1):
        words, tags = (sentence.words, sentence.tags) if isinstance(sentence, Sentence) else sentence
        check_sentence(words, tags, "sentences to write", number)
        for word, tag in zip(words, tags):
            if not word or not tag or len(word.split()) != 1 or len(tag.split()) != 1:
                raise TaggingDataError(f"cannot write token {word!r} / tag {tag!r}: empty or holds whitespace")
            lines.append(f"{word} {tag}\n")
        lines.append("\n")
    return "".join(lines)
