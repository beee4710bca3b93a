"""s3:// paths against a real S3-compatible server (rclone) on 127.0.0.1: publishing, fetching,
and the one-line errors a user sees for each way S3 can be unusable."""

import json
import os
import subprocess
import sys
import threading

import pytest
from conftest import _free_port

from electra_ray import storage


def write_tree(root, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return str(root)


def read_tree(root) -> dict[str, str]:
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name)) as f:
                found[os.path.relpath(os.path.join(directory, name), root)] = f.read()
    return found


def test_publish_replaces_the_previous_copy_and_fetch_gets_exactly_it(rclone_s3, tmp_path):
    url = "s3://electra/published/model"
    written = []
    storage.publish_directory(
        write_tree(tmp_path / "v1", {"a.txt": "one", "sub/b.txt": "two"}), url, progress=written.append
    )
    assert written == ["a.txt", "sub/b.txt"]  # each uploaded once, to its own version prefix
    storage.publish_directory(write_tree(tmp_path / "v2", {"a.txt": "uno", "c.txt": "tres"}), url, overwrite=True)

    fetched = read_tree(storage.fetch_directory(url, str(tmp_path / "got")))
    assert storage.Manifest.parse(fetched.pop(storage.MANIFEST), "").files.keys() == {"a.txt", "c.txt"}
    assert fetched == {"a.txt": "uno", "c.txt": "tres"}  # sub/b.txt of v1 did not survive
    bucket_dir = os.path.join(rclone_s3.data_dir, "electra", "published")
    assert sorted(os.listdir(bucket_dir)) == ["model"]  # no staging prefix left behind
    assert storage.MANIFEST in os.listdir(os.path.join(bucket_dir, "model"))
    versions = os.listdir(os.path.join(bucket_dir, "model", storage.VERSIONS))
    assert versions == [storage.read_manifest(url).version]  # the first version's files were removed


def test_fetch_refuses_a_prefix_without_manifest(rclone_s3, tmp_path):
    storage.write_text("s3://electra/half/config.json", "{}")
    with pytest.raises(storage.StorageError, match=r"s3://electra/half is not a complete export \(no _MANIFEST.json\)"):
        storage.fetch_directory("s3://electra/half", str(tmp_path))


def test_a_short_outage_is_retried(rclone_s3, tmp_path):
    """The server is down when the upload starts and back a second later: backoff bridges it."""
    rclone_s3.stop()
    restart = threading.Timer(1.0, rclone_s3.start)
    restart.start()
    try:
        storage.publish_directory(write_tree(tmp_path / "v", {"weights.bin": "x" * 1000}), "s3://electra/retried")
    finally:
        restart.join()
    fetched = read_tree(storage.fetch_directory("s3://electra/retried", str(tmp_path / "got")))
    assert fetched.pop(storage.MANIFEST) and fetched == {"weights.bin": "x" * 1000}


def test_tokenizer_verb_writes_to_and_pipeline_reads_from_s3(rclone_s3, small_corpus, tmp_path):
    from transformers import AutoTokenizer

    from electra_ray.tokenizer import read_tokenizer_json

    result = run_verb(
        [
            "electra_ray.tokenizer",
            "--input",
            small_corpus,
            "--vocab-size",
            "2000",
            "--out",
            "s3://electra/tokenizers/sotu",
        ],
        {},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    local = storage.fetch_directory("s3://electra/tokenizers/sotu", str(tmp_path))  # published whole
    assert read_tokenizer_json("s3://electra/tokenizers/sotu") == read_tokenizer_json(local)
    tokenizer = AutoTokenizer.from_pretrained(local)
    assert len(tokenizer) == 2000
    assert (
        tokenizer.decode(tokenizer("The Congress of the United States")["input_ids"], skip_special_tokens=True)
        == "the congress of the united states"
    )


def run_verb(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


NO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.mark.parametrize(
    "case, args, env, message",
    [
        (
            "missing bucket",
            ["electra_ray.pretrain", "--set", "data.path=s3://no-such-bucket/corpus"],
            {},
            "error: bucket 'no-such-bucket' does not exist at endpoint http://127.0.0.1:{port} (s3://no-such-bucket/corpus)",
        ),
        (
            "missing output bucket",
            ["electra_ray.pretrain", "--set", "output.dir=s3://no-such-bucket/runs"],
            {},
            "error: bucket 'no-such-bucket' does not exist at endpoint http://127.0.0.1:{port} (s3://no-such-bucket/runs)",
        ),
        (
            "access denied",
            ["electra_ray.pretrain", "--set", "data.path=s3://electra/corpus"],
            {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
            "error: access denied to s3://electra/corpus at endpoint http://127.0.0.1:{port}: check the credentials",
        ),
        (
            "no credentials",
            ["electra_ray.export", "/nonexistent", "s3://electra/models/m"],
            NO_CREDENTIALS,
            "error: no AWS credentials found for s3://electra/models/m: "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        (
            "unreachable endpoint",
            ["electra_ray.pretrain", "--set", "data.tokenizer=s3://electra/tokenizer"],
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:{closed}"},
            "error: cannot reach the S3 endpoint http://127.0.0.1:{closed} for s3://electra/tokenizer: "
            "check AWS_ENDPOINT_URL",
        ),
        (
            "unsupported scheme",
            ["electra_ray.prepare", "gs://bucket/texts", "out"],
            {},
            "error: unsupported URL scheme 'gs://' in gs://bucket/texts",
        ),
    ],
)
def test_each_s3_failure_is_one_clear_line(rclone_s3, case, args, env, message):
    closed = str(_free_port())
    env = {key: value.format(closed=closed) for key, value in env.items()}
    result = run_verb(args, env)
    assert result.returncode == 2, (case, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(port=rclone_s3.port, closed=closed)), result.stderr
    assert rclone_s3.SECRET_KEY not in result.stdout + result.stderr


# -- the output rule: nothing of the user's is replaced or removed --------------------------------


def test_local_publish_refuses_a_directory_that_is_not_an_earlier_output(tmp_path):
    home = write_tree(tmp_path / "home", {"notes.txt": "mine", "runs/x/checkpoint_0/weights": "w"})
    with storage.staging_directory(home) as staging:
        write_tree(staging, {"model.bin": "new"})
        with pytest.raises(storage.StorageError, match="already exists and is not an export of electra-ray"):
            storage.publish_directory(staging, home)
    assert read_tree(home) == {"notes.txt": "mine", "runs/x/checkpoint_0/weights": "w"}
    assert sorted(os.listdir(tmp_path)) == ["home"]  # the staging directory went too


def test_local_overwrite_removes_only_what_the_old_manifest_lists(tmp_path):
    dest = str(tmp_path / "export")
    for version, files in (("one", {"a.bin": "1", "sub/b.bin": "2"}), ("two", {"a.bin": "uno"})):
        with storage.staging_directory(dest) as staging:
            write_tree(staging, files)
            if version == "two":
                with pytest.raises(storage.StorageError, match="already holds an export.*--overwrite"):
                    storage.publish_directory(staging, dest)
            storage.publish_directory(staging, dest, overwrite=version == "two")
    assert {k: v for k, v in read_tree(dest).items() if k != storage.MANIFEST} == {"a.bin": "uno"}
    storage.verify_directory(dest)

    write_tree(dest, {"my-notes.txt": "keep"})  # a file of the user's inside the export
    with storage.staging_directory(dest) as staging:
        write_tree(staging, {"a.bin": "three"})
        with pytest.raises(
            storage.StorageError, match=r"holds files its _MANIFEST.json does not list \(my-notes.txt\)"
        ):
            storage.publish_directory(staging, dest, overwrite=True)
    assert read_tree(dest)["my-notes.txt"] == "keep" and read_tree(dest)["a.bin"] == "uno"
    assert sorted(os.listdir(tmp_path)) == ["export"]

    with open(os.path.join(dest, "a.bin"), "w") as f:
        f.write("UNO")  # same size: only the hash can tell
    with pytest.raises(storage.StorageError, match="a.bin does not match the sha256 its manifest lists"):
        storage.verify_directory(dest)


def test_s3_publish_refuses_a_prefix_of_other_objects_and_keeps_them(rclone_s3, tmp_path):
    client = storage.s3_client()
    for key in ("runs/x/checkpoint_0/model.pt", "runs/x/config.json"):
        client.put_object(Bucket="electra", Key=key, Body=b"user data")
    source = write_tree(tmp_path / "export", {"weights.bin": "w"})
    for dest in ("s3://electra/runs/x", "s3://electra/runs"):
        with pytest.raises(storage.StorageError, match="already holds objects that are not an export"):
            storage.publish_directory(source, dest, overwrite=True)
    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket="electra", Prefix="runs/")["Contents"])
    assert keys == ["runs/x/checkpoint_0/model.pt", "runs/x/config.json"]

    storage.publish_directory(source, "s3://electra/runs/x/export")  # a new prefix beside them is fine
    with pytest.raises(storage.StorageError, match="already holds an export"):
        storage.publish_directory(source, "s3://electra/runs/x/export")
    with pytest.raises(storage.StorageError, match="holds export output, not a tokenizer"):
        storage.publish_directory(source, "s3://electra/runs/x/export", kind="tokenizer", overwrite=True)


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "sub//x", "a/../../escape"])
def test_fetch_refuses_a_manifest_naming_a_path_outside_the_target(rclone_s3, tmp_path, name):
    client = storage.s3_client()
    client.put_object(Bucket="electra", Key="evil/_versions/v1/ok.txt", Body=b"ok")
    manifest = {"format": 2, "kind": "export", "version": "v1", "files": {"ok.txt": {"size": 2}, name: {"size": 5}}}
    client.put_object(Bucket="electra", Key="evil/_MANIFEST.json", Body=json.dumps(manifest).encode())
    target = tmp_path / "deep" / "er" / "target"
    with pytest.raises(storage.StorageError, match="names an unsafe file"):
        storage.fetch_directory("s3://electra/evil", str(target))
    written = [os.path.join(root, f) for root, _, files in os.walk(tmp_path) for f in files]
    assert written == [] and not os.path.exists("/abs/path")


PUBLISH = """
import sys
from electra_ray import storage
storage.publish_directory(sys.argv[1], sys.argv[2], overwrite=True)
"""


def test_publishers_killed_at_random_points_never_expose_a_mix(rclone_s3, tmp_path):
    """A reader fetches in a loop while two publishers replace the export and one of them is
    SIGKILLed at a random point: every fetch that succeeds is one whole export, hash-checked, and
    after each kill the export is still fetchable."""
    import random
    import signal
    import time

    url = "s3://electra/contested"
    trees = {}
    for name in ("a", "b"):  # same file names, different contents: a mix would be detectable
        files = {f"part-{i}.bin": (name * 1000 + str(i)) * 40 for i in range(6)}
        trees[name] = (write_tree(tmp_path / f"src-{name}", files), files)
    storage.publish_directory(trees["a"][0], url)
    complete = [files for _, files in trees.values()]
    seen, failures, stop = [], [], threading.Event()

    def reader():
        count = 0
        while not stop.is_set():
            count += 1
            try:
                got = read_tree(storage.fetch_directory(url, str(tmp_path / f"read-{count}")))
            except storage.StorageError as error:
                failures.append(str(error))
                continue
            got.pop(storage.MANIFEST, None)
            seen.append(got in complete)

    thread = threading.Thread(target=reader)
    thread.start()
    rng = random.Random(0)
    try:
        for round_ in range(5):
            first, second = ("b", "a") if round_ % 2 == 0 else ("a", "b")
            publishers = [
                subprocess.Popen([sys.executable, "-c", PUBLISH, trees[name][0], url]) for name in (first, second)
            ]
            time.sleep(rng.uniform(0.3, 2.0))  # import time plus part of the upload, or past its end
            publishers[0].send_signal(signal.SIGKILL)
            publishers[0].wait()
            assert publishers[1].wait(timeout=120) == 0
            after = read_tree(storage.fetch_directory(url, str(tmp_path / f"after-{round_}")))
            after.pop(storage.MANIFEST)
            assert after in complete
    finally:
        stop.set()
        thread.join()
    assert seen and all(seen), (len(seen), seen.count(False))
    assert len(failures) <= len(seen), failures[:3]  # a fetch may lose a race now and then, not as a rule


def test_a_manifest_that_is_not_json_is_one_clear_error(rclone_s3, tmp_path):
    storage.s3_client().put_object(Bucket="electra", Key="garbled/_MANIFEST.json", Body=b"{not json")
    with pytest.raises(
        storage.StorageError, match=r"s3://electra/garbled/_MANIFEST.json is not a valid _MANIFEST.json"
    ):
        storage.fetch_directory("s3://electra/garbled", str(tmp_path / "got"))
    assert not os.path.exists(tmp_path / "got")


def test_messages_never_echo_credentials_in_an_endpoint_url(rclone_s3, monkeypatch):
    closed = _free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://admin:hunter2-secret@127.0.0.1:{closed}")
    with pytest.raises(storage.StorageError) as refused:
        storage.check("s3://electra/x")
    assert "hunter2" not in str(refused.value) and f"http://***@127.0.0.1:{closed}" in str(refused.value)
    assert (
        storage.redact("s3://key:secret@bucket/p") == "s3://***@bucket/p" and storage.redact("s3://b/p") == "s3://b/p"
    )


def test_overwrite_never_follows_a_symbolic_link_out_of_the_export(tmp_path):
    dest = str(tmp_path / "export")
    elsewhere = write_tree(tmp_path / "elsewhere", {"config.json": "the user's"})
    with storage.staging_directory(dest) as staging:
        write_tree(staging, {"discriminator/config.json": "ours"})
        storage.publish_directory(staging, dest)
    import shutil

    shutil.rmtree(os.path.join(dest, "discriminator"))
    os.symlink(elsewhere, os.path.join(dest, "discriminator"))  # same listed name, now a link
    with pytest.raises(storage.StorageError, match=r"holds files its _MANIFEST.json does not list \(discriminator\)"):
        storage.check_output(dest, "export", overwrite=True)
    with storage.staging_directory(dest) as staging:
        write_tree(staging, {"discriminator/config.json": "new"})
        with pytest.raises(storage.StorageError, match="does not list"):
            storage.publish_directory(staging, dest, overwrite=True)
    assert read_tree(elsewhere) == {"config.json": "the user's"}


def test_a_format_1_tokenizer_manifest_is_a_tokenizer():
    manifest = storage.Manifest.parse(json.dumps({"files": {"tokenizer.json": 10, "tokenizer_config.json": 2}}), "m")
    assert manifest.kind == "tokenizer" and manifest.version == ""
    export = storage.Manifest.parse(json.dumps({"files": {"discriminator/config.json": 3}}), "m")
    assert export.kind == "export"


# -- one command per output at a time (issue 30) -------------------------------------------------

HOLD = """
import sys, time
from electra_ray import storage
with storage.exclusive_output(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_in_another_process(out: str, seconds: float = 60.0) -> subprocess.Popen:
    """A real second process holding `out`: started, and returned once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_held_output_is_refused_in_one_line_and_freed_when_the_holder_dies(tmp_path):
    out = str(tmp_path / "deep" / "out")
    holder = hold_in_another_process(out)
    try:
        with pytest.raises(storage.OutputBusy, match=r"is being written by another command right now"):
            with storage.exclusive_output(out):
                pass
        assert os.listdir(tmp_path) == ["deep"] and os.listdir(tmp_path / "deep") == ["out.electra-ray-lock"]
    finally:
        holder.kill()  # killed, not released: the kernel frees the flock, the file stays behind
        holder.wait()
    assert os.path.exists(out + storage.LOCK_SUFFIX)
    with storage.exclusive_output(out):  # a stale lock file is taken over
        os.makedirs(out)
    assert os.listdir(tmp_path / "deep") == ["out"]  # the holder removes its lock file


def test_a_refused_command_leaves_no_parent_directories(tmp_path):
    out = str(tmp_path / "a" / "b" / "out")
    with pytest.raises(RuntimeError):
        with storage.exclusive_output(out):
            assert os.path.isdir(tmp_path / "a" / "b")
            raise RuntimeError("refused")
    assert os.listdir(tmp_path) == []


def test_a_file_in_the_way_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(storage.StorageError, match=r"notes.txt exists and is not a directory"):
        with storage.exclusive_output(str(tmp_path / "notes.txt" / "out")):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "verb, argv",
    [
        ("tokenizer", ["--input", "{corpus}", "--vocab-size", "200", "--out", "{out}"]),
        ("prepare", ["{texts}", "{out}"]),
        ("finetune", ["--model", "m", "--train", "{train}", "--eval", "{train}", "--out", "{out}"]),
    ],
)
def test_a_second_command_into_a_held_output_is_refused(verb, argv, small_corpus, tmp_path):
    """What a second `finetune` / `prepare` / `tokenizer` into the same OUT meets while the first
    runs: one line, exit 2, nothing written (the first is a real process holding OUT)."""
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("some text\n\nmore text\n")
    (tmp_path / "train.parquet").write_bytes(b"")  # exists: the check that comes before OUT passes
    out = str(tmp_path / "out")
    fill = {
        "corpus": small_corpus,
        "out": out,
        "texts": str(tmp_path / "texts"),
        "train": str(tmp_path / "train.parquet"),
    }
    holder = hold_in_another_process(out)
    try:
        run = subprocess.run(
            [sys.executable, "-m", f"electra_ray.{verb}", *[a.format(**fill) for a in argv]],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [
        f"error: {out} is being written by another command right now "
        f"(it holds {out}.electra-ray-lock): nothing was written"
    ]
    assert not os.path.exists(out)
