"""2:4 on the hardware: when PyTorch's Sparse Tensor Core kernels can run, and swapping them in.

A 2:4-sparse ``W [out, in]`` only gets faster when a GPU multiplies it in the compressed format
(:mod:`sparselib.format24` shows that format). PyTorch does this with
``torch.sparse.to_sparse_semi_structured(W)``, a tensor subclass that ``F.linear`` dispatches to one of
two kernel libraries:

  * CUTLASS — PyTorch's own kernels, built for compute capability 8.x only (A100 sm_80, A10/RTX 30
    sm_86, L4/RTX 40 sm_89). Elsewhere they fail with "Supported only on GPUs with compute capability 8.x".
  * cuSPARSELt — NVIDIA's library, for sm_80, sm_86, sm_89, sm_90 and later, and PyTorch's default
    wherever it is linked in (``_FORCE_CUTLASS`` is False). sparselib's "auto" nevertheless picks CUTLASS
    on sm_8x and cuSPARSELt from sm_90 on: a choice of this library, not PyTorch's, and not yet backed by
    a measurement on an sm_8x GPU. Note that ``torch.backends.cusparselt.is_available()`` only says the
    library was linked into this build, not that the GPU has Sparse Tensor Cores: on a T4 (sm_75) it is
    True and the first call fails with "architecture mismatch".

Neither runs on CPU: PyTorch raises "Only CUDA tensors are currently supported". So every function here
first asks :func:`can_use_sparse_kernels`, and on a machine that cannot, says why and changes nothing.

:func:`to_semi_structured` puts a :class:`SparseLinear24` in place of each pruned ``nn.Linear``: it
flattens its input to 2-D, calls the kernel directly and returns a contiguous output, so attention keeps
its fused kernels and ``generate`` works at any batch. Its kernel is pluggable; on CPU a reference kernel
(decompress, then a dense matmul) computes the same product, which is how the module is tested there.
Measured on an H200 (``sparselib/results/semi_structured_gpu_*``), PyTorch's ``_cslt_sparse_mm`` wrapper
spends 0.4-0.8 ms on the host per call (it rebuilds cuSPARSELt's descriptors and plan every time);
:func:`fast_inference` replays CUDA graphs so that this set-up is paid once, at capture.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_nm_fits
from .format24 import Compressed24, compress_24, decompress_24
from .masks import nm_mask, nm_violations
from .adapters import adapter_for
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
# Kernels: how a SparseLinear24 stores W and computes Y = X Wᵀ + b
# --------------------------------------------------------------------------------------------
class Kernel24:
    """A 2:4 matmul for :class:`SparseLinear24`: ``compress(W)`` returns the tensors to keep (they
    become the module's buffers); ``mm(layer, X)`` takes ``X [tokens, in]``, contiguous (or, when
    ``transposed_inputs``, possibly with a contiguous ``Xᵀ``), and returns ``Y = X Wᵀ + b`` as
    ``[tokens, out]`` in whatever strides are cheapest (the module copies when it must). Subclass it to
    plug in another kernel."""

    name = "kernel"
    device_type = None  # "cuda" when the kernel runs only there
    transposed_inputs = False  # whether mm takes an X whose transpose is contiguous without a copy
    recastable = False  # whether model.float()/.half()/.to(dtype) may cast the stored buffers

    def shape_problem(self, shape: tuple[int, int], dtype: torch.dtype) -> str | None:
        """Why this kernel cannot hold a ``W`` of ``shape [out, in]`` and ``dtype``, or None."""
        return None

    def compress(self, W: torch.Tensor) -> dict:
        raise NotImplementedError

    def mm(self, layer: "SparseLinear24", X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReferenceKernel24(Kernel24):
    """Any device: :func:`sparselib.compress_24` to store, then decompress and a dense matmul.

    It computes exactly what the masked dense layer computes and saves nothing: it exists so that
    the module's logic (shapes, strides, dtype, bias, errors) is tested on CPU."""

    name = "reference"
    transposed_inputs = True
    recastable = True   # plain values (+ uint8 metadata): casting the values casts W consistently

    def compress(self, W):
        c = compress_24(W)
        return {"values": c.values, "meta": c.meta}

    def mm(self, layer, X):
        W = decompress_24(Compressed24(layer.values, layer.meta, (layer.out_features, layer.in_features)))
        return F.linear(X, W, layer.bias)


def _pad_tokens(X: torch.Tensor, multiple: int) -> torch.Tensor:
    """The GPU kernels need the token count to be a multiple of their tile's minimum (8 in fp16)."""
    pad = (-X.shape[0]) % multiple
    return F.pad(X, (0, 0, 0, pad)) if pad else X


_CSLT_LINEAR = None


def _cslt_token_multiple(dtype: torch.dtype) -> int:
    return torch.sparse.SparseSemiStructuredTensorCUSPARSELT._DTYPE_SHAPE_CONSTRAINTS[dtype].dense_min_rows


def _cslt_linear_impl(X: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], out_features: int,
                      fused_transpose: bool, alg_id: int) -> torch.Tensor:
    """``Y = X Wᵀ + b`` as ``[tokens, out]`` from cuSPARSELt: the tokens padded to its multiple, the
    result as cuSPARSELt wrote it (``[tokens, out]`` with the fused transpose, else a transposed view of
    ``[out, tokens]``)."""
    tokens = X.shape[0]
    B = _pad_tokens(X, _cslt_token_multiple(X.dtype)).t()          # [in, tokens(+pad)]
    if not (B.is_contiguous() or B.t().is_contiguous()):         # cuSPARSELt reads one of the two
        B = B.contiguous()
    if fused_transpose:   # cuSPARSELt writes [tokens(+pad), out] itself
        Y = torch._cslt_sparse_mm(packed, B, bias=bias, transpose_result=True, alg_id=alg_id)
        return Y[:tokens]
    Y = torch._cslt_sparse_mm(packed, B, bias=bias, alg_id=alg_id)   # [out, tokens(+pad)]
    return Y[:, :tokens].t()                                          # a view; the module copies if asked


def _cslt_linear_fake(X, packed, bias, out_features, fused_transpose, alg_id):
    tokens = X.shape[0]
    padded = -(-tokens // _cslt_token_multiple(X.dtype)) * _cslt_token_multiple(X.dtype)
    if fused_transpose:
        return X.new_empty(tokens, out_features)
    return X.new_empty(out_features, padded)[:, :tokens].t()           # the real output's strides


def _cslt_linear():
    """:func:`_cslt_linear_impl` as the custom op ``sparselib::cslt_linear``: torch.compile then sees the
    right output shape and strides (the meta function of ``torch._cslt_sparse_mm`` reads ``out`` from the
    packed buffer's first dimension, which the packed 1-D buffer does not have). Registered on first use;
    if this torch cannot register it, the plain function is used (eager and CUDA graphs need no op)."""
    global _CSLT_LINEAR
    if _CSLT_LINEAR is not None:
        return _CSLT_LINEAR
    try:
        op = torch.library.custom_op("sparselib::cslt_linear", mutates_args=())(_cslt_linear_impl)
        op.register_fake(_cslt_linear_fake)
    except Exception as err:  # noqa: BLE001 - a torch whose custom-op API differs: run uncompiled
        log.warning("could not register sparselib::cslt_linear (%s); cuSPARSELt runs without a custom op, "
                    "so torch.compile cannot trace it", err)
        op = _cslt_linear_impl
    _CSLT_LINEAR = op
    return op


class CuSparseLtKernel24(Kernel24):
    """NVIDIA cuSPARSELt through ``torch._cslt_sparse_mm`` (sm_90 and later; also sm_8x).

    ``W`` is compressed once (``torch._cslt_compress``: values and metadata in one buffer). Each call
    multiplies ``W`` by ``Xᵀ``. With ``fused_transpose=False`` (the default) cuSPARSELt writes
    ``[out, tokens]`` and the module copies it to a contiguous ``[tokens, out]`` (unless
    ``to_semi_structured(..., mlp_layout="transposed")`` lets the MLP keep it); with True cuSPARSELt writes
    ``[tokens, out]`` itself (``transpose_result=True``). So q, k and v are contiguous and the attention
    that reads them keeps its fused kernels. (PyTorch's own ``F.linear`` on the tensor subclass returned
    the transposed view instead, in torch 2.11.)

    Why the copy is the default: the one recorded GPU run (H200, torch 2.11) could not finish a
    7B-shaped forward within 100 s with the fused transpose (through the tensor subclass's
    ``_FUSE_TRANSPOSE``), while the non-fused layout finished every shape it was given. The fused mode
    stays available, and ``benchmarks/semi_structured.py`` measures both (each in its own subprocess,
    so a hang costs one part); the default changes only when a recorded run shows the fused mode
    finishing and faster. ``alg_id``: cuSPARSELt's algorithm (0 = its default; the benchmark also
    tries the one ``torch._cslt_sparse_mm_search`` picks per shape).
    """

    name = "cusparselt"
    device_type = "cuda"
    transposed_inputs = True   # torch._cslt_sparse_mm reads a row- or a column-major dense operand

    def __init__(self, fused_transpose: bool = False, alg_id: int = 0):
        self.fused_transpose = bool(fused_transpose)
        self.alg_id = int(alg_id)

    def shape_problem(self, shape, dtype):
        return shape_problem(tuple(shape), dtype, "cusparselt")

    def compress(self, W):
        return {"packed": torch._cslt_compress(W.contiguous())}

    def mm(self, layer, X):
        return _cslt_linear()(X, layer.packed, layer.bias, layer.out_features, self.fused_transpose,
                              self.alg_id)

    def __repr__(self):
        return f"CuSparseLtKernel24(fused_transpose={self.fused_transpose}, alg_id={self.alg_id})"


class CutlassKernel24(Kernel24):
    """PyTorch's CUTLASS 2:4 kernels (``torch._sparse_semi_structured_mm``/``_addmm``), sm_8x only.

    They compute ``W Xᵀ`` as ``[out, tokens]``; the module copies it to a contiguous ``[tokens, out]``
    unless its output may stay transposed."""

    name = "cutlass"
    device_type = "cuda"

    def shape_problem(self, shape, dtype):
        return shape_problem(tuple(shape), dtype, "cutlass")

    def compress(self, W):
        Ws = _compress(W, "cutlass")
        return {"packed": Ws.packed, "meta": Ws.meta}

    def mm(self, layer, X):
        tokens = X.shape[0]
        limits = torch.sparse.SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS[X.dtype]
        Xt = _pad_tokens(X, limits.dense_min_rows).t()
        if layer.bias is None:
            Y = torch._sparse_semi_structured_mm(layer.packed, layer.meta, Xt)
        else:
            Y = torch._sparse_semi_structured_addmm(layer.bias, layer.packed, layer.meta, Xt)
        return Y[:, :tokens].t()


#: kernel name -> class; "auto" in :func:`to_semi_structured` picks the GPU's backend.
KERNELS = {"reference": ReferenceKernel24, "cusparselt": CuSparseLtKernel24, "cutlass": CutlassKernel24}


def _kernel(kernel) -> Kernel24:
    if isinstance(kernel, Kernel24):
        return kernel
    if isinstance(kernel, str) and kernel in KERNELS:
        return KERNELS[kernel]()
    raise ValueError(f"kernel must be one of {sorted(KERNELS)} or a Kernel24 instance, not {kernel!r}")


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------
class SparseLinear24(nn.Module):
    """``Y = X Wᵀ + b`` with a 2:4 ``W [out, in]`` held compressed: what :func:`to_semi_structured`
    puts in place of each pruned ``nn.Linear``, for inference.

    It takes any ``X [..., in]``, flattens it to a contiguous ``[tokens, in]``, calls its kernel and
    returns a contiguous ``[..., out]`` tensor in ``X``'s dtype. The kernel only ever sees a plain 2-D
    tensor (no broadcasting, no expanded views), so ``generate`` with a KV cache works at any batch.
    Build it with :meth:`from_linear`, or from ``weight`` (exactly 2:4, float16 or bfloat16) and
    ``bias``; ``kernel`` is "reference" (any device), "cusparselt" or "cutlass" (CUDA), or a
    :class:`Kernel24`. Inference only: it holds buffers, no trainable weight. Cast the model to its
    final dtype and device before converting: with the reference kernel ``.float()``/``.half()``/``.to()``
    re-cast the stored values consistently; with the GPU kernels (whose buffers are packed for the
    kernel) a change of dtype, or a move off the GPU, raises TypeError/ValueError before anything is cast.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel="reference"):
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D tensor W [out_features, in_features], got "
                             f"{getattr(weight, 'shape', type(weight).__name__)}")
        if weight.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"2:4 kernels need float16 or bfloat16 weights, got {weight.dtype}; cast first: "
                            f"model.half() or model.to(torch.bfloat16)")
        out_features, in_features = weight.shape
        check_nm_fits(in_features, 4, "2:4", f"this weight [{out_features}, {in_features}]")
        self.kernel = _kernel(kernel)
        if self.kernel.device_type and weight.device.type != self.kernel.device_type:
            raise ValueError(f"the {self.kernel.name} kernel runs on {self.kernel.device_type}, but the weight "
                             f"is on {weight.device}; move the model first, or use kernel='reference'")
        problem = self.kernel.shape_problem((out_features, in_features), weight.dtype)
        if problem:
            raise ValueError(f"the {self.kernel.name} kernel cannot hold this weight: {problem}; keep this "
                             f"layer dense (to_semi_structured does so and says which), or use kernel='reference'")
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (out_features,)):
            raise ValueError(f"bias must have shape ({out_features},), got {getattr(bias, 'shape', bias)}")
        if bias is not None and bias.device != weight.device:
            raise ValueError(f"bias is on {bias.device} but the weight is on {weight.device}; move them together")
        bad = _violations(weight.detach())
        if bad:
            raise ValueError(f"weight is not 2:4 sparse: {bad} groups of 4 consecutive inputs have fewer "
                             f"than 2 zeros; prune it first, e.g. sparselib.prune(model, 'wanda', '2:4', calib)")
        self.in_features, self.out_features, self.dtype = in_features, out_features, weight.dtype
        self.contiguous_output = True   # False: the kernel's layout as it is (see to_semi_structured's mlp_layout)
        for key, value in self.kernel.compress(weight.detach()).items():
            self.register_buffer(key, value)
        self.register_buffer("bias", None if bias is None else bias.detach().to(weight.dtype).clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel="reference") -> "SparseLinear24":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, not {type(linear).__name__}")
        return cls(linear.weight.data, None if linear.bias is None else linear.bias.data, kernel)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """``W [out, in]`` as a dense tensor (for saving, e.g. by :func:`sparselib.save_24`): the reference
        kernel's values decompressed; any other kernel's product with the identity, bias left out (exact:
        each output is one weight times 1 plus zeros)."""
        if isinstance(self.kernel, ReferenceKernel24):
            return decompress_24(Compressed24(self.values, self.meta, (self.out_features, self.in_features)))
        bias, self.bias = self.bias, None
        try:
            device = next(self.buffers()).device
            eye = torch.eye(self.in_features, dtype=self.dtype, device=device)
            return self.kernel.mm(self, eye).t().contiguous()
        finally:
            self.bias = bias

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if not isinstance(X, torch.Tensor):
            raise TypeError(f"SparseLinear24 takes a tensor X [..., {self.in_features}], not {type(X).__name__}")
        if X.dim() == 0 or X.shape[-1] != self.in_features:
            raise ValueError(f"X must have shape [..., {self.in_features}] (in_features), got {tuple(X.shape)}")
        if X.dtype != self.dtype:
            raise TypeError(f"X is {X.dtype} but this 2:4 layer is {self.dtype}; cast the input (the model "
                            f"and its inputs must share one dtype)")
        device = self._device()
        if X.device != device:
            raise ValueError(f"X is on {X.device} but this 2:4 layer is on {device}; move the input (or the "
                             f"model) so that both are on one device")
        lead = X.shape[:-1]
        X2 = X.reshape(-1, self.in_features)
        if X2.shape[0] == 0:
            return X.new_empty(*lead, self.out_features)
        if not (X2.is_contiguous() or (self.kernel.transposed_inputs and X2.t().is_contiguous())):
            X2 = X2.contiguous()
        Y = self.kernel.mm(self, X2)
        if self.contiguous_output:
            Y = Y.contiguous()
        return Y.view(*lead, self.out_features)

    def _device(self) -> torch.device:
        return next(self.buffers()).device

    def _check_apply(self, fn) -> torch.dtype:
        """What ``model.to(...)``, ``.half()``, ``.float()``, ``.cpu()``... would make of this layer: its new
        dtype, or a TypeError/ValueError when its kernel's buffers cannot follow (raised before anything
        is cast; see :func:`to_semi_structured`)."""
        probe = fn(torch.empty(0, dtype=self.dtype, device=self._device()))
        if probe.dtype != self.dtype:
            if not self.kernel.recastable:
                raise TypeError(
                    f"this model's 2:4 layers hold {self.kernel.name}-compressed buffers (values and metadata "
                    f"packed for the kernel), which cannot be cast from {self.dtype} to {probe.dtype}. Cast the "
                    f"dense model first, then convert: model.to({probe.dtype}); "
                    f"sparselib.to_semi_structured(model)")
            if not probe.dtype.is_floating_point:
                raise TypeError(f"a 2:4 layer's weights stay floating point; cannot cast to {probe.dtype}")
        if self.kernel.device_type and probe.device.type != self.kernel.device_type:
            raise ValueError(f"the {self.kernel.name} kernel runs only on {self.kernel.device_type}; this model "
                             f"cannot move to {probe.device}. Convert a dense copy there with kernel='reference'")
        return probe.dtype

    def _apply(self, fn, recurse=True):
        dtype = self._check_apply(fn)
        out = super()._apply(fn, recurse)
        self.dtype = dtype
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.dtype}, kernel={self.kernel!r}")


class FusedSparseLinear24(SparseLinear24):
    """Several linears that read the same input (q, k and v; gate and up) as one :class:`SparseLinear24`
    whose ``W`` stacks theirs: ``[q; k; v] [q_out + k_out + v_out, in]``. One bigger product pays the
    kernel better than three small ones. Each part's place in the model is taken by a
    :class:`SparseSlice24`, which returns its columns of the product as a view (stride 1 along out)."""

    def __init__(self, weight, bias, kernel, sizes, parts):
        super().__init__(weight, bias, kernel)
        self.sizes, self.parts = tuple(int(n) for n in sizes), tuple(parts)
        self._pending = None   # (X, outputs, parts served) between the parts' calls on one input

    def part(self, X: torch.Tensor, index: int) -> torch.Tensor:
        """Part ``index`` of ``X Wᵀ + b``. The first part asked for an input computes the whole product;
        the others, called with the very same tensor, take their slice of it. A part asked twice, or
        another input, starts a new product, so every call returns exactly its own linear's output."""
        pending = self._pending
        if pending is None or pending[0] is not X or index in pending[2]:
            pending = (X, self(X).split(self.sizes, dim=-1), set())
        pending[2].add(index)
        self._pending = None if len(pending[2]) == len(self.sizes) else pending
        return pending[1][index]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", parts={dict(zip(self.parts, self.sizes))}"


class SparseSlice24(nn.Module):
    """In place of one linear fused into a :class:`FusedSparseLinear24`: ``Y = X Wᵀ + b`` for this part's
    rows of the fused ``W``. It holds no tensor (the fused module, registered once on the parent, does)."""

    def __init__(self, fused: FusedSparseLinear24, index: int):
        super().__init__()
        object.__setattr__(self, "fused", fused)   # a reference, not a submodule: its buffers are saved once
        self.index = index
        self.in_features, self.out_features = fused.in_features, fused.sizes[index]

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.fused.part(X, self.index)

    def extra_repr(self) -> str:
        return (f"part {self.index} ({self.fused.parts[self.index]}) of a fused 2:4 layer: "
                f"in_features={self.in_features}, out_features={self.out_features}")


# --------------------------------------------------------------------------------------------
# The model: swap every 2:4 decoder-layer nn.Linear for a SparseLinear24
# --------------------------------------------------------------------------------------------
def _linears(model: nn.Module):
    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer_linears(layer).items():
            yield i, layer, name, module


def _violations(W: torch.Tensor) -> int:
    """Groups of 4 with fewer than 2 zeros (every group counts when in_features is not a multiple of 4)."""
    if W.shape[1] % 4:
        return -(-W.numel() // 4)
    return nm_violations(W, 2, 4)


def _replace(layer: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, child, new)


def to_semi_structured(model: nn.Module, *, strict: bool = True, kernel="auto",
                       fuse_projections: bool = False, mlp_layout: str = "contiguous") -> tuple[bool, str, int]:
    """Replace each 2:4 decoder-layer ``nn.Linear`` of ``model`` by a :class:`SparseLinear24`.

    Returns ``(converted, reason, n_converted)``. The weights must already be 2:4 (prune first with
    ``sparselib.prune(model, method, "2:4", calib)``): a linear that is not raises ValueError naming how
    many groups of 4 violate it, before anything changes; with ``strict=False`` such linears are skipped
    and counted in the reason instead.

    kernel: "auto" (default) — the GPU's backend: CUTLASS on sm_8x, cuSPARSELt on sm_90 and later. When
            the hardware cannot run it (CPU, a GPU before sm_80) this returns ``(False, reason, 0)`` and
            the model is left exactly as it was. "cusparselt" or "cutlass" ask for one backend (checked
            against this GPU). "reference" converts on any device with the decompress-then-matmul kernel
            (same outputs, no speed-up: for tests and for reading). A :class:`Kernel24` plugs in your own.
    The weights must be float16 or bfloat16 (else TypeError, nothing changed); linears below the
    backend's minimum shape stay dense and are counted in the reason. Embeddings and ``lm_head`` are
    never touched. Converting is for inference: the new modules hold no trainable weight.

    fuse_projections: False (default) — one :class:`SparseLinear24` per linear. True — the linears of a
            decoder layer that read the same input (q/k/v, and gate/up where the MLP has them: the
            architecture table's ``attn_inputs`` and ``mlp_inputs``) become one
            :class:`FusedSparseLinear24` each (e.g. gate+up of Llama-2-7B: 22016 × 4096), registered on
            their parent as ``qkv_proj`` / ``gate_up_proj``; each original name holds a
            :class:`SparseSlice24` returning its columns as a view. Wider outputs use the 2:4 kernel
            better (on the recorded H200 run, 28672 × 8192 gained far more than 4096 × 4096); the logits
            are exactly those of the unfused conversion. ``n_converted`` still counts the original linears.
    mlp_layout: "contiguous" (default) — every 2:4 layer returns a contiguous ``[..., out]``. "transposed"
            — the MLP's input linears (gate/up, fc1: ``mlp_inputs``) return the kernel's own layout: the
            non-fused cuSPARSELt and CUTLASS kernels write ``[out, tokens]``, so their output stays a
            transposed view instead of being copied (for Llama-2-7B's gate/up at 16,384 tokens, 2 × 360 MB
            per layer); the activation and product keep that layout, and the output linear (down_proj,
            fc2) reads it without a copy. It relies on the MLP combining those outputs elementwise, as
            every architecture in sparselib's table does; the logits do not change.

    A converted model refuses ``save_pretrained`` (ValueError): the dense format has no place for the
    compressed buffers, and ``from_pretrained`` would fill the decoder weights at random; save the 2:4
    form with ``sparselib.save_24``, or the pruned model before converting. A cast its kernels cannot
    follow (``model.float()`` with the GPU kernels) raises before any parameter is cast.
    """
    _check_options(model, strict, kernel, fuse_projections, mlp_layout)
    linears = list(_linears(model))  # raises ValueError for an unsupported architecture
    already = sum(isinstance(m, SparseSlice24) or (isinstance(m, SparseLinear24)
                                                   and not isinstance(m, FusedSparseLinear24))
                  for layer in decoder_layers(model) for m in layer.modules())
    candidates, not_linear, not_24 = _sort_linears(linears, strict)
    picked = _pick_kernel(kernel, model_device(model))
    if isinstance(picked, str):
        log.info("not converting: %s", picked)
        return False, picked, 0
    kern, backend, reason = picked
    dtypes = {module.weight.dtype for _, _, _, module in candidates}
    if not dtypes <= set(SUPPORTED_DTYPES):
        raise TypeError(f"2:4 kernels need float16 or bfloat16 weights; this model's linears are "
                        f"{', '.join(sorted(str(d) for d in dtypes))}. Cast it first: "
                        f"model.half() or model.to(torch.bfloat16)")
    todo, too_small = _shape_fits(candidates, kern)
    groups = _fusable(model, todo) if fuse_projections else []
    # Compress everything first, then swap: an error half-way leaves the model unchanged.
    swaps = _build(todo, groups, kern)
    if mlp_layout == "transposed":
        _keep_kernel_layout(model, swaps)
    for parent, name, module in swaps:
        _replace(parent, name, module)
    if todo:
        _guard_converted(model)
    counts = {"converted": len(todo), "of": len(linears) + already, "groups": groups, "too_small": too_small,
              "not_24": len(not_24), "not_linear": not_linear, "already": already}
    reason = _conversion_reason(backend, reason, counts)
    log.info(reason)
    return bool(todo), reason, len(todo)


def _check_options(model, strict, kernel, fuse_projections, mlp_layout) -> None:
    """:func:`to_semi_structured`'s arguments, checked before anything is read or changed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module (a causal LM), not {type(model).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, not {strict!r}")
    if not (isinstance(kernel, Kernel24) or kernel == "auto" or kernel in KERNELS):
        raise ValueError(f"kernel must be 'auto', one of {sorted(KERNELS)} or a Kernel24 instance, "
                         f"not {kernel!r}")
    if not isinstance(fuse_projections, bool):
        raise TypeError(f"fuse_projections must be True or False, not {fuse_projections!r}")
    if mlp_layout not in ("contiguous", "transposed"):
        raise ValueError(f"mlp_layout must be 'contiguous' or 'transposed', not {mlp_layout!r}")


def _conversion_reason(backend: str, why: str, counts: dict) -> str:
    """What :func:`to_semi_structured` did, in one line: converted, fused, left dense and why."""
    parts = [f"converted {counts['converted']} of {counts['of']} decoder-layer linears to 2:4 "
             f"SparseLinear24 modules with {backend} ({why})"]
    if counts["groups"]:
        kinds = sorted({"+".join(n.rpartition(".")[2].removesuffix("_proj") for n in names)
                        for _, names, _ in counts["groups"]}, key=len)
        parts.append(f"fused into {len(counts['groups'])} wider layers ({', '.join(kinds)})")
    too_small = counts["too_small"]
    for count, what in ((len(too_small), f"below {backend}'s minimum shape"
                         + (f" (e.g. {too_small[0]})" if too_small else "")),
                        (counts["not_24"], "not 2:4, or in_features not a multiple of 4 (strict=False)"),
                        (counts["not_linear"], "not nn.Linear")):
        if count:
            parts.append(f"{count} left dense, {what}")
    if counts["already"]:
        parts.append(f"{counts['already']} already converted")
    return "; ".join(parts)


def _fusable(model: nn.Module, todo) -> list:
    """``[(layer, names, fused name)]``: each group of linears that read one input (the architecture
    table's ``attn_inputs``/``mlp_inputs``) whose members are all being converted and agree in
    in_features, dtype and device."""
    adapter = adapter_for(model)
    by_layer = {}
    for layer, name, module in todo:
        by_layer.setdefault(id(layer), (layer, {}))[1][name] = module
    groups = []
    for layer, modules in by_layer.values():
        for names in (adapter.attn_inputs, adapter.mlp_inputs):
            parts = [modules.get(n) for n in names]
            if len(names) < 2 or any(p is None for p in parts):
                continue
            if len({(p.in_features, p.weight.dtype, p.weight.device) for p in parts}) != 1:
                continue
            parent = names[0].rpartition(".")[0]
            if any(n.rpartition(".")[0] != parent for n in names):
                continue
            stems = [n.rpartition(".")[2].removesuffix("_proj") for n in names]
            fused = ("" if all(len(t) == 1 for t in stems) else "_").join(stems) + "_proj"  # qkv_proj, gate_up_proj
            path = f"{parent}.{fused}" if parent else fused
            owner = layer.get_submodule(parent) if parent else layer
            if hasattr(owner, fused):
                raise ValueError(f"cannot fuse {', '.join(names)}: the module already has an attribute "
                                 f"{fused!r}; pass fuse_projections=False")
            groups.append((layer, names, path))
    return groups


def _keep_kernel_layout(model: nn.Module, swaps) -> None:
    """mlp_layout="transposed": the new modules in place of the MLP's input linears keep the kernel's
    output layout (a fused gate/up module, or each of them)."""
    inputs = set(adapter_for(model).mlp_inputs)
    for _, name, module in swaps:
        if isinstance(module, FusedSparseLinear24) and set(module.parts) <= inputs:
            module.contiguous_output = False
        elif isinstance(module, SparseLinear24) and name in inputs:
            module.contiguous_output = False


def _build(todo, groups, kern) -> list:
    """``[(layer, dotted name, new module)]``: every module to put in place, built before any swap."""
    fused_names = {(id(layer), n) for layer, names, _ in groups for n in names}
    swaps = [(layer, name, SparseLinear24.from_linear(module, kern)) for layer, name, module in todo
             if (id(layer), name) not in fused_names]
    modules = {(id(layer), name): module for layer, name, module in todo}
    for layer, names, path in groups:
        parts = [modules[(id(layer), n)] for n in names]
        W = torch.cat([p.weight.data for p in parts])
        bias = None
        if any(p.bias is not None for p in parts):
            bias = torch.cat([p.bias.data if p.bias is not None else p.weight.new_zeros(p.out_features)
                              for p in parts])
        fused = FusedSparseLinear24(W, bias, kern, [p.out_features for p in parts], names)
        swaps.append((layer, path, fused))
        swaps.extend((layer, n, SparseSlice24(fused, i)) for i, n in enumerate(names))
    return swaps


def _refuse_dense_save(*args, **kwargs):
    raise ValueError(
        "this model was converted by sparselib.to_semi_structured: its 2:4 layers hold compressed buffers "
        "(*.values/*.meta or a packed buffer), not a dense *.weight, so save_pretrained would write a "
        "checkpoint that from_pretrained fills with random decoder weights. Save the 2:4 form with "
        "sparselib.save_24(model, path) (load it with sparselib.load_24), or call save_pretrained on the "
        "pruned dense model before converting it")


def _guarded_apply(model: nn.Module, fn, recurse=True):
    """``model._apply`` of a converted model: every 2:4 layer is asked first whether it can follow the
    cast or move, so a refusal leaves the whole model as it was (not half cast)."""
    for module in model.modules():
        if isinstance(module, SparseLinear24):
            module._check_apply(fn)
    return type(model)._apply(model, fn, recurse)


def _guard_converted(model: nn.Module) -> None:
    """What a converted model refuses: a dense-format ``save_pretrained`` (it would lose the decoder
    weights) and a cast its kernels' buffers cannot follow (checked for every layer before any cast)."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained = _refuse_dense_save
    model._apply = functools.partial(_guarded_apply, model)


def _shape_fits(candidates, kern: Kernel24):
    """``(to convert, [why each other one stays dense])``: the kernel's minimum shapes."""
    todo, too_small = [], []
    for i, layer, name, module in candidates:
        problem = kern.shape_problem(tuple(module.weight.shape), module.weight.dtype)
        if problem:
            too_small.append(f"layer {i} {name}: {problem}")
        else:
            todo.append((layer, name, module))
    return todo, too_small


def _sort_linears(linears, strict: bool):
    """Split the decoder-layer linears into those to convert, those that are not ``nn.Linear`` and
    those that are not 2:4 (or cannot be: in_features not a multiple of 4); any of the last raises,
    before anything changes, when ``strict``."""
    candidates, not_linear, not_24 = [], 0, []
    for i, layer, name, module in linears:
        if not isinstance(module, nn.Linear):
            not_linear += 1  # GPT-2's Conv1D stores W transposed and does not call F.linear
            continue
        if module.in_features % 4:
            not_24.append((i, name, None, module.in_features))
            continue
        bad = _violations(module.weight.data)
        if bad:
            not_24.append((i, name, bad, module.weight.numel() // 4))
        else:
            candidates.append((i, layer, name, module))
    if not_24 and strict:
        no_form = [(i, name, n_in) for i, name, bad, n_in in not_24 if bad is None]
        if no_form:
            i, name, n_in = no_form[0]
            raise ValueError(
                f"{len(no_form)} of {len(linears)} decoder-layer linears cannot be 2:4 at all: their in_features "
                f"is not a multiple of 4, and 2:4 groups 4 consecutive inputs (first: layer {i} {name}, "
                f"in_features {n_in}). Pass strict=False to leave them dense and convert the others.")
        i, name, bad, groups = not_24[0]
        total = sum(b for _, _, b, _ in not_24)
        raise ValueError(
            f"{len(not_24)} of {len(linears)} decoder-layer linears are not 2:4 sparse: {total} groups of 4 "
            f"consecutive inputs have fewer than 2 zeros (first: layer {i} {name}, {bad} of {groups} groups). "
            f"Prune first, e.g. sparselib.prune(model, 'wanda', '2:4', calib), or pass strict=False to "
            f"convert only the linears that are 2:4.")
    return candidates, not_linear, not_24


def _pick_kernel(kernel, device):
    """``(kernel, backend name, why)`` for ``to_semi_structured``, or the reason (a str) why this
    hardware cannot run the GPU kernels ``kernel="auto"`` asks for; a kernel this GPU lacks raises."""
    if isinstance(kernel, Kernel24) or kernel == "reference":
        kern = _kernel(kernel)
        if kern.device_type and device.type != kern.device_type:
            raise ValueError(f"the {kern.name} kernel runs on {kern.device_type}, but the model is on {device}; "
                             f"move it first, or use kernel='reference'")
        reason = ("the reference kernel (sparselib.format24: decompress, then a dense matmul): the same "
                  "outputs, no speed-up" if kern.name == "reference" else f"the {kern.name} kernel {kern!r}")
        return kern, kern.name, reason
    ok, reason, backend = _decide(device, None, torch.float16)
    if not ok:
        return reason
    if kernel == "cutlass" and backend != "cutlass":
        raise ValueError(f"kernel='cutlass' runs only on sm_8x GPUs, and {reason.split(';')[0]}; "
                         f"use kernel='auto'")
    if kernel == "cusparselt" and not torch.backends.cusparselt.is_available():
        raise ValueError("kernel='cusparselt' needs a PyTorch build with cuSPARSELt "
                         "(torch.backends.cusparselt.is_available() is False); use kernel='auto'")
    backend = backend if kernel == "auto" else kernel
    return _kernel(backend), backend, reason


# --------------------------------------------------------------------------------------------
# The fast path: capture the host work once (CUDA graphs), replay it
# --------------------------------------------------------------------------------------------
class FastPathUnavailable(RuntimeError):
    """Raised by :func:`fast_inference` where CUDA graphs cannot run; the message says why."""


def _map_tensors(fn, obj):
    """Apply ``fn`` to every tensor in a (nested) tuple, list, dict or Hugging Face ModelOutput."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):  # ModelOutput is an OrderedDict
        items = {k: _map_tensors(fn, v) for k, v in obj.items()}
        return type(obj)(**items) if type(obj) is not dict else items
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(fn, v) for v in obj)
    return obj


_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


def _signature(args, kwargs):
    """What a captured graph is specialised to: every tensor's shape, dtype and device; plain values
    (ints, bools, strings...) by value; any other object (a static KV cache) by identity, since the
    graph reads and writes that object's own buffers."""
    def key(v):
        if isinstance(v, torch.Tensor):
            return ("tensor", tuple(v.shape), v.dtype, v.device)
        if isinstance(v, _PLAIN):
            return ("value", repr(v))
        return ("object", type(v).__qualname__, id(v))
    return tuple(key(v) for v in args) + tuple((k, key(v)) for k, v in sorted(kwargs.items()))


def _describe(signature) -> str:
    """A signature as a reader wants it: ``input_ids: [2, 16] int64, use_cache=False``."""
    def one(v):
        if v[0] == "tensor":
            return f"[{', '.join(map(str, v[1]))}] {str(v[2]).replace('torch.', '')} on {v[3]}"
        return v[1] if v[0] == "value" else f"{v[1]} object"
    parts = []
    for item in signature:
        if isinstance(item[0], str) and item[0] in ("tensor", "value", "object"):
            parts.append(one(item))
        else:
            parts.append(f"{item[0]}={one(item[1])}" if item[1][0] != "tensor" else f"{item[0]}: {one(item[1])}")
    return ", ".join(parts)


def _refuse_dynamic(kwargs) -> None:
    """A graph replays fixed shapes: a KV cache that grows (Hugging Face's DynamicCache, or the one a
    model builds for ``use_cache=True``) cannot live in it. A static cache can (its buffers are fixed)."""
    caches = [k for k, v in kwargs.items() if hasattr(v, "is_compileable")]
    for k in caches:
        if not kwargs[k].is_compileable:
            raise ValueError(f"{k} is a {type(kwargs[k]).__name__}, a KV cache that grows with every token; a "
                             f"CUDA graph replays fixed shapes. Pass a transformers StaticCache (and "
                             f"cache_position) for decoding, or no cache")
    if kwargs.get("use_cache") is True and not caches:
        raise ValueError("use_cache=True without a static KV cache makes the model build a growing cache "
                         "inside the graph; pass use_cache=False, or a transformers StaticCache")


class GraphedModel:
    """The callable :func:`fast_inference` returns: replays the CUDA graph captured for its inputs.

    A graph is captured for one input signature (each tensor's shape, dtype and device; each other
    argument's value; a static KV cache by identity), after ``defaults`` (e.g. ``use_cache=False``)
    are applied to the call. A call with another signature raises ValueError naming the captured
    ones: capturing in the middle of serving would allocate memory, take seconds and run cuSPARSELt's
    set-up inside the capture. Capture more signatures up front with :meth:`capture` (at most
    ``max_graphs``). ``captures`` lists, per graph: its signature, the capture time in seconds and the
    GPU memory it holds (``memory_bytes``: the growth of reserved memory while capturing).
    """

    def __init__(self, module: nn.Module, warmup: int, max_graphs: int, clone_outputs: bool,
                 defaults: dict | None = None):
        self.module, self.warmup, self.max_graphs, self.clone_outputs = module, warmup, max_graphs, clone_outputs
        self.defaults = dict(defaults or {})
        self.graphs, self.captures = {}, []
        params = inspect.signature(module.forward).parameters.values()
        self._names = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]

    def _inputs(self, args, kwargs):
        """The call as the graph sees it: positional inputs named (``model(ids)`` and
        ``model(input_ids=ids)`` are one call), the defaults applied, dynamic caches refused."""
        if len(args) <= len(self._names):
            named = dict(zip(self._names, args))
            both = sorted(set(named) & set(kwargs))
            if both:
                raise TypeError(f"got multiple values for {both[0]!r}")
            args, kwargs = (), {**named, **kwargs}
        kwargs = {**self.defaults, **kwargs}
        _refuse_dynamic(kwargs)
        return tuple(args), kwargs

    def _entry(self, args, kwargs):
        sig = _signature(args, kwargs)
        if sig not in self.graphs:
            captured = "; ".join(f"({_describe(s)})" for s in self.graphs) or "none"
            raise ValueError(
                f"no CUDA graph was captured for these inputs ({_describe(sig)}); captured: {captured}. A graph "
                f"replays fixed shapes: pad the inputs to a captured shape, capture this one first with "
                f".capture(...) (at most max_graphs={self.max_graphs}), or call the module directly")
        return self.graphs[sig]

    def capture(self, *args, **kwargs) -> dict:
        """Capture a graph for these inputs' signature; returns its entry of :attr:`captures`."""
        args, kwargs = self._inputs(args, kwargs)
        sig = _signature(args, kwargs)
        if sig in self.graphs:
            return next(c for c in self.captures if c["signature"] == sig)
        if len(self.graphs) >= self.max_graphs:
            raise ValueError(f"{len(self.graphs)} graphs are captured already (max_graphs={self.max_graphs}), "
                             f"each holding its own GPU memory; raise max_graphs to capture ({_describe(sig)})")
        static_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        static_kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        start = time.perf_counter()
        state = _state_tensors([v for v in kwargs.values() if hasattr(v, "is_compileable")])
        saved = [t.clone() for t in state]
        replay, static_out, memory = self._record(static_args, static_kwargs)
        with torch.inference_mode():      # the warm-up and capture runs wrote into the static cache: undo
            for t, before in zip(state, saved):
                t.copy_(before)
        info = {"signature": sig, "capture_s": time.perf_counter() - start, "memory_bytes": memory}
        self.graphs[sig] = _Captured(replay, static_args, static_kwargs, static_out)
        self.captures.append(info)
        log.info("captured a CUDA graph in %.2f s, %.1f MiB, for %s", info["capture_s"], memory / 2**20,
                 _describe(sig))
        return info

    def _record(self, static_args, static_kwargs):
        """Warm up, capture one CUDA graph of the module on these (static) inputs; returns
        ``(replay, static outputs, bytes of GPU memory the graph holds)``.

        Capture hazards, and how they are met: the warm-up runs off the default stream, as the CUDA
        graph docs ask, so cuBLAS/cuSPARSELt handles and workspaces are created before capture; inputs
        are padded to the kernel's token multiple inside the graph (the padding is fixed per shape);
        SparseLinear24 makes no host sync (no ``.item()``, ``.cpu()`` or data-dependent shape); a growing
        KV cache is refused before capture (:func:`_refuse_dynamic`)."""
        torch.cuda.synchronize()
        reserved = torch.cuda.memory_reserved()
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.module(*static_args, **static_kwargs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.module(*static_args, **static_kwargs)
        torch.cuda.synchronize()
        return graph.replay, static_out, torch.cuda.memory_reserved() - reserved

    def __call__(self, *args, **kwargs):
        args, kwargs = self._inputs(args, kwargs)
        entry = self._entry(args, kwargs)
        with torch.inference_mode():
            for mine, new in zip(entry.args, args):
                if isinstance(mine, torch.Tensor):
                    mine.copy_(new)
            for k, mine in entry.kwargs.items():
                if isinstance(mine, torch.Tensor):
                    mine.copy_(kwargs[k])
            entry.replay()
            return _map_tensors(torch.clone, entry.out) if self.clone_outputs else entry.out

    def replay(self, *args, **kwargs) -> None:
        """Replay the graph for these inputs' signature without copying the inputs in (for timing)."""
        self.replayer(*args, **kwargs)()

    def replayer(self, *args, **kwargs):
        """The bare replay of the graph for these inputs' signature: a callable with no argument,
        no input copy and no checks, for timing."""
        args, kwargs = self._inputs(args, kwargs)
        return self._entry(args, kwargs).replay


def _state_tensors(objects, depth: int = 3) -> list:
    """Every tensor held by these objects (a static KV cache: its keys, values and, in transformers 5,
    its position counter), through their attributes, lists and dicts, ``depth`` levels down. Capture
    runs the module several times on the example inputs; these are put back as they were after."""
    found, seen = [], set()

    def walk(obj, level):
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                found.append(obj)
        elif level < depth and isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, level + 1)
        elif level < depth and isinstance(obj, dict):
            for v in obj.values():
                walk(v, level + 1)
        elif level < depth and hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
            for v in vars(obj).values():
                walk(v, level + 1)
    for obj in objects:
        walk(obj, 0)
    return found


class _Captured:
    """One captured graph: its replay, the static inputs it reads and the outputs it writes."""

    __slots__ = ("replay", "args", "kwargs", "out")

    def __init__(self, replay, args, kwargs, out):
        self.replay, self.args, self.kwargs, self.out = replay, args, kwargs, out


def fast_inference(module: nn.Module, example_inputs, *, warmup: int = 3, max_graphs: int = 4,
                   clone_outputs: bool = True) -> GraphedModel:
    """Run ``module`` (a model or one layer, dense or converted by :func:`to_semi_structured`) from CUDA
    graphs: the host work of every kernel call — for cuSPARSELt, 0.4–0.8 ms of descriptor and plan
    set-up per matmul — is done once at capture and skipped on every replay.

    Why CUDA graphs: on the recorded H200 run, replaying a graph was the one measured way to remove
    that per-call cost (one linear went from 0.02–0.2× dense eager to 1.31–1.46× at ≥ 2048 tokens on
    7B/70B shapes), with no compiler in the loop. ``benchmarks/semi_structured.py`` also measures the
    alternatives per call (a searched cuSPARSELt ``alg_id``, ``torch.compile`` in "reduce-overhead" and
    "max-autotune-no-cudagraphs" modes) so that this default is revisited from recorded figures.

    example_inputs: a tensor, a tuple of positional tensors, or a dict of keyword arguments (e.g.
    ``{"input_ids": ids}``); a graph is captured for them now. Hugging Face models run with
    ``use_cache=False`` unless a static KV cache is passed (a growing cache cannot live in a graph; a
    ``DynamicCache`` is refused). Returns a :class:`GraphedModel`: call it like the module, with inputs
    of a captured signature (the same shapes, dtypes, devices and other arguments; ``use_cache=False``
    is applied to every call as it was at capture). Other inputs raise ValueError naming the captured
    signatures rather than capturing on the fly; capture more with ``.capture(...)`` (up to
    ``max_graphs``, each holding its own memory). The outputs are copied out of the graph's buffers
    (``clone_outputs=False`` returns the buffers, overwritten by the next call). Capture time and
    memory per graph: ``.captures``. Inference only (no autograd).

    Raises :class:`FastPathUnavailable` on CPU (CUDA graphs need a CUDA device) and TypeError /
    ValueError for bad arguments; the module is never changed.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch nn.Module, not {type(module).__name__}")
    for label, value, low in (("warmup", warmup, 1), ("max_graphs", max_graphs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an int >= {low}, got {value!r}")
    args, kwargs = _example(example_inputs)
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    try:
        device = model_device(module)
    except StopIteration:
        device = tensors[0].device
    if device.type != "cuda" or not torch.cuda.is_available():
        raise FastPathUnavailable(
            f"the fast path replays CUDA graphs, which need a CUDA GPU; this module is on {device}. On CPU "
            f"sparselib's 2:4 layers run the reference kernel, which has no per-call set-up to hide: "
            f"call the module directly")
    wrong = [t.device for t in tensors if t.device != device]
    if wrong:
        raise ValueError(f"example_inputs are on {wrong[0]} but the module is on {device}; move them first")
    graphed = GraphedModel(module, warmup, max_graphs, clone_outputs, _defaults(module, kwargs))
    graphed.capture(*args, **kwargs)
    return graphed


def _example(example_inputs):
    """``(args, kwargs)`` of :func:`fast_inference`'s example inputs, checked."""
    if isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    elif isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    else:
        raise TypeError("example_inputs must be a tensor, a tuple of tensors or a dict of keyword arguments, "
                        f"not {type(example_inputs).__name__}")
    if not any(isinstance(t, torch.Tensor) for t in (*args, *kwargs.values())):
        raise ValueError("example_inputs holds no tensor; pass the inputs of one real call, e.g. "
                         "{'input_ids': ids}")
    _refuse_dynamic(kwargs)
    return args, kwargs


def _defaults(module: nn.Module, kwargs: dict) -> dict:
    """What every graphed call gets unless it says otherwise: ``use_cache=False`` for a model that
    takes ``use_cache`` and was given no static cache (a growing cache cannot live in a graph)."""
    takes = inspect.signature(module.forward).parameters
    has_cache = any(hasattr(v, "is_compileable") for v in kwargs.values())
    return {"use_cache": False} if "use_cache" in takes and not has_cache else {}


# --------------------------------------------------------------------------------------------
# Timing one linear, dense vs 2:4, eager and from a CUDA graph (GPU only)
# --------------------------------------------------------------------------------------------
def _median_ms(fn, min_run_time: float) -> float:
    from torch.utils.benchmark import Timer

    timer = Timer("fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def benchmark_linear(out_features: int, in_features: int, tokens: int, dtype: torch.dtype = torch.float16,
                     device="cuda", min_run_time: float = 0.2, seed: int = 0, *, kernel="auto",
                     graphs: bool = True) -> dict:
    """Time ``Y = X Wᵀ`` for ``X [tokens, in]`` and a random 2:4 ``W [out, in]``: ``nn.Linear`` (dense)
    vs :class:`SparseLinear24`, eager and (``graphs=True``) replayed from a CUDA graph.

    Returns ``dict(dense_ms, sparse_ms, speedup, backend, max_abs_diff)`` for the eager calls, plus
    ``graph_dense_ms, graph_sparse_ms, graph_speedup`` with graphs: median milliseconds per call from
    ``torch.utils.benchmark`` (which synchronises the GPU around each timed block, at least
    ``min_run_time`` seconds per variant), ``speedup = dense_ms / sparse_ms``, and the largest
    difference between the two outputs (they compute the same product). Raises
    :class:`SparseKernelsUnavailable` with the reason on a device that cannot run 2:4 kernels.
    """
    for label, value in (("out_features", out_features), ("in_features", in_features), ("tokens", tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16, not {dtype!r}")
    ok, reason, backend = _decide(device, None, dtype)
    if not ok:
        raise SparseKernelsUnavailable(f"cannot benchmark 2:4 kernels here: {reason}")
    kern = _kernel(backend if kernel == "auto" else kernel)
    problem = shape_problem((out_features, in_features), dtype, "cutlass" if kern.name == "cutlass"
                            else "cusparselt")
    if problem:
        raise ValueError(problem)

    g = torch.Generator(device=device).manual_seed(seed)
    W = torch.randn(out_features, in_features, device=device, dtype=dtype, generator=g)
    W = W * nm_mask(W.abs(), 2, 4)
    X = torch.randn(tokens, in_features, device=device, dtype=dtype, generator=g)
    dense = nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
    dense.weight.data.copy_(W)
    sparse = SparseLinear24(W, None, kern)
    result = {"backend": kern.name, "kernel": repr(kern)}
    with torch.inference_mode():
        want, got = dense(X), sparse(X)  # also the warm-up (first call initialises kernels)
        result["max_abs_diff"] = (want.float() - got.float()).abs().max().item()
        del want, got
        result["dense_ms"] = _median_ms(lambda: dense(X), min_run_time)
        result["sparse_ms"] = _median_ms(lambda: sparse(X), min_run_time)
    result["speedup"] = result["dense_ms"] / result["sparse_ms"]
    if graphs:
        for key, module in (("graph_dense_ms", dense), ("graph_sparse_ms", sparse)):
            graphed = fast_inference(module, X, clone_outputs=False)
            result[key] = _median_ms(graphed.replayer(X), min_run_time)
            del graphed
        result["graph_speedup"] = result["graph_dense_ms"] / result["graph_sparse_ms"]
    return result
