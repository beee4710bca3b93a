"""Text or JSONL files -> Parquet shards: the corpus format of `electra_ray.pretrain`.

    python -m electra_ray.prepare INPUT [INPUT ...] OUT [--documents blank-line|line|file]
                                  [--field text] [--shard-mb 128]

INPUT: files, directories or s3:// prefixes (every file under them, in name order); `.jsonl` /
`.json` / `.ndjson` files hold one JSON object per line with the document in --field, any other
file is text. `.gz`, `.bz2` and `.zst` files are decompressed. Text follows BERT's and ELECTRA's
convention: one sentence per line, documents separated by blank lines (`--documents line`: a
document per line; `file`: a document per file).

OUT: a local directory or s3:// prefix that gets part-00000.parquet, part-00001.parquet, ...
(zstd) with columns `text` (one document per row) and `source` (the file it came from). Shards
hold about --shard-mb MB of text: large enough for efficient reads, many enough that Ray Data
reads them in parallel.
"""

from __future__ import annotations

import argparse
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from electra_ray import storage
from electra_ray.errors import UserError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


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
        names = sorted(f.path for f in found if f.type == pafs.FileType.File
                       and not posixpath.basename(f.path).startswith((".", "_")))
        if not names:
            raise UserError(f"no files under {path}")
        scheme = path.partition("://")[0] + "://" if storage.is_remote(path) else ""
        files.extend(scheme + name for name in names)
    return files


def read_documents(path: str, documents: str = "blank-line", field: str = "text") -> Iterator[str]:
    """The documents of one input file (see the module docstring for the formats)."""
    filesystem, inner = storage.resolve(path)
    stem, compression = inner, None
    for suffix, codec in COMPRESSION.items():
        if inner.endswith(suffix):
            stem, compression = inner[: -len(suffix)], codec
    with storage.s3_errors(path), filesystem.open_input_stream(inner, compression=compression) as raw:
        lines = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace")
        if stem.endswith(JSON_SUFFIXES):
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


def prepare(inputs: list[str], out: str, documents: str = "blank-line", field: str = "text",
            shard_mb: float = 128.0) -> PrepareResult:
    files = list_inputs(inputs)
    storage.check(out, write=True)
    filesystem, inner = storage.resolve(out)
    with storage.s3_errors(out):
        if filesystem.get_file_info(inner).type == pafs.FileType.Directory and any(
                f.path.endswith(".parquet") for f in filesystem.get_file_info(pafs.FileSelector(inner))):
            raise UserError(f"{out} already holds Parquet files: choose an empty output path")
        if not storage.is_remote(out):
            filesystem.create_dir(inner)
    result = PrepareResult([], 0, 0)
    texts, sources, size = [], [], 0

    def write_shard():
        shard = f"part-{len(result.shards):05d}.parquet"
        with storage.s3_errors(out):
            pq.write_table(pa.table({"text": texts, "source": sources}), posixpath.join(inner, shard),
                           filesystem=filesystem, compression="zstd")
        result.shards.append(storage.join(out, shard))
        print(f"{result.shards[-1]}: {len(texts):,} documents, {size / 1e6:.1f} MB of text", flush=True)

    for path in files:
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
    if texts:
        write_shard()
    if not result.shards:
        raise UserError(f"no documents in {', '.join(inputs)}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m electra_ray.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories or s3:// prefixes")
    parser.add_argument("out", metavar="OUT", help="output directory or s3:// prefix")
    parser.add_argument("--documents", choices=("blank-line", "line", "file"), default="blank-line",
                        help="how text files divide into documents (default: blank-line)")
    parser.add_argument("--field", default="text", help="JSONL field holding the document (default: text)")
    parser.add_argument("--shard-mb", type=float, default=128.0, help="MB of text per shard (default: 128)")
    args = parser.parse_args(argv)
    from electra_ray.cli import run_cli

    def run():
        result = prepare(args.inputs, args.out, args.documents, args.field, args.shard_mb)
        print(f"prepared {result.documents:,} documents ({result.text_bytes / 1e6:.1f} MB) in "
              f"{len(result.shards)} shards under {args.out}")

    run_cli(run)


if __name__ == "__main__":
    main()
