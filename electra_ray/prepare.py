"""Text or JSONL files -> Parquet shards: the corpus format of `electra_ray.pretrain`.

    python -m electra_ray.prepare INPUT [INPUT ...] OUT [--field text] [--shard-mb 128]
        [--documents blank-line|line|file|chinese-poetry|fortunes]

INPUT: files, directories or s3:// prefixes (every file under them, in name order); `.jsonl` /
`.json` / `.ndjson` files hold one JSON object per line with the document in --field, any other
file is text. `.gz`, `.bz2` and `.zst` files are decompressed. Text follows BERT's and ELECTRA's
convention: one sentence per line, documents separated by blank lines (`--documents line`: a
document per line; `file`: a document per file). Two published layouts (electra_ray.layouts):
`--documents chinese-poetry` reads every input as the chinese-poetry package's JSON (a document per
poem, ci or piece of prose: title, author, lines); `--documents fortunes` reads `fortune` files
(entries between `%` lines, ANSI colour codes stripped; under a directory, the strfile `.dat`
indexes and links to a file already read are passed over).

OUT: a local directory or s3:// prefix that gets part-00000.parquet, part-00001.parquet, ...
(zstd) with columns `text` (one document per row) and `source` (the file it came from). Shards
hold about --shard-mb MB of text: large enough for efficient reads, many enough that Ray Data
reads them in parallel.

OUT is complete when it holds `_SUCCESS` (JSON: each shard's name, rows and bytes, the documents
and text bytes), written last. While prepare runs, OUT holds `_PREPARING`, and each shard is
written under a temporary name (`part-00000.parquet.partial-<hex>`) and renamed into place once
whole, so an interrupted run never leaves a shard that looks finished; `electra_ray.data` refuses a
corpus with `_PREPARING` but no `_SUCCESS`, or with a `.partial` file. A failed run removes what it
wrote; an OUT that holds Parquet files or either marker is refused.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from electra_ray import storage
from electra_ray.cli import run_cli, verb_parser
from electra_ray.documents import PREPARING, SUCCESS
from electra_ray.errors import UserError
from electra_ray.layouts import TEXT_KEYS, fortune_documents, poetry_documents

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
# The markers of an output directory (electra_ray.data reads them too): _PREPARING while prepare
# runs, _SUCCESS (written last) once every shard is in place. Their leading "_" keeps them out of
# Parquet readers' file discovery.
PARTIAL = ".partial-"  # a shard being written: part-00000.parquet.partial-<hex>


@dataclass
class PrepareResult:
    shards: list[str]
    documents: int
    text_bytes: int


def list_inputs(inputs: list[str]) -> list[str]:
    """Every file named or under a named directory / prefix, as paths or URLs, in name order."""
    files = []
    for path in inputs:
        filesystem, inner = storage.resolve(path)
        storage.check(path)
        with storage.s3_errors(path):
            info = filesystem.get_file_info(inner)
            if info.type == pafs.FileType.NotFound:
                raise UserError(f"input not found: {path}")
            if info.type == pafs.FileType.File:
                files.append(path)
                continue
            found = filesystem.get_file_info(pafs.FileSelector(inner, recursive=True))
        names = sorted(
            f.path
            for f in found
            if f.type == pafs.FileType.File and not posixpath.basename(f.path).startswith((".", "_"))
        )
        if not names:
            raise UserError(f"no files under {path}")
        scheme = path.partition("://")[0] + "://" if storage.is_remote(path) else ""
        files.extend(scheme + name for name in names)
    return files


def read_documents(path: str, documents: str = "blank-line", field: str = "text") -> Iterator[str]:
    """The documents of one input file (see the module docstring for the formats). A file that
    cannot be read or decompressed (a corrupt or truncated .gz) is a UserError naming it."""
    stem, compression = path, None
    for suffix, codec in COMPRESSION.items():
        if path.endswith(suffix):
            stem, compression = path[: -len(suffix)], codec
    try:
        yield from _read_documents(path, stem, compression, documents, field)
    except OSError as error:  # local files only: s3_errors turns S3 ones into a StorageError
        # pyarrow's decompressors raise OSError ("zlib inflate failed: ...", "Truncated compressed stream")
        # from inside the iteration, whenever the bad block is reached.
        hint = f" (a corrupt or truncated {compression} file?)" if compression else ""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read {path}: {reason}{hint}") from None


def _read_documents(path: str, stem: str, compression: str | None, documents: str, field: str) -> Iterator[str]:
    filesystem, inner = storage.resolve(path)
    with storage.s3_errors(path), filesystem.open_input_stream(inner, compression=compression) as raw:
        lines = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace")
        if documents == "chinese-poetry":  # whole JSON files, whatever their suffix
            yield from poetry_documents(lines.read(), path)
        elif documents == "fortunes":
            yield from fortune_documents(lines, path)
        elif stem.endswith(JSON_SUFFIXES):
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield _json_text(line, field, path, number)
        elif documents == "file":
            yield lines.read().strip()
        elif documents == "line":
            yield from (line.strip() for line in lines if line.strip())
        else:
            paragraph = []
            for line in lines:
                if line.strip():
                    paragraph.append(line.strip())
                elif paragraph:
                    yield "\n".join(paragraph)
                    paragraph = []
            if paragraph:
                yield "\n".join(paragraph)


def _json_text(line: str, field: str, path: str, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{number}: not JSON ({error.msg})") from None
    if not isinstance(record, dict) or field not in record:
        raise UserError(f"{path}:{number}: no field '{field}' (set --field)")
    if not isinstance(record[field], str):
        raise UserError(f"{path}:{number}: field '{field}' holds {type(record[field]).__name__}, not text")
    return record[field]


def check_shard_mb(shard_mb) -> None:
    if (
        isinstance(shard_mb, bool)
        or not isinstance(shard_mb, (int, float))
        or not (math.isfinite(shard_mb) and shard_mb > 0)
    ):
        raise UserError(f"--shard-mb must be a finite number > 0, got {shard_mb!r}")


def prepare(
    inputs: list[str], out: str, documents: str = "blank-line", field: str = "text", shard_mb: float = 128.0
) -> PrepareResult:
    check_shard_mb(shard_mb)
    files = list_inputs(inputs)
    if documents == "fortunes":
        files = _fortune_files(files, inputs)
    storage.check(out, write=True)
    with storage.exclusive_output(out):  # two prepares into one OUT: the second is refused
        return _prepare_into(_Output(out), files, inputs, documents, field, shard_mb)


def _prepare_into(
    output: _Output, files: list[str], inputs: list[str], documents: str, field: str, shard_mb: float
) -> PrepareResult:
    """prepare's work, once OUT is checked and held."""
    out = output.out
    result = PrepareResult([], 0, 0)
    texts, sources, size = [], [], 0
    listing = []  # {"name", "rows", "bytes"} of each shard, for _SUCCESS

    def write_shard():
        shard = f"part-{len(result.shards):05d}.parquet"
        written = output.write_shard(shard, pa.table({"text": texts, "source": sources}))
        listing.append({"name": shard, "rows": len(texts), "bytes": written})
        result.shards.append(storage.join(out, shard))
        print(f"{result.shards[-1]}: {len(texts):,} documents, {size / 1e6:.1f} MB of text", flush=True)

    output.begin()
    try:
        for path in files:
            found = result.documents
            for text in read_documents(path, documents, field):
                if not text:
                    continue
                texts.append(text)
                sources.append(path)
                size += len(text.encode("utf-8"))
                result.documents += 1
                result.text_bytes += len(text.encode("utf-8"))
                if size >= shard_mb * 1e6:
                    write_shard()
                    texts, sources, size = [], [], 0
            if documents == "chinese-poetry" and result.documents == found:  # e.g. authors.song.json
                print(
                    f"warning: {path} holds no poems (no object with {'/'.join(TEXT_KEYS)}); passed over",
                    file=sys.stderr,
                )
        if texts:
            write_shard()
        if not result.shards:
            raise UserError(f"no documents in {', '.join(inputs)}")
        output.finish(
            {
                "format": "electra_ray.prepare",
                "shards": listing,
                "documents": result.documents,
                "text_bytes": result.text_bytes,
            }
        )
    except BaseException:  # an error or Ctrl-C: take back what this run wrote, nothing else
        output.abort()
        raise
    return result


def _fortune_files(files: list[str], inputs: list[str]) -> list[str]:
    """A fortune directory's text files only: not the strfile index beside each (chinese.dat, binary),
    and each file once (fortunes-zh links chinese.u8 to chinese)."""
    kept, seen = [], set()
    for path in files:
        real = path if storage.is_remote(path) else os.path.realpath(path)
        if real in seen or (path.endswith(".dat") and path not in inputs):
            continue
        seen.add(real)
        kept.append(path)
    return kept


class _Output:
    """The output directory (local or S3) of one prepare run: the markers, the shards written
    under a temporary name and renamed into place, and the clean-up of a failed run (only what
    this run wrote: its shards, its partial file, its marker, the directory if it made it)."""

    def __init__(self, out: str):
        self.out, self.remote = out, storage.is_remote(out)
        self.filesystem, self.inner = storage.resolve(out)
        self.written: list[str] = []  # names this run put in place, removed again by abort()
        self.created_dir = False
        self.started = ""
        with storage.s3_errors(out):
            kind = self.filesystem.get_file_info(self.inner).type
            if kind == pafs.FileType.File:
                raise UserError(f"{out} is a file: prepare writes a directory of Parquet shards there")
            names = (
                [posixpath.basename(f.path) for f in self.filesystem.get_file_info(pafs.FileSelector(self.inner))]
                if kind == pafs.FileType.Directory
                else []
            )
        if any(name.endswith(".parquet") for name in names):
            raise UserError(f"{out} already holds Parquet files: choose an empty output path")
        for marker, meaning in ((SUCCESS, "a finished corpus"), (PREPARING, "an unfinished prepare")):
            if marker in names:
                raise UserError(
                    f"{out} already holds {marker} ({meaning}): choose an empty output path, "
                    f"or remove {out} first if it is not needed"
                )
        if any(PARTIAL in name for name in names):
            partial = next(name for name in names if PARTIAL in name)
            raise UserError(
                f"{out} already holds {partial} (a shard an interrupted prepare left): choose an empty output path"
            )
        self.created_dir = kind == pafs.FileType.NotFound

    def begin(self) -> None:
        if not self.remote:
            os.makedirs(self.inner, exist_ok=True)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._put(PREPARING, json.dumps({"started": self.started}).encode())
        self.written.append(PREPARING)

    def write_shard(self, name: str, table: pa.Table) -> int:
        """Write the shard under a temporary name, then rename it into place; returns its bytes."""
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        data = buffer.getvalue().to_pybytes()
        self._put(name, data)
        self.written.append(name)
        return len(data)

    def finish(self, summary: dict) -> None:
        """_SUCCESS last (in place only once every shard is), then _PREPARING goes."""
        summary = {**summary, "started": self.started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._put(SUCCESS, (json.dumps(summary, indent=1) + "\n").encode())
        self.written = []  # complete from here on: nothing for abort() to take back
        try:
            self._remove(PREPARING)
        except (OSError, UserError) as error:  # readers take _SUCCESS beside _PREPARING as complete
            print(f"warning: could not remove {storage.join(self.out, PREPARING)}: {error}", file=sys.stderr)

    def _put(self, name: str, data: bytes) -> None:
        """`data` as OUT/name, whole or not at all: written beside it as name.partial-<hex>, then
        renamed (local: fsync, os.replace; S3, where no rename exists: a server-side copy, then the
        partial object is deleted)."""
        partial = f"{name}{PARTIAL}{uuid.uuid4().hex[:12]}"
        if not self.remote:
            path = os.path.join(self.inner, partial)
            try:
                with open(path, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(path, os.path.join(self.inner, name))
            except BaseException:
                if os.path.exists(path):
                    os.remove(path)
                raise
            _fsync_directory(self.inner)  # the rename itself survives a crash
            return
        bucket, prefix = storage.bucket_and_key(self.out)
        key = posixpath.join(prefix, partial)
        client = storage.s3_client()
        with storage.s3_errors(self.out):
            client.upload_fileobj(io.BytesIO(data), bucket, key)
            try:
                client.copy({"Bucket": bucket, "Key": key}, bucket, posixpath.join(prefix, name))
            finally:
                client.delete_object(Bucket=bucket, Key=key)

    def _remove(self, name: str) -> None:
        if not self.remote:
            os.remove(os.path.join(self.inner, name))
            return
        bucket, prefix = storage.bucket_and_key(self.out)
        with storage.s3_errors(self.out):
            storage.s3_client().delete_object(Bucket=bucket, Key=posixpath.join(prefix, name))

    def abort(self) -> None:
        """Best effort: a clean-up that fails leaves _PREPARING behind, which readers refuse."""
        try:
            for name in reversed(self.written):  # _PREPARING last: until then OUT reads as unfinished
                self._remove(name)
            self.written = []
            if self.created_dir and not self.remote:
                os.rmdir(self.inner)  # only if empty: nothing else was put there meanwhile
        except Exception:
            pass


def _fsync_directory(directory: str) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def main(argv: list[str] | None = None) -> None:
    parser = verb_parser("prepare", __doc__)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories or s3:// prefixes")
    parser.add_argument("out", metavar="OUT", help="output directory or s3:// prefix")
    parser.add_argument(
        "--documents",
        choices=("blank-line", "line", "file", "chinese-poetry", "fortunes"),
        default="blank-line",
        help="how text files divide into documents (default: blank-line); chinese-poetry: the JSON of "
        "the chinese-poetry package, a document per poem; fortunes: entries between %% lines",
    )
    parser.add_argument("--field", default="text", help="JSONL field holding the document (default: text)")
    # Read as text and checked by prepare: a bad value is one `error:` line, not argparse's usage + error.
    parser.add_argument("--shard-mb", default="128", help="MB of text per shard (default: 128)")
    args = parser.parse_args(argv)

    def run():
        try:
            shard_mb = float(args.shard_mb)
        except ValueError:
            raise UserError(f"--shard-mb must be a finite number > 0, got {args.shard_mb!r}") from None
        result = prepare(args.inputs, args.out, args.documents, args.field, shard_mb)
        print(
            f"prepared {result.documents:,} documents ({result.text_bytes / 1e6:.1f} MB) in "
            f"{len(result.shards)} shards under {args.out}"
        )

    run_cli(run)


if __name__ == "__main__":
    main()
