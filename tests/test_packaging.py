"""A non-editable install (`pip install .`, as cluster/Dockerfile does) keeps pretrain's defaults:
the tiny preset and the shipped corpus are package data, found without the checkout (no Ray)."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> str:
    """The package built and installed (no dependencies) into a directory of its own. Built from a
    copy of what cluster/Dockerfile copies into its image, so the build writes nothing into the checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    shutil.copytree(
        os.path.join(ROOT, "electra_ray"), source / "electra_ray", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target, source],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return str(target)


def run_installed(installed: str, *args: str, cwd) -> str:
    """`python ARGS` from a directory outside the checkout, the installed copy first on the path."""
    env = {**os.environ, "PYTHONPATH": installed}
    run = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


def flat(values: dict, prefix: str = "") -> dict:
    return {
        key: value
        for name, inner in values.items()
        for key, value in (
            flat(inner, f"{prefix}{name}.").items() if isinstance(inner, dict) else [(prefix + name, inner)]
        )
    }


def test_an_installed_package_finds_its_presets_and_corpus(installed, tmp_path):
    where = run_installed(installed, "-c", "import electra_ray; print(electra_ray.__file__)", cwd=tmp_path)
    assert where.strip().startswith(installed + os.sep)

    # `pretrain --help` lists every key with the value a run without --config gets: the tiny preset's
    help_text = run_installed(installed, "-m", "electra_ray.pretrain", "--help", cwd=tmp_path)
    shipped = os.path.join(installed, "electra_ray", "configs", "tiny.yaml")
    assert f"(default:{shipped})" in "".join(help_text.split())  # argparse wraps the path at its hyphens
    with open(os.path.join(ROOT, "configs", "tiny.yaml")) as f:  # what `make pretrain` runs
        tiny = flat(yaml.safe_load(f))
    assert tiny["model.num_layers"] == 4 and tiny["train.max_steps"] == 1600
    for key, value in tiny.items():
        assert f"  {key} = {value!r}" in help_text, key
    assert "model.num_layers = 12" not in help_text  # not the dataclasses' ELECTRA-Small defaults

    # and the default config reads the corpus the package ships
    check = (
        "from electra_ray.config import load_config; from electra_ray.documents import open_corpus; "
        "from electra_ray.pretrain import DEFAULT_CONFIG; cfg = load_config(DEFAULT_CONFIG); "
        "print(DEFAULT_CONFIG); print(cfg.data.path); print(open_corpus(cfg.data.path).count_rows())"
    )
    config, corpus, rows = run_installed(installed, "-c", check, cwd=tmp_path).split()
    assert config == shipped and corpus.startswith(installed + os.sep) and int(rows) > 200


def test_the_checkout_configs_directory_is_the_packaged_one():
    """configs/ (the Makefile's, the docs', the cluster files') and the package data are one set of files."""
    assert os.path.samefile(os.path.join(ROOT, "configs"), os.path.join(ROOT, "electra_ray", "configs"))
    from electra_ray.config import SHIPPED_CONFIGS

    assert sorted(os.listdir(SHIPPED_CONFIGS)) == sorted(os.listdir(os.path.join(ROOT, "configs")))
    assert "tiny.yaml" in os.listdir(SHIPPED_CONFIGS)


# -- what the package imports is what it declares (issue 30) -------------------------------------


def _third_party_imports() -> set[str]:
    """Top-level names of every module electra_ray imports (at any depth of a function) that is
    neither its own nor the standard library's."""
    import ast

    names = set()
    package = os.path.join(ROOT, "electra_ray")
    for directory, _, files in os.walk(package):
        for file in files:
            if not file.endswith(".py"):
                continue
            with open(os.path.join(directory, file)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {name for name in names if name != "electra_ray" and name not in sys.stdlib_module_names}


def _declared() -> dict[str, set[str]]:
    """Distribution names (normalized) of pyproject's dependencies and of each extra."""
    import re

    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    return {"": names(project["dependencies"])} | {
        extra: names(requirements) for extra, requirements in project["optional-dependencies"].items()
    }


# Modules imported only where an extra or an optional tool is named (each guarded where it is used).
OPTIONAL = {"mlflow": "mlflow", "wandb": "wandb", "jieba": "zh", "optuna": "tune", "matplotlib": "bench"}
# Imported only by the bench's peer comparison and the tests' real pretrained weights (Makefile).
INSTALLED_BY_MAKEFILE = {"electra_pytorch"}


def test_every_imported_package_is_declared():
    import importlib.metadata

    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = []
    for name in sorted(_third_party_imports() - INSTALLED_BY_MAKEFILE):
        owners = {d.lower().replace("_", "-") for d in distributions.get(name, [])}
        where = declared[OPTIONAL[name]] if name in OPTIONAL else declared[""]
        if not owners & where:
            undeclared.append(f"{name} (from {sorted(owners) or 'nothing installed'})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_tested_versions_are_the_installed_ones():
    """constraints.txt names the versions the suite ran with (the checkpoint allow-list depends on
    DeepSpeed's version); `make install` installs under it, so a change is a deliberate edit."""
    import importlib.metadata

    with open(os.path.join(ROOT, "constraints.txt")) as f:
        pins = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]
    assert {pin.split("==")[0] for pin in pins} >= {"ray", "deepspeed", "transformers", "torch"}
    for pin in pins:
        name, version = pin.split("==")
        installed = importlib.metadata.version(name)
        assert installed.split("+")[0] == version.split("+")[0], (
            f"{name} {installed} installed, constraints say {version}"
        )
