"""Cluster configs and multi-node runs.

The YAMLs in cluster/ are checked against Ray's own autoscaler schema and held to their security
settings (IMDSv2, encrypted volumes, pinned images and installs, non-root containers, the
NetworkPolicy, the head's IAM policy), all without starting Ray. Then real Ray clusters on
this machine, several nodes each, started with `ray start` in subprocesses: a job submitted with
`ray job submit` trains and exports, with Ray Data's tasks on the node that has `data_node`; and
a cluster started from a fake multi-node autoscaling config grows when training asks for more
workers than the head node has. Every process a test starts is stopped by pid at the end.
"""

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil
import pytest
import yaml
from conftest import _free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")
BIN = os.path.dirname(sys.executable)
POLICY = os.path.join(CLUSTER, "iam-autoscaler-policy.json")  # the AWS head's instance role
# The securityContext of every container in kuberay.yaml (uid 1000: the rayproject image's `ray` user).
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
CHANGES = ("Terminate", "Stop", "Start", "Delete", "Reboot", "Modify", "Create", "Attach", "Detach")


def documents(name: str) -> list[dict]:
    with open(os.path.join(CLUSTER, name)) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def load(name: str) -> dict:
    """A cluster file's first YAML document, the cluster (kuberay.yaml: its NetworkPolicy follows)."""
    return documents(name)[0]


def values_of(tree, keys: set[str]) -> list:
    """Every value under one of `keys`, at any depth of a parsed YAML document."""
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k in keys] + [x for v in tree.values() for x in values_of(v, keys)]
    if isinstance(tree, list):
        return [x for v in tree for x in values_of(v, keys)]
    return []


def dockerfile() -> list[tuple[str, str]]:
    """cluster/Dockerfile's instructions, (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", open(os.path.join(CLUSTER, "Dockerfile")).read())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def pip_requirements(command: str) -> list[str]:
    """What each `pip install` in a shell command installs (its arguments, options left out)."""
    words, found = shlex.split(command), []
    for i in range(len(words) - 1):
        if words[i].endswith(("pip", "pip3")) and words[i + 1] == "install":
            for word in words[i + 2 :]:
                if word in ("&&", "||", ";", "|"):
                    break
                found.append(word)
    return found


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def autoscaler_config(config: dict) -> dict:
    """A cluster file as Ray's autoscaler reads it, checked against Ray's schema on the way."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.util import prepare_config, validate_config

    if config.get("kind") == "RayJob":  # KubeRay's autoscaler reads the RayCluster part
        cluster = {
            "apiVersion": config["apiVersion"],
            "kind": "RayCluster",
            "metadata": {"name": config["metadata"]["name"], "namespace": "default"},
            "spec": config["spec"]["rayClusterSpec"],
        }
        return _derive_autoscaling_config_from_ray_cr(cluster)  # validates
    if config["provider"]["type"] != "fake_multinode":  # the wheel lacks this provider's defaults file
        config = prepare_config(config)  # fills in the provider's defaults, as `ray up` does
    validate_config(config)
    return config


@pytest.mark.parametrize("name", ["aws.yaml", "kuberay.yaml", "local-fake.yaml"])
def test_cluster_files_validate_against_rays_autoscaler_schema(name):
    config = autoscaler_config(load(name))
    types = config["available_node_types"]
    workers = [t for key, t in types.items() if key != config["head_node_type"]]
    assert types[config["head_node_type"]]["max_workers"] == 0
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers)
    assert config["idle_timeout_minutes"] > 0


def test_schema_validation_rejects_a_typo():
    from jsonschema import ValidationError

    config = load("aws.yaml")
    gpu_worker = config["available_node_types"]["gpu_worker"]
    gpu_worker["max_worker"] = gpu_worker.pop("max_workers")
    with pytest.raises(ValidationError, match="max_worker"):
        autoscaler_config(config)


def test_aws_config_opens_no_port_and_holds_no_credentials():
    text = open(os.path.join(CLUSTER, "aws.yaml")).read()
    assert "0.0.0.0" not in text
    assert not any(word in text.lower() for word in ("aws_access_key", "aws_secret", "akia", "ray_auth_token"))
    config = load("aws.yaml")
    for node_type in config["available_node_types"].values():
        # Given security groups, `ray up` creates none (its own would open SSH to 0.0.0.0/0).
        assert node_type["node_config"]["SecurityGroupIds"]
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]  # every process on every node
    assert any("pip install --quiet ~/electra-ray" in command for command in config["setup_commands"])


def test_aws_nodes_require_imdsv2_and_encrypt_their_volumes():
    for name, node_type in load("aws.yaml")["available_node_types"].items():
        node = node_type["node_config"]
        # Hop limit 2: the credentials must still reach a process in the node's container.
        assert node["MetadataOptions"]["HttpTokens"] == "required", name
        assert node["MetadataOptions"].get("HttpEndpoint", "enabled") == "enabled", name
        assert node["MetadataOptions"]["HttpPutResponseHopLimit"] == 2, name
        assert node["BlockDeviceMappings"], name
        assert all(volume["Ebs"].get("Encrypted") is True for volume in node["BlockDeviceMappings"]), name


@pytest.mark.parametrize("name", ["aws.yaml", "kuberay.yaml", "Dockerfile"])
def test_images_and_amis_are_pinned(name):
    """Every container image has a tag other than `latest` (or a digest); every AMI is one id, not
    an alias or an SSM parameter that moves."""
    text = open(os.path.join(CLUSTER, name)).read()
    assert ":latest" not in text and "/latest" not in text
    if name == "Dockerfile":
        images, amis = [args.split()[0] for instruction, args in dockerfile() if instruction == "FROM"], []
    else:
        trees = documents(name)
        images, amis = values_of(trees, {"image", "head_image", "worker_image"}), values_of(trees, {"ImageId"})
    assert images
    for image in images:
        tag = image.split("@", 1)[1] if "@" in image else image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", image
    assert all(re.fullmatch(r"ami-[0-9a-f]{8,17}", ami) for ami in amis), amis
    assert bool(amis) == (name == "aws.yaml")


def test_pip_installs_are_pinned():
    """aws.yaml's node setup and the Dockerfile install this checkout and exact versions only (the
    same ones, within pyproject.toml's ranges), and never upgrade pip."""
    import tomllib
    from packaging.requirements import Requirement

    config = load("aws.yaml")
    commands = [
        c
        for commands in values_of(
            config, {"setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands"}
        )
        for c in commands
    ]
    runs = [args for instruction, args in dockerfile() if instruction == "RUN"]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        ranges = {Requirement(r).name: Requirement(r).specifier for r in tomllib.load(f)["project"]["dependencies"]}
    pins = {}
    for where, shell in [("aws.yaml", c) for c in commands] + [("Dockerfile", r) for r in runs]:
        for word in pip_requirements(shell):
            assert word not in ("-U", "--upgrade", "-e", "--editable", "-r", "--requirement"), (where, shell)
            if word.startswith("-") or word in (".", "~/electra-ray"):  # options; this checkout
                continue
            requirement = Requirement(word)
            specs = list(requirement.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", (where, word)
            spec = specs[0]
            assert requirement.name not in ranges or spec.version in ranges[requirement.name], word
            pins.setdefault(where, set()).add((requirement.name, spec.version))
    assert pins["aws.yaml"] == pins["Dockerfile"]
    assert {"ray", "torch", "deepspeed", "transformers"} <= {name for name, _ in pins["aws.yaml"]}


def test_kuberay_containers_run_as_non_root_without_privileges():
    rayjob = load("kuberay.yaml")
    containers = values_of(rayjob, {"containers", "initContainers"})
    names = [container["name"] for group in containers for container in group]
    assert names.count("ray-head") == 1 and names.count("ray-worker") == 2 and "ray-job-submitter" in names
    contexts = [container.get("securityContext", {}) for group in containers for container in group]
    contexts.append(rayjob["spec"]["rayClusterSpec"]["autoscalerOptions"].get("securityContext", {}))
    for context in contexts:
        assert {key: context.get(key) for key in RESTRICTED} == RESTRICTED, context


def test_kuberay_network_policy_admits_only_the_clusters_pods():
    """One NetworkPolicy selects every Ray pod; it admits this cluster's pods on any port, and
    others (the namespace's pods, the operator) on the dashboard / Jobs API and Ray client ports
    only, which token auth guards. The head's Service exposes no other port of its own."""
    rayjob, *others = documents("kuberay.yaml")
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    [head] = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert {port["containerPort"] for port in head["ports"]} <= {6379, 8265, 10001}
    [policy] = [doc for doc in others if doc["kind"] == "NetworkPolicy"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        assert selector.items() <= template.get("metadata", {}).get("labels", {}).items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    own_pods = False
    for rule in policy["spec"]["ingress"]:
        peers, ports = rule["from"], {port["port"] for port in rule.get("ports", [])}  # no `from`: anyone
        assert all("ipBlock" not in peer and "podSelector" in peer for peer in peers), rule
        if peers == [{"podSelector": {"matchLabels": selector}}]:
            own_pods = True
            continue
        assert ports and ports <= {8265, 10001}, rule
        for peer in peers:  # the namespace's pods, or named pods of one named namespace
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name"), rule
                assert peer["podSelector"].get("matchLabels"), rule
    assert own_pods


def test_head_iam_policy_is_held_to_this_cluster():
    """The AWS head may launch only instances tagged with this cluster's name, change only such
    instances, pass only the worker role, and do all Ray's AWS node provider needs."""
    config = load("aws.yaml")
    cluster_name = config["cluster_name"]
    worker_profile = config["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"]
    worker_role = worker_profile.replace(":instance-profile/", ":role/")  # the README names both alike
    with open(POLICY) as f:
        statements = json.load(f)["Statement"]
    granted = set()
    for statement in statements:
        actions, resources = as_list(statement["Action"]), as_list(statement["Resource"])
        tags = statement.get("Condition", {}).get("StringEquals", {})
        granted.update(actions)
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        assert not any("*" in action for action in actions), statement
        if all(action.startswith("ec2:Describe") for action in actions):
            continue  # read-only lookups
        assert "*" not in resources, statement
        if actions == ["iam:PassRole"]:
            assert resources == [worker_role], statement
        elif actions == ["ec2:RunInstances"] and any(":instance/" in r for r in resources):
            assert tags.get("aws:RequestTag/ray-cluster-name") == cluster_name, statement
        elif actions == ["ec2:RunInstances"]:  # what a launch uses; the instance statement holds the launch
            kinds = "image|subnet|network-interface|security-group|volume|key-pair|spot-instances-request"
            assert all(re.fullmatch(rf"arn:aws:ec2:\*:\*?:({kinds})/\*", r) for r in resources), statement
        elif actions == ["ec2:CreateTags"] and tags.get("ec2:CreateAction") == "RunInstances":
            pass  # the tags of the launch request itself
        else:
            assert all(action.split(":")[1].startswith(CHANGES) for action in actions), statement
            assert tags.get("aws:ResourceTag/ray-cluster-name") == cluster_name, statement
    # what ray/autoscaler/_private/aws/node_provider.py calls on the head
    assert {
        "ec2:DescribeInstances",
        "ec2:RunInstances",
        "ec2:CreateTags",
        "ec2:TerminateInstances",
        "ec2:StopInstances",
        "ec2:StartInstances",
        "iam:PassRole",
    } <= granted


def test_readme_shows_the_head_policy_and_never_full_ec2_access():
    readme = open(os.path.join(CLUSTER, "README.md")).read()
    policy = open(POLICY).read()
    for text in (readme, policy):
        assert "AmazonEC2FullAccess" not in text and "FullAccess" not in text
        assert not re.search(r'"(ec2|iam):\*"|"Action"\s*:\s*\[?\s*"\*"', text)
    assert "--policy-document file://cluster/iam-autoscaler-policy.json" in readme
    shown = re.search(r"```json\n(.*?)```", readme, re.S)
    assert shown and json.loads(shown.group(1)) == json.loads(policy)


@pytest.mark.parametrize("name", ["aws.yaml", "kuberay.yaml"])
@pytest.mark.parametrize("preset", ["base.yaml", "large.yaml"])
def test_autoscaler_answers_training_with_gpu_nodes_and_ray_data_with_cpu_nodes(name, preset):
    """Ray's own planner, asked for what pretrain requests: Ray Train's workers (from the preset's
    scaling section) get GPU nodes, 8 to a node; Ray Data's tasks get the CPU type."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    from electra_ray.config import load_config
    from electra_ray.driver import scaling_config

    config = autoscaler_config(load(name))
    types, head = config["available_node_types"], config["head_node_type"]
    gpu_type = next(key for key, t in types.items() if t["resources"].get("GPU"))
    [data_type] = [key for key, t in types.items() if "data_node" in t["resources"]]
    assert not types[data_type]["resources"].get("GPU")

    def plan(demands):
        scorer = partial(
            _default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary(node_availabilities={})
        )
        added, unmet = get_nodes_for(types, {}, head, config["max_workers"], demands, scorer)
        assert not unmet
        return dict(added)

    cfg = load_config(os.path.join(ROOT, "configs", preset), ["scaling.data_resource=data_node"])
    scaling = scaling_config(cfg.scaling)
    assert plan([scaling._resources_per_worker_not_none] * scaling.num_workers) == {
        gpu_type: cfg.scaling.num_workers // types[gpu_type]["resources"]["GPU"]
    }
    # what each read / tokenize task asks for (data.build_dataset)
    assert plan([{"CPU": 1, cfg.scaling.data_resource: 0.001}] * 8) == {data_type: 1}


class LocalCluster:
    """Ray nodes on this machine: a head (dashboard and job API on 127.0.0.1) plus any workers.

    Each node is a `ray start --block` subprocess with a temp dir of its own under `self.temp_dir`
    (as on separate machines: nodes sharing one would delete each other's unpacked working dirs).
    Every Ray process of the cluster descends from one of them or names that dir, and `stop` ends
    exactly those, by pid. Token authentication is on, with a token of this cluster's own."""

    def __init__(self, log_dir: str, env: dict[str, str] | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="er7-", dir="/tmp")  # short: Ray's socket paths are capped
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.token = secrets.token_hex(16)
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            # Ray processes that look for "the" cluster would find other people's on this machine.
            "RAY_ADDRESS": self.address,
            # Ray Data starts 32 actor processes to read Parquet footers; for two small files
            # that is most of a 2-core machine's work.
            "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
            "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # as aws.yaml sets it on its nodes
            **(env or {}),
        }
        self.nodes: list[subprocess.Popen] = []
        self.log = open(os.path.join(log_dir, "ray-nodes.log"), "ab")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str]) -> None:
        temp_dir = os.path.join(self.temp_dir, f"n{len(self.nodes)}")
        common = [
            f"--temp-dir={temp_dir}",
            "--node-ip-address=127.0.0.1",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            "--block",
        ]
        self.nodes.append(
            subprocess.Popen(
                [os.path.join(BIN, "ray"), "start", *args, *common],
                env=self.env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        )

    def start_head(self, num_cpus: int, *extra: str) -> "LocalCluster":
        self._start(
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={_free_port()}",
                *extra,
            ]
        )
        self.wait_for(lambda: len(self.alive_nodes()) == 1, "the head node")
        return self

    def add_node(self, num_cpus: int, resources: dict | None = None) -> None:
        """Start a worker node and wait until it has joined (one at a time: nodes that register
        together on one IP can time out)."""
        count = len(self.alive_nodes())
        self._start(
            [f"--address={self.address}", f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources or {})}"]
        )
        self.wait_for(lambda: len(self.alive_nodes()) == count + 1, f"node {count + 1}")

    def api(self, path: str):
        """GET the dashboard's HTTP API (the token in the header, as `ray job` sends it)."""
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def alive_nodes(self) -> list[dict]:
        try:
            nodes = self.api("/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]
        except OSError:
            return []
        return [node for node in nodes if node["state"] == "ALIVE"]

    def wait_for(self, condition, what: str, timeout: float = 90) -> float:
        start = time.monotonic()
        while not condition():
            for node in self.nodes:
                assert node.poll() is None, (
                    f"`ray start` exited ({node.returncode}) waiting for {what}: see {self.log.name}"
                )
            assert time.monotonic() - start < timeout, f"timed out waiting for {what}: see {self.log.name}"
            time.sleep(0.5)
        return time.monotonic() - start

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A `ray` CLI command against this cluster, as a user would type it."""
        return subprocess.run(
            [os.path.join(BIN, "ray"), *args],
            env={**self.env, "RAY_ADDRESS": self.dashboard},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def processes(self) -> list[psutil.Process]:
        found = {}
        for node in self.nodes:
            try:
                parent = psutil.Process(node.pid)
                found.update({p.pid: p for p in [parent, *parent.children(recursive=True)]})
            except psutil.NoSuchProcess:
                pass
        for process in psutil.process_iter(["cmdline"]):  # anything re-parented, by our temp dir
            if any(self.temp_dir in part for part in process.info["cmdline"] or []):
                found[process.pid] = process
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """SIGTERM every process of the cluster at once, SIGKILL what is left after 3 s (a raylet
        takes 10 s or more to drain, and this cluster is thrown away)."""
        processes = self.processes()
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=3)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        for node in self.nodes:
            node.wait(timeout=10)
        self.log.close()
        logs = os.path.join(self.temp_dir, "n0", "session_latest", "logs")  # keep the autoscaler's and jobs'
        for name in os.listdir(logs) if os.path.isdir(logs) else []:
            if name.startswith(("monitor", "job-driver")):
                shutil.copy(os.path.join(logs, name), os.path.dirname(self.log.name))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path):
    clusters = []

    def make(**kwargs) -> LocalCluster:
        clusters.append(LocalCluster(str(tmp_path), **kwargs))
        return clusters[-1]

    try:
        yield make
    finally:
        for c in clusters:
            c.stop()
    assert not any(c.processes() for c in clusters), "Ray processes left behind"


def actor_nodes(c: LocalCluster, class_name: str) -> list[str]:
    actors = c.api("/api/v0/actors?detail=1&limit=1000")["data"]["result"]["result"]
    return [a["node_id"] for a in actors if a["class_name"] == class_name]


def tiny_job_overrides(corpus: str, tokenizer: str, out: str, name: str) -> list[str]:
    return [
        f"data.path={corpus}",
        f"data.tokenizer={tokenizer}",
        "data.seq_len=64",
        "data.eval_fraction=0.1",
        "model.num_layers=2",
        "model.hidden_size=64",
        "model.embedding_size=64",
        "model.intermediate_size=128",
        "model.max_position_embeddings=64",
        "train.max_steps=4",
        "train.log_every=2",
        "train.checkpoint_every=4",
        "train.batch_size=8",
        "train.warmup_steps=2",
        f"output.dir={out}",
        f"output.name={name}",
    ]


@pytest.mark.ray
def test_job_submit_to_a_multinode_cluster_trains_and_exports(cluster, small_corpus, tokenizer_dir, tmp_path):
    # The head stands in for a GPU node (the only node with the 2 CPUs a training worker asks for),
    # the other node for a CPU node: it has `data_node`, so Ray Data's tasks must run there.
    c = cluster().start_head(num_cpus=2)
    c.add_node(num_cpus=1, resources={"data_node": 1})

    start = time.monotonic()
    submit = c.ray(
        "job",
        "submit",
        "--submission-id",
        "electra-job",
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "electra_ray.pretrain",
        "--config",
        "configs/tiny.yaml",
        "--set",
        *tiny_job_overrides(small_corpus, tokenizer_dir, str(tmp_path), "job"),
        "scaling.num_workers=1",
        "scaling.cpus_per_worker=2",
        "scaling.data_resource=data_node",
    )
    elapsed = time.monotonic() - start
    (tmp_path / "job.log").write_text(submit.stdout + submit.stderr)
    status = c.api("/api/jobs/electra-job")["status"]
    assert submit.returncode == 0 and status == "SUCCEEDED", submit.stdout[-4000:] + submit.stderr[-2000:]
    print(f"job submit -> SUCCEEDED in {elapsed:.1f}s")

    lines = submit.stdout.splitlines()
    export = next(line.split(": ", 1)[1] for line in lines if line.startswith("export: "))
    assert export == str(tmp_path / "job" / "export")
    assert "step 4/4 | loss" in submit.stdout

    from transformers import AutoTokenizer, ElectraForPreTraining

    model = ElectraForPreTraining.from_pretrained(os.path.join(export, "discriminator"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(export, "discriminator"))
    assert len(tokenizer) == model.config.vocab_size == 2000 and model.config.hidden_size == 64

    # Where the work ran: reading and tokenizing on the data node only, training on the head.
    # (Listing the files and reading Parquet footers are Ray Data's own small tasks, not steered.)
    data_node = {n["node_id"] for n in c.alive_nodes() if "data_node" in n["resources_total"]}
    tasks = c.api("/api/v0/tasks?detail=1&limit=10000")["data"]["result"]["result"]
    data_work = [
        t for t in tasks if t["type"] == "NORMAL_TASK" and ("Parquet" in t["name"] or "MapBatches" in t["name"])
    ]
    assert "MapBatches(_tokenize_block)" in {t["name"] for t in data_work}
    assert {t["node_id"] for t in data_work} == data_node, data_work
    head = next(n["node_id"] for n in c.alive_nodes() if n["is_head_node"])
    assert actor_nodes(c, "RayTrainWorker") == [head]


@pytest.mark.ray
def test_autoscaler_adds_nodes_when_training_asks_for_more_workers(cluster, small_corpus, tokenizer_dir, tmp_path):
    # The head has room for one 2-CPU training worker (and a CPU for Ray Data). Two are asked for:
    # the autoscaler must add a gpu_worker node for the second.
    c = cluster(env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    config = load("local-fake.yaml")
    config["provider"]["gcs_address"] = c.address
    config_path = tmp_path / "local-fake.json"
    config_path.write_text(json.dumps(config))
    c.start_head(
        config["available_node_types"]["ray.head.default"]["resources"]["CPU"], f"--autoscaling-config={config_path}"
    )

    # No --working-dir here: the fake provider's nodes share the head's temp dir, where unpacking
    # the working dir again would pull it from under the driver. The package is installed instead,
    # as the setup commands of aws.yaml do.
    submit = c.ray(
        "job",
        "submit",
        "--no-wait",
        "--submission-id",
        "autoscale",
        "--",
        "python",
        "-m",
        "electra_ray.pretrain",
        "--config",
        os.path.join(ROOT, "configs", "tiny.yaml"),
        "--set",
        *tiny_job_overrides(small_corpus, tokenizer_dir, str(tmp_path), "autoscale"),
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=2",
    )
    assert submit.returncode == 0, submit.stderr
    start, timeline = time.monotonic(), []  # (seconds since submit, alive nodes) at every change
    while (status := c.api("/api/jobs/autoscale")["status"]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        count = len(c.alive_nodes())
        if not timeline or timeline[-1][1] != count:
            timeline.append((round(time.monotonic() - start, 1), count))
        assert time.monotonic() - start < 300, f"job still {status} after 300 s; nodes: {timeline}"
        time.sleep(0.5)
    print(f"job {status} after {time.monotonic() - start:.1f}s; (seconds, nodes): {timeline}")
    logs = c.ray("job", "logs", "autoscale").stdout
    (tmp_path / "job.log").write_text(logs)
    assert status == "SUCCEEDED", logs[-4000:]
    export = tmp_path / "autoscale" / "export"
    assert f"export: {export}" in logs and (export / "discriminator" / "config.json").exists()
    assert timeline[0][1] == 1 and max(count for _, count in timeline) == 2, timeline
    # the two training workers ran on the head and on the node the autoscaler added
    assert len(set(actor_nodes(c, "RayTrainWorker"))) == 2
