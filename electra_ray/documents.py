"""Reading a Parquet corpus (local or s3://): open and check it, decode its text, and stream the
documents of one split. The held-out split is chosen by a hash of each document's text: stable
across runs, file layouts and worker counts.

Parquet does not check that a string column holds UTF-8: text with invalid bytes is decoded with
replacement characters (U+FFFD), as `electra_ray.prepare` decodes its input, and a warning names
the file (or the corpus) once per process.
"""

from __future__ import annotations

import itertools
import json
import posixpath
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from electra_ray import storage
from electra_ray.errors import UserError

# The markers electra_ray.prepare writes into a corpus directory: while writing, and when done
# (with the shards' names and sizes).
PREPARING, SUCCESS = "_PREPARING", "_SUCCESS"


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
        dataset = pads.dataset(inner, format="parquet", filesystem=filesystem, exclude_invalid_files=False)
        if not dataset.files:
            raise DataError(f"no Parquet files under corpus path {path}")
        rows = dataset.count_rows()  # reads every file's footer: finds corrupt files up front
    except (pa.ArrowInvalid, OSError) as error:
        if storage.is_remote(path) and not isinstance(error, pa.ArrowInvalid):
            raise storage.StorageError(storage.explain(error, path)) from None
        raise DataError(f"cannot read Parquet corpus {path}: {error}") from None
    names = dataset.schema.names
    if column not in names:
        raise DataError(
            f"corpus {path} has no column '{column}' (columns: {', '.join(names) or 'none'}); set data.text_column"
        )
    if not pa.types.is_string(dataset.schema.field(column).type) and not pa.types.is_large_string(
        dataset.schema.field(column).type
    ):
        raise DataError(f"column '{column}' of corpus {path} holds {dataset.schema.field(column).type}, not text")
    if rows == 0:
        raise DataError(f"corpus {path} is empty (0 rows)")
    check_same_text_type(dataset, path, column)
    return dataset


def check_same_text_type(dataset: pads.Dataset, path: str, column: str) -> None:
    """Every file holds `column` as the same text type. The dataset's schema is its first file's;
    a file that differs would otherwise fail deep inside a Ray Data read, as a traceback."""
    expected = dataset.schema.field(column).type
    for fragment in dataset.get_fragments():
        with storage.s3_errors(path):
            schema = fragment.physical_schema
        if column not in schema.names:
            raise DataError(f"corpus file {fragment.path} has no column '{column}' (the other files of {path} do)")
        if schema.field(column).type != expected:
            raise DataError(
                f"corpus file {fragment.path} holds column '{column}' as {schema.field(column).type}, "
                f"the first file of {path} as {expected}: every file must have the same schema"
            )


def check_finished(path: str) -> None:
    """A corpus directory that electra_ray.prepare was writing is complete: no `_PREPARING` without
    `_SUCCESS`, no `.partial` file (a shard being written), and every shard its `_SUCCESS` lists
    present with the bytes it lists. Directories written by anything else (no markers; Spark's
    empty `_SUCCESS`) pass."""
    filesystem, inner = storage.resolve(path)
    with storage.s3_errors(path):
        found = [
            f
            for f in filesystem.get_file_info(pafs.FileSelector(inner, recursive=True))
            if f.type == pafs.FileType.File
        ]
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
    with (
        storage.s3_errors(path),
        filesystem.open_input_stream(posixpath.join(inner, SUCCESS), compression=None) as stream,
    ):
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
            raise DataError(
                f"corpus {path} has changed since prepare wrote it: {name} has {sizes[name]} bytes, "
                f"its {SUCCESS} says {size}; {again}"
            )


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
            print(
                f"warning: {where} holds text that is not valid UTF-8; decoded with replacement characters",
                file=sys.stderr,
                flush=True,
            )
        binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
        return [
            None if value is None else value.decode("utf-8", errors="replace")
            for value in column.cast(binary).to_pylist()
        ]
    return column.to_pylist()


def is_eval_document(text: str, eval_fraction: float) -> bool:
    return zlib.crc32(text.encode("utf-8")) % 10_000 < eval_fraction * 10_000


@dataclass
class ReadStats:
    """What iter_documents took from the corpus (both splits: a split is known only after reading a row)."""

    rows: int = 0  # rows decoded
    files: int = 0  # files (fragments) opened


def iter_documents(
    path: str, column: str, split: str, eval_fraction: float, stats: ReadStats | None = None
) -> Iterator[str]:
    """Documents of one split ("train" or "eval"), streamed with pyarrow (no Ray) in corpus order:
    files as the dataset lists them (sorted), rows in order. A file is opened only when the reader
    gets to it, so a consumer that stops early (data.load_sequences) reads only the corpus's start;
    `stats` counts what was read."""
    want_eval = split == "eval"
    for fragment in open_corpus(path, column).get_fragments():
        where = f"column '{column}' of {fragment.path}"
        if stats is not None:
            stats.files += 1
        # Two batches ahead, not pyarrow's 16: a reader that stops early leaves little read for nothing,
        # and a full scan is bound by decoding and tokenizing the text, not by reading it.
        for batch in fragment.to_batches(columns=[column], batch_size=256, batch_readahead=2):
            if stats is not None:
                stats.rows += batch.num_rows
            for text in decode_texts(batch.column(0), where):
                if text and is_eval_document(text, eval_fraction) == want_eval:
                    yield text


def training_texts(data_cfg) -> Iterator[str]:
    """The training split's documents of data_cfg (config.DataConfig); a corpus with none is an
    error here, before anything is written."""
    texts = iter_documents(data_cfg.path, data_cfg.text_column, "train", data_cfg.eval_fraction)
    first = next(texts, None)
    if first is None:
        raise DataError(
            f"corpus {data_cfg.path} has no text to train on: column '{data_cfg.text_column}' "
            f"is empty in every row of the training split"
        )
    return itertools.chain([first], texts)
