"""Reading a run's metrics.jsonl back: a line cut short (the writer was killed) is skipped, not fatal."""

import json

from electra_ray.metrics import read_history, training_error


def test_a_truncated_or_garbled_line_is_skipped_with_a_warning(tmp_path, capsys):
    lines = [
        json.dumps({"step": 5, "loss": 3.0}),
        "",
        "not json at all",
        json.dumps([1, 2]),
        json.dumps({"step": 10, "loss": 2.5}),
        json.dumps({"training_error": "NaN loss"}),
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 15, "lo')  # the last write, cut short
    assert read_history(str(tmp_path)) == [{"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.5}]
    assert capsys.readouterr().err.splitlines() == [
        "warning: metrics.jsonl line 3 is not JSON (truncated?); skipped",
        "warning: metrics.jsonl line 4 is not JSON (truncated?); skipped",
        "warning: metrics.jsonl line 7 is not JSON (truncated?); skipped",
    ]
    assert training_error(str(tmp_path)) == "NaN loss"  # the last complete record


def test_no_file_and_invalid_bytes(tmp_path, capsys):
    assert read_history(str(tmp_path)) == [] and training_error(str(tmp_path)) is None
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n')
    assert read_history(str(tmp_path)) == [{"step": 1}]
    assert capsys.readouterr().err == "warning: metrics.jsonl line 2 is not JSON (truncated?); skipped\n"
