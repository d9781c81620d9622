"""The roofline of one fp16 linear: bytes and FLOPs counted by hand, achieved rates from recorded
times, and every recorded H200 point under the H200's published ceilings."""
import pytest

from sparselib.course import roofline as rf
from sparselib.course.results import gpu_runs


def h200_run():
    return next(run for run in gpu_runs() if run["provenance"]["gpu"] == "NVIDIA H200")


def test_bytes_and_flops_by_hand():
    # 28672 x 8192 fp16 at 16 tokens. Dense weight: 28672 * 8192 * 2 B; X: 16 * 8192 * 2; Y: 16 * 28672 * 2.
    assert rf.linear_bytes(28672, 8192, 16) == 469_762_048 + 262_144 + 917_504
    # 2:4: half the values (28672 * 4096 * 2 B) plus 2 bits per kept value (28672 * 4096 / 4 B).
    assert rf.linear_bytes(28672, 8192, 16, sparse=True) == 234_881_024 + 29_360_128 + 262_144 + 917_504
    assert rf.linear_flops(28672, 8192, 16) == 2 * 16 * 8192 * 28672
    # the 2:4 weight is 4.5 of every 8 bytes
    w_dense = rf.linear_bytes(4096, 4096, 1) - 2 * (4096 + 4096)
    w_24 = rf.linear_bytes(4096, 4096, 1, sparse=True) - 2 * (4096 + 4096)
    assert w_24 / w_dense == 4.5 / 8


def test_the_issues_figures_for_28672x8192_at_16_tokens():
    """Dense ~470 MB in 0.115 ms is ~4.1 TB/s, near the H200's 4.8; 2:4 ~264 MB in 0.171 ms ~1.55 TB/s."""
    dense = rf.place(28672, 8192, 16, 0.1147, sparse=False)
    sparse = rf.place(28672, 8192, 16, 0.1708, sparse=True)
    assert dense["bytes"] / 1e6 == pytest.approx(470.9, abs=0.1)
    assert sparse["bytes"] / 1e6 == pytest.approx(265.4, abs=0.1)
    assert dense["tb_s"] == pytest.approx(4.106, abs=0.001)
    assert sparse["tb_s"] == pytest.approx(1.554, abs=0.001)
    assert dense["of_bandwidth"] == pytest.approx(4.106 / 4.8, abs=1e-3)
    assert dense["tflop_s"] == pytest.approx(2 * 16 * 8192 * 28672 / 0.1147e-3 / 1e12)
    assert dense["bound"] == sparse["bound"] == "memory"
    # memory-bound: the roof is the bandwidth line, so the share of roof is the share of bandwidth
    assert sparse["of_roof"] == pytest.approx(sparse["of_bandwidth"])


def test_the_roofline_meets_at_the_ridge():
    h = rf.H200
    assert h.sparse_flops == 2 * h.dense_flops == 1979e12
    ridge = h.ridge["dense"]
    assert ridge == pytest.approx(989.5e12 / 4.8e12)
    assert rf.attainable_flops(ridge / 2, h) == pytest.approx(h.dense_flops / 2)
    assert rf.attainable_flops(ridge * 10, h) == h.dense_flops
    assert rf.attainable_flops(ridge * 10, h, sparse=True) == h.sparse_flops
    assert rf.place(4096, 4096, 8192, 1.0, sparse=False)["bound"] == "compute"


def test_every_recorded_h200_point_is_placed_and_sits_under_its_ceiling():
    run = h200_run()
    points = rf.recorded_points(run)
    assert len(points) == 2 * len(run["linear"])
    assert {p["path"] for p in points} == {"eager", "cuda_graph"}
    for p in points:
        assert 0 < p["of_roof"] <= 1, p          # nothing measured beats the datasheet
        assert p["tflop_s"] == pytest.approx(p["tb_s"] * p["intensity"])


def test_gain_share():
    assert rf.gain_share(1.31) == pytest.approx(0.31)
    assert rf.gain_share(2.0) == 1.0
    assert rf.gain_share(0.5) < 0
    with pytest.raises(ValueError, match="above 1"):
        rf.gain_share(1.2, ceiling=1.0)


def test_bad_input_says_what_to_pass():
    with pytest.raises(ValueError, match="known: NVIDIA H200"):
        rf.peaks_for("NVIDIA T4")
    with pytest.raises(ValueError, match="milliseconds"):
        rf.place(16, 16, 1, 0.0, sparse=False)
    with pytest.raises(TypeError, match="tokens must be an int"):
        rf.linear_flops(16, 16, 1.5)
    with pytest.raises(ValueError, match="multiple of 4"):
        rf.linear_bytes(16, 18, 1, sparse=True)
    with pytest.raises(ValueError, match="0 recorded points"):
        rf.point(rf.recorded_points(h200_run()), 1, 1, 1, "eager", "dense")
