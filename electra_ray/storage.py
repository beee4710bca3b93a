"""Paths that are local or `s3://bucket/prefix`: pyarrow filesystems, clear errors, atomic publish.

S3 follows the AWS conventions, nothing of ours to configure:
  credentials  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), AWS_PROFILE, or the
               instance role -- resolved by the AWS SDK in each process;
  region       AWS_REGION / AWS_DEFAULT_REGION, else looked up from the bucket;
  endpoint     AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for S3-compatible stores (MinIO, Ceph, R2);
  retries      AWS_MAX_ATTEMPTS (default 10), exponential backoff on throttling and transient errors
               (the up-front `check` of a path tries 3 times, so a wrong endpoint fails in seconds).
Credentials are never handed to pyarrow or boto3 explicitly, so a filesystem pickled into a Ray task
carries none, and nothing here logs them.

pyarrow filesystems serve reading (the corpus, Ray Data) and Ray Train's checkpoint storage; boto3
does the object operations of checks, publishing and fetching.

Outputs (exports, tokenizers) are published under one rule, in `publish_directory`: see the block
comment above it. `fetch_directory` reads only a complete, hash-checked version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs

from electra_ray.errors import UserError

MANIFEST = "_MANIFEST.json"  # written last; names the version and hashes of a published directory
VERSIONS = "_versions"  # S3: PREFIX/_versions/VERSION/ holds the files of each published version


class StorageError(UserError):
    """A path cannot be read or written: missing bucket, access denied, no credentials, no endpoint."""


def is_remote(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def max_attempts() -> int:
    return int(os.environ.get("AWS_MAX_ATTEMPTS") or 10)


def endpoint_url() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")


def redact(url: str) -> str:
    """`url` with any `user:password@` part masked: messages never echo credentials."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    return f"{scheme}://***@{netloc.rpartition('@')[2]}{slash}{path}"


@functools.cache
def _s3_filesystem(endpoint: str, region: str, attempts: int, bucket: str) -> pafs.S3FileSystem:
    options = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        "connect_timeout": 5,
        "request_timeout": 60,
    }
    if endpoint:
        scheme, _, address = endpoint.rpartition("://")
        options.update(endpoint_override=address.rstrip("/"), scheme=scheme or "https", region=region or "us-east-1")
    else:
        options["region"] = region or _bucket_region(bucket)
    return pafs.S3FileSystem(**options)


def _bucket_region(bucket: str) -> str:
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        return "us-east-1"  # let the first real request report what is wrong


def _inner(url: str) -> str:
    """s3://bucket/key -> bucket/key, refusing other schemes."""
    scheme, _, inner = url.partition("://")
    if scheme not in ("s3", "s3a"):
        raise StorageError(f"unsupported URL scheme '{scheme}://' in {url}: use a local path or s3://bucket/prefix")
    if not inner.strip("/"):
        raise StorageError(f"{url} names no bucket: use s3://bucket/prefix")
    return inner.strip("/")


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """A local path or s3:// URL -> (pyarrow filesystem, path inside it: `bucket/key` on S3)."""
    if not is_remote(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    inner = _inner(path)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "")
    return _s3_filesystem(endpoint_url(), region, max_attempts(), inner.split("/")[0]), inner


def explain(error: Exception, path: str) -> str:
    """One line saying what went wrong with an S3 request (pyarrow or boto3) and what to check."""
    # boto3 / botocore are imported where S3 needs them: every verb imports this module, and
    # they would add ~0.5 s to each start, s3:// or not.
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    text = str(error)
    code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
    endpoint, path = redact(endpoint_url()), redact(path)
    where = f"endpoint {endpoint}" if endpoint else "AWS S3"
    bucket = path.partition("://")[2].split("/")[0].rpartition("@")[2]
    if isinstance(error, NoCredentialsError):
        return (
            f"no AWS credentials found for {path}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            f"or AWS_PROFILE, or run where an instance role provides them"
        )
    if isinstance(error, EndpointConnectionError) or "NETWORK_CONNECTION" in text or "curlCode" in text:
        return (
            f"cannot reach the S3 endpoint {endpoint or '(AWS default)'} for {path}: check "
            f"AWS_ENDPOINT_URL and that the server is up and reachable from this machine"
        )
    if code in ("NoSuchBucket", "404") or "NO_SUCH_BUCKET" in text:
        return f"bucket '{bucket}' does not exist at {where} ({path})"
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or any(
        c in text for c in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")
    ):
        return (
            f"access denied to {path} at {where}: check the credentials (AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role) and the bucket's policy"
        )
    detail = text.splitlines()[0] if text else type(error).__name__
    return f"S3 request for {path} failed: {detail.replace(endpoint_url(), endpoint) if endpoint_url() else detail}"


@contextlib.contextmanager
def s3_errors(path: str) -> Iterator[None]:
    """Turn pyarrow's and boto3's S3 errors into a StorageError naming the path and the likely cause."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (OSError, BotoCoreError, ClientError) as error:
        if not is_remote(path) or isinstance(error, (FileNotFoundError, PermissionError)):
            raise
        raise StorageError(explain(error, path)) from None


def s3_client(session=None, attempts: int = 0):
    """boto3 for object operations (its retries, and none of pyarrow's directory markers, which
    some S3-compatible stores reject); endpoint, region and retries come from the AWS variables."""
    import boto3
    from botocore.config import Config

    return (session or boto3.session.Session()).client(
        "s3",
        endpoint_url=endpoint_url() or None,
        config=Config(
            retries={"mode": "standard", "max_attempts": attempts or max_attempts()}, connect_timeout=5, read_timeout=60
        ),
    )


def bucket_and_key(url: str) -> tuple[str, str]:
    bucket, _, key = _inner(url).partition("/")
    return bucket, key


def check(path: str, write: bool = False) -> None:
    """Fail fast, before any work, if a path cannot be used: for S3 credentials, endpoint, bucket,
    access; for a local path to write, a file in the way or a directory that is not writable."""
    if not is_remote(path):
        if write:
            _check_local_writable(path)
        return
    import boto3
    from botocore.exceptions import NoCredentialsError

    bucket, key = bucket_and_key(path)
    session = boto3.session.Session()
    client = s3_client(session, attempts=min(3, max_attempts()))  # a wrong endpoint fails in seconds
    with s3_errors(path):
        if session.get_credentials() is None:
            raise NoCredentialsError()
        client.head_bucket(Bucket=bucket)
        if write:
            probe = posixpath.join(key, f".write-check-{uuid.uuid4().hex}")
            client.put_object(Bucket=bucket, Key=probe, Body=b"")
            client.delete_object(Bucket=bucket, Key=probe)
        else:
            client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)


def _check_local_writable(path: str, shown: str = "") -> None:
    """The nearest existing ancestor of `path` (or path itself) is a writable directory. `shown`:
    the output the message names (default: path)."""
    nearest = os.path.abspath(path)
    while not os.path.lexists(nearest):
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise StorageError(f"cannot write {shown or path}: {nearest} exists and is not a directory")
    if not os.access(nearest, os.W_OK):
        raise StorageError(f"cannot write {shown or path}: {nearest} is not writable")


def exists(path: str) -> bool:
    filesystem, inner = resolve(path)
    with s3_errors(path):
        return filesystem.get_file_info(inner).type != pafs.FileType.NotFound


def read_text(path: str) -> str:
    filesystem, inner = resolve(path)
    with s3_errors(path), filesystem.open_input_stream(inner, compression=None) as stream:
        return stream.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
    filesystem, inner = resolve(path)
    with s3_errors(path), filesystem.open_output_stream(inner, compression=None) as stream:
        stream.write(text.encode("utf-8"))


def download_directory(url: str, local_dir: str) -> str:
    """Copy a directory (local or S3) to a local directory; returns the local directory."""
    filesystem, inner = resolve(url)
    with s3_errors(url):
        if filesystem.get_file_info(inner).type != pafs.FileType.Directory:
            raise StorageError(f"no such directory: {url}")
        pafs.copy_files(
            inner,
            os.path.abspath(local_dir),
            source_filesystem=filesystem,
            destination_filesystem=pafs.LocalFileSystem(),
        )
    return local_dir


@contextlib.contextmanager
def local_directory(path: str) -> Iterator[str]:
    """A local view of a directory: the path itself, or a temporary download of an s3:// one."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="electra-ray-") as temporary:
        yield download_directory(path, temporary)


# -- published directories: the one rule for outputs ---------------------------------------------
#
# A command writes only where it was pointed and removes only what it wrote there before. Every
# directory a command publishes (an export, a tokenizer) carries a manifest, `_MANIFEST.json`: its
# kind, and each file's size and sha256. An existing destination is replaced only if its manifest
# says it is an output of the same kind and the caller passes `overwrite` (`--overwrite`), and then
# only the files that manifest lists are removed; any other existing destination is refused.
#
# Local: the files are staged in a directory beside the destination (random suffix), fsynced and
# renamed into place. S3, which has no rename: the files go to a fresh version prefix
# PREFIX/_versions/VERSION/, and the manifest, written last in one PUT, names that version. A
# reader follows the manifest and checks every hash, so it sees one whole version or fails; the
# old version's keys (exactly those its manifest lists) are deleted only after the manifest moved.
# A publisher killed at any point leaves the previous export readable, and two publishers never
# delete each other's files (each deletes only the version it read before it started).

MANIFEST_FORMAT = 2  # 1: {"files": {name: size}} beside the manifest, written by electra-ray <= 0.1


@dataclass(frozen=True)
class Manifest:
    kind: str  # "export", "tokenizer": what wrote the directory
    files: dict[str, dict]  # relative name -> {"size": bytes, "sha256": hex} ({"size"} only in format 1)
    version: str = ""  # S3: the files live under PREFIX/_versions/VERSION/; "": beside the manifest

    def to_json(self) -> str:
        return json.dumps(
            {"format": MANIFEST_FORMAT, "kind": self.kind, "version": self.version, "files": self.files},
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def parse(cls, text: bytes | str, where: str) -> Manifest:
        try:
            values = json.loads(text)
            files = values["files"]
            if not isinstance(files, dict):
                raise TypeError("files is not a mapping")
            files = {name: entry if isinstance(entry, dict) else {"size": int(entry)} for name, entry in files.items()}
            for name, entry in files.items():
                safe_relative_name(name, where)
                if not isinstance(entry.get("size"), int) or entry["size"] < 0:
                    raise TypeError(f"bad size for {name}")
            version = str(values.get("version", ""))
            if version and safe_relative_name(version, where) != version or "/" in version:
                raise TypeError(f"bad version {version!r}")
            # Format 1 named no kind: its tokenizers hold tokenizer.json and no network directory.
            legacy = "tokenizer" if "tokenizer.json" in files and not any("/" in n for n in files) else "export"
            return cls(kind=str(values.get("kind", legacy)), files=files, version=version)
        except StorageError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise StorageError(f"{where} is not a valid {MANIFEST} ({type(error).__name__}: {error})") from None


def safe_relative_name(name: str, where: str) -> str:
    """A manifest's file name, refused if it could land outside the directory it is fetched into:
    absolute, drive-qualified, `..`, `.` or empty segments, backslashes, NUL."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if (
        not isinstance(name, str)
        or not name
        or name.startswith("/")
        or "\\" in name
        or "\0" in name
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise StorageError(f"{where} names an unsafe file {name!r} (absolute, '..' or empty segment): refusing it")
    return name


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_files(directory: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
        for root, _, names in os.walk(directory)
        for name in names
    )


def describe_files(local_dir: str) -> dict[str, dict]:
    """{relative name: {"size", "sha256"}} of every file under `local_dir` but its manifest."""
    return {
        name: {"size": os.path.getsize(os.path.join(local_dir, name)), "sha256": _sha256(os.path.join(local_dir, name))}
        for name in _local_files(local_dir)
        if name != MANIFEST
    }


def read_manifest(path: str) -> Manifest | None:
    """The manifest of a published directory (local or S3), None if there is none."""
    where = join(path, MANIFEST)
    if not is_remote(path):
        if not os.path.isfile(where):
            return None
        with open(where, "rb") as f:
            return Manifest.parse(f.read(), where)
    from botocore.exceptions import ClientError

    bucket, key = bucket_and_key(path)
    with s3_errors(path):
        try:
            body = s3_client().get_object(Bucket=bucket, Key=_key(key, MANIFEST))["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
    return Manifest.parse(body, where)


def check_output(dest: str, kind: str, overwrite: bool = False, probe: bool = True) -> Manifest | None:
    """Refuse, before any work, a destination the rule above does not let `kind` be published to.
    Returns the manifest of the output it will replace (None: the destination is new or empty).
    `probe`: on S3, first a quick write check (3 tries: a wrong endpoint fails in seconds)."""
    what = "an export" if kind == "export" else f"a {kind}"
    if is_remote(dest):
        if probe:
            check(dest, write=True)
        previous = read_manifest(dest)
        if previous is None and _s3_has_foreign_objects(dest):
            raise StorageError(
                f"{dest} already holds objects that are not {what} of electra-ray: nothing was "
                f"written; choose a new prefix"
            )
    else:
        dest = os.path.abspath(dest)
        if os.path.islink(dest) or (os.path.lexists(dest) and not os.path.isdir(dest)):
            raise StorageError(f"{dest} exists and is not a directory: nothing was written; choose a new path")
        _check_local_writable(os.path.dirname(dest), shown=dest)
        previous = read_manifest(dest) if os.path.isdir(dest) else None
        if previous is None and os.path.isdir(dest) and os.listdir(dest):
            raise StorageError(
                f"{dest} already exists and is not {what} of electra-ray (it holds "
                f"{', '.join(sorted(os.listdir(dest))[:3])}...): nothing was written; choose a new path"
            )
        if previous is not None:
            _refuse_foreign_entries(dest, previous)
    if previous is not None and previous.kind != kind:
        raise StorageError(f"{dest} holds {previous.kind} output, not {what}: nothing was written; choose a new path")
    if previous is not None and not overwrite:
        raise StorageError(
            f"{dest} already holds {what}: nothing was written; pass --overwrite to replace it "
            f"(only the files its {MANIFEST} lists are removed)"
        )
    return previous


class OutputBusy(StorageError):
    """Another command is writing the same output right now."""


LOCK_SUFFIX = ".electra-ray-lock"


@contextlib.contextmanager
def exclusive_output(dest: str) -> Iterator[None]:
    """Hold `dest` for this process while the block runs: a second command pointed at the same
    local output is refused in one line, instead of both passing their checks and mixing files.

    Atomic, not check-then-create: an flock on `DEST.electra-ray-lock` beside the destination,
    which the kernel releases if the process dies (a stale file is taken over, never trusted). The
    holder removes the file afterwards. S3 has no lock: there two publishers stay safe because each
    writes its own version and deletes only the one it read (see the block above)."""
    if is_remote(dest):
        yield
        return
    import fcntl  # POSIX only, like the rest of the local output rule

    path = os.path.abspath(dest).rstrip(os.sep) + LOCK_SUFFIX
    created = _make_parents(os.path.dirname(path), dest)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(
                f"{dest} is being written by another command right now (it holds {path}): nothing was written"
            ) from None
        # The holder before us may have removed the file between our open and our lock: then our
        # lock is on an orphan, and a third process could lock a new file. Lock what the path names.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        for directory in reversed(created):  # a refused command leaves no empty parents behind
            with contextlib.suppress(OSError):
                os.rmdir(directory)


def _make_parents(directory: str, dest: str) -> list[str]:
    """os.makedirs(directory), returning the directories it created (outermost first); a file in
    the way is one line, not a NotADirectoryError."""
    _check_local_writable(directory, shown=dest)
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
            created.append(directory)
        except FileExistsError:
            pass  # another command made it meanwhile: not ours to remove
        except OSError as error:
            raise StorageError(f"cannot write {dest}: {directory}: {error.strerror or error}") from None
    return created


def _s3_has_foreign_objects(dest: str) -> bool:
    """Objects under the prefix other than unfinished versions of ours (a first publish in progress)."""
    bucket, key = bucket_and_key(dest)
    with s3_errors(dest):
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=_key(key, "")):
            for item in page.get("Contents", []):
                if not item["Key"].startswith(_key(key, VERSIONS) + "/"):
                    return True
    return False


@contextlib.contextmanager
def staging_directory(dest: str) -> Iterator[str]:
    """A fresh directory to write an output into before `publish_directory`: beside a local `dest`
    (so the final rename is atomic), in the temporary directory for S3. Removed afterwards unless
    it was published (renamed away)."""
    if is_remote(dest):
        with tempfile.TemporaryDirectory(prefix="electra-ray-staging-") as staging:
            yield staging
        return
    dest = os.path.abspath(dest)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    staging = f"{dest}.partial-{uuid.uuid4().hex[:12]}"
    os.mkdir(staging)
    try:
        yield staging
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)  # ours: created above with a fresh random name


def publish_directory(
    local_dir: str,
    dest: str,
    kind: str = "export",
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Make `dest` (local or S3) a copy of `local_dir` that readers see whole or not at all, under
    the rule above. A local `local_dir` must be a `staging_directory(dest)` (it is renamed into
    place). `progress(name)` is called after each file is written. Returns `dest`."""
    previous = check_output(dest, kind, overwrite, probe=False)  # with the full retries: outages pass
    files = describe_files(local_dir)
    if is_remote(dest):
        return _publish_s3(local_dir, dest, Manifest(kind, files, _new_version()), previous, progress)
    try:
        return _publish_local(local_dir, os.path.abspath(dest), Manifest(kind, files), previous)
    except OSError as error:  # e.g. a mount point, or a file that appeared meanwhile: nothing was replaced
        raise StorageError(f"cannot publish to {dest}: {error.strerror or error}") from None


def _new_version() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _publish_s3(
    local_dir: str, dest: str, manifest: Manifest, previous: Manifest | None, progress: Callable[[str], None] | None
) -> str:
    bucket, key = bucket_and_key(dest)
    version_key = _key(key, f"{VERSIONS}/{manifest.version}")
    client, uploaded = s3_client(), []
    with s3_errors(dest):
        try:
            for name in manifest.files:
                client.upload_file(os.path.join(local_dir, name), bucket, f"{version_key}/{name}")
                uploaded.append(f"{version_key}/{name}")
                if progress:
                    progress(name)
        except BaseException:
            with contextlib.suppress(Exception):  # our own unfinished version only; a kill leaves it behind
                _delete_keys(client, bucket, uploaded)
            raise
        # Not undone if it fails: the PUT may have reached the server though its answer did not, and
        # then the manifest names these files. Unreferenced versions are left, never a dangling one.
        client.put_object(Bucket=bucket, Key=_key(key, MANIFEST), Body=manifest.to_json().encode())
        if previous is not None:  # the manifest has moved: the old version is unreachable now
            old_key = _key(key, f"{VERSIONS}/{previous.version}") if previous.version else key
            _delete_keys(client, bucket, [f"{old_key}/{name}" for name in previous.files])
    return dest


def _delete_keys(client, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def _fsync_tree(directory: str) -> None:
    for root, _dirs, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        descriptor = os.open(root, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _publish_local(staging: str, dest: str, manifest: Manifest, previous: Manifest | None) -> str:
    with open(os.path.join(staging, MANIFEST), "w") as f:
        f.write(manifest.to_json())
    _fsync_tree(staging)
    if previous is None:
        if os.path.isdir(dest):
            os.rmdir(dest)  # empty (check_output saw to that); fails, leaving it, if a file arrived since
        os.rename(staging, dest)
    else:
        _refuse_foreign_entries(dest, previous)  # again: one may have arrived since check_output
        aside = f"{dest}.previous-{uuid.uuid4().hex[:12]}"
        os.rename(dest, aside)
        os.rename(staging, dest)
        _remove_listed(aside, previous)
    parent = os.open(os.path.dirname(dest), os.O_RDONLY)
    try:
        os.fsync(parent)  # the renames themselves
    finally:
        os.close(parent)
    return dest


def _refuse_foreign_entries(dest: str, manifest: Manifest) -> None:
    """What an overwrite must not touch: files the manifest does not list, and any symbolic link
    (through one, removing a listed name would remove a file elsewhere)."""
    foreign = []
    for root, dirs, names in os.walk(dest):
        for name in dirs + names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, dest).replace(os.sep, "/")
            if os.path.islink(path) or (name in names and relative not in manifest.files and relative != MANIFEST):
                foreign.append(relative)
    if foreign:
        raise StorageError(
            f"{dest} holds files its {MANIFEST} does not list ({', '.join(sorted(foreign)[:3])}): "
            f"nothing was written; move them away first"
        )


def _remove_listed(directory: str, manifest: Manifest) -> None:
    """Remove the files a manifest lists (and it), then the directories left empty; anything else
    stays where it is."""
    for name in [*manifest.files, MANIFEST]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, *name.split("/")))
    for root, _, _ in sorted(os.walk(directory), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(root)  # only if empty
    if os.path.isdir(directory):
        print(f"warning: left {directory}: it holds files no manifest listed", flush=True)


def verify_directory(path: str) -> Manifest:
    """Check a published directory (local or S3) against its manifest: every listed file there,
    with its size and sha256. Returns the manifest; raises StorageError naming the first mismatch."""
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="electra-ray-verify-") as temporary:
            copy = fetch_directory(path, os.path.join(temporary, "copy"))  # verifies every hash on the way
            return read_manifest(copy)
    manifest = read_manifest(path)
    if manifest is None:
        raise StorageError(f"{path} has no {MANIFEST}: not a directory published by electra-ray")
    for name, entry in manifest.files.items():
        _check_file(os.path.join(path, *name.split("/")), entry, f"{path}/{name}")
    return manifest


def _check_file(local: str, entry: dict, where: str) -> None:
    if not os.path.isfile(local):
        raise StorageError(f"{where} is missing")
    if os.path.getsize(local) != entry["size"]:
        raise StorageError(f"{where} has {os.path.getsize(local)} bytes, the manifest says {entry['size']}")
    if "sha256" in entry and _sha256(local) != entry["sha256"]:
        raise StorageError(f"{where} does not match the sha256 its manifest lists")


class _VersionMoved(Exception):
    """A file of the version being fetched is gone or changed: a publisher replaced it meanwhile."""


def fetch_directory(url: str, local_dir: str, attempts: int = 5) -> str:
    """Download a directory published by `publish_directory` into `local_dir` (new or empty),
    every file checked against the manifest's size and sha256. A version replaced while it is read
    is fetched again from the new manifest. A local `url` is returned as it is."""
    if not is_remote(url):
        return url
    local_dir = os.path.abspath(local_dir)
    if os.path.lexists(local_dir) and not (os.path.isdir(local_dir) and not os.listdir(local_dir)):
        raise StorageError(f"cannot fetch {url} into {local_dir}: it exists and is not an empty directory")
    for _ in range(attempts):
        manifest = read_manifest(url)
        if manifest is None:
            raise StorageError(
                f"{url} is not a complete export (no {MANIFEST}): its upload was interrupted "
                f"or is still running; run the export again"
            )
        with staging_directory(local_dir) as staging:
            try:
                _download_version(url, manifest, staging)
            except _VersionMoved:
                if read_manifest(url) == manifest:
                    raise StorageError(
                        f"{url} is damaged: a file its {MANIFEST} lists is missing or differs; publish it again"
                    ) from None
                continue
            with open(os.path.join(staging, MANIFEST), "w") as f:  # the copy can be verified like the original
                f.write(dataclasses.replace(manifest, version="").to_json())
            if os.path.isdir(local_dir):
                os.rmdir(local_dir)
            os.rename(staging, local_dir)
        return local_dir
    raise StorageError(f"{url} was replaced {attempts} times while it was being fetched; try again")


def _download_version(url: str, manifest: Manifest, staging: str) -> None:
    from botocore.exceptions import ClientError

    bucket, key = bucket_and_key(url)
    source = _key(key, f"{VERSIONS}/{manifest.version}") if manifest.version else key
    root = os.path.realpath(staging)
    client = s3_client()
    with s3_errors(url):
        for name, entry in manifest.files.items():
            target = os.path.join(root, *name.split("/"))
            if os.path.commonpath([root, os.path.realpath(target)]) != root:
                raise StorageError(f"{url}/{MANIFEST} names {name!r}, which leaves the target directory")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                client.download_file(bucket, f"{source}/{name}", target)
                _check_file(target, entry, f"{url}/{name}")
            except (ClientError, StorageError) as error:
                if isinstance(error, ClientError) and error.response["Error"]["Code"] not in ("NoSuchKey", "404"):
                    raise
                raise _VersionMoved() from None


def read_published_text(prefix: str, name: str) -> str:
    """One file of a published directory, following (and checking against) its manifest; a
    directory with no manifest (a tokenizer put there by hand) is read directly."""
    for _ in range(5):  # a version replaced while it is read: again, from the new manifest
        manifest = read_manifest(prefix) if is_remote(prefix) else None
        if manifest is None or not manifest.version or name not in manifest.files:
            if not exists(join(prefix, name)):
                raise StorageError(f"no {name} in {prefix}")
            return read_text(join(prefix, name))
        try:
            text = read_text(join(prefix, VERSIONS, manifest.version, name))
        except FileNotFoundError:
            continue
        if hashlib.sha256(text.encode("utf-8")).hexdigest() == manifest.files[name].get("sha256"):
            return text
        if read_manifest(prefix) == manifest:
            raise StorageError(f"{prefix}/{name} does not match the sha256 its manifest lists")
    raise StorageError(f"{prefix} was replaced 5 times while {name} was being read; try again")
