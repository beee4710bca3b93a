"""`tune --resume` trusts nothing in the sweep's directory: it reads only our own JSON (sweep.json,
trials.json), checked as a config file is, never Tune's pickles; a scratch name that is a path is
refused before anything is removed; a moved sweep is continued where it is now; a corrupt file is
one line. And a sweep over a text-valued key is summarized (its plot, table and best.yaml).
No Ray starts here: each sweep directory is made by new_sweep and its trials.json written by hand."""

import json
import math
import os
import pickle
import shutil
from dataclasses import dataclass

import pytest
from conftest import CodeRunningPickle

from electra_ray import tune as tune_verb
from electra_ray.errors import UserError
from electra_ray.tune import (
    RECORD_FILE,
    SWEEP_FILE,
    SweepSettings,
    TrialRecord,
    format_table,
    load_sweep_config,
    new_sweep,
    plot_scores,
    rank,
    remove_scratch,
    resume_sessions,
    resume_sweep,
    trial_rows,
    write_best_config,
    write_csv,
    write_records,
)

SPACE = "space={model.generator_size: [0.25, 1.0], train.optimizer: [adamw, electra]}"


def make_sweep(tmp_path, small_corpus, tokenizer_dir, name: str = "sweep") -> tuple[str, object]:
    """A new sweep's directory as new_sweep leaves it (no trial run): 4 grid points, heldout_auc."""
    cfg = load_sweep_config(
        None,
        [
            SPACE,
            f"pretrain.data.path={small_corpus}",
            f"pretrain.data.tokenizer={tokenizer_dir}",
            "pretrain.train.max_steps=30",
            "pretrain.train.log_every=10",
            "metric=heldout_auc",
            f"out={tmp_path / name}",
        ],
    )
    cfg, settings = new_sweep(cfg)
    return settings.out, cfg


def ended(name: str, size: float, optimizer: str, step: int = 30, auc: float = 0.6) -> TrialRecord:
    params = {"model.generator_size": size, "train.optimizer": optimizer}
    return TrialRecord(name, params, "ended", {"step": step, "heldout_auc": auc})


def edit_json(path: str, change) -> None:
    with open(path) as f:
        value = json.load(f)
    change(value)
    with open(path, "w") as f:
        json.dump(value, f)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_resume(out: str, capsys) -> Outcome:
    """`python -m electra_ray.tune --resume OUT`, in this process (no Ray starts on these paths)."""
    code = 0
    try:
        tune_verb.main(["--resume", out])
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_one_error_line(result: Outcome, *fragments: str) -> None:
    assert result.code == 2, result.stdout[-2000:] + result.stderr[-3000:]
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_a_scratch_path_in_sweep_json_is_refused_and_nothing_removed(tmp_path, small_corpus, tokenizer_dir, capsys):
    out, _ = make_sweep(tmp_path, small_corpus, tokenizer_dir)
    victim = tmp_path / "home-of-alice"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    edit_json(os.path.join(out, SWEEP_FILE), lambda saved: saved["settings"].update(scratch=str(victim)))

    result = run_resume(out, capsys)
    assert_one_error_line(result, "names the scratch directory", str(victim))
    assert (victim / "thesis.tex").read_text() == "years of work"


def test_remove_scratch_removes_only_a_scratch_name_under_its_root(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    for scratch in (str(victim), "../victim", "victim", ""):
        if scratch:
            with pytest.raises(UserError, match="refusing to remove"):
                remove_scratch(SweepSettings({}, "s3://b/p", "heldout_auc", {}, scratch=scratch))
    assert (victim / "keep").exists()

    # The scratch root a link to someone's directory (another user's doing, in a shared /tmp).
    (tmp_path / "tmp").mkdir()
    os.symlink(victim, tmp_path / "tmp" / "electra-ray-sweeps")
    (victim / "p-0123456789ab").mkdir()
    remove_scratch(SweepSettings({}, "s3://b/p", "heldout_auc", {}, scratch="p-0123456789ab"))
    assert (victim / "p-0123456789ab").exists()

    os.remove(tmp_path / "tmp" / "electra-ray-sweeps")
    own = tmp_path / "tmp" / "electra-ray-sweeps" / "p-0123456789ab" / "trial"
    own.mkdir(parents=True)
    remove_scratch(SweepSettings({}, "s3://b/p", "heldout_auc", {}, scratch="p-0123456789ab"))
    assert not own.parent.exists() and (tmp_path / "tmp" / "electra-ray-sweeps").is_dir()


@pytest.mark.parametrize(
    "file, content, message",
    [
        (SWEEP_FILE, '{"sweep": {', "its sweep.json is not readable JSON"),
        (SWEEP_FILE, "[1, 2]", "its sweep.json is not a sweep's"),
        (SWEEP_FILE, '{"sweep": {"num_samples": "many"}}', "config key 'num_samples' expects int"),
        (RECORD_FILE, "\x00\x01", "its trials.json is not readable JSON"),
        (RECORD_FILE, '{"trials": {}}', "its trials.json is not a list of trials"),
    ],
)
def test_a_corrupt_sweep_file_is_one_line(tmp_path, small_corpus, tokenizer_dir, capsys, file, content, message):
    out, _ = make_sweep(tmp_path, small_corpus, tokenizer_dir)
    with open(os.path.join(out, file), "w") as f:
        f.write(content)
    assert_one_error_line(run_resume(out, capsys), f"cannot resume {out}: ", message)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "../../elsewhere"}, "is not a trial name electra_ray.tune gives"),
        ({"params": {"model.generator_size": 0.5, "train.optimizer": "adamw"}}, "is not in the sweep's space"),
        ({"params": {"model.generator_size": 0.25}}, "params must give exactly the searched keys"),
        ({"status": "done"}, "status must be one of"),
        ({"result": {"step": "30"}}, "result must map names to numbers"),
        ({"extra": 1}, "is not a trial's record"),
    ],
)
def test_a_tampered_trial_record_is_refused(tmp_path, small_corpus, tokenizer_dir, entry, message):
    out, cfg = make_sweep(tmp_path, small_corpus, tokenizer_dir)
    record = {"name": "run_trial_a_00000", **vars(ended("x", 0.25, "adamw")), **entry}
    record["name"] = entry.get("name", "run_trial_a_00000")
    with open(os.path.join(out, RECORD_FILE), "w") as f:
        json.dump({"trials": [record]}, f)
    with pytest.raises(UserError, match=f"cannot resume {out}: trials.json entry 0.*{message}"):
        resume_sweep(out)


def test_resume_never_unpickles_and_summarizes_an_ended_sweep(tmp_path, small_corpus, tokenizer_dir, capsys):
    """Every trial ended (the sweep crashed in its summary, say): --resume writes the results
    without starting Ray, and never loads OUT/tune's pickles (here, ones that would run code)."""
    out, _ = make_sweep(tmp_path, small_corpus, tokenizer_dir)
    marker = tmp_path / "code-ran"
    os.makedirs(os.path.join(out, "tune"))
    for name in ("tuner.pkl", "trainable.pkl", "searcher-state-2026-01-01_00-00-00.pkl"):
        with open(os.path.join(out, "tune", name), "wb") as f:
            pickle.dump(CodeRunningPickle(str(marker)), f)
    write_records(
        out,
        [
            ended("run_trial_a_00000", 0.25, "adamw", auc=0.61),
            ended("run_trial_a_00001", 1.0, "adamw", auc=0.58),
            ended("run_trial_a_00002", 0.25, "electra", auc=0.63),
            ended("run_trial_a_00003", 1.0, "electra", step=10, auc=0.52),  # stopped by ASHA
        ],
    )

    result = run_resume(out, capsys)
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not marker.exists()
    assert "| model.generator_size | train.optimizer | status |" in result.stdout
    assert "| 0.25 | electra | finished | 30 | 0.63 | 1 |" in result.stdout
    assert "| 1 | electra | stopped by ASHA | 10 | 0.52 | 4 |" in result.stdout, result.stdout
    with open(os.path.join(out, "best.yaml")) as f:
        best = f.read()
    assert "model.generator_size = 0.25, train.optimizer = electra" in best and "optimizer: electra" in best
    assert os.path.exists(os.path.join(out, "score.png"))


def test_a_moved_sweep_resumes_where_it_is_now(tmp_path, small_corpus, tokenizer_dir):
    out, _ = make_sweep(tmp_path, small_corpus, tokenizer_dir, name="before")
    write_records(out, [ended("run_trial_a_00000", 0.25, "adamw"), ended("run_trial_a_00001", 1.0, "adamw")])
    moved = str(tmp_path / "after")
    shutil.move(out, moved)

    cfg, settings, records = resume_sweep(moved)
    assert settings.out == moved and cfg.out == moved
    assert settings.pretrain["output"]["dir"] == moved
    assert out not in json.dumps(vars(settings))  # nothing points at the old place
    assert [r.name for r in records] == ["run_trial_a_00000", "run_trial_a_00001"]
    # The grid's two other points are run, as new trials.
    (session,) = resume_sessions(cfg, records)
    assert [entry["params"]["train.optimizer"] for entry in session.resumed] == ["electra", "electra"]
    assert all(entry["name"] == "" for entry in session.resumed)


def test_resume_runs_unended_trials_by_name_then_draws_the_rest(tmp_path, small_corpus, tokenizer_dir):
    """random search: the trial that was running and the one that failed run again under their
    names (their runs continue from their checkpoints); the trials never started are drawn."""
    out, cfg = make_sweep(tmp_path, small_corpus, tokenizer_dir)
    cfg.search, cfg.num_samples = "random", 5
    records = [
        ended("run_trial_a_00000", 0.25, "adamw"),
        TrialRecord("run_trial_a_00001", {"model.generator_size": 1.0, "train.optimizer": "adamw"}, "running"),
        TrialRecord("run_trial_a_00002", {"model.generator_size": 1.0, "train.optimizer": "electra"}, "error"),
    ]
    again, drawn = resume_sessions(cfg, records)
    assert [entry["name"] for entry in again.resumed] == ["run_trial_a_00001", "run_trial_a_00002"]
    assert drawn.resumed == [] and drawn.searched == 2


def test_optuna_is_told_the_trials_that_ended(tmp_path, small_corpus, tokenizer_dir):
    from electra_ray.tune import param_space, search_algorithm

    cfg = load_sweep_config(
        None, [SPACE, "search=optuna", "num_samples=4", f"pretrain.data.path={small_corpus}", "metric=heldout_auc"]
    )
    searcher = search_algorithm(cfg, [ended("run_trial_a_00000", 0.25, "electra", auc=0.7)])
    assert searcher.set_search_properties("heldout_auc", "max", param_space(cfg))
    (known,) = searcher._ot_study.trials  # the warm start: what Tune's restore took from its pickle
    assert known.params == {"model.generator_size": 0.25, "train.optimizer": "electra"} and known.value == 0.7


# -- a sweep over a text-valued key ----------------------------------------------------------------


def test_a_text_valued_key_is_summarized(tmp_path, small_corpus):
    """train.optimizer is the plot's line key: each line's label is its text (was f"{value:g}")."""
    cfg = load_sweep_config(None, [SPACE, f"pretrain.data.path={small_corpus}", "pretrain.train.max_steps=30"])
    rows = [
        {"trial": f"t{i}", "model.generator_size": size, "train.optimizer": optimizer, "status": status}
        | {"step": 30, "heldout_auc": auc, "finetune_score": score, "finetune_std": 0.0, "error": ""}
        for i, (size, optimizer, status, auc, score) in enumerate(
            [
                (0.25, "adamw", "finished", 0.60, 0.70),
                (1.0, "adamw", "finished", 0.58, 0.71),
                (0.25, "electra", "finished", 0.62, 0.69),
                (1.0, "electra", "stopped by ASHA", 0.51, math.nan),
            ]
        )
    ]
    best = rank(rows, cfg.metric)
    plot_scores(rows, cfg, str(tmp_path / "score.png"))
    write_csv(rows, cfg, str(tmp_path / "results.csv"))
    write_best_config(best, cfg.pretrain.to_dict(), cfg, str(tmp_path / "best.yaml"))
    assert (tmp_path / "score.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 1 | adamw | finished | 30 | 0.58 | 0.71 | 0 | 1 |" in format_table(rows, cfg)
    assert "train.optimizer = adamw" in (tmp_path / "best.yaml").read_text()


def test_a_text_key_alone_and_as_the_x_axis_is_plotted(tmp_path, small_corpus):
    cfg = load_sweep_config(
        None, ["space={train.optimizer: [adamw, electra]}", f"pretrain.data.path={small_corpus}", "metric=heldout_auc"]
    )
    records = [ended("a", 0.25, "adamw"), ended("b", 0.25, "electra", step=5)]
    for record in records:
        del record.params["model.generator_size"]
    rows = trial_rows(records, cfg)
    assert [(r["train.optimizer"], r["step"]) for r in rows] == [("adamw", 30), ("electra", 5)]
    plot_scores(rows, cfg, str(tmp_path / "score.png"))
