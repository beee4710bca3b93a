"""A checkpoint's run state and an export's metadata are two files with two names; checkpoints of
earlier versions, whose run state was `electra_ray.json`, still export."""

import json
import os
import shutil

from electra_ray.checkpoint import LEGACY_RUN_STATE, RUN_STATE, run_state_file
from electra_ray.export import EXPORT_METADATA, export, read_run_state


def test_an_older_checkpoint_with_its_run_state_under_the_legacy_name_still_exports(stage0_checkpoint, tmp_path):
    older = tmp_path / "checkpoint_000000"
    shutil.copytree(stage0_checkpoint, older)
    os.rename(older / RUN_STATE, older / LEGACY_RUN_STATE)
    assert run_state_file(str(older)) == str(older / LEGACY_RUN_STATE)
    assert read_run_state(str(older))["step"] == read_run_state(stage0_checkpoint)["step"]
    out = export(str(older), str(tmp_path / "export"))
    metadata = json.loads((tmp_path / "export" / EXPORT_METADATA).read_text())
    assert set(metadata) == {"checkpoint", "config"} and os.path.isdir(os.path.join(out, "discriminator"))


def test_the_current_name_wins_when_both_are_present(stage0_checkpoint, tmp_path):
    both = tmp_path / "checkpoint_000000"
    shutil.copytree(stage0_checkpoint, both)
    (both / LEGACY_RUN_STATE).write_text("{}")
    assert run_state_file(str(both)) == str(both / RUN_STATE)
