"""The roofline of one fp16 linear ``Y = X Wᵀ``, dense and 2:4: what it must move and compute, and
where a recorded run's points sit under a GPU's published ceilings.

A kernel cannot run faster than the slower of two limits: moving its bytes through memory at the
GPU's bandwidth, and doing its arithmetic at the tensor cores' peak. With ``I`` = FLOPs per byte
moved (arithmetic intensity), the attainable rate is ``min(bandwidth · I, peak FLOP/s)``.

Conventions (one place, so the chapter, its exercise checker and the tests agree):

- **FLOPs** are those of the dense product, ``2 · tokens · in · out`` (a multiply and an add per
  weight and token), for dense *and* 2:4. This is how NVIDIA counts the "with sparsity" peak (twice
  the dense peak for the same dense-shaped product), so a 2:4 point and its ceiling share one axis
  with the dense ones; a 2:4 kernel at its ceiling shows twice the dense rate.
- **Bytes** are the compulsory traffic, each operand moved once: the weight (dense fp16, or the 2:4
  format's values plus 2-bit positions, :func:`sparselib.format24.storage_bytes`), the input
  ``X [tokens, in]`` read and the output ``Y [tokens, out]`` written, 2 bytes per fp16 value. A
  kernel that re-reads a tile moves more; the achieved bandwidth below is the useful one.
- A recorded time is the median per call: eager (the host's per-call work included) or replayed
  from a CUDA graph (the GPU's time, nearly).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_int
from ..format24 import storage_bytes

#: Bytes of one fp16 activation value.
FP16_BYTES = 2


@dataclass(frozen=True)
class GPUPeaks:
    """A GPU's published ceilings: memory ``bandwidth`` in bytes/s and fp16 tensor-core FLOP/s,
    ``dense_flops`` and ``sparse_flops`` (2:4, counted as the dense product, see the module docstring)."""

    name: str
    bandwidth: float
    dense_flops: float
    sparse_flops: float
    source: str

    def flops(self, sparse: bool) -> float:
        return self.sparse_flops if sparse else self.dense_flops

    @property
    def ridge(self) -> dict:
        """FLOPs per byte where the bandwidth roof meets the compute roof, dense and 2:4."""
        return {"dense": self.dense_flops / self.bandwidth, "2:4": self.sparse_flops / self.bandwidth}


#: NVIDIA's datasheet for the H200 SXM: "GPU Memory Bandwidth 4.8TB/s", "FP16 Tensor Core
#: 1,979 TFLOPS" with the footnote "With sparsity"; the dense peak is half of it. The recorded run's
#: device reports itself as "NVIDIA H200" with 141 GB (the NVL board names itself "H200 NVL" and
#: lists 1,671 sparse TFLOPS at the same bandwidth).
H200 = GPUPeaks(name="NVIDIA H200 (SXM)", bandwidth=4.8e12, dense_flops=1979e12 / 2, sparse_flops=1979e12,
                source="NVIDIA H200 Tensor Core GPU datasheet (H200 SXM: 4.8 TB/s; FP16 Tensor Core "
                       "1,979 TFLOPS with sparsity, 989.5 dense)")

#: Published ceilings by the device name a recorded run reports (``provenance["gpu"]``).
PEAKS = {"NVIDIA H200": H200}


def peaks_for(gpu: str) -> GPUPeaks:
    """The published ceilings of the GPU a run names, e.g. ``peaks_for("NVIDIA H200")``."""
    if gpu not in PEAKS:
        raise ValueError(f"no published peaks recorded for {gpu!r}; known: {', '.join(PEAKS)}. Add its "
                         f"datasheet's bandwidth and fp16 tensor FLOP/s to sparselib.course.roofline.PEAKS")
    return PEAKS[gpu]


def _shape(out_features, in_features, tokens) -> tuple[int, int, int]:
    return (check_int(out_features, "out_features"), check_int(in_features, "in_features"),
            check_int(tokens, "tokens"))


def linear_flops(out_features: int, in_features: int, tokens: int) -> int:
    """FLOPs of ``Y = X Wᵀ`` counted as the dense product: ``2 · tokens · in · out`` (also for 2:4)."""
    out_features, in_features, tokens = _shape(out_features, in_features, tokens)
    return 2 * tokens * in_features * out_features


def linear_bytes(out_features: int, in_features: int, tokens: int, sparse: bool = False) -> int:
    """Compulsory bytes of one fp16 linear: the weight (dense, or 2:4 values plus metadata), the input
    ``X [tokens, in]`` and the output ``Y [tokens, out]``."""
    out_features, in_features, tokens = _shape(out_features, in_features, tokens)
    weight = storage_bytes(out_features, in_features, torch.float16)["total" if sparse else "dense"]
    return weight + FP16_BYTES * tokens * (in_features + out_features)


def attainable_flops(intensity: float, peaks: GPUPeaks, sparse: bool = False) -> float:
    """The roofline: ``min(bandwidth · intensity, peak)`` in FLOP/s, for ``intensity`` FLOPs per byte."""
    if not intensity > 0:
        raise ValueError(f"intensity must be a positive number of FLOPs per byte, got {intensity!r}")
    return min(peaks.bandwidth * intensity, peaks.flops(sparse))


def place(out_features: int, in_features: int, tokens: int, ms: float, sparse: bool,
          peaks: GPUPeaks = H200) -> dict:
    """One recorded time on the roofline: ``bytes``, ``flops``, ``intensity`` (FLOP/byte), achieved
    ``tb_s`` (bytes moved per second, in TB/s) and ``tflop_s``, the ``roof_tflop_s`` attainable at that
    intensity, ``of_roof`` (achieved / attainable), ``of_bandwidth`` (achieved TB/s over the GPU's) and
    ``bound`` ("memory" left of the ridge, "compute" right of it)."""
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0:
        raise ValueError(f"ms must be the recorded time per call in milliseconds (> 0), got {ms!r}")
    nbytes = linear_bytes(out_features, in_features, tokens, sparse)
    flops = linear_flops(out_features, in_features, tokens)
    seconds = ms * 1e-3
    intensity = flops / nbytes
    roof = attainable_flops(intensity, peaks, sparse)
    return {"bytes": nbytes, "flops": flops, "intensity": intensity, "tb_s": nbytes / seconds / 1e12,
            "tflop_s": flops / seconds / 1e12, "roof_tflop_s": roof / 1e12,
            "of_roof": flops / seconds / roof, "of_bandwidth": nbytes / seconds / peaks.bandwidth,
            "bound": "memory" if peaks.bandwidth * intensity < peaks.flops(sparse) else "compute"}


def recorded_points(run: dict, peaks: GPUPeaks | None = None) -> list[dict]:
    """Every one-linear row of a recorded GPU run (:func:`sparselib.course.results.gpu_runs`) placed on
    the roofline, twice: its dense time and its 2:4 time. Each point is :func:`place`'s dict plus
    ``out_features, in_features, tokens, path`` ("eager" or "cuda_graph"), ``kind`` ("dense" or "2:4"),
    ``ms`` and the row's ``speedup``."""
    peaks = peaks or peaks_for(run["provenance"]["gpu"])
    points = []
    for r in run["linear"]:
        for kind, ms in (("dense", r["dense_ms"]), ("2:4", r["sparse_ms"])):
            shape = {k: r[k] for k in ("out_features", "in_features", "tokens", "path")}
            points.append({**shape, "kind": kind, "ms": ms, "speedup": r["speedup"],
                           **place(r["out_features"], r["in_features"], r["tokens"], ms, kind == "2:4", peaks)})
    return points


def point(points: list[dict], out_features: int, in_features: int, tokens: int, path: str, kind: str) -> dict:
    """The one point of ``points`` with this shape, token count, path and kind."""
    found = [p for p in points if (p["out_features"], p["in_features"], p["tokens"], p["path"], p["kind"])
             == (out_features, in_features, tokens, path, kind)]
    if len(found) != 1:
        raise ValueError(f"{len(found)} recorded points for {out_features}x{in_features}, {tokens} tokens, "
                         f"{path}, {kind}; the run records {len(points)} points")
    return found[0]


def gain_share(speedup: float, ceiling: float = 2.0) -> float:
    """How much of the gain a ceiling allows a speedup achieves: ``(speedup − 1) / (ceiling − 1)``
    (1.31× against the 2× ceiling: 31 % of the gain; a slowdown gives a negative share)."""
    if not ceiling > 1:
        raise ValueError(f"ceiling must be above 1 (a speedup bound such as 2.0), got {ceiling!r}")
    return (speedup - 1) / (ceiling - 1)
