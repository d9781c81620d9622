"""2:4 on the hardware: the capability guard, the CPU path that changes nothing, the SparseLinear24
module (tested on CPU with the reference kernel), the CUDA-graph fast path's refusal on CPU, and (on a
capable GPU) a converted model that computes what the masked dense model computes."""
import copy
import inspect
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparselib
from sparselib.semistructured import (CPU_REASON, FastPathUnavailable, Kernel24, SparseKernelsUnavailable,
                                      SparseLinear24, _compress, _violations, benchmark_linear,
                                      can_use_sparse_kernels, fast_inference, shape_problem,
                                      sparse_backend, to_semi_structured)

from conftest import tiny_llama, tiny_opt

CAPABLE_GPU, WHY_NOT = can_use_sparse_kernels()
needs_gpu = pytest.mark.skipif(not CAPABLE_GPU, reason=f"needs a GPU with 2:4 kernels: {WHY_NOT}")


def pruned_24(seed: int = 0):
    model = tiny_llama(seed)
    sparselib.prune(model, "magnitude", "2:4", progress=False)
    return model


def linears(model):
    return [(i, name, m) for i, layer in enumerate(sparselib.decoder_layers(model))
            for name, m in sparselib.layer_linears(layer).items()]


def sparse_layers(model):
    return [m for layer in sparselib.decoder_layers(model) for m in layer.modules()
            if isinstance(m, SparseLinear24)]


def snapshot(model):
    return {k: (type(v), v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}


def assert_unchanged(model, before):
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, (kind, value) in before.items():
        assert type(after[k]) is kind and after[k].dtype == value.dtype, k
        assert torch.equal(after[k].detach(), value), k
    assert not sparse_layers(model)


def cache_kw(model) -> str:
    """transformers 5 names the KV cache argument ``cache``; 4.x ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def make_static_cache(model, batch, length):
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    extra = {k: v for k, v in (("max_batch_size", batch), ("batch_size", batch), ("dtype", model.dtype))
             if k in params}
    return StaticCache(config=model.config, max_cache_len=length, **extra)


def random_24(out_f, in_f, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    return (W * sparselib.nm_mask(W.abs(), 2, 4)).to(dtype)


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


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 6), seed=st.integers(0, 2**16),
       planted=st.data())
def test_violation_count_is_the_number_of_groups_with_fewer_than_two_zeros(rows, groups, seed, planted):
    """Build a 2:4 matrix (exactly 2 zeros per group), then fill chosen groups so that they keep 3 or 4
    nonzeros: the count must be exactly the number of groups filled."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, 4 * groups, generator=g).abs() + 0.1      # no accidental zeros
    W = W * sparselib.nm_mask(W, 2, 4)
    cells = [(r, k) for r in range(rows) for k in range(groups)]
    chosen = planted.draw(st.lists(st.sampled_from(cells), unique=True, max_size=len(cells)))
    for r, k in chosen:
        zeros = (W[r, 4 * k:4 * k + 4] == 0).nonzero().flatten()
        W[r, 4 * k + zeros[0]] = 1.0                                 # now only 1 zero: a violation
    assert _violations(W) == len(chosen)
    assert _violations(W[:, :-1]) == -(-W[:, :-1].numel() // 4)     # in_features % 4: every group counts


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
# SparseLinear24 on CPU, with the reference kernel (decompress, then matmul)
# --------------------------------------------------------------------------------------------
CONTEXTS = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lead", [(5,), (3, 7), (2, 1, 4)], ids=["2-D", "3-D", "4-D"])
@pytest.mark.parametrize("context", list(CONTEXTS))
def test_module_equals_the_masked_dense_layer_and_is_contiguous(dtype, bias, lead, context):
    W = random_24(48, 64, dtype)
    b = torch.randn(48).to(dtype) if bias else None
    layer = SparseLinear24(W, b)
    X = torch.randn(*lead, 64).to(dtype)
    with CONTEXTS[context]():
        Y = layer(X)
        want = torch.nn.functional.linear(X, W, b)
    assert Y.shape == (*lead, 48) and Y.dtype == dtype
    assert Y.is_contiguous() and Y.stride()[-1] == 1
    assert torch.equal(Y, want)


def test_module_takes_non_contiguous_and_expanded_inputs():
    """generate() hands a layer expanded (stride-0) and sliced views; the kernel only sees a 2-D copy."""
    W = random_24(32, 64, torch.float16)
    layer = SparseLinear24(W)
    row = torch.randn(1, 1, 64).to(torch.float16)
    expanded = row.expand(16, 1, 64)                       # stride 0 along the batch
    sliced = torch.randn(4, 9, 128).to(torch.float16)[..., ::2]
    with torch.inference_mode():
        for X in (expanded, sliced):
            Y = layer(X)
            assert Y.is_contiguous()
            assert torch.equal(Y, torch.nn.functional.linear(X.contiguous(), W))
        assert layer(torch.zeros(0, 64, dtype=torch.float16)).shape == (0, 32)


def test_module_from_linear_keeps_weight_and_bias():
    lin = torch.nn.Linear(64, 32).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(random_24(32, 64, torch.bfloat16, seed=3))
    layer = SparseLinear24.from_linear(lin)
    X = torch.randn(6, 64).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer(X), lin(X))
    assert "kernel=ReferenceKernel24()" in repr(layer)
    assert sum(p.numel() for p in layer.parameters()) == 0          # inference only: no trainable weight


def test_module_bad_inputs_say_what_to_do():
    W = random_24(32, 64, torch.float16)
    with pytest.raises(TypeError, match=r"model.half\(\)"):
        SparseLinear24(W.float())
    dense = W.clone()
    dense[0, :4] = 1.0
    with pytest.raises(ValueError, match="1 groups of 4.*prune"):
        SparseLinear24(dense)
    with pytest.raises(ValueError, match="bias must have shape"):
        SparseLinear24(W, torch.zeros(31, dtype=torch.float16))
    with pytest.raises(ValueError, match="2-D"):
        SparseLinear24(W[0])
    with pytest.raises(ValueError, match="kernel must be"):
        SparseLinear24(W, kernel="triton")
    with pytest.raises(ValueError, match="runs on cuda"):
        SparseLinear24(W, kernel="cusparselt")
    layer = SparseLinear24(W)
    with pytest.raises(ValueError, match=r"\[\.\.\., 64\]"):
        layer(torch.zeros(3, 63, dtype=torch.float16))
    with pytest.raises(TypeError, match="cast the input"):
        layer(torch.zeros(3, 64))
    with pytest.raises(TypeError):
        layer([0.0] * 64)


def test_a_plugged_in_kernel_is_called_with_a_contiguous_2d_input():
    seen = []

    class Recording(Kernel24):
        name = "recording"

        def compress(self, W):
            return {"dense": W.clone()}

        def mm(self, layer, X):
            seen.append((tuple(X.shape), X.is_contiguous()))
            return (X @ layer.dense.T).T.contiguous().T           # a transposed result, on purpose

    layer = SparseLinear24(random_24(32, 64, torch.float16), kernel=Recording())
    Y = layer(torch.randn(3, 5, 128).to(torch.float16)[..., ::2])
    assert seen == [((15, 64), True)]
    assert Y.shape == (3, 5, 32) and Y.is_contiguous()             # the module makes it contiguous


# --------------------------------------------------------------------------------------------
# The cuSPARSELt kernel's own logic (padding, output layout, bias), on CPU with the two torch ops
# emulated as PyTorch documents them: _cslt_sparse_mm(A, B) = A @ B as [out, tokens], or [tokens, out]
# with transpose_result=True. Only the ops are stand-ins; sparselib's code around them runs as is.
# --------------------------------------------------------------------------------------------
CSLT_LIMITS = torch.sparse.SparseSemiStructuredTensorCUSPARSELT._DTYPE_SHAPE_CONSTRAINTS


@pytest.fixture
def fake_cslt(monkeypatch):
    """Emulate torch._cslt_compress / _cslt_sparse_mm on CPU; returns the list of mm calls and a
    CuSparseLtKernel24 subclass allowed on CPU."""
    calls = []

    def compress(W):
        assert W.is_contiguous() and W.dim() == 2
        return W.flatten().clone()          # stands in for the packed buffer (values + metadata)

    def sparse_mm(packed, B, bias=None, alpha=None, out_dtype=None, transpose_result=False, alg_id=0,
                  split_k=1, split_k_mode=-1):
        limits = CSLT_LIMITS[B.dtype]
        in_f, tokens = B.shape
        # the sizes torch's own cuSPARSELt op pads the dense operand to (semi_structured.cusparselt_mm)
        assert tokens % limits.dense_min_rows == 0 and in_f % limits.dense_min_cols == 0, (in_f, tokens)
        A = packed.view(-1, in_f)
        Y = A.float() @ B.float()
        if bias is not None:
            Y = Y + bias.float()[:, None]
        assert B.is_contiguous() or B.t().is_contiguous()      # the two layouts torch's op reads
        calls.append({"B": tuple(B.shape), "transpose_result": transpose_result, "alg_id": alg_id,
                      "B_row_major": B.is_contiguous()})
        Y = Y.to(B.dtype)
        return Y.t().contiguous() if transpose_result else Y

    monkeypatch.setattr(torch, "_cslt_compress", compress)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", sparse_mm)

    class CpuCuSparseLt(sparselib.semistructured.CuSparseLtKernel24):
        device_type = None

    return calls, CpuCuSparseLt


def test_cusparselt_default_is_the_non_fused_layout_the_recorded_run_finished():
    """The recorded H200 run could not finish a 7B forward with the fused transpose: not the default."""
    kernel = sparselib.semistructured._kernel("cusparselt")
    assert kernel.fused_transpose is False and kernel.alg_id == 0
    assert sparselib.semistructured.CuSparseLtKernel24().fused_transpose is False


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lead", [(1,), (5,), (16, 1), (3, 17), (64,)])
def test_cusparselt_kernel_pads_tokens_and_returns_tokens_by_out(fake_cslt, fused, bias, lead):
    calls, Kernel = fake_cslt
    W = random_24(48, 64, torch.float16)
    b = torch.randn(48).half() if bias else None
    layer, ref = SparseLinear24(W, b, Kernel(fused_transpose=fused)), SparseLinear24(W, b)
    X = torch.randn(*lead, 64).half()
    with torch.inference_mode():
        Y = layer(X)
        want = ref(X)
    tokens = X.numel() // 64
    padded = -(-tokens // CSLT_LIMITS[torch.float16].dense_min_rows) * CSLT_LIMITS[torch.float16].dense_min_rows
    assert calls == [{"B": (64, padded), "transpose_result": fused, "alg_id": 0, "B_row_major": False}]
    assert Y.shape == (*lead, 48) and Y.is_contiguous()
    torch.testing.assert_close(Y, want, rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------------------------
# Bad input on SparseLinear24 and to_semi_structured: an error naming the fix, nothing changed
# --------------------------------------------------------------------------------------------
def test_in_features_not_a_multiple_of_4_is_named_and_not_blamed_on_the_2_4_pattern():
    W = torch.zeros(32, 62, dtype=torch.float16)        # all zeros: as sparse as can be
    with pytest.raises(ValueError, match=r"multiple of 4.*62 inputs") as err:
        SparseLinear24(W)
    assert "not 2:4 sparse" not in str(err.value)


def test_a_model_with_in_features_not_a_multiple_of_4_names_the_linear():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)                                 # down_proj reads 130 inputs: no 2:4 form
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=130,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    for _, _, m in linears(model):
        if m.in_features % 4 == 0:
            m.weight.data *= sparselib.nm_mask(m.weight.data.abs(), 2, 4)
    model = model.half()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"2 of 14 .*cannot be 2:4 at all.*not a multiple of 4.*"
                                         r"layer 0 mlp.down_proj, in_features 130.*strict=False") as err:
        to_semi_structured(model, kernel="reference")
    assert "groups of 4 consecutive inputs have fewer than 2 zeros" not in str(err.value)
    assert_unchanged(model, before)
    converted, reason, n = to_semi_structured(model, strict=False, kernel="reference")
    assert converted and n == 12 and "2 left dense, not 2:4, or in_features not a multiple of 4" in reason


def test_a_shape_the_gpu_kernel_cannot_hold_is_refused_before_compressing(fake_cslt):
    calls, Kernel = fake_cslt
    W = random_24(24, 64, torch.float16)                 # cuSPARSELt's fp16 rows come in multiples of 16
    with pytest.raises(ValueError, match=r"cusparselt kernel cannot hold this weight.*out_features must be "
                                         r"a multiple of 16.*kernel='reference'"):
        SparseLinear24(W, kernel=Kernel())
    SparseLinear24(W)                                    # the reference kernel holds any multiple of 4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out_f=st.integers(1, 70), in_f=st.integers(1, 80), dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_every_shape_either_builds_a_correct_layer_or_says_why(fake_cslt, out_f, in_f, dtype):
    _, Kernel = fake_cslt
    W = random_24(out_f, in_f, dtype) if in_f % 4 == 0 else torch.zeros(out_f, in_f, dtype=dtype)
    limits = CSLT_LIMITS[dtype]
    if in_f % 4:
        with pytest.raises(ValueError, match="multiple of 4"):
            SparseLinear24(W, kernel=Kernel())
    elif out_f % limits.sparse_min_rows or in_f % limits.sparse_min_cols:
        with pytest.raises(ValueError, match="cannot hold this weight"):
            SparseLinear24(W, kernel=Kernel())
    else:
        X = torch.randn(3, in_f).to(dtype)
        torch.testing.assert_close(SparseLinear24(W, kernel=Kernel())(X), torch.nn.functional.linear(X, W),
                                   rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("which", ["reference", "cusparselt"])
def test_no_tokens_and_a_1d_input_behave_as_in_nn_linear(fake_cslt, which):
    calls, Kernel = fake_cslt
    W, b = random_24(48, 64, torch.float16), torch.randn(48).half()
    layer = SparseLinear24(W, b, "reference" if which == "reference" else Kernel())
    with torch.inference_mode():
        for X in (torch.randn(64).half(), torch.zeros(0, 64).half(), torch.zeros(3, 0, 64).half()):
            Y, want = layer(X), torch.nn.functional.linear(X, W, b)
            assert Y.shape == want.shape and Y.dtype == want.dtype
            torch.testing.assert_close(Y, want, rtol=2e-3, atol=2e-3)
    if which == "cusparselt":                            # only the 1-D input reached the kernel, padded
        assert [c["B"] for c in calls] == [(64, CSLT_LIMITS[torch.float16].dense_min_rows)]


def test_inputs_and_bias_on_another_device_are_refused():
    W = random_24(32, 64, torch.float16)
    with pytest.raises(ValueError, match="bias is on meta"):
        SparseLinear24(W, torch.zeros(32, dtype=torch.float16, device="meta"))
    layer = SparseLinear24(W)
    with pytest.raises(ValueError, match="X is on meta but this 2:4 layer is on cpu; move the input"):
        layer(torch.zeros(3, 64, dtype=torch.float16, device="meta"))


def test_to_semi_structured_checks_strict():
    model = pruned_24().half()
    before = snapshot(model)
    with pytest.raises(TypeError, match="strict must be True or False"):
        to_semi_structured(model, strict="no", kernel="reference")
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------------
# to_semi_structured with the reference kernel: a tiny real-architecture model, converted on CPU
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_conversion_matches_the_masked_dense_model(make, dtype):
    dense = make()
    sparselib.prune(dense, "magnitude", "2:4", progress=False)
    dense = dense.to(dtype)
    sparse = copy.deepcopy(dense)
    n_linears = len(linears(sparse))
    converted, reason, n = to_semi_structured(sparse, kernel="reference")
    assert converted and n == n_linears and "reference" in reason, reason
    assert len(sparse_layers(sparse)) == n_linears and not linears(sparse)
    ids = torch.randint(0, 128, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(sparse(ids).logits, dense(ids).logits)
    assert to_semi_structured(sparse, kernel="reference")[0] is False   # nothing left to convert


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_projections_give_exactly_the_unfused_logits(make, dtype):
    dense = make()
    sparselib.prune(dense, "magnitude", "2:4", progress=False)
    dense = dense.to(dtype)
    unfused, fused = copy.deepcopy(dense), copy.deepcopy(dense)
    _, _, n_unfused = to_semi_structured(unfused, kernel="reference")
    converted, reason, n = to_semi_structured(fused, kernel="reference", fuse_projections=True)
    assert converted and n == n_unfused and "fused into" in reason, reason
    fused_modules = [m for m in fused.modules() if isinstance(m, sparselib.semistructured.FusedSparseLinear24)]
    per_layer = 2 if make is tiny_llama else 1                        # q/k/v (+ gate/up where the MLP has them)
    assert len(fused_modules) == per_layer * len(sparselib.decoder_layers(fused))
    ids = torch.randint(0, 128, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(fused(ids).logits, unfused(ids).logits)
        assert torch.equal(fused(ids).logits, dense(ids).logits)
    prompt = ids[:, :4]
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                  pad_token_id=0)
    assert torch.equal(fused.generate(prompt, **kwargs), unfused.generate(prompt, **kwargs))


def test_fused_parts_are_views_with_stride_1_and_each_part_is_its_own_linear():
    model = pruned_24().half()
    attn = copy.deepcopy(model).model.layers[0].self_attn          # the dense q/k/v, for reference
    to_semi_structured(model, kernel="reference", fuse_projections=True)
    fused_attn = model.model.layers[0].self_attn
    qkv = fused_attn.qkv_proj
    assert fused_attn.q_proj.fused is qkv and qkv.sizes == (64, 32, 32)
    X, other = torch.randn(2, 5, 64).half(), torch.randn(2, 5, 64).half()
    with torch.inference_mode():
        q, k, v = fused_attn.q_proj(X), fused_attn.k_proj(X), fused_attn.v_proj(X)
        for got, dense in ((q, attn.q_proj), (k, attn.k_proj), (v, attn.v_proj)):
            assert torch.equal(got, dense(X)) and got.stride(-1) == 1
        assert q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()   # one product
        # out of order, a part asked twice, another input in between: still each linear's own output
        assert torch.equal(fused_attn.k_proj(X), attn.k_proj(X))
        assert torch.equal(fused_attn.k_proj(other), attn.k_proj(other))
        assert torch.equal(fused_attn.q_proj(X), attn.q_proj(X))
        assert torch.equal(fused_attn.v_proj(other), attn.v_proj(other))


def test_fused_buffers_are_held_once_and_follow_a_deepcopy():
    model = pruned_24().half()
    to_semi_structured(model, kernel="reference", fuse_projections=True)
    keys = list(model.state_dict())
    assert any(k.endswith("self_attn.qkv_proj.values") for k in keys)
    assert not any(".q_proj." in k or ".gate_proj." in k for k in keys)    # the slices hold no tensor
    twin = copy.deepcopy(model)
    layer = twin.model.layers[1]
    assert layer.mlp.up_proj.fused is layer.mlp.gate_up_proj is not model.model.layers[1].mlp.gate_up_proj
    assert to_semi_structured(twin, kernel="reference")[0] is False        # nothing left to convert


def test_fused_projections_call_the_kernel_once_per_group(fake_cslt):
    calls, Kernel = fake_cslt
    ref = pruned_24().half()
    model = copy.deepcopy(ref)
    to_semi_structured(model, kernel=Kernel(), fuse_projections=True)
    to_semi_structured(ref, kernel="reference")
    ids = torch.randint(0, 128, (2, 5))
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-2, atol=1e-2)
    assert len(calls) == 4 * len(sparselib.decoder_layers(model))          # qkv, o, gate_up, down
    assert {c["B"][0] for c in calls} == {64, 128}


@pytest.mark.parametrize("fuse", [False, True])
def test_transposed_mlp_layout_skips_the_copies_and_keeps_the_logits(fake_cslt, fuse):
    """Non-fused cuSPARSELt writes [out, tokens]: with mlp_layout="transposed" gate/up hand that on as a
    view, and down_proj reads it (as a row-major [in, tokens] operand) with no copy either way."""
    calls, Kernel = fake_cslt
    plain = pruned_24().half()
    fast = copy.deepcopy(plain)
    to_semi_structured(plain, kernel=Kernel(), fuse_projections=fuse)
    to_semi_structured(fast, kernel=Kernel(), fuse_projections=fuse, mlp_layout="transposed")
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))   # 16 tokens: no padding
    with torch.inference_mode():
        want = plain(ids).logits
        calls.clear()
        got = fast(ids).logits
        mlp = fast.model.layers[0].mlp
        X = torch.randn(2, 8, 64).half()
        gate = mlp.gate_proj(X)
        assert gate.shape == (2, 8, 128) and not gate.is_contiguous() and gate.stride() == (8, 1, 16)
        assert fast.model.layers[0].self_attn.q_proj(X).stride(-1) == 1            # attention untouched
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    down = [c for c in calls if c["B"][0] == 128]                                   # down_proj reads 128
    assert len(down) == len(sparselib.decoder_layers(fast)) and all(c["B_row_major"] for c in down)


def test_transposed_mlp_layout_changes_nothing_with_the_reference_kernel():
    plain = pruned_24().half()
    fast = copy.deepcopy(plain)
    to_semi_structured(plain, kernel="reference")
    to_semi_structured(fast, kernel="reference", fuse_projections=True, mlp_layout="transposed")
    ids = torch.randint(0, 128, (2, 7))
    with torch.inference_mode():
        assert torch.equal(fast(ids).logits, plain(ids).logits)
    with pytest.raises(ValueError, match="mlp_layout must be 'contiguous' or 'transposed'"):
        to_semi_structured(pruned_24().half(), kernel="reference", mlp_layout="columns")


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("tokens", [5, 16])
def test_the_custom_op_fake_matches_the_real_output_so_torch_compile_traces_it(fake_cslt, fused, tokens):
    """torch.compile plans memory from the custom op's fake implementation: its shape and strides must be
    those of the real output (opcheck compares them), and a SparseLinear24 must trace without a break."""
    _, Kernel = fake_cslt
    W = random_24(48, 64, torch.float16)
    layer = SparseLinear24(W, torch.randn(48).half(), Kernel(fused_transpose=fused))
    X = torch.randn(tokens, 64).half()
    op = sparselib.semistructured._cslt_linear()
    torch.library.opcheck(op, (X, layer.packed, layer.bias, 48, fused, 0),
                          test_utils=("test_schema", "test_faketensor"))
    for contiguous in (True, False):
        layer.contiguous_output = contiguous
        torch._dynamo.reset()
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        with torch.inference_mode():
            got, want = compiled(X), layer(X)
        assert got.stride() == want.stride() and torch.equal(got, want)
    torch._dynamo.reset()


def test_without_the_custom_op_the_kernel_still_runs_eagerly(fake_cslt, monkeypatch, caplog):
    """A torch whose custom-op API refuses the registration must not stop the GPU path: eager calls and
    CUDA graphs need no op (only torch.compile does), so the plain function is used and a warning says so."""
    calls, Kernel = fake_cslt

    def refuse(*args, **kwargs):
        raise ValueError("infer_schema(func): Unsupported type annotation")

    monkeypatch.setattr(sparselib.semistructured, "_CSLT_LINEAR", None)
    monkeypatch.setattr(torch.library, "custom_op", refuse)
    W = random_24(48, 64, torch.float16)
    with caplog.at_level("WARNING", logger="sparselib.semistructured"):
        Y = SparseLinear24(W, kernel=Kernel())(torch.randn(5, 64).half())
    assert Y.shape == (5, 48) and len(calls) == 1 and "without a custom op" in caplog.text
    monkeypatch.setattr(sparselib.semistructured, "_CSLT_LINEAR", None)   # the next user registers it again


def test_fuse_projections_must_be_a_bool():
    model = pruned_24().half()
    before = snapshot(model)
    with pytest.raises(TypeError, match="fuse_projections must be True or False"):
        to_semi_structured(model, kernel="reference", fuse_projections="yes")
    assert_unchanged(model, before)


def test_q_k_v_outputs_are_contiguous_so_attention_keeps_its_fast_path():
    model = pruned_24().half()
    to_semi_structured(model, kernel="reference")
    attn = model.model.layers[0].self_attn
    X = torch.randn(2, 5, 64).half()
    with torch.inference_mode():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            Y = proj(X)
            assert Y.is_contiguous()
            heads = Y.view(2, 5, -1, 16).transpose(1, 2)        # what Llama attention does with it
            assert heads.stride()[-1] == 1


@pytest.mark.parametrize("batch", [1, 16, 64])
def test_generate_with_a_kv_cache_matches_the_masked_dense_model(batch):
    dense = pruned_24().half()
    sparse = copy.deepcopy(dense)
    assert to_semi_structured(sparse, kernel="reference")[0]
    prompt = torch.randint(0, 128, (batch, 6), generator=torch.Generator().manual_seed(batch))
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=5, min_new_tokens=5,
                  do_sample=False, pad_token_id=0, use_cache=True)
    want = dense.generate(prompt, **kwargs)
    got = sparse.generate(prompt, **kwargs)
    assert got.shape == (batch, 11)
    assert torch.equal(got, want)


def test_reference_conversion_refuses_fp32_and_changes_nothing():
    model = pruned_24()
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"model.half\(\) or model.to\(torch.bfloat16\)"):
        to_semi_structured(model, kernel="reference")
    assert_unchanged(model, before)


def test_reference_conversion_refuses_a_model_that_is_not_24_and_changes_nothing():
    model = pruned_24().half()
    model.model.layers[1].mlp.up_proj.weight.data[:3, :4] = 1.0
    n_linears = len(linears(model))
    before = snapshot(model)
    with pytest.raises(ValueError, match="1 of .* not 2:4 sparse: 3 groups"):
        to_semi_structured(model, kernel="reference")
    assert_unchanged(model, before)
    converted, reason, n = to_semi_structured(model, strict=False, kernel="reference")
    assert converted and n == n_linears - 1 and "1 left dense, not 2:4" in reason
    assert isinstance(model.model.layers[1].mlp.up_proj, torch.nn.Linear)


def test_bad_kernel_argument_changes_nothing():
    model = pruned_24().half()
    before = snapshot(model)
    for bad in ("triton", None, 3):
        with pytest.raises(ValueError, match="kernel must be"):
            to_semi_structured(model, kernel=bad)
    assert_unchanged(model, before)


def test_a_converted_model_refuses_save_pretrained_and_writes_nothing(tmp_path):
    """save_pretrained would write *.values/*.meta and no decoder *.weight; from_pretrained would then
    fill those weights at random with only a warning."""
    model = pruned_24().half()
    model.save_pretrained(tmp_path / "dense")                       # before converting: the dense format
    to_semi_structured(model, kernel="reference")
    for which in (model, copy.deepcopy(model)):
        with pytest.raises(ValueError, match=r"from_pretrained fills with random decoder weights.*"
                                             r"sparselib.save_24\(model, path\).*before converting"):
            which.save_pretrained(tmp_path / "converted")
    assert not (tmp_path / "converted").exists()
    ids = torch.randint(0, 128, (2, 5))
    with torch.inference_mode():                                      # still a working model
        assert model(ids).logits.shape == (2, 5, 128)


@pytest.mark.parametrize("cast", ["float", "bfloat16", "to_float32", "half"])
def test_a_reference_model_recasts_consistently(cast):
    dense = pruned_24().half()
    sparse = copy.deepcopy(dense)
    to_semi_structured(sparse, kernel="reference")
    do = {"float": lambda m: m.float(), "bfloat16": lambda m: m.bfloat16(),
          "to_float32": lambda m: m.to(torch.float32), "half": lambda m: m.half()}[cast]
    dense, sparse = do(dense), do(sparse)
    dtype = dense.lm_head.weight.dtype
    assert all(layer.dtype == dtype and layer.values.dtype == dtype and layer.meta.dtype == torch.uint8
               for layer in sparse_layers(sparse))
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(sparse(ids).logits, dense(ids).logits)


def test_a_cast_the_gpu_kernels_cannot_follow_is_refused_before_anything_is_cast(fake_cslt):
    _, Kernel = fake_cslt
    model = pruned_24().half()
    assert to_semi_structured(model, kernel=Kernel())[0]
    before = snapshot(model)
    for cast in (lambda m: m.float(), lambda m: m.to(torch.bfloat16), lambda m: m.double(),
                 lambda m: m.to("cpu", torch.float32)):
        with pytest.raises(TypeError, match=r"cusparselt-compressed buffers.*cannot be cast from torch.float16 to "
                                            r"torch.(float32|bfloat16|float64).*Cast the dense model first"):
            cast(model)
    after = model.state_dict(keep_vars=True)
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, (_, v) in before.items())
    model.half()                                                      # no change of dtype: allowed
    ids = torch.randint(0, 128, (2, 5))
    with torch.inference_mode():
        assert model(ids).logits.dtype == torch.float16


@pytest.mark.skipif(CAPABLE_GPU, reason="checks the path for machines without 2:4 kernels")
@pytest.mark.parametrize("kernel", ["auto", "cusparselt", "cutlass"])
def test_gpu_kernels_on_cpu_leave_the_half_model_bit_identical(kernel):
    model = pruned_24().half()
    before = snapshot(model)
    assert to_semi_structured(model, kernel=kernel) == (False, CPU_REASON, 0)
    assert_unchanged(model, before)


# --------------------------------------------------------------------------------------------
# The fast path (CUDA graphs): on CPU it refuses, with the reason
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fast_inference_on_cpu_refuses_and_changes_nothing():
    model = pruned_24().half()
    to_semi_structured(model, kernel="reference")
    before = snapshot(model)
    ids = torch.randint(0, 128, (2, 8))
    with pytest.raises(FastPathUnavailable, match="CUDA graphs, which need a CUDA GPU.*cpu"):
        fast_inference(model, {"input_ids": ids})
    with pytest.raises(FastPathUnavailable):
        fast_inference(torch.nn.Linear(4, 4), torch.zeros(1, 4))
    after = model.state_dict(keep_vars=True)
    assert all(torch.equal(after[k], v) for k, (_, v) in before.items())


class CpuGraphs(sparselib.semistructured.GraphedModel):
    """A CUDA graph's semantics on CPU: "capture" runs the module once on the static inputs; each
    replay runs it again on those same static tensors and writes into the same output buffers. The
    rest (keys, defaults, input copies, refusals) is GraphedModel's own code."""

    def _record(self, static_args, static_kwargs):
        with torch.inference_mode():
            for _ in range(self.warmup + 1):                       # warm-up runs, then the captured one
                out = self.module(*static_args, **static_kwargs)

        def replay():
            with torch.inference_mode():
                fresh = self.module(*static_args, **static_kwargs)
                for mine, new in zip(_leaves(out), _leaves(fresh)):
                    mine.copy_(new)
        return replay, out, 0


def _leaves(obj):
    found = []
    sparselib.semistructured._map_tensors(found.append, obj)
    return found


def cpu_graphed(model, inputs, max_graphs=2):
    """What fast_inference builds (3 warm-up runs, as its default), with the CPU stand-in for CUDA graphs."""
    args, kwargs = sparselib.semistructured._example(inputs)
    graphed = CpuGraphs(model, 3, max_graphs, True, sparselib.semistructured._defaults(model, kwargs))
    graphed.capture(*args, **kwargs)
    return graphed


def test_a_plain_call_replays_the_graph_captured_with_use_cache_false():
    """fast_inference captures with use_cache=False; a call without it must hit that graph, not
    capture a second one with a dynamic cache built inside it (the bug found on review)."""
    model = pruned_24().half()
    to_semi_structured(model, kernel="reference")
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    graphed = cpu_graphed(model, {"input_ids": ids})
    assert graphed.defaults == {"use_cache": False}
    other = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = graphed(input_ids=other).logits
        want = model(other, use_cache=False).logits
    assert len(graphed.captures) == 1
    assert torch.equal(got, want)
    graphed.replay(input_ids=other)                                   # the timing entry point: same key
    with torch.inference_mode():
        assert torch.equal(graphed(other).logits, want)                # positional ids: the same call
    assert len(graphed.captures) == 1


def test_a_graphed_call_pads_tokens_to_the_kernels_multiple_inside_the_graph(fake_cslt):
    """5 tokens: every cuSPARSELt call in the captured (and each replayed) forward sees them padded to the
    kernel's multiple, and the logits are those of the eager model."""
    calls, Kernel = fake_cslt
    model = pruned_24().half()
    to_semi_structured(model, kernel=Kernel())
    ids = torch.randint(0, 128, (1, 5))
    graphed = cpu_graphed(model, {"input_ids": ids})
    calls.clear()
    with torch.inference_mode():
        got = graphed(input_ids=ids).logits
        want = model(ids, use_cache=False).logits
    multiple = CSLT_LIMITS[torch.float16].dense_min_rows
    assert {c["B"][1] for c in calls} == {multiple} and len(calls) == 2 * 7 * len(sparselib.decoder_layers(model))
    assert torch.equal(got, want) and got.shape == (1, 5, 128)


def test_unsupported_calls_are_refused_not_recaptured():
    model = pruned_24().half()
    to_semi_structured(model, kernel="reference")
    ids = torch.randint(0, 128, (2, 8))
    graphed = cpu_graphed(model, {"input_ids": ids}, max_graphs=2)
    with pytest.raises(ValueError, match=r"no CUDA graph was captured .*input_ids: \[2, 4\] int64.*"
                                         r"captured: \(input_ids: \[2, 8\] int64"):
        graphed(input_ids=ids[:, :4])
    with pytest.raises(ValueError, match="no CUDA graph"):
        graphed(input_ids=ids, logits_to_keep=1)                      # another argument: another graph
    with pytest.raises(ValueError, match="use_cache=True without a static KV cache"):
        graphed(input_ids=ids, use_cache=True)
    from transformers import DynamicCache
    with pytest.raises(ValueError, match="DynamicCache, a KV cache that grows"):
        graphed(input_ids=ids, **{cache_kw(model): DynamicCache()})
    with pytest.raises(ValueError, match="DynamicCache"):
        fast_inference(model, {"input_ids": ids, cache_kw(model): DynamicCache()})
    graphed.capture(input_ids=ids[:, :4])
    assert len(graphed.captures) == 2
    with pytest.raises(ValueError, match="max_graphs=2"):
        graphed.capture(input_ids=ids[:1])
    assert len(graphed.captures) == 2


def test_decode_from_a_graph_with_a_static_cache_matches_eager_decoding():
    """The KV cache of a graphed decode step must be static: its buffers are written in place (at
    cache_position in transformers 4.x; at the cache's own position tensor, advanced on the device, in
    5.x), so replaying the step token after token decodes as the eager model does."""
    model = pruned_24().half()
    to_semi_structured(model, kernel="reference")
    key = cache_kw(model)
    positions = "cache_position" in inspect.signature(model.forward).parameters

    def at(position, length=1):
        return {"cache_position": torch.arange(position, position + length)} if positions else {}

    prompt = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(2))
    caches = [make_static_cache(model, 2, 16) for _ in range(2)]
    with torch.inference_mode():
        for cache in caches:
            model(prompt, **{key: cache}, use_cache=True, **at(0, 6))
    token = prompt[:, -1:]
    graphed = cpu_graphed(model, {"input_ids": token, key: caches[0], "use_cache": True, **at(6)})
    assert graphed.defaults == {}                                     # use_cache stays as given
    # the warm-up and capture runs wrote into the cache; capture put it back as it was after the prompt
    for position in range(6, 11):
        with torch.inference_mode():
            got = graphed(input_ids=token, **{key: caches[0]}, use_cache=True, **at(position)).logits
            want = model(token, **{key: caches[1]}, use_cache=True, **at(position)).logits
        assert torch.equal(got, want), position
        token = want.argmax(-1)
    assert len(graphed.captures) == 1


def test_fast_inference_bad_arguments():
    model = pruned_24()
    with pytest.raises(TypeError, match="nn.Module"):
        fast_inference(lambda x: x, torch.zeros(1))
    with pytest.raises(TypeError, match="example_inputs"):
        fast_inference(model, "hello")
    with pytest.raises(ValueError, match="no tensor"):
        fast_inference(model, {"use_cache": False})
    with pytest.raises(ValueError, match="max_graphs"):
        fast_inference(model, torch.zeros(1, 4, dtype=torch.long), max_graphs=0)


# --------------------------------------------------------------------------------------------
# On a capable GPU (skipped elsewhere): same logits as the masked dense model
# --------------------------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_model_matches_masked_dense_model(dtype):
    dense = pruned_24().to("cuda", dtype)
    sparse = copy.deepcopy(dense)
    converted, reason, n = to_semi_structured(sparse)
    assert converted and n == len(linears(dense)), reason
    assert len(sparse_layers(sparse)) == n
    ids = torch.randint(0, 128, (3, 17), device="cuda")  # 51 tokens: not a multiple of the kernel tile
    with torch.inference_mode():
        want, got = dense(ids).logits.float(), sparse(ids).logits.float()
        q = sparse.model.layers[0].self_attn.q_proj(torch.randn(3, 17, 64, device="cuda", dtype=dtype))
    assert q.is_contiguous()
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@needs_gpu
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_gpu_module_equals_the_reference_module(fused, bias):
    ok, _, backend = sparselib.semistructured._decide("cuda", None, torch.float16)
    kernel = (sparselib.semistructured.CuSparseLtKernel24(fused_transpose=fused) if backend == "cusparselt"
              else "cutlass")
    W = random_24(256, 128, torch.float16).cuda()
    b = torch.randn(256, device="cuda").half() if bias else None
    gpu, ref = SparseLinear24(W, b, kernel), SparseLinear24(W, b)
    for lead in [(1,), (5,), (16, 1), (3, 17)]:
        X = torch.randn(*lead, 128, device="cuda").half()
        with torch.inference_mode():
            Y = gpu(X)
            assert Y.is_contiguous() and Y.shape == (*lead, 256)
            torch.testing.assert_close(Y, ref(X), rtol=1e-2, atol=1e-2)


@needs_gpu
def test_gpu_fused_projections_match_the_unfused_conversion():
    unfused = pruned_24().to("cuda", torch.float16)
    fused = copy.deepcopy(unfused)
    assert to_semi_structured(unfused)[0] and to_semi_structured(fused, fuse_projections=True)[0]
    ids = torch.randint(0, 128, (3, 17), device="cuda")
    with torch.inference_mode():
        torch.testing.assert_close(fused(ids).logits, unfused(ids).logits, rtol=1e-2, atol=1e-2)
        q = fused.model.layers[0].self_attn.q_proj(torch.randn(3, 17, 64, device="cuda").half())
    assert q.stride(-1) == 1


@needs_gpu
@pytest.mark.parametrize("batch", [1, 16, 64])
def test_gpu_generate_with_a_kv_cache(batch):
    """torch 2.11's tensor subclass raised NotImplementedError (expand.default) here at batch 16."""
    dense = pruned_24().to("cuda", torch.float16)
    sparse = copy.deepcopy(dense)
    assert to_semi_structured(sparse)[0]
    prompt = torch.randint(0, 128, (batch, 6), device="cuda")
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=5, min_new_tokens=5,
                  do_sample=False, pad_token_id=0)
    got = sparse.generate(prompt, **kwargs)
    assert got.shape == (batch, 11)
    agreement = (got == dense.generate(prompt, **kwargs)).float().mean().item()
    assert agreement > 0.9  # greedy tokens; fp16 sums may flip a near-tie


@needs_gpu
def test_fast_inference_replays_the_same_logits_and_refuses_new_shapes():
    model = pruned_24().to("cuda", torch.float16)
    to_semi_structured(model)
    ids = torch.randint(0, 128, (2, 16), device="cuda")
    graphed = fast_inference(model, {"input_ids": ids}, max_graphs=2)
    with torch.inference_mode():
        want = model(ids, use_cache=False).logits
        torch.testing.assert_close(graphed(input_ids=ids).logits, want, rtol=1e-3, atol=1e-3)
        other = torch.randint(0, 128, (2, 16), device="cuda")
        torch.testing.assert_close(graphed(input_ids=other).logits, model(other, use_cache=False).logits,
                                   rtol=1e-3, atol=1e-3)
        assert len(graphed.captures) == 1 and graphed.captures[0]["capture_s"] > 0
        with pytest.raises(ValueError, match="no CUDA graph was captured"):
            graphed(input_ids=ids[:, :8])
        graphed.capture(input_ids=ids[:, :8])              # captured on request: a second graph
        assert len(graphed.captures) == 2 and graphed(input_ids=ids[:, :8]).logits.shape == (2, 8, 128)
        with pytest.raises(ValueError, match="max_graphs=2"):
            graphed.capture(input_ids=ids[:1])


@needs_gpu
def test_a_converted_gpu_model_refuses_to_move_to_cpu_or_change_dtype():
    model = pruned_24().to("cuda", torch.float16)
    assert to_semi_structured(model)[0]
    with pytest.raises(ValueError, match="runs only on cuda"):
        model.cpu()
    with pytest.raises(TypeError, match="Cast the dense model first"):
        model.float()
    assert all(p.device.type == "cuda" and p.dtype == torch.float16 for p in model.parameters())


@needs_gpu
def test_fp32_model_on_gpu_is_a_type_error():
    model = pruned_24().to("cuda")
    before = snapshot(model)
    with pytest.raises(TypeError, match="float16"):
        to_semi_structured(model)
    assert_unchanged(model, before)


@needs_gpu
def test_benchmark_linear_computes_the_same_product():
    result = benchmark_linear(1536, 576, 64, min_run_time=0.05)
    assert result["dense_ms"] > 0 and result["sparse_ms"] > 0 and result["graph_sparse_ms"] > 0
    assert result["max_abs_diff"] < 0.5  # a few fp16 ulps of outputs ~N(0, 288); a wrong product is off by tens


# --------------------------------------------------------------------------------------------
# Recorded GPU runs: every run kept, with its provenance
# --------------------------------------------------------------------------------------------
def test_the_recorded_h200_run_loads_with_its_provenance():
    from sparselib.course import results

    runs = {run["name"]: run for run in results.gpu_runs()}
    h200 = runs["semi_structured_gpu_2026-11-29_h200"]
    assert h200["provenance"]["gpu"] == "NVIDIA H200" and h200["provenance"]["torch"] == "2.11.0+cu130"
    eager = [r for r in h200["linear"] if r["path"] == "eager"]
    with open(results.RESULTS_DIR / "semi_structured_gpu_2026-11-29_h200.csv") as f:
        assert len(eager) == len(f.readlines()) - 1
    assert {r["path"] for r in h200["linear"]} == {"eager", "cuda_graph"}
    for r in h200["linear"]:  # graph rows: the speedup as the script printed it (its own estimator)
        rel = 0.02 if r["path"] == "eager" else 0.05
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"], rel=rel, abs=0.01)
    assert all({"model", "weights", "phase", "path", "speedup"} <= row.keys() for row in h200["end_to_end"])


def test_a_newer_gpu_run_sits_beside_the_older_one(tmp_path, monkeypatch):
    from sparselib.course import results

    for date, speedup in (("2027-01-02T00:00:00+00:00", 1.2), ("2026-12-01T00:00:00+00:00", 0.5)):
        run = {"provenance": {"date_utc": date, "gpu": "X"},
               "linear": [{"out_features": 64, "in_features": 64, "tokens": 8, "dense_ms": 1.0,
                           "sparse_ms": 1 / speedup, "speedup": speedup, "backend": "cusparselt",
                           "path": "eager"}], "end_to_end": []}
        results.save_result(f"semi_structured_gpu_{date[:10]}_x", run, tmp_path)
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    runs = results.gpu_runs()
    assert [r["provenance"]["date_utc"][:4] for r in runs] == ["2026", "2027"]   # both, oldest first
    assert [r["linear"][0]["speedup"] for r in runs] == [0.5, 1.2]


# The GPU path leans on PyTorch's prototype semi-structured API, which moves between releases. These
# CPU checks pin what sparselib calls, so a torch upgrade that renames or reshapes it fails here, on
# any machine, rather than on the first GPU run (the GPU figures recorded so far: torch 2.11.0+cu130).
def _schema(op: str) -> str:
    schemas = torch._C._jit_get_schemas_for_operator(op)
    assert schemas, f"{op} is gone from this torch ({torch.__version__}); the cuSPARSELt kernel needs it"
    return str(schemas[0])


def test_the_cusparselt_ops_sparselib_calls_keep_their_arguments():
    mm = _schema("aten::_cslt_sparse_mm")
    for arg in ("Tensor compressed_A", "Tensor dense_B", "Tensor? bias", "bool transpose_result", "int alg_id"):
        assert arg in mm, f"_cslt_sparse_mm lost '{arg}': {mm}"
    assert "(Tensor input) -> Tensor" in _schema("aten::_cslt_compress")
    assert "-> int" in _schema("aten::_cslt_sparse_mm_search")      # the benchmark's algorithm search


def test_the_semi_structured_classes_sparselib_reads_still_exist():
    base = torch.sparse.SparseSemiStructuredTensor
    assert isinstance(base._FORCE_CUTLASS, bool)                      # semistructured._force_backend flips it
    for cls in (torch.sparse.SparseSemiStructuredTensorCUTLASS, torch.sparse.SparseSemiStructuredTensorCUSPARSELT):
        limits = cls._DTYPE_SHAPE_CONSTRAINTS                          # the minimum shapes and token padding
        assert {torch.float16, torch.bfloat16} <= set(limits), cls.__name__
        assert all(hasattr(limits[torch.float16], f) for f in ("dense_min_rows", "dense_min_cols")), cls.__name__
    assert callable(torch.sparse.to_sparse_semi_structured) and callable(torch.backends.cusparselt.is_available)


def test_the_search_op_takes_the_layout_the_kernel_runs():
    search = _schema("aten::_cslt_sparse_mm_search")
    assert "bool transpose_result" in search and "Tensor dense_B" in search  # searched per layout and shape


def test_the_graph_compile_and_attention_apis_the_gpu_path_calls_exist():
    """fast_inference, the benchmark's attention guard and its torch.compile rows call these."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    assert {"CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"} <= set(SDPBackend.__members__)
    assert "backends" in inspect.signature(sdpa_kernel).parameters
    assert callable(torch.cuda.CUDAGraph) and callable(torch.cuda.graph) and callable(torch.cuda.Stream)
    assert {"reduce-overhead", "max-autotune-no-cudagraphs"} <= set(torch._inductor.list_mode_options())
    assert callable(torch.library.custom_op) and callable(torch.library.opcheck) and callable(torch._dynamo.reset)
    op = sparselib.semistructured._cslt_linear()
    assert callable(op.register_fake) and str(op._opoverload._schema).startswith("sparselib::cslt_linear(")


def test_a_static_kv_cache_says_it_can_live_in_a_graph_and_a_dynamic_one_says_it_cannot():
    """fast_inference tells the two apart by transformers' own flag."""
    from transformers import DynamicCache

    assert DynamicCache().is_compileable is False
    model = tiny_llama()
    assert make_static_cache(model, 2, 16).is_compileable is True
