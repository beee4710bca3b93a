"""The scaling model on paper (electra_ray.scaling, docs/scaling.md): its arithmetic on cases
worked by hand, and the script's output."""

import subprocess
import sys

import pytest

from electra_ray import scaling


def test_ring_volumes_of_a_billion_bf16_parameters_on_eight_gpus():
    # All-reduce: 2 (n-1)/n P b = 2 * 7/8 * 1e9 * 2 bytes = 3.5e9 bytes per GPU.
    assert scaling.comm_bytes_per_gpu(1e9, 8, 0) == pytest.approx(3.5e9)
    # ZeRO-1/2: reduce-scatter + all-gather, the same total as an all-reduce.
    assert scaling.comm_bytes_per_gpu(1e9, 8, 1) == pytest.approx(3.5e9)
    assert scaling.comm_bytes_per_gpu(1e9, 8, 2) == pytest.approx(3.5e9)
    # ZeRO-3: 3 (n-1)/n P b, 1.5x the all-reduce.
    assert scaling.comm_bytes_per_gpu(1e9, 8, 3) == pytest.approx(5.25e9)
    assert scaling.comm_bytes_per_gpu(1e9, 1, 3) == 0


def test_efficiency_limits():
    assert scaling.efficiency(1.0, 0.0, overlap=0.0) == 1.0  # infinite bandwidth (or one GPU: no traffic)
    assert scaling.efficiency(1.0, scaling.comm_bytes_per_gpu(1e9, 1, 1) / 1e9, overlap=0.0) == 1.0
    assert scaling.efficiency(1.0, 1.0, overlap=0.0) == pytest.approx(0.5)
    assert scaling.efficiency(1.0, 0.5, overlap=1.0) == 1.0  # fully hidden
    assert scaling.efficiency(1.0, 2.0, overlap=1.0) == pytest.approx(0.5)  # cannot hide more than the compute


def test_links_nvlink_within_a_node_the_network_beyond():
    a100 = scaling.GPUS[0]
    assert scaling.link_bytes_s(a100, 8, 100) == a100.nvlink_bytes_s
    assert scaling.link_bytes_s(a100, 64, 400) == pytest.approx(50e9)


def test_shapes_match_the_shipped_configs():
    # Counted with torch on build_model (electra_ray/configs/*.yaml, vocabulary 30,522) when written.
    counts = {m.name: scaling.parameter_count(m) for m in scaling.MODELS}
    assert counts == {"ELECTRA-Small": 14_196_219, "ELECTRA-Base": 119_386_427, "ELECTRA-Large": 354_655_291}
    small = scaling.MODELS[0]
    assert scaling.flops_per_token(small) == pytest.approx(70_224_307.2)


def test_script_prints_the_three_models(tmp_path):
    out = tmp_path / "table.md"
    run = subprocess.run(
        [sys.executable, "-m", "electra_ray.scaling", "--out", str(out)], capture_output=True, text=True, check=True
    )
    for name in ("ELECTRA-Small", "ELECTRA-Base", "ELECTRA-Large"):
        assert name in run.stdout
    assert "Weak-scaling efficiency" in run.stdout
    assert out.read_text() == run.stdout
