"""The data pipeline: Parquet text -> tokenize -> pack -> (per worker) dynamic masking.

Driver side, `build_dataset` makes a Ray Data dataset of packed `[CLS] ... [SEP]` sequences
(documents concatenated, a [SEP] between them, as google-research/electra's
build_pretraining_dataset does). Worker side, `masked_batches` iterates the worker's shard and
masks each batch afresh, so every epoch sees new masks. The held-out split is chosen by a hash of
each document's text: stable across runs, file layouts and worker counts.

Parquet does not check that a string column holds UTF-8: text with invalid bytes is decoded with
replacement characters (U+FFFD), as `electra_ray.prepare` decodes its input, and a warning names
the file (or the corpus) once per process.
"""

from __future__ import annotations

import functools
import itertools
import json
import posixpath
import sys
import zlib
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from electra_ray import storage
from electra_ray.errors import UserError
from electra_ray.masking import MaskedBatch, mask_tokens


class DataError(UserError):
    """The corpus cannot be used: missing, empty, unreadable or without the text column."""


def open_corpus(path: str, column: str = "text") -> pads.Dataset:
    """Open and check a Parquet corpus; every problem is a DataError (StorageError for S3) naming the path."""
    filesystem, inner = storage.resolve(path)
    storage.check(path)
    with storage.s3_errors(path):
        info = filesystem.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"corpus path not found: {path}")
    if info.type == pafs.FileType.Directory:
        check_finished(path)
    try:
        dataset = pads.dataset(inner, format="parquet", filesystem=filesystem,
                               exclude_invalid_files=False)
        if not dataset.files:
            raise DataError(f"no Parquet files under corpus path {path}")
        rows = dataset.count_rows()  # reads every file's footer: finds corrupt files up front
    except (pa.ArrowInvalid, OSError) as error:
        if storage.is_remote(path) and not isinstance(error, pa.ArrowInvalid):
            raise storage.StorageError(storage.explain(error, path)) from None
        raise DataError(f"cannot read Parquet corpus {path}: {error}") from None
    names = dataset.schema.names
    if column not in names:
        raise DataError(f"corpus {path} has no column '{column}' (columns: {', '.join(names) or 'none'}); "
                        f"set data.text_column")
    if not pa.types.is_string(dataset.schema.field(column).type) and \
            not pa.types.is_large_string(dataset.schema.field(column).type):
        raise DataError(f"column '{column}' of corpus {path} holds {dataset.schema.field(column).type}, not text")
    if rows == 0:
        raise DataError(f"corpus {path} is empty (0 rows)")
    return dataset


def check_finished(path: str) -> None:
    """A corpus directory that electra_ray.prepare was writing is complete: no `_PREPARING` without
    `_SUCCESS`, no `.partial` file (a shard being written), and every shard its `_SUCCESS` lists
    present with the bytes it lists. Directories written by anything else (no markers; Spark's
    empty `_SUCCESS`) pass."""
    from electra_ray.prepare import PREPARING, SUCCESS

    filesystem, inner = storage.resolve(path)
    with storage.s3_errors(path):
        found = [f for f in filesystem.get_file_info(pafs.FileSelector(inner, recursive=True))
                 if f.type == pafs.FileType.File]
    sizes = {posixpath.relpath(f.path, inner): f.size for f in found}
    unfinished = f"corpus {path} was not finished by electra_ray.prepare: it has"
    again = "run prepare again (into an empty output path)"
    if PREPARING in sizes and SUCCESS not in sizes:
        raise DataError(f"{unfinished} {PREPARING} and no {SUCCESS}; {again}")
    partial = sorted(name for name in sizes if ".partial" in posixpath.basename(name))
    if partial:
        raise DataError(f"{unfinished} {partial[0]}; {again}")
    if SUCCESS not in sizes or not sizes[SUCCESS]:
        return
    with storage.s3_errors(path), filesystem.open_input_stream(posixpath.join(inner, SUCCESS),
                                                               compression=None) as stream:
        text = stream.read()
    try:
        summary = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return  # not prepare's (another tool's marker): nothing to verify
    if not isinstance(summary, dict) or not isinstance(summary.get("shards"), list):
        return
    for shard in summary["shards"]:
        if not isinstance(shard, dict) or not isinstance(shard.get("name"), str):
            continue
        name, size = shard["name"], shard.get("bytes")
        if name not in sizes:
            raise DataError(f"corpus {path} is incomplete: its {SUCCESS} lists {name}, which is missing; {again}")
        if isinstance(size, int) and sizes[name] != size:
            raise DataError(f"corpus {path} has changed since prepare wrote it: {name} has {sizes[name]} bytes, "
                            f"its {SUCCESS} says {size}; {again}")


_warned_invalid_utf8: set[str] = set()


def decode_texts(column: pa.Array | pa.ChunkedArray, where: str) -> list[str | None]:
    """The values of a string column as Python strings. Invalid UTF-8 (Parquet does not check it;
    to_pylist would raise UnicodeDecodeError) is decoded with replacement characters, with one
    warning per `where` (the file or corpus) and process."""
    try:
        column.validate(full=True)  # a C++ pass over the bytes: cheap beside tokenizing them
    except pa.ArrowInvalid:
        if where not in _warned_invalid_utf8:
            _warned_invalid_utf8.add(where)
            print(f"warning: {where} holds text that is not valid UTF-8; decoded with replacement characters",
                  file=sys.stderr, flush=True)
        binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
        return [None if value is None else value.decode("utf-8", errors="replace")
                for value in column.cast(binary).to_pylist()]
    return column.to_pylist()


def is_eval_document(text: str, eval_fraction: float) -> bool:
    return zlib.crc32(text.encode("utf-8")) % 10_000 < eval_fraction * 10_000


def iter_documents(path: str, column: str, split: str, eval_fraction: float) -> Iterator[str]:
    """Documents of one split ("train" or "eval"), streamed with pyarrow (no Ray)."""
    want_eval = split == "eval"
    for fragment in open_corpus(path, column).get_fragments():
        where = f"column '{column}' of {fragment.path}"
        for batch in fragment.to_batches(columns=[column], batch_size=256):
            for text in decode_texts(batch.column(0), where):
                if text and is_eval_document(text, eval_fraction) == want_eval:
                    yield text


def pack(token_lists: list[list[int]], seq_len: int, cls_id: int, sep_id: int, pad_id: int) -> np.ndarray:
    """Concatenate documents (a [SEP] after each) and cut into rows `[CLS] chunk [SEP]` of
    `seq_len` tokens; the last, partial row is padded. Returns [N, seq_len] int32."""
    body = seq_len - 2
    separator = np.array([sep_id], dtype=np.int32)
    pieces = [piece for tokens in token_lists if len(tokens)
              for piece in (np.asarray(tokens, dtype=np.int32), separator)]
    if not pieces:
        return np.zeros((0, seq_len), dtype=np.int32)
    stream = np.concatenate(pieces[:-1])  # the closing [SEP] of each row ends the last document
    n_rows = -(-stream.size // body)
    chunks = np.full((n_rows * body,), pad_id, dtype=np.int32)
    chunks[:stream.size] = stream
    chunks = chunks.reshape(n_rows, body)
    rows = np.full((n_rows, seq_len), pad_id, dtype=np.int32)
    rows[:, 0] = cls_id
    rows[:, 1:-1] = chunks
    lengths = np.minimum(stream.size - np.arange(n_rows) * body, body)
    rows[np.arange(n_rows), lengths + 1] = sep_id
    return rows


@functools.lru_cache(maxsize=4)
def tokenizer_from_json(tokenizer_json: str):
    from tokenizers import Tokenizer

    from electra_ray.tokenizer import special_ids

    tokenizer = Tokenizer.from_str(tokenizer_json)
    return tokenizer, special_ids(tokenizer)


def tokenize_and_pack(texts: list[str], tokenizer_json: str, seq_len: int) -> np.ndarray:
    """Tokenize documents (the tokenizer as its JSON text, so tasks on any node can rebuild it)
    and pack them into [N, seq_len] int32 rows."""
    tokenizer, special = tokenizer_from_json(tokenizer_json)
    encodings = tokenizer.encode_batch([t for t in texts if t], add_special_tokens=False)
    return pack([e.ids for e in encodings], seq_len, special["[CLS]"], special["[SEP]"], special["[PAD]"])


def _tokenize_block(batch: pa.Table, *, column: str, tokenizer_json: str, seq_len: int,
                    eval_fraction: float, split: str, corpus: str = "the corpus") -> dict:
    want_eval = split == "eval"
    # An Arrow batch, decoded here: Ray Data's conversion to NumPy fails on invalid UTF-8.
    texts = [t for t in decode_texts(batch[column], f"column '{column}' of {corpus}")
             if t and is_eval_document(t, eval_fraction) == want_eval]
    return {"input_ids": tokenize_and_pack(texts, tokenizer_json, seq_len)}


def build_dataset(data_cfg, tokenizer_json: str, split: str = "train", resource: str = ""):
    """Ray Data dataset of packed sequences (column `input_ids`, [seq_len] int32 per row).
    `resource`: a custom Ray resource every read/tokenize task requires (scaling.data_resource)."""
    import ray.data

    corpus = open_corpus(data_cfg.path, data_cfg.text_column)
    filesystem, _ = storage.resolve(data_cfg.path)
    # A token amount of the resource: it only picks the nodes, their CPUs still bound how many tasks run.
    remote_args = {"resources": {resource: 0.001}} if resource else {}
    dataset = ray.data.read_parquet(corpus.files, filesystem=filesystem, columns=[data_cfg.text_column],
                                    **remote_args)
    return dataset.map_batches(
        _tokenize_block, batch_size=data_cfg.docs_per_block, batch_format="pyarrow",
        fn_kwargs=dict(column=data_cfg.text_column, tokenizer_json=tokenizer_json, seq_len=data_cfg.seq_len,
                       eval_fraction=data_cfg.eval_fraction, split=split, corpus=data_cfg.path), **remote_args)


def load_sequences(data_cfg, tokenizer_json: str, split: str, max_sequences: int | None = None) -> np.ndarray:
    """Packed sequences of one split in this process (no Ray): for evaluation and tests."""
    texts = list(iter_documents(data_cfg.path, data_cfg.text_column, split, data_cfg.eval_fraction))
    if not texts:
        raise DataError(f"the {split} split of {data_cfg.path} is empty (data.eval_fraction="
                        f"{data_cfg.eval_fraction})")
    rows = tokenize_and_pack(texts, tokenizer_json, data_cfg.seq_len)
    return rows[:max_sequences] if max_sequences else rows


def mask_batch(input_ids: np.ndarray, data_cfg, special: dict[str, int], vocab_size: int,
               rng: np.random.Generator) -> MaskedBatch:
    return mask_tokens(input_ids, rng, mask_prob=data_cfg.mask_prob, mask_token_prob=data_cfg.mask_token_prob,
                       random_token_prob=data_cfg.random_token_prob, mask_id=special["[MASK]"],
                       pad_id=special["[PAD]"], special_ids=sorted(special.values()), vocab_size=vocab_size)


def masked_batches(shard, data_cfg, micro_batch: int, special: dict[str, int], vocab_size: int,
                   rng: np.random.Generator, shuffle_seed: int, skip: int = 0) -> Iterator[MaskedBatch]:
    """One epoch of a worker's shard, in micro-batches, each masked afresh. `skip`: micro-batches
    already consumed before a resume, passed over unmasked (the masking stream is restored as it
    was after them). The shard's order is the same in every run: the trainer's DataConfig asks
    Ray Data to preserve order, and the shuffle is seeded."""
    batches = shard.iter_batches(batch_size=micro_batch, batch_format="numpy", drop_last=True,
                                 prefetch_batches=4, local_shuffle_buffer_size=micro_batch * 16,
                                 local_shuffle_seed=shuffle_seed)
    for batch in itertools.islice(batches, skip, None):
        yield mask_batch(batch["input_ids"], data_cfg, special, vocab_size, rng)
