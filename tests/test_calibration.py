"""The calibration pipeline: each layer's statistics come from the inputs the (pruned) model before
it produces; the running H and norms equal the one-shot products over all samples."""
import torch

from conftest import tiny_llama

from sparselib.calibration import LinearStats, layerwise
from sparselib.models import decoder_layers
from sparselib.scores import input_norms


def test_running_statistics_equal_one_shot_norms():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(4, 9, 6, generator=g)  # 4 samples of 9 tokens
    stats = LinearStats(6, "cpu", hessian=True)
    stats.add(X[:3], 3)
    stats.add(X[3:], 1)
    flat = X.reshape(-1, 6)
    assert torch.allclose(stats.norms, input_norms(flat), rtol=1e-5)
    assert torch.allclose(stats.H, 2 * flat.t() @ flat / 4, rtol=1e-4, atol=1e-5)  # mean over samples


def test_hessian_from_upper_blocks_equals_the_full_product():
    # wide enough for several column blocks; H read between batches (mirrors, then keeps adding)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(5, 40, 600, generator=g) * torch.linspace(0.5, 3, 600)
    stats = LinearStats(600, "cpu", hessian=True)
    assert len(stats._edges) > 2
    for i in range(5):
        stats.add(X[i:i + 1], 1)
        flat = X[:i + 1].reshape(-1, 600)
        expected = 2 * flat.t() @ flat / (i + 1)
        assert torch.allclose(stats.H, expected, rtol=1e-4, atol=1e-3)
        e = stats._edges[1]  # blocks below the diagonal are exact copies of those above
        assert torch.equal(stats.H[e:, :e], stats.H[:e, e:].t())
    assert torch.allclose(stats.norms, input_norms(X.reshape(-1, 600)), rtol=1e-5)


def test_next_layer_statistics_come_from_the_pruned_layer(tiny_calib):
    model = tiny_llama()
    dense_inputs = {}
    layer1_q = decoder_layers(model)[1].self_attn.q_proj

    def grab(store):
        return layer1_q.register_forward_hook(lambda m, i, o: store.setdefault("x", []).append(i[0].detach()))

    h = grab(dense_inputs)
    model(tiny_calib)
    h.remove()
    for index, layer, linears, stats in layerwise(model, tiny_calib, batch_size=4):
        if index == 0:
            for module in linears.values():
                module.weight.data[:, ::2] = 0  # prune layer 0 (any way will do)
        if index == 1:
            pruned_inputs = {}
            h = grab(pruned_inputs)
            model(tiny_calib)  # the model now has layer 0 pruned, layer 1 dense
            h.remove()
            expected = input_norms(torch.cat(pruned_inputs["x"]))
            assert torch.allclose(stats["self_attn.q_proj"].norms, expected, rtol=1e-4)
            # q, k, v read one tensor and share one set of statistics; o_proj reads another
            assert stats["self_attn.k_proj"] is stats["self_attn.q_proj"] is stats["self_attn.v_proj"]
            assert stats["mlp.up_proj"] is stats["mlp.gate_proj"]
            assert stats["self_attn.o_proj"] is not stats["self_attn.q_proj"]
            assert stats["self_attn.q_proj"].ntokens == tiny_calib.numel()
            assert not torch.allclose(stats["self_attn.q_proj"].norms,
                                      input_norms(torch.cat(dense_inputs["x"])), rtol=1e-2)
