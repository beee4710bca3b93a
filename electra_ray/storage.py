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

A published directory (`publish_directory`) is complete or invisible to readers that go through
`fetch_directory`: on S3 the files go to a temporary prefix, are copied into place, and a
manifest listing them is written last.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import Callable, Iterator

import pyarrow.fs as pafs

from electra_ray.errors import UserError

MANIFEST = "_MANIFEST.json"  # written last; its presence is what makes an S3 directory complete


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


@functools.lru_cache(maxsize=None)
def _s3_filesystem(endpoint: str, region: str, attempts: int, bucket: str) -> pafs.S3FileSystem:
    options = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
               "connect_timeout": 5, "request_timeout": 60}
    if endpoint:
        scheme, _, address = endpoint.rpartition("://")
        options.update(endpoint_override=address.rstrip("/"), scheme=scheme or "https",
                       region=region or "us-east-1")
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
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    text = str(error)
    code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
    where = f"endpoint {endpoint_url()}" if endpoint_url() else "AWS S3"
    bucket = path.partition("://")[2].split("/")[0]
    if isinstance(error, NoCredentialsError):
        return (f"no AWS credentials found for {path}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                f"or AWS_PROFILE, or run where an instance role provides them")
    if isinstance(error, EndpointConnectionError) or "NETWORK_CONNECTION" in text or "curlCode" in text:
        return (f"cannot reach the S3 endpoint {endpoint_url() or '(AWS default)'} for {path}: check "
                f"AWS_ENDPOINT_URL and that the server is up and reachable from this machine")
    if code in ("NoSuchBucket", "404") or "NO_SUCH_BUCKET" in text:
        return f"bucket '{bucket}' does not exist at {where} ({path})"
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or any(
            c in text for c in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")):
        return (f"access denied to {path} at {where}: check the credentials (AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role) and the bucket's policy")
    return f"S3 request for {path} failed: {text.splitlines()[0] if text else type(error).__name__}"


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


def _client(session=None, attempts: int = 0):
    """boto3 for object operations (its retries, and none of pyarrow's directory markers, which
    some S3-compatible stores reject); endpoint, region and retries come from the AWS variables."""
    import boto3
    from botocore.config import Config

    return (session or boto3.session.Session()).client(
        "s3", endpoint_url=endpoint_url() or None,
        config=Config(retries={"mode": "standard", "max_attempts": attempts or max_attempts()},
                      connect_timeout=5, read_timeout=60))


def _bucket_key(url: str) -> tuple[str, str]:
    bucket, _, key = _inner(url).partition("/")
    return bucket, key


def check(path: str, write: bool = False) -> None:
    """Fail fast, before any work, if an S3 path cannot be used: credentials, endpoint, bucket, access."""
    if not is_remote(path):
        return
    import boto3
    from botocore.exceptions import NoCredentialsError

    bucket, key = _bucket_key(path)
    session = boto3.session.Session()
    client = _client(session, attempts=min(3, max_attempts()))  # a wrong endpoint fails in seconds
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


def _local_files(directory: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)


def download_directory(url: str, local_dir: str) -> str:
    """Copy a directory (local or S3) to a local directory; returns the local directory."""
    filesystem, inner = resolve(url)
    with s3_errors(url):
        if filesystem.get_file_info(inner).type != pafs.FileType.Directory:
            raise StorageError(f"no such directory: {url}")
        pafs.copy_files(inner, os.path.abspath(local_dir), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
    return local_dir


@contextlib.contextmanager
def local_directory(path: str) -> Iterator[str]:
    """A local view of a directory: the path itself, or a temporary download of an s3:// one."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="electra-ray-") as temporary:
        yield download_directory(path, temporary)


def publish_directory(local_dir: str, dest: str, progress: Callable[[str], None] | None = None) -> str:
    """Make `dest` a copy of `local_dir` that readers see whole or not at all.

    Local: `local_dir`, which must be on dest's filesystem, is renamed into place. S3, where no rename exists: upload
    to a temporary prefix beside `dest` (an interrupted upload leaves `dest` as it was), delete
    `dest`'s manifest (from here on `dest` reads as incomplete) and its other objects, copy the
    new objects into place on the server, write the manifest last. `progress(name)` is called
    after each object is written.
    """
    if not is_remote(dest):
        return _publish_local(local_dir, dest)
    bucket, prefix = _bucket_key(dest)
    staging = f"{prefix}.partial-{uuid.uuid4().hex[:12]}"
    files = {name: os.path.getsize(os.path.join(local_dir, name)) for name in _local_files(local_dir)}
    client = _client()
    with s3_errors(dest):
        for name in files:
            client.upload_file(os.path.join(local_dir, name), bucket, f"{staging}/{name}")
            if progress:
                progress(name)
        client.delete_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")
        _delete_prefix(client, bucket, f"{prefix}/")
        for name in files:
            client.copy({"Bucket": bucket, "Key": f"{staging}/{name}"}, bucket, f"{prefix}/{name}")
            if progress:
                progress(name)
        client.put_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}", Body=json.dumps({"files": files}, indent=1))
        _delete_prefix(client, bucket, f"{prefix}.partial-")  # this upload's, and any interrupted one's
    return dest


def _delete_prefix(client, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def _publish_local(local_dir: str, dest: str) -> str:
    """Rename `local_dir` (on dest's filesystem) into place; an old `dest` is removed only after."""
    dest = os.path.abspath(dest)
    previous = f"{dest}.previous-{os.getpid()}"
    if os.path.exists(dest):
        os.rename(dest, previous)
    os.rename(local_dir, dest)
    shutil.rmtree(previous, ignore_errors=True)
    return dest


def fetch_directory(url: str, local_dir: str) -> str:
    """Download a directory published by `publish_directory`, refusing one without its manifest."""
    if not is_remote(url):
        return url
    from botocore.exceptions import ClientError

    bucket, prefix = _bucket_key(url)
    client = _client()
    with s3_errors(url):
        try:
            manifest = client.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("NoSuchKey", "404"):
                raise
            raise StorageError(f"{url} is not a complete export (no {MANIFEST}): its upload was interrupted "
                               f"or is still running; run the export again") from None
        for name, size in json.loads(manifest)["files"].items():
            target = os.path.join(local_dir, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            client.download_file(bucket, f"{prefix}/{name}", target)
            if os.path.getsize(target) != size:
                raise StorageError(f"{url}/{name} has {os.path.getsize(target)} bytes, the manifest says {size}")
    return local_dir
