"""Checkpoints are loaded weights-only: a tampered file in shared storage is refused before any of
it runs, by export (ours and DeepSpeed's zero_to_fp32 path) and by resume (tests/test_fault_tolerance)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import write_code_running_pickle

from electra_ray import checkpoint as checkpoints
from electra_ray.export import export


def test_the_marker_pickle_really_runs_code_when_unpickled_unsafely(tmp_path):
    """The control: the tampered file would do what the tests below say is prevented."""
    marker = tmp_path / "ran"
    write_code_running_pickle(tmp_path / "evil.pt", str(marker))
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_export_reads_a_clean_checkpoint(stage0_checkpoint, tmp_path):
    out = export(stage0_checkpoint, str(tmp_path / "export"))
    assert sorted(os.listdir(out)) == ["_MANIFEST.json", "discriminator", "electra_ray.json", "generator"]


@pytest.mark.parametrize("tampered", ["model/mp_rank_00_model_states.pt", "rng_rank0.pt"])
def test_export_refuses_a_code_running_checkpoint_without_running_it(stage0_checkpoint, tmp_path, tampered):
    checkpoint = str(tmp_path / "checkpoint")
    shutil.copytree(stage0_checkpoint, checkpoint)
    marker = tmp_path / "ran"
    write_code_running_pickle(os.path.join(checkpoint, tampered), str(marker))

    run = subprocess.run(
        [sys.executable, "-m", "electra_ray.export", checkpoint, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith(
        f"error: refusing to load {os.path.join(checkpoint, tampered)}: it needs objects "
        f"a checkpoint never holds (Unsupported global: GLOBAL exec); was it tampered with?"
    )
    assert not marker.exists() and not os.path.exists(tmp_path / "out")
    with pytest.raises(checkpoints.UnsafeCheckpointError):
        checkpoints.verify_pickles(checkpoint)
    assert not marker.exists()


def test_safe_loading_forces_weights_only_even_where_a_caller_asks_otherwise(tmp_path):
    """DeepSpeed's checkpoint engine and zero_to_fp32 call torch.load(weights_only=False)."""
    marker = tmp_path / "ran"
    write_code_running_pickle(tmp_path / "evil.pt", str(marker))
    with checkpoints.safe_loading(), pytest.raises(Exception, match="Weights only load failed"):
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after the block


def test_a_legacy_format_pickle_is_refused_too(tmp_path):
    """torch.save's old non-zip format cannot be memory-mapped; it is still read weights-only."""
    marker = tmp_path / "ran"
    from conftest import CodeRunningPickle

    torch.save({"module": CodeRunningPickle(str(marker))}, tmp_path / "evil.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(checkpoints.UnsafeCheckpointError, match="Unsupported global: GLOBAL exec"):
        checkpoints.verify_pickles(str(tmp_path))
    assert not marker.exists()


def test_a_truncated_checkpoint_is_a_one_line_error_for_export(stage0_checkpoint, tmp_path):
    from electra_ray.errors import UserError

    checkpoint = str(tmp_path / "checkpoint")
    shutil.copytree(stage0_checkpoint, checkpoint)
    with open(os.path.join(checkpoint, "model", "mp_rank_00_model_states.pt"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match=f"cannot read checkpoint {checkpoint}: RuntimeError"):
        export(checkpoint, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_a_users_force_no_weights_only_variable_does_not_make_checkpoints_unreadable(
    stage0_checkpoint, tmp_path, monkeypatch
):
    """With TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the environment, forcing weights-only as well made
    torch refuse every load ("Only one of ..."): every checkpoint looked unreadable. The user's
    variable is set aside while checkpoints load (still weights-only), and put back after."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    checkpoints.verify_pickles(stage0_checkpoint)
    assert checkpoints.load_rng_state(os.path.join(stage0_checkpoint, "rng_rank0.pt"))["torch"].dtype == torch.uint8
    marker = tmp_path / "ran"
    write_code_running_pickle(tmp_path / "evil.pt", str(marker))
    with pytest.raises(checkpoints.UnsafeCheckpointError, match="Unsupported global: GLOBAL exec"):
        checkpoints.verify_pickles(str(tmp_path))
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1" and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ

    run = subprocess.run(  # the verb, as a user with that variable runs it
        [sys.executable, "-m", "electra_ray.export", stage0_checkpoint, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == f"export: {tmp_path / 'out'}"
