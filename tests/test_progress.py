"""StepProgress: what a fine-tune shows while it trains (plain lines in a log)."""

import io

from electra_ray.progress import StepProgress


def test_a_log_gets_about_ten_lines_with_the_step_loss_and_an_eta():
    stream = io.StringIO()  # not a terminal: plain lines, no bar
    with StepProgress(250, "seed 0, lr 0.0001", every_s=3600, stream=stream) as progress:
        for step in range(250):
            progress.update(1.0 / (step + 1))
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 11, lines
    assert lines[0].startswith("seed 0, lr 0.0001: step 25/250 | loss 0.0400 | ")
    assert lines[-1].startswith("seed 0, lr 0.0001: step 250/250 | loss 0.0040 | ")
    assert all(" steps/s | ETA " in line for line in lines)
    assert lines[-1].endswith("ETA 0m00s")


def test_a_long_run_gets_a_line_every_every_s():
    stream = io.StringIO()
    progress = StepProgress(10_000, "seed 1", every_s=0.0, stream=stream)
    for _ in range(5):
        progress.update(0.5)
    assert len(stream.getvalue().splitlines()) == 5  # every step, where every_s has passed each time
