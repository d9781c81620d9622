"""2:4 on the hardware: the capability guard, the CPU path that changes nothing, and (on a capable GPU)
a converted model that computes what the masked dense model computes."""
import copy
import re

import pytest
import torch

import sparselib
from sparselib.semistructured import (CPU_REASON, SparseKernelsUnavailable, _compress, _violations,
                                      benchmark_linear, can_use_sparse_kernels, shape_problem,
                                      sparse_backend, to_semi_structured)

from conftest import tiny_llama

CAPABLE_GPU, WHY_NOT = can_use_sparse_kernels()
needs_gpu = pytest.mark.skipif(not CAPABLE_GPU, reason=f"needs a GPU with 2:4 kernels: {WHY_NOT}")


def pruned_24(seed: int = 0):
    model = tiny_llama(seed)
    sparselib.prune(model, "magnitude", "2:4", progress=False)
    return model


def linears(model):
    return [(i, name, m) for i, layer in enumerate(sparselib.decoder_layers(model))
            for name, m in sparselib.layer_linears(layer).items()]


# --------------------------------------------------------------------------------------------
# The decision, for GPUs that are not here
# --------------------------------------------------------------------------------------------
def test_t4_has_no_sparse_tensor_cores():
    ok, reason = can_use_sparse_kernels(capability=(7, 5), cusparselt=True)
    assert not ok
    assert "sm_75" in reason and "Sparse Tensor Cores" in reason


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9)])
def test_ampere_and_ada_use_cutlass(capability):
    ok, reason = can_use_sparse_kernels(capability=capability, cusparselt=False)
    assert ok, reason
    assert "CUTLASS" in reason and f"sm_{capability[0]}{capability[1]}" in reason
    assert sparse_backend(capability) == "cutlass"


@pytest.mark.parametrize("capability", [(9, 0), (10, 0)])
def test_hopper_and_later_use_cusparselt(capability):
    ok, reason = can_use_sparse_kernels(capability=capability, cusparselt=True)
    assert ok, reason
    assert "cuSPARSELt" in reason
    assert sparse_backend(capability) == "cusparselt"


def test_hopper_without_cusparselt_cannot():
    """The CUTLASS kernels stop at sm_8x, so sm_90 without cuSPARSELt has no path at all."""
    ok, reason = can_use_sparse_kernels(capability=(9, 0), cusparselt=False)
    assert not ok and "cuSPARSELt" in reason


def test_cpu_reason_quotes_what_pytorch_really_raises():
    ok, reason = can_use_sparse_kernels(device="cpu")
    assert not ok and reason == CPU_REASON
    W = torch.zeros(64, 64, dtype=torch.float16)
    with pytest.raises(RuntimeError) as err:
        torch.sparse.to_sparse_semi_structured(W)
    quoted = re.search(r"raises '([^']+)'", reason).group(1)
    assert quoted in str(err.value)


def test_a_capability_for_a_cpu_device_is_still_cpu():
    assert not can_use_sparse_kernels(device="cpu", capability=(8, 0))[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8, torch.float64])
def test_dtypes_without_a_linear_path(dtype):
    ok, reason = can_use_sparse_kernels(capability=(8, 0), dtype=dtype)
    assert not ok and "float16" in reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_are_fine(dtype):
    assert can_use_sparse_kernels(capability=(8, 0), dtype=dtype)[0]


def test_bad_arguments():
    with pytest.raises(TypeError):
        can_use_sparse_kernels(capability=(8, 0), dtype="float16")
    with pytest.raises(ValueError):
        can_use_sparse_kernels(capability=(8,))


# --------------------------------------------------------------------------------------------
# Shapes: torch's own minimums
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cutlass", "cusparselt"])
def test_real_model_shapes_fit_both_backends(backend):
    for shape in [(576, 576), (192, 576), (1536, 576), (576, 1536), (11008, 4096), (28672, 8192)]:
        assert shape_problem(shape, torch.float16, backend) is None


def test_shape_minimums_come_from_torch():
    limits = torch.sparse.SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS[torch.float16]
    r, c = limits.sparse_min_rows, limits.sparse_min_cols
    assert shape_problem((r, c), torch.float16, "cutlass") is None
    assert "multiple of" in shape_problem((r // 2, c), torch.float16, "cutlass")
    assert "multiple of" in shape_problem((r, c + 4), torch.float16, "cutlass")
    # cuSPARSELt's fp16 minimum is smaller: a 16-row matrix is fine there, not on CUTLASS
    assert shape_problem((16, 576), torch.float16, "cusparselt") is None
    assert shape_problem((16, 576), torch.float16, "cutlass") is not None
    with pytest.raises(ValueError):
        shape_problem((64, 64), torch.float16, "triton")


# --------------------------------------------------------------------------------------------
# The model on CPU: validated, then left exactly as it was
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(CAPABLE_GPU, reason="checks the path for machines without 2:4 kernels")
def test_cpu_leaves_every_parameter_bit_identical():
    model = pruned_24()
    before = {k: (type(v), v.detach().clone()) for k, v in model.named_parameters()}
    converted, reason, n = to_semi_structured(model)
    assert (converted, n) == (False, 0)
    assert "Only CUDA tensors are currently supported" in reason
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for k, (kind, value) in before.items():
        assert type(after[k]) is kind and after[k].dtype == value.dtype
        assert torch.equal(after[k].detach(), value), k


def test_not_24_raises_with_the_violating_group_count():
    model = pruned_24()
    _, _, m = linears(model)[3]
    m.weight.data[:2, :8] = 1.0  # 2 rows x 2 groups of 4 now have no zeros at all
    model.model.layers[1].mlp.down_proj.weight.data[0, :4] = 0.5  # one more group
    expected = sum(sparselib.nm_violations(mod.weight.data, 2, 4) for _, _, mod in linears(model))
    assert expected == 5
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"2 of {len(linears(model))} decoder-layer linears.* {expected} "
                                         r"groups of 4"):
        to_semi_structured(model)
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("zeros", [0.0, 0.3, 0.5, 0.7])
def test_fast_violation_count_equals_nm_violations(zeros):
    g = torch.Generator().manual_seed(int(zeros * 10))
    W = torch.randn(48, 64, generator=g)
    W[torch.rand(48, 64, generator=g) < zeros] = 0
    assert _violations(W) == sparselib.nm_violations(W, 2, 4)


def test_dense_model_raises_and_strict_false_does_not():
    model = tiny_llama()
    with pytest.raises(ValueError, match="not 2:4"):
        to_semi_structured(model)
    converted, reason, n = to_semi_structured(model, strict=False)
    if not CAPABLE_GPU:
        assert (converted, n) == (False, 0) and reason == CPU_REASON


def test_not_a_model():
    with pytest.raises(TypeError):
        to_semi_structured(torch.zeros(4, 4))


def test_backend_flag_is_restored_even_when_compression_fails():
    before = torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS
    with pytest.raises(RuntimeError):
        _compress(torch.zeros(64, 64), "cutlass" if not before else "cusparselt")  # CPU tensor: fails
    assert torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS == before


def test_benchmark_refuses_without_kernels_and_checks_shapes():
    with pytest.raises(ValueError):
        benchmark_linear(576, 576, 0)
    with pytest.raises(SparseKernelsUnavailable, match="only on CUDA"):
        benchmark_linear(576, 576, 16, device="cpu")


# --------------------------------------------------------------------------------------------
# On a capable GPU (skipped elsewhere): same logits as the masked dense model
# --------------------------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_model_matches_masked_dense_model(dtype):
    dense = pruned_24().to("cuda", dtype)
    sparse = copy.deepcopy(dense)
    converted, reason, n = to_semi_structured(sparse)
    assert converted and n == len(linears(sparse)), reason
    assert all(isinstance(m.weight, torch.sparse.SparseSemiStructuredTensor) for _, _, m in linears(sparse))
    ids = torch.randint(0, 128, (3, 17), device="cuda")  # 51 tokens: not a multiple of the kernel tile
    with torch.inference_mode():
        want, got = dense(ids).logits.float(), sparse(ids).logits.float()
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@needs_gpu
def test_fp32_model_on_gpu_is_a_type_error():
    with pytest.raises(TypeError, match="float16"):
        to_semi_structured(pruned_24().to("cuda"))


@needs_gpu
def test_benchmark_linear_computes_the_same_product():
    result = benchmark_linear(1536, 576, 64, min_run_time=0.05)
    assert result["dense_ms"] > 0 and result["sparse_ms"] > 0
    assert result["max_abs_diff"] < 0.5  # a few fp16 ulps of outputs ~N(0, 288); a wrong product is off by tens
