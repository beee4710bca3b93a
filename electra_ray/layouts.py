"""Two published text layouts that `prepare` reads into documents (--documents chinese-poetry / fortunes).

- **chinese-poetry** (the npm package `chinese-poetry`, the GitHub project chinese-poetry/chinese-poetry):
  each `.json` file holds a list of pieces (a poem, a ci, a piece of prose) or one object that nests
  them. A piece is an object with its lines under `paragraphs` (`content` or `para` in some
  collections) and optionally `title` (`rhythmic`, a ci's tune, or `chapter`) and `author`; one
  document per piece: the heading line, the author line, then one line per paragraph. Objects whose
  `content` is a list of objects (anthologies: 千家詩, 古文觀止, 唐詩三百首) are walked into. Objects with
  none of the three keys (authors' records in authors.*.json) are not pieces.
- **fortunes** (the `fortune` program's files, e.g. Debian's fortunes-zh): entries separated by
  lines that hold only `%`; one document per entry, its non-blank lines, with the ANSI colour codes
  that fortunes-zh puts in its titles stripped.

Malformed input is a one-line UserError naming the file and, for JSON, the entry (its position,
`[12]` or `[0].content[3]`, and its title).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator

from electra_ray.errors import UserError

TEXT_KEYS = ("paragraphs", "content", "para")  # where a piece keeps its lines, by collection
HEADING_KEYS = ("title", "rhythmic", "chapter")  # the first one present heads the document
# ECMA-48 control sequences (colours are ESC [ ... m), and the other escapes (ESC, intermediate
# bytes, a final byte: ESC ( B selects a character set); ESC [ is left to the first pattern.
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_ESCAPE = re.compile(r"\x1b[ -/]*[0-Z\\-~]")


def poetry_documents(text: str, path: str) -> Iterator[str]:
    """The documents of one chinese-poetry JSON file (its decoded text)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    yield from _pieces(data, path, "")


def _pieces(value, path: str, where: str) -> Iterator[str]:
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _pieces(item, path, f"{where}[{index}]")
        return
    if not isinstance(value, dict):
        return  # a bare string or number between pieces: nothing of a piece's shape
    key = next((k for k in TEXT_KEYS if k in value), None)
    if key is None:
        return  # not a piece: an author's record, an index
    lines = value[key]
    if isinstance(lines, dict) or (isinstance(lines, list) and any(isinstance(x, (dict, list)) for x in lines)):
        yield from _pieces(lines, path, f"{where}.{key}")  # an anthology: its pieces are inside
        return
    if isinstance(lines, str):
        lines = [lines]
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        bad = lines if not isinstance(lines, list) else next(x for x in lines if not isinstance(x, str))
        raise UserError(
            f"{path}: entry {where or '(top)'}{_title(value)}: '{key}' holds {type(bad).__name__} "
            f"({json.dumps(bad, ensure_ascii=False)[:40]}), not lines of text"
        )
    body = [line.strip() for line in lines if line.strip()]
    if body:
        yield "\n".join([*_header(value), *body])


def _header(piece: dict) -> list[str]:
    heading = next((piece[k] for k in HEADING_KEYS if isinstance(piece.get(k), str) and piece[k].strip()), "")
    author = piece.get("author") if isinstance(piece.get("author"), str) else ""
    return [line.strip() for line in (heading, author) if line and line.strip()]


def _title(piece: dict) -> str:
    heading = _header(piece)[:1]
    return f" ('{heading[0][:30]}')" if heading else ""


def strip_ansi(line: str) -> str:
    """`line` without ANSI escape codes. Repeated, because fortunes-zh has broken sequences such as
    ESC [ ; ESC [ 34;1m m, which read as one once the inner one is gone; a stray ESC left is dropped."""
    while True:
        stripped = _CSI.sub("", line)
        if stripped == line:
            return _ESCAPE.sub("", stripped).replace("\x1b", "")
        line = stripped


def fortune_documents(lines: Iterable[str], path: str) -> Iterator[str]:
    """The entries of one fortune file (its decoded lines): one document each."""
    entry: list[str] = []
    for number, line in enumerate(lines, 1):
        if "\x00" in line:  # a strfile index (X.dat) or other binary file, not the text
            raise UserError(f"{path}:{number}: binary data, not a fortune text file (a strfile .dat index?)")
        if line.rstrip() == "%":
            if entry:
                yield "\n".join(entry)
            entry = []
            continue
        line = strip_ansi(line).strip()
        if line:
            entry.append(line)
    if entry:
        yield "\n".join(entry)
