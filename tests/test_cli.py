"""One command-line shape: `python -m electra_ray <verb>` dispatches to every verb, with prog names
that say how it was called, and an unknown verb is a one-line error."""

import importlib
import subprocess
import sys

import pytest

from electra_ray import cli


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_the_dispatcher_lists_every_verb_and_refuses_an_unknown_one():
    listing = run("electra_ray", "--help")
    assert listing.returncode == 0
    assert all(f"  {verb} " in listing.stdout for verb in cli.VERBS)
    unknown = run("electra_ray", "pretrian")
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        f"error: unknown verb 'pretrian' (known: {', '.join(cli.VERBS)})"
    ]


def test_a_verb_called_through_the_dispatcher_names_itself_so():
    dispatched = run("electra_ray", "export", "--help")
    direct = run("electra_ray.export", "--help")
    assert dispatched.stdout.startswith("usage: python -m electra_ray export ")
    assert direct.stdout.startswith("usage: python -m electra_ray.export ")


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_every_verb_has_a_main_that_takes_argv(verb):
    main = importlib.import_module(f"electra_ray.{verb}").main
    assert main.__code__.co_varnames[:1] == ("argv",)


IMPORT_CHECK = (
    "import runpy, sys\n"
    "module = sys.argv.pop(1)\n"
    "try:\n"
    "    runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
    "except SystemExit as exit:\n"
    "    print('exit', exit.code, [m for m in ('torch', 'transformers', 'ray', 'deepspeed') if m in sys.modules])\n"
)


@pytest.mark.parametrize(
    "verb, argv",
    [
        ("pretrain", ["--set", "train.batch_size=0"]),
        *[
            ("finetune", ["--model", "m", "--train", "t.parquet", "--eval", "e.parquet", *flags])
            for flags in (["--batch-size", "0"], ["--dropout", "5"], ["--task", "qa", "--doc-stride", "-1"])
        ],
        ("evaluate", ["export", "--max-sequences", "0"]),
        ("compare", ["--set", "points=0"]),
        ("tune", ["--set", "num_samples=0"]),
        ("export", ["no-such-checkpoint", "out"]),
        ("bench", ["--rounds", "x"]),
        ("prepare", ["texts", "out", "--shard-mb", "0"]),
        ("tokenizer", ["--input", "corpus", "--vocab-size", "0", "--out", "t"]),
    ],
)
def test_a_bad_value_is_refused_before_torch_transformers_and_ray_load(verb, argv):
    """A mistake on the command line costs the parsing, not seconds of imports (issue 30)."""
    run = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, f"electra_ray.{verb}", *argv], capture_output=True, text=True, timeout=120
    )
    assert run.stdout.strip() == "exit 2 []", run.stdout + run.stderr[-2000:]
    if verb == "bench":  # a mistyped flag: argparse's usage and error, as every verb's
        assert "error: argument --rounds: invalid int value: 'x'" in run.stderr, run.stderr
        return
    # finetune's flags are named in its messages (issue 30 measured ~27 s for them on a loaded machine)
    start = "error: --" if verb == "finetune" else "error: "
    assert run.stderr.strip().startswith(start) and len(run.stderr.strip().splitlines()) == 1, run.stderr
