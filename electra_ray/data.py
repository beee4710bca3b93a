"""The data pipeline: Parquet text -> tokenize -> pack -> (per worker) dynamic masking.

Driver side, `build_dataset` makes a Ray Data dataset of packed sequences: with
data.packing=concatenate `[CLS] ... [SEP]` rows of documents concatenated, a [SEP] between them;
with data.packing=segments google-research/electra's build_pretraining_dataset examples,
`[CLS] A [SEP] B [SEP]` from whole sentences of one document, with token types; its files are
read in an order drawn from train.seed (file_order). Worker side, `masked_batches` iterates the
worker's shard, its batches drawn from a shuffle buffer (data.shuffle_buffer) reseeded every epoch,
and masks each batch afresh, so every epoch sees new masks. With data.whole_word_mask each row
also carries `word_starts` (electra_ray.words: 1 where a token starts a word), found at tokenize
time and packed as the ids are, for the masking to read. Reading the corpus itself (and choosing
the held-out split) is electra_ray.documents'.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import re
import sys
import zlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray.data
from tokenizers import Tokenizer

from electra_ray import storage
from electra_ray.documents import (
    DataError,
    ReadStats,
    decode_texts,
    is_eval_document,
    iter_documents,
    open_corpus,
)
from electra_ray.masking import MaskedBatch, mask_tokens
from electra_ray.tokenizer import special_ids
from electra_ray.words import check_segmenter, word_starts


def pack(token_lists: list[list[int]], seq_len: int, cls_id: int, sep_id: int, pad_id: int) -> np.ndarray:
    """Concatenate documents (a [SEP] after each) and cut into rows `[CLS] chunk [SEP]` of
    `seq_len` tokens; the last, partial row is padded. Returns [N, seq_len] int32."""
    body = seq_len - 2
    separator = np.array([sep_id], dtype=np.int32)
    pieces = [
        piece for tokens in token_lists if len(tokens) for piece in (np.asarray(tokens, dtype=np.int32), separator)
    ]
    if not pieces:
        return np.zeros((0, seq_len), dtype=np.int32)
    stream = np.concatenate(pieces[:-1])  # the closing [SEP] of each row ends the last document
    n_rows = -(-stream.size // body)
    chunks = np.full((n_rows * body,), pad_id, dtype=np.int32)
    chunks[: stream.size] = stream
    chunks = chunks.reshape(n_rows, body)
    rows = np.full((n_rows, seq_len), pad_id, dtype=np.int32)
    rows[:, 0] = cls_id
    rows[:, 1:-1] = chunks
    lengths = np.minimum(stream.size - np.arange(n_rows) * body, body)
    rows[np.arange(n_rows), lengths + 1] = sep_id
    return rows


# packing="segments": google-research/electra's ExampleBuilder (build_pretraining_dataset.py, read at
# commit 8a46635f, lines 34-114), rule for rule, with the Python `random` draws as draws of one numpy
# Generator per document, in the same order:
# - lines 44-55: whole sentences of the current document are added until their token count reaches the
#   example's target length; the document's end (lines 47-48, 149-153) flushes what is left;
# - lines 59-64: with probability 0.1 the example has one segment, else the first segment aims at
#   (target - 3) // 2 tokens;
# - lines 68-79: a sentence goes to segment A if A is empty, or if it keeps A under that aim (strictly),
#   or with probability 0.5 when B is still empty and A is under the aim; otherwise to B (so a later,
#   short sentence can still join A after B has started: google's rule, kept);
# - lines 81-84: A is cut to seq_len - 2 tokens, B to seq_len - len(A) - 3 (the overflow is dropped);
# - lines 89-93: after each example, the next one aims at a uniform length in [5, seq_len] with
#   probability short_seq_prob (0.05 there), else at seq_len;
# - lines 97-108: [CLS] A [SEP] (token type 0) then, when B is not empty, B [SEP] (token type 1); pads 0.
# Deliberate differences: (1) each document has its own generator, seeded from its text (tokenize_and_pack)
# so a corpus always packs the same, whatever Ray's block boundaries; the first example of a document
# therefore draws its target as google draws every later one (google's very first one is seq_len).
# (2) A sentence longer than seq_len - 2 tokens (it fits no example) is cut first into pieces of
# ceil(seq_len / 2): google's lines are sentences, but a text without sentence ends (lists, code) would
# otherwise be one unit of which all but seq_len - 2 tokens are dropped. Two such pieces reach the target
# seq_len together and lose only the 2-3 tokens [CLS]/[SEP] take (pieces of seq_len - 2 would lose half).
SINGLE_SEGMENT_PROB = 0.1  # build_pretraining_dataset.py line 60
MIN_TARGET_LENGTH = 5  # line 91

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before white space.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]\u2019\u201d])\s+")


def split_sentences(text: str) -> list[str]:
    """The sentences of a document, the units packing="segments" fills examples with. google's builder
    takes the lines of its text files as units (line 141), and its corpora have about a sentence per line.
    Our documents are whole texts: the shipped corpus has no newline at all, and where documents do have
    them a line is usually a paragraph, often longer than seq_len, whose overflow the builder drops and
    which makes the A/B split coarse. So a newline always ends a unit and each line is cut further at
    sentence ends; a text already one sentence per line is unchanged (but for the odd abbreviation, which
    only makes a unit shorter). Blank lines are dropped: here a row, not a blank line, is a document."""
    return [piece for line in text.splitlines() for piece in _SENTENCE_END.split(line) if piece.strip()]


def text_seed(text: str) -> int:
    """The seed of a document's packing generator: a hash of its text, so packing is the same in every run."""
    return zlib.crc32(text.encode("utf-8"))


def _target_length(rng: np.random.Generator, seq_len: int, short_seq_prob: float) -> int:
    if rng.random() < short_seq_prob:  # lines 89-93
        return int(rng.integers(MIN_TARGET_LENGTH, seq_len + 1))
    return seq_len


def _two_segments(
    sentences: list[list[int]], target: int, seq_len: int, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Split an example's sentences into segments A and B (lines 59-84)."""
    first_target = sys.maxsize if rng.random() < SINGLE_SEGMENT_PROB else (target - 3) // 2
    first: list[int] = []
    second: list[int] = []
    for sentence in sentences:
        if (
            not first
            or len(first) + len(sentence) < first_target
            or (not second and len(first) < first_target and rng.random() < 0.5)
        ):
            first += sentence
        else:
            second += sentence
    first = first[: seq_len - 2]
    return first, second[: max(0, seq_len - len(first) - 3)]


def _document_examples(
    sentences: list[list[int]], seq_len: int, short_seq_prob: float, rng: np.random.Generator
) -> Iterator[tuple[list[int], list[int]]]:
    piece = -(-seq_len // 2)  # deliberate difference (2) above
    units = [
        list(unit)
        for sentence in sentences
        if len(sentence)
        for unit in (
            [sentence[start : start + piece] for start in range(0, len(sentence), piece)]
            if len(sentence) > seq_len - 2
            else [sentence]
        )
    ]
    target = _target_length(rng, seq_len, short_seq_prob)
    current: list[list[int]] = []
    length = 0
    for unit in units:
        current.append(unit)
        length += len(unit)
        if length >= target:
            yield _two_segments(current, target, seq_len, rng)
            current, length = [], 0
            target = _target_length(rng, seq_len, short_seq_prob)
    if current:
        yield _two_segments(current, target, seq_len, rng)


def pack_segments(
    documents: list[list[list[int]]],
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    *,
    short_seq_prob: float = 0.05,
    seeds: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """google-research/electra's examples (see the notes above): each document, a list of its
    sentences' token ids, becomes rows `[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]`) that never cross
    into another document, padded with `pad_id` to `seq_len`. `seeds`: one per document for its
    generator (tokenize_and_pack: a hash of the text); None: a hash of its token ids. Returns
    (input_ids, token_type_ids), both [N, seq_len] int32; token types are 0 on [CLS] A [SEP] and the
    padding, 1 on B [SEP]."""
    examples: list[tuple[list[int], list[int]]] = []
    for index, sentences in enumerate(documents):
        if seeds is not None:
            seed = seeds[index]
        else:
            flat = [token for sentence in sentences for token in sentence]
            seed = zlib.crc32(np.asarray(flat, dtype=np.int32).tobytes())
        examples.extend(_document_examples(sentences, seq_len, short_seq_prob, np.random.default_rng(seed)))
    input_ids = np.full((len(examples), seq_len), pad_id, dtype=np.int32)
    token_type_ids = np.zeros((len(examples), seq_len), dtype=np.int32)
    for row, (first, second) in enumerate(examples):
        end = len(first) + 1
        input_ids[row, 0] = cls_id
        input_ids[row, 1:end] = first
        input_ids[row, end] = sep_id
        if second:
            start, end = end + 1, end + 1 + len(second)
            input_ids[row, start:end] = second
            input_ids[row, end] = sep_id
            token_type_ids[row, start : end + 1] = 1
    return input_ids, token_type_ids


@functools.lru_cache(maxsize=4)
def tokenizer_from_json(tokenizer_json: str) -> tuple[Tokenizer, dict[str, int]]:
    """The tokenizer and its special tokens' ids (cached: every batch of a worker asks)."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    return tokenizer, special_ids(tokenizer)


def tokenize_and_pack(
    texts: list[str],
    tokenizer_json: str,
    seq_len: int,
    packing: str = "concatenate",
    short_seq_prob: float = 0.05,
    whole_word_mask: bool = False,
) -> dict[str, np.ndarray]:
    """Tokenize documents (the tokenizer as its JSON text, so tasks on any node can rebuild it)
    and pack them (data.packing) into the dataset's columns: `input_ids`, [N, seq_len] int32, with
    packing="segments" `token_type_ids` alike, and with `whole_word_mask` `word_starts`, [N, seq_len]
    int8 (0 on the special tokens). The word starts are packed by a second call of the same packing
    function: its layout depends only on the token counts (and, for segments, the text seeds), so
    each flag lands beside its token."""
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    texts = [t for t in texts if t]
    cls_id, sep_id, pad_id = special["[CLS]"], special["[SEP]"], special["[PAD]"]
    if packing == "concatenate":
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        columns = {"input_ids": pack([e.ids for e in encodings], seq_len, cls_id, sep_id, pad_id)}
        if whole_word_mask:
            starts = [word_starts(e, t) for e, t in zip(encodings, texts)]
            columns["word_starts"] = pack(starts, seq_len, 0, 0, 0).astype(np.int8)
        return columns
    if packing != "segments":
        raise ValueError(f"unknown packing {packing!r}")
    documents = [split_sentences(t) for t in texts]
    sentences = [s for document in documents for s in document]
    encodings = tokenizer.encode_batch(sentences, add_special_tokens=False)
    seeds = [text_seed(t) for t in texts]
    input_ids, token_type_ids = pack_segments(
        _by_document([e.ids for e in encodings], documents),
        seq_len,
        cls_id,
        sep_id,
        pad_id,
        short_seq_prob=short_seq_prob,
        seeds=seeds,
    )
    columns = {"input_ids": input_ids, "token_type_ids": token_type_ids}
    if whole_word_mask:
        starts = [word_starts(e, s).tolist() for e, s in zip(encodings, sentences)]
        flags, _ = pack_segments(
            _by_document(starts, documents), seq_len, 0, 0, 0, short_seq_prob=short_seq_prob, seeds=seeds
        )
        columns["word_starts"] = flags.astype(np.int8)
    return columns


def _by_document(per_sentence: list, documents: list[list[str]]) -> list[list]:
    """A flat per-sentence list regrouped by document."""
    items = iter(per_sentence)
    return [[next(items) for _ in sentences] for sentences in documents]


def _tokenize_block(
    batch: pa.Table,
    *,
    column: str,
    tokenizer_json: str,
    seq_len: int,
    eval_fraction: float,
    split: str,
    corpus: str = "the corpus",
    packing: str = "concatenate",
    short_seq_prob: float = 0.05,
    whole_word_mask: bool = False,
) -> dict:
    want_eval = split == "eval"
    # An Arrow batch, decoded here: Ray Data's conversion to NumPy fails on invalid UTF-8.
    texts = [
        t
        for t in decode_texts(batch[column], f"column '{column}' of {corpus}")
        if t and is_eval_document(t, eval_fraction) == want_eval
    ]
    return tokenize_and_pack(texts, tokenizer_json, seq_len, packing, short_seq_prob, whole_word_mask)


FOOTER_ACTORS_VARIABLE = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
# Below this many files a corpus is read by Ray Data's first Parquet reader (V1: footers read on the
# driver), at and above it by the second (V2: footers read by a pool of actors, which pays off
# only when there are many).
MANY_FILES = 10


@contextlib.contextmanager
def parquet_reader(num_files: int):
    """Ray Data's Parquet reader sized to the corpus, for the read_parquet call in this block (Ray
    reads both settings when it plans the read). Its default, V2, reads every footer on a pool of
    32 actors whatever the corpus: a process each, 10-15 s before the first batch of a tiny run on
    2 cores. A few files are read by V1 (~5 s sooner than V2 with one actor); many by V2 with one
    actor per 10 files (an actor's batch of footers), up to that default. A choice the user made
    in the environment stands."""
    context = ray.data.DataContext.get_current()
    chosen_reader, previous_reader = "RAY_DATA_USE_DATASOURCE_V2" in os.environ, context.use_datasource_v2
    chosen_actors = FOOTER_ACTORS_VARIABLE in os.environ
    if not chosen_reader:
        context.use_datasource_v2 = num_files >= MANY_FILES
    if not chosen_actors:
        os.environ[FOOTER_ACTORS_VARIABLE] = str(min(32, max(1, math.ceil(num_files / 10))))
    try:
        yield
    finally:
        context.use_datasource_v2 = previous_reader
        if not chosen_actors:
            del os.environ[FOOTER_ACTORS_VARIABLE]


def file_order(seed: int) -> ray.data.FileShuffleConfig:
    """The order the corpus's files are read in: a permutation drawn from `seed` (train.seed), the
    same in every execution of the dataset, so every epoch and every resumed run reads the files in
    one order, and a resume that skips the consumed micro-batches of a re-executed epoch skips the
    very batches it trained on.

    Why not a new permutation each epoch: Ray Data's per-execution reseeding
    (`reseed_after_execution=True`, FileShuffleConfig's default, as RandomSeedConfig's) draws from
    the DataContext's execution count, which counts the executions that one copy of the dataset
    has completed in one process. Ray Train's DataConfig copies the dataset for each worker group,
    so a group restarted after a failure, or a run resumed with --resume, starts counting at 0
    while its workers resume at epoch E: it would read epoch E in epoch 0's order. Epochs differ
    instead in each worker's local shuffle (epoch_shuffle_seed).

    Why files and not blocks as well: Ray's `randomize_block_order` is an all-to-all barrier that
    holds every block of the epoch in the object store before the first one leaves (the whole
    corpus on every epoch, spilled to disk beyond the store's share of memory, and training waits
    for all of it to be read), and blocks are coarse: the shipped corpus reads as 8, so the order
    of its years still showed through an 8192-sequence buffer for some seeds (|Spearman's rho| of a
    sequence's place and its year up to 0.36). Reordering files costs nothing (it orders the read
    tasks), and within a file the shuffle buffer (data.shuffle_buffer) mixes documents: its default
    holds the whole shipped corpus."""
    return ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=False)


def build_dataset(data_cfg, tokenizer_json: str, split: str = "train", resource: str = "", seed: int = 0):
    """Ray Data dataset of packed sequences (column `input_ids`, [seq_len] int32 per row, with
    data.packing=segments `token_type_ids` alike, with data.whole_word_mask `word_starts`, int8).
    `resource`: a custom Ray resource every read/tokenize task requires (scaling.data_resource).
    `seed` (train.seed): the order the files are read in (file_order)."""
    corpus = open_corpus(data_cfg.path, data_cfg.text_column)
    if data_cfg.whole_word_mask:
        check_segmenter(tokenizer_from_json(tokenizer_json)[0])  # here, not as a failure in every task
    filesystem, _ = storage.resolve(data_cfg.path)
    # A token amount of the resource: it only picks the nodes, their CPUs still bound how many tasks run.
    remote_args = {"resources": {resource: 0.001}} if resource else {}
    with parquet_reader(len(corpus.files)):
        dataset = ray.data.read_parquet(
            corpus.files,
            filesystem=filesystem,
            columns=[data_cfg.text_column],
            shuffle=file_order(seed),
            **remote_args,
        )
    return dataset.map_batches(
        _tokenize_block,
        batch_size=data_cfg.docs_per_block,
        batch_format="pyarrow",
        fn_kwargs=dict(
            column=data_cfg.text_column,
            tokenizer_json=tokenizer_json,
            seq_len=data_cfg.seq_len,
            eval_fraction=data_cfg.eval_fraction,
            split=split,
            corpus=data_cfg.path,
            packing=data_cfg.packing,
            short_seq_prob=data_cfg.short_seq_prob,
            whole_word_mask=data_cfg.whole_word_mask,
        ),
        **remote_args,
    )


def load_sequences(
    data_cfg, tokenizer_json: str, split: str, max_sequences: int | None = None, stats: ReadStats | None = None
) -> dict[str, np.ndarray]:
    """Packed sequences of one split in this process (no Ray), for evaluation and tests: the columns
    build_dataset's rows have (`input_ids`; `token_type_ids` with data.packing=segments; `word_starts`
    with data.whole_word_mask).
    `max_sequences`: the first that many of the split's rows, read from the corpus's first documents
    only (leading_documents): the held-out sets of evaluate and train.eval_every read a few hundred
    sequences' worth of a corpus of any size. `stats`: counts the rows and files read."""
    documents = iter_documents(data_cfg.path, data_cfg.text_column, split, data_cfg.eval_fraction, stats)
    if max_sequences:
        texts = leading_documents(documents, data_cfg, tokenizer_json, max_sequences)
    else:
        texts = list(documents)
    if not texts:
        raise DataError(f"the {split} split of {data_cfg.path} is empty (data.eval_fraction={data_cfg.eval_fraction})")
    columns = tokenize_and_pack(
        texts, tokenizer_json, data_cfg.seq_len, data_cfg.packing, data_cfg.short_seq_prob, data_cfg.whole_word_mask
    )
    return {name: rows[:max_sequences] for name, rows in columns.items()} if max_sequences else columns


def check_fills_a_batch(data_cfg, tokenizer_json: str, micro_batch: int, workers: int) -> None:
    """A DataError, before training, when the whole training split packs into fewer sequences than
    one micro-batch for every worker (training would find no full batch). Reads only as many
    leading documents as those sequences need, so a corpus of any size costs a fraction of a second."""
    wanted = micro_batch * workers
    found = len(load_sequences(data_cfg, tokenizer_json, "train", max_sequences=wanted)["input_ids"])
    if found < wanted:
        raise DataError(
            f"corpus {data_cfg.path} is too small: its training split packs into {found} sequences of "
            f"{data_cfg.seq_len} tokens, and {workers} worker(s) need {micro_batch} each for one batch; "
            f"lower train.batch_size or data.seq_len, or use a larger corpus"
        )


def leading_documents(documents: Iterator[str], data_cfg, tokenizer_json: str, wanted: int) -> list[str]:
    """The fewest leading `documents` whose packing starts with the `wanted` rows that packing all of
    them starts with; the rest is never read (the iterator is closed). Exact, so the held-out set does
    not depend on how much is read: concatenate packing cuts one token stream (a [SEP] between
    documents) into bodies of seq_len - 2 tokens, so `wanted` rows need `wanted` full bodies of
    stream; segments packing makes each document's rows on its own."""
    tokenizer = tokenizer_from_json(tokenizer_json)[0]
    body = data_cfg.seq_len - 2
    texts: list[str] = []
    filled = 0  # rows (segments) or stream tokens (concatenate) so far
    for text in documents:
        texts.append(text)
        if data_cfg.packing == "segments":
            rows = tokenize_and_pack([text], tokenizer_json, data_cfg.seq_len, "segments", data_cfg.short_seq_prob)
            filled += len(rows["input_ids"])
            enough = filled >= wanted
        else:
            tokens = len(tokenizer.encode(text, add_special_tokens=False).ids)
            filled += tokens + 1 if tokens else 0  # its [SEP]; pack skips a document without tokens
            enough = filled - 1 >= wanted * body  # the last document's [SEP] is not in the stream yet
        if enough:
            break
    if hasattr(documents, "close"):
        documents.close()
    return texts


def mask_batch(
    input_ids: np.ndarray,
    data_cfg,
    special: dict[str, int],
    vocab_size: int,
    rng: np.random.Generator,
    token_type_ids: np.ndarray | None = None,
    word_starts: np.ndarray | None = None,
) -> MaskedBatch:
    """Mask as data_cfg says. `word_starts` (the column of that name): whole words are masked when
    data.whole_word_mask is on; without it (held-out sets built without the column), tokens are."""
    return mask_tokens(
        input_ids,
        rng,
        mask_prob=data_cfg.mask_prob,
        mask_token_prob=data_cfg.mask_token_prob,
        random_token_prob=data_cfg.random_token_prob,
        mask_id=special["[MASK]"],
        pad_id=special["[PAD]"],
        special_ids=sorted(special.values()),
        vocab_size=vocab_size,
        token_type_ids=token_type_ids,
        word_starts=word_starts if data_cfg.whole_word_mask else None,
    )


def epoch_shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one worker's local shuffle in one epoch: a new order every epoch (the files are
    read in one order, file_order), a different one on each rank, the same in every run."""
    return seed + 1000 * epoch + rank


# Ray 2.60's local shuffle (ShufflingBatcher) cuts a batch from what is left of its current
# permutation before it adds the next blocks in: with a buffer under 2 batches that can be fewer rows
# than a batch, in mid-epoch, drop_last notwithstanding (a 16-sequence buffer with batches of 16 gave
# batches of 9 to 16). From 2 batches up, what is left is always at least one batch.
MIN_SHUFFLE_BATCHES = 2


def shuffled_batches(shard, micro_batch: int, buffer: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of a worker's shard in full micro-batches of NumPy columns, drawn at random from
    `buffer` sequences (data.shuffle_buffer; at least MIN_SHUFFLE_BATCHES micro-batches) with a
    local shuffle seeded by `seed` (epoch_shuffle_seed). The same shard order and seed give the same
    batches in every run: the trainer's DataConfig (driver.data_config) asks Ray Data to preserve
    order, and the files are read in a seeded order (file_order)."""
    return shard.iter_batches(
        batch_size=micro_batch,
        batch_format="numpy",
        drop_last=True,
        prefetch_batches=4,
        local_shuffle_buffer_size=max(buffer, MIN_SHUFFLE_BATCHES * micro_batch),
        local_shuffle_seed=seed,
    )


def masked_batches(
    shard,
    data_cfg,
    micro_batch: int,
    special: dict[str, int],
    vocab_size: int,
    rng: np.random.Generator,
    shuffle_seed: int,
    skip: int = 0,
) -> Iterator[MaskedBatch]:
    """One epoch of a worker's shard, in micro-batches (shuffled_batches, with data.shuffle_buffer),
    each masked afresh. `skip`: micro-batches already consumed before a resume, passed over unmasked
    (the masking stream is restored as it was after them): the epoch's order is the same in every
    run, so they are the very batches the interrupted run trained on."""
    batches = shuffled_batches(shard, micro_batch, data_cfg.shuffle_buffer, shuffle_seed)
    for batch in itertools.islice(batches, skip, None):
        yield mask_batch(
            batch["input_ids"],
            data_cfg,
            special,
            vocab_size,
            rng,
            batch.get("token_type_ids"),
            batch.get("word_starts"),
        )
