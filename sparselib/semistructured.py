"""2:4 on the hardware: when PyTorch's Sparse Tensor Core kernels can run, and swapping them in.

A 2:4-sparse ``W [out, in]`` only gets faster when a GPU multiplies it in the compressed format
(:mod:`sparselib.format24` shows that format). PyTorch does this with
``torch.sparse.to_sparse_semi_structured(W)``, a tensor subclass that ``F.linear`` dispatches to one of
two kernel libraries:

  * CUTLASS — PyTorch's own kernels, built for compute capability 8.x only (A100 sm_80, A10/RTX 30
    sm_86, L4/RTX 40 sm_89). Elsewhere they fail with "Supported only on GPUs with compute capability 8.x".
  * cuSPARSELt — NVIDIA's library; it is what runs on Hopper (sm_90) and later. Note that
    ``torch.backends.cusparselt.is_available()`` only says the library was linked into this build, not that
    the GPU has Sparse Tensor Cores: on a T4 (sm_75) it is True and the first call fails with
    "architecture mismatch".

Neither runs on CPU: PyTorch raises "Only CUDA tensors are currently supported". So every function here
first asks :func:`can_use_sparse_kernels`, and on a machine that cannot, says why and changes nothing.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from .masks import nm_mask, nm_violations
from .models import decoder_layers, layer_linears, model_device

log = logging.getLogger(__name__)

#: dtypes whose 2:4 linears sparselib converts. (Both backends also list int8 in their
#: ``_DTYPE_SHAPE_CONSTRAINTS``, but an int8 matmul needs int8 activations and an int32 or rescaled
#: output, which a model's ``nn.Linear`` does not do.)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)

CPU_REASON = ("PyTorch's semi-structured sparse kernels run only on CUDA (on CPU PyTorch raises "
              "'Only CUDA tensors are currently supported')")


class SparseKernelsUnavailable(RuntimeError):
    """Raised by the GPU-only helpers on a machine without usable 2:4 kernels; the message says why."""


# --------------------------------------------------------------------------------------------
# The decision: can this device run 2:4 kernels, and with which backend?
# --------------------------------------------------------------------------------------------
def sparse_backend(capability: tuple[int, int]) -> str | None:
    """The backend for a GPU of compute ``capability``: "cutlass" (sm_8x), "cusparselt" (sm_90 and
    later) or None (before Ampere: no Sparse Tensor Cores)."""
    major = tuple(capability)[0]
    if major < 8:
        return None
    return "cutlass" if major == 8 else "cusparselt"


def _decide(device=None, capability=None, dtype=torch.float16,
            cusparselt: bool | None = None) -> tuple[bool, str, str | None]:
    """``(ok, reason, backend)``; see :func:`can_use_sparse_kernels`."""
    if capability is None:
        if device is None:
            device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        device = torch.device(device)
        if device.type != "cuda":
            reason = CPU_REASON if device.type == "cpu" else CPU_REASON.replace("on CPU", f"on {device.type}")
            return False, reason, None
        if not torch.cuda.is_available():
            return False, ("no CUDA GPU is visible (torch.cuda.is_available() is False), and "
                           + CPU_REASON), None
        capability = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
    else:
        if device is not None and torch.device(device).type != "cuda":
            return False, CPU_REASON, None
        name = "this GPU"
    major, minor = tuple(capability)
    sm = f"sm_{major}{minor}"
    backend = sparse_backend((major, minor))
    if backend is None:
        return False, (f"{name} is {sm}: it has no Sparse Tensor Cores (they arrived with Ampere, sm_80). "
                       f"PyTorch's CUTLASS 2:4 kernels are built for sm_8x only, and cuSPARSELt fails with "
                       f"'architecture mismatch' (e.g. on a T4, sm_75)"), None
    if backend == "cusparselt":
        if cusparselt is None:
            cusparselt = torch.backends.cusparselt.is_available()
        if not cusparselt:
            return False, (f"{name} is {sm}, which has Sparse Tensor Cores, but PyTorch's CUTLASS 2:4 "
                           f"kernels run only on sm_8x and this PyTorch build has no cuSPARSELt "
                           f"(torch.backends.cusparselt.is_available() is False)"), None
    if dtype not in SUPPORTED_DTYPES:
        if dtype == torch.int8:
            why = ("int8 2:4 matmuls exist in PyTorch but need int8 activations and an int32 or rescaled "
                   "output, which nn.Linear does not do")
        else:
            why = (f"sparselib converts float16 and bfloat16 linears only, not {dtype} (PyTorch's CUTLASS "
                   f"backend also lists float32; cuSPARSELt does not)")
        return False, f"{why}; use float16 or bfloat16 (model.half() or model.to(torch.bfloat16))", None
    lib = ("CUTLASS (PyTorch's CUTLASS 2:4 kernels are built for sm_8x)" if backend == "cutlass" else
           "cuSPARSELt (PyTorch's CUTLASS 2:4 kernels run only on sm_8x)")
    dtype_name = str(dtype).replace("torch.", "")
    return True, f"{name} is {sm} with Sparse Tensor Cores; {dtype_name} 2:4 kernels via {lib}", backend


def can_use_sparse_kernels(device=None, capability: tuple[int, int] | None = None,
                           dtype: torch.dtype = torch.float16, *,
                           cusparselt: bool | None = None) -> tuple[bool, str]:
    """``(ok, reason)``: can PyTorch's 2:4 Sparse Tensor Core kernels run here for ``dtype``?

    device:     None (the current CUDA GPU if there is one, else CPU), "cpu", "cuda", "cuda:1", ...
    capability: ``(major, minor)`` to decide for a GPU that is not here (e.g. ``(7, 5)`` for a T4);
                then nothing is asked of the machine.
    cusparselt: whether cuSPARSELt is linked in (default: ``torch.backends.cusparselt.is_available()``);
                it matters from sm_90 on, where the CUTLASS kernels do not run.
    The reason names the backend: CUTLASS on sm_8x, cuSPARSELt on sm_90 and later.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16, not {dtype!r}")
    if capability is not None and (len(tuple(capability)) != 2
                                   or not all(isinstance(c, int) for c in capability)):
        raise ValueError(f"capability must be (major, minor), e.g. (8, 0) for an A100; got {capability!r}")
    ok, reason, _ = _decide(device, capability, dtype, cusparselt)
    return ok, reason


# --------------------------------------------------------------------------------------------
# Shapes: each backend has minimum (and multiple-of) sizes for the sparse matrix
# --------------------------------------------------------------------------------------------
def _backend_class(backend: str):
    return (torch.sparse.SparseSemiStructuredTensorCUTLASS if backend == "cutlass"
            else torch.sparse.SparseSemiStructuredTensorCUSPARSELT)


def shape_problem(shape: tuple[int, int], dtype: torch.dtype, backend: str) -> str | None:
    """Why ``W`` of ``shape [out, in]`` cannot be compressed by ``backend`` ("cutlass" or "cusparselt"),
    or None when it can. The limits are torch's ``_DTYPE_SHAPE_CONSTRAINTS``: both dimensions must be
    at least, and a multiple of, (sparse_min_rows, sparse_min_cols); e.g. fp16 CUTLASS (32, 64)."""
    if backend not in ("cutlass", "cusparselt"):
        raise ValueError(f"backend must be 'cutlass' or 'cusparselt', not {backend!r}")
    limits = _backend_class(backend)._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if limits is None:
        return f"{backend} has no 2:4 kernels for {dtype}"
    rows, cols = shape
    r, c = limits.sparse_min_rows, limits.sparse_min_cols
    if rows < r or rows % r or cols < c or cols % c:
        return (f"shape {rows}x{cols} is not supported by {backend} for {dtype}: out_features must be a "
                f"multiple of {r} and in_features a multiple of {c}")
    return None


@contextlib.contextmanager
def _force_backend(backend: str):
    """``to_sparse_semi_structured`` picks its backend from a class flag; set it, then restore it."""
    cls = torch.sparse.SparseSemiStructuredTensor
    before = cls._FORCE_CUTLASS
    cls._FORCE_CUTLASS = backend == "cutlass"
    try:
        yield
    finally:
        cls._FORCE_CUTLASS = before


def _compress(W: torch.Tensor, backend: str) -> torch.Tensor:
    with _force_backend(backend):
        return torch.sparse.to_sparse_semi_structured(W.detach().contiguous())


# --------------------------------------------------------------------------------------------
# The model: swap every 2:4 decoder-layer linear for the compressed subclass
# --------------------------------------------------------------------------------------------
def _linears(model: nn.Module):
    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer_linears(layer).items():
            yield i, name, module


def _violations(W: torch.Tensor) -> int:
    """Groups of 4 with fewer than 2 zeros (every group counts when in_features is not a multiple of 4)."""
    if W.shape[1] % 4:
        return -(-W.numel() // 4)
    return nm_violations(W, 2, 4)


def to_semi_structured(model: nn.Module, *, strict: bool = True) -> tuple[bool, str, int]:
    """Replace each 2:4 decoder-layer ``nn.Linear`` weight by ``torch.sparse.to_sparse_semi_structured(W)``.

    Returns ``(converted, reason, n_converted)``. The weights must already be 2:4 (prune first with
    ``sparselib.prune(model, method, "2:4", calib)``): a linear that is not raises ValueError naming how
    many groups of 4 violate it, before anything changes; with ``strict=False`` such linears are skipped
    and counted in the reason instead. When the hardware cannot run the kernels (CPU, a GPU before sm_80)
    it returns ``(False, reason, 0)`` and the model is left exactly as it was. On a capable GPU the weights
    must be float16 or bfloat16 (else TypeError); linears below the backend's minimum shape stay dense and
    are counted in the reason. Embeddings and ``lm_head`` are never touched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module (a causal LM), not {type(model).__name__}")
    linears = list(_linears(model))  # raises ValueError for an unsupported architecture
    sparse_cls = torch.sparse.SparseSemiStructuredTensor
    candidates, not_linear, already, not_24 = [], 0, 0, []
    for i, name, module in linears:
        if isinstance(module.weight, sparse_cls):
            already += 1
        elif not isinstance(module, nn.Linear):
            not_linear += 1  # GPT-2's Conv1D stores W transposed and does not call F.linear
        else:
            bad = _violations(module.weight.data)
            if bad:
                not_24.append((i, name, bad, module.weight.numel() // 4))
            else:
                candidates.append((i, name, module))
    if not_24 and strict:
        i, name, bad, groups = not_24[0]
        total = sum(b for _, _, b, _ in not_24)
        raise ValueError(
            f"{len(not_24)} of {len(linears)} decoder-layer linears are not 2:4 sparse: {total} groups of 4 "
            f"consecutive inputs have fewer than 2 zeros (first: layer {i} {name}, {bad} of {groups} groups). "
            f"Prune first, e.g. sparselib.prune(model, 'wanda', '2:4', calib), or pass strict=False to "
            f"convert only the linears that are 2:4.")

    ok, reason, backend = _decide(model_device(model), None, torch.float16)
    if not ok:
        log.info("not converting: %s", reason)
        return False, reason, 0
    dtypes = {module.weight.dtype for _, _, module in candidates}
    if not dtypes <= set(SUPPORTED_DTYPES):
        raise TypeError(f"2:4 Sparse Tensor Core kernels need float16 or bfloat16 weights; this model's "
                        f"linears are {', '.join(sorted(str(d) for d in dtypes))}. Cast it first: "
                        f"model.half() or model.to(torch.bfloat16)")

    todo, too_small = [], []
    for i, name, module in candidates:
        problem = shape_problem(tuple(module.weight.shape), module.weight.dtype, backend)
        if problem:
            too_small.append(f"layer {i} {name}: {problem}")
        else:
            todo.append(module)
    # Compress everything first, then assign: an error half-way leaves the model unchanged.
    compressed = [_compress(module.weight.data, backend) for module in todo]
    for module, Ws in zip(todo, compressed):
        module.weight = nn.Parameter(Ws, requires_grad=False)

    parts = [f"converted {len(todo)} of {len(linears)} decoder-layer linears to 2:4 with {backend} "
             f"({reason})"]
    if too_small:
        parts.append(f"{len(too_small)} left dense, below {backend}'s minimum shape (e.g. {too_small[0]})")
    if not_24:
        parts.append(f"{len(not_24)} left dense, not 2:4 (strict=False)")
    if not_linear:
        parts.append(f"{not_linear} left dense, not nn.Linear")
    if already:
        parts.append(f"{already} already converted")
    reason = "; ".join(parts)
    log.info(reason)
    return bool(todo), reason, len(todo)


# --------------------------------------------------------------------------------------------
# Timing one linear, dense vs 2:4 (GPU only)
# --------------------------------------------------------------------------------------------
def benchmark_linear(out_features: int, in_features: int, tokens: int, dtype: torch.dtype = torch.float16,
                     device="cuda", min_run_time: float = 0.2, seed: int = 0) -> dict:
    """Time ``Y = X Wᵀ`` for ``X [tokens, in]`` and a random 2:4 ``W [out, in]``, dense vs compressed.

    Returns ``dict(dense_ms, sparse_ms, speedup, backend, max_abs_diff)``: median milliseconds per call
    from ``torch.utils.benchmark`` (which synchronises the GPU around each timed block, at least
    ``min_run_time`` seconds per variant), ``speedup = dense_ms / sparse_ms``, and the largest
    difference between the two outputs (they compute the same product). Raises
    :class:`SparseKernelsUnavailable` with the reason on a device that cannot run 2:4 kernels.
    """
    from torch.utils.benchmark import Timer

    for label, value in (("out_features", out_features), ("in_features", in_features), ("tokens", tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16, not {dtype!r}")
    ok, reason, backend = _decide(device, None, dtype)
    if not ok:
        raise SparseKernelsUnavailable(f"cannot benchmark 2:4 kernels here: {reason}")
    problem = shape_problem((out_features, in_features), dtype, backend)
    if problem:
        raise ValueError(problem)

    g = torch.Generator(device=device).manual_seed(seed)
    W = torch.randn(out_features, in_features, device=device, dtype=dtype, generator=g)
    W = W * nm_mask(W.abs(), 2, 4)
    X = torch.randn(tokens, in_features, device=device, dtype=dtype, generator=g)
    Ws = _compress(W, backend)
    linear = torch.nn.functional.linear
    with torch.inference_mode():
        dense, sparse = linear(X, W), linear(X, Ws)  # also the warm-up (first call initialises kernels)
        max_abs_diff = (dense.float() - sparse.float()).abs().max().item()
        times = {}
        for key, weight in (("dense_ms", W), ("sparse_ms", Ws)):
            timer = Timer("linear(X, weight)", globals={"linear": linear, "X": X, "weight": weight})
            times[key] = timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
    del dense, sparse
    return {**times, "speedup": times["dense_ms"] / times["sparse_ms"], "backend": backend,
            "max_abs_diff": max_abs_diff}
