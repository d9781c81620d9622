"""benchmarks/semi_structured.py without a GPU: the subprocess machinery (a hung part is cut at its
limit and the run goes on, a crashed one is recorded with its error and stderr, every finished part is
on disk after each part), the rules the GPU run reports by (best against best, the top-1 rule, the
kernel the preflight picks, q/k/v layout, the attention guard), and the preflight and checks on CPU."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sparselib
from sparselib.semistructured import to_semi_structured

from conftest import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import semi_structured as bench  # noqa: E402
import subprocess_parts as sp  # noqa: E402

PARTS = '''
import os, sys, time

def sleeps(rec, ctx):
    rec.row("timings", {"n": 1, "pid": os.getpid()})
    time.sleep(600)

def raises(rec, ctx):
    rec.row("timings", {"n": 2})
    print("the part's own words on stderr", file=sys.stderr, flush=True)
    raise RuntimeError("boom in a part")

def exits(rec, ctx):
    os._exit(3)

def fine(rec, ctx):
    rec.row("timings", {"n": 3, "shared": ctx["shared"], "limit_s": ctx["limit_s"]})
    rec.set("summary", {"fine": True})
'''


@pytest.fixture
def parts_file(tmp_path):
    path = tmp_path / "parts.py"
    path.write_text(textwrap.dedent(PARTS))
    return path


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --------------------------------------------------------------------------------------------
# The machinery
# --------------------------------------------------------------------------------------------
def test_a_hung_part_is_cut_at_its_limit_a_crashed_one_recorded_and_every_part_lands(tmp_path, parts_file):
    out, snapshots = tmp_path / "run.json", []

    def save(run):
        sp.write_json(out, run)
        snapshots.append(json.loads(out.read_text()))

    parts = [sp.Part("sleeps", f"{parts_file}:sleeps", 6, 1), sp.Part("raises", f"{parts_file}:raises", 60, 1),
             sp.Part("exits", f"{parts_file}:exits", 60, 1), sp.Part("fine", f"{parts_file}:fine", 60, 1)]
    work = tmp_path / "work"
    work.mkdir()
    run = sp.run_parts(parts, {"shared": "from the run"}, {"parts": []}, sp.Budget(300), work, save=save)

    assert [p["status"] for p in run["parts"]] == ["timed_out", "failed", "failed", "ok"]
    sleeps, raises, exits, fine = run["parts"]
    assert 6 <= sleeps["seconds"] < 60 and "within its limit of 6 s; killed" in sleeps["error"]
    assert raises["error"] == "RuntimeError: boom in a part"
    assert "the part's own words on stderr" in raises["stderr_tail"] and "Traceback" in raises["stderr_tail"]
    assert exits["error"] == "exited with status 3" and exits["returncode"] == 3
    # the rows saved before the hang and the crash are kept, each tagged with its part
    assert [(r["n"], r["part"]) for r in run["timings"]] == [(1, "sleeps"), (2, "raises"), (3, "fine")]
    assert gone(run["timings"][0]["pid"])                                    # the hung process is ended
    assert run["timings"][2]["shared"] == "from the run" and run["part_results"]["fine"]["summary"] == {"fine": True}
    # the file was written after every part: after the first, it already held the timed-out part's row
    assert len(snapshots) == 4
    assert snapshots[0]["parts"][0]["status"] == "timed_out" and snapshots[0]["timings"][0]["n"] == 1
    assert json.loads(out.read_text()) == snapshots[-1] and len(snapshots[-1]["timings"]) == 3


def test_parts_are_skipped_with_the_reason_and_cut_to_the_budget_left(tmp_path, parts_file):
    work = tmp_path / "work"
    work.mkdir()
    context = {"shared": 1, "ready": {"kernel": False}, "why_not": {"kernel": "no mode passed the preflight"}}
    parts = [sp.Part("needs", f"{parts_file}:fine", 60, 1, needs="kernel"),
             sp.Part("sleeps", f"{parts_file}:sleeps", 600, 1),
             sp.Part("too_late", f"{parts_file}:fine", 60, 30)]
    run = sp.run_parts(parts, context, {"parts": []}, sp.Budget(5), work)
    needs, sleeps, late = run["parts"]
    assert needs == {"name": "needs", "status": "skipped", "reason": "needs kernel: no mode passed the preflight"}
    assert sleeps["status"] == "timed_out" and sleeps["limit_s"] <= 5             # the budget, not its 600 s
    assert late["status"] == "skipped" and late["reason"].startswith("time budget:")


def test_a_recorder_saves_every_row_at_once(tmp_path):
    rec = sp.Recorder(tmp_path / "part.json", limit_s=60)
    rec.row("linear", {"a": 1})
    assert json.loads((tmp_path / "part.json").read_text()) == {"linear": [{"a": 1}]}
    rec.failure("one point", ValueError("bad shape"))
    assert json.loads((tmp_path / "part.json").read_text())["failures"] == [
        {"what": "one point", "error": "ValueError: bad shape"}]
    assert rec.need(1, "x") and not rec.need(10_000, "a long thing")
    assert "skipped a long thing" in rec.data["notes"][-1]["note"]


# --------------------------------------------------------------------------------------------
# What the run reports: best against best, the top-1 rule, the kernel the preflight picks
# --------------------------------------------------------------------------------------------
def timing(variant, path, ms, what="prefill 8x2048", model="llama2-7b-shape"):
    return {"model": model, "weights": "random", "phase": "prefill", "what": what, "batch": 8, "seqlen": 2048,
            "variant": variant, "path": path, "ms": ms}


def test_the_headline_is_best_against_best():
    """Dense from a graph was slower than dense eager on the recorded run (518.8 vs 481.0 ms): a
    graph-vs-graph ratio would overstate the gain."""
    run = {"timings": [timing("dense", "eager", 481.0), timing("dense", "cuda_graph", 518.8),
                       timing("2:4", "eager", 600.0), timing("2:4", "cuda_graph", 450.0),
                       timing("2:4 fused projections", "eager", 700.0),
                       timing("2:4 fused projections", "cuda_graph", 400.0)]}
    bench.derive(run)
    h = run["headline"]["prefill_7b_8x2048"]
    assert h["speedup"] == pytest.approx(481.0 / 400.0) and h["variant"] == "2:4 fused projections"
    assert (h["dense_path"], h["sparse_path"]) == ("eager", "cuda_graph")
    assert h["by_variant"]["2:4"] == pytest.approx(481.0 / 450.0)
    assert h["met"] is True and h["target"] == 1.15
    graph_vs_graph = next(r for r in run["end_to_end"] if r["variant"] == "2:4" and r["path"] == "cuda_graph")
    assert graph_vs_graph["speedup"] == pytest.approx(518.8 / 450.0)                     # kept, not the headline
    assert {r["path"] for r in run["end_to_end"]} == {"eager", "cuda_graph", "best"}
    assert all({"model", "phase", "batch", "seqlen", "speedup"} <= r.keys() for r in run["end_to_end"])


def test_the_per_linear_headline_uses_the_acceptance_grid_at_2048_tokens_and_more():
    rows = [{"grid": "acceptance", "path": "best", "tokens": t, "out_features": 11008, "in_features": 4096,
             "speedup": s} for t, s in ((2048, 1.2), (8192, 1.4), (16384, 1.5))]
    rows += [{"grid": "acceptance", "path": "eager", "tokens": 2048, "out_features": 1, "in_features": 1,
              "speedup": 0.1}, {"grid": "small", "path": "best", "tokens": 2048, "out_features": 576,
                                "in_features": 576, "speedup": 0.5}]
    h = bench.headline({"linear": rows})["linear_at_2048_plus"]
    assert (h["min"], h["min_at"], h["points"], h["points_met"]) == (1.2, "11008x4096 T=2048", 3, 2)
    assert h["median"] == 1.4


def test_top1_agreement_counts_only_tokens_whose_dense_margin_beats_the_noise():
    dense = torch.tensor([[5.0, 0.0, 0.0],      # margin 5: decisive, agrees
                          [1.0, 0.999, 0.0],    # margin 0.001: a near tie, flips
                          [0.0, 3.0, 0.0],      # margin 3: decisive, flips (a real error)
                          [2.0, 1.9995, 0.0]])  # margin 0.0005: a near tie, agrees
    sparse = torch.tensor([[5.0, 0.0, 0.0], [0.999, 1.0, 0.0], [3.0, 0.0, 0.0], [2.0, 1.9995, 0.0]])
    r = bench.top1_agreement(dense, sparse, noise=0.01)
    assert r["top1_raw"] == 0.5 and r["decisive_tokens"] == 2 and r["top1_decisive"] == 0.5
    assert r["margin_threshold"] == 0.02
    sparse[2] = dense[2]                         # fix the real error: the near tie alone does not count
    assert bench.top1_agreement(dense, sparse, noise=0.01)["top1_decisive"] == 1.0


def test_the_noise_level_is_the_dense_models_own_and_at_least_one_fp16_ulp():
    logits = torch.tensor([[[4.0, 1.0]]])
    assert bench.fp16_noise(logits, logits) == pytest.approx(torch.finfo(torch.float16).eps * 4.0)
    assert bench.fp16_noise(logits, logits + 0.25) == pytest.approx(0.25)


def test_too_few_decisive_tokens_is_inconclusive_not_a_pass():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(200, 50, generator=g)
    verdict = bench.logits_verdict(dense, dense.clone(), noise=1e-3)
    assert verdict["logits_ok"] and verdict["top1_decisive"] == 1.0
    tied = torch.zeros(10, 50)
    tied[:, :2] = 1.0                           # every token a tie: nothing is decisive
    verdict = bench.logits_verdict(tied, tied.clone(), noise=1e-3)
    assert not verdict["logits_ok"] and verdict["top1_raw"] == 1.0 and "inconclusive" in verdict["top1_note"]


def preflight_run(ok: dict) -> dict:
    rows = [{"part": "preflight", "mode": mode, "ok": good} for mode, goods in ok.items() for good in goods]
    return {"preflight": rows, "provenance": {}}


@pytest.mark.parametrize("ok, kernel, fused_ready", [
    ({"cusparselt non-fused (default)": [True, True], "cusparselt fused transpose": [True, False]},
     {"name": "cusparselt", "fused_transpose": False}, False),
    ({"cusparselt non-fused (default)": [True, False], "cusparselt fused transpose": [True, True]},
     {"name": "cusparselt", "fused_transpose": True}, True),
    ({"cusparselt non-fused (default)": [False, False], "stock subclass": [True, True],
      "cusparselt searched alg_id": [True, True]}, None, False),
])
def test_the_preflight_picks_the_default_mode_when_it_passed_both_shapes(ok, kernel, fused_ready):
    run = preflight_run(ok)
    context = {"device": "cuda", "backend": "cusparselt"}
    bench.pick_kernel(sp.Part("preflight", "x:y", 60), run, context)
    assert context["ready"]["kernel"] is (kernel is not None)
    assert context.get("kernel") == kernel and run["provenance"]["kernel"] == kernel
    assert context["ready"]["fused_transpose"] is fused_ready
    if kernel is None:
        assert "no kernel mode passed" in context["why_not"]["kernel"]


def test_make_kernel_follows_the_preflight_and_the_backend():
    from sparselib.semistructured import CuSparseLtKernel24

    k = bench.make_kernel({"device": "cuda", "backend": "cusparselt", "kernel": {"name": "cusparselt"}})
    assert isinstance(k, CuSparseLtKernel24) and not k.fused_transpose
    k = bench.make_kernel({"device": "cuda", "kernel": {"name": "cusparselt"}}, {"fused_transpose": True})
    assert k.fused_transpose
    assert bench.make_kernel({"device": "cuda", "backend": "cutlass"}) == "cutlass"
    assert bench.make_kernel({"device": "cpu", "kernel": {"name": "cusparselt"}}) == "reference"


# --------------------------------------------------------------------------------------------
# Attention must not fall back silently; q/k/v keep stride 1
# --------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_attention_guard_refuses_the_math_fallback():
    q = torch.randn(1, 2, 8, 16, dtype=torch.float16)
    transposed = torch.randn(1, 2, 16, 8, dtype=torch.float16).transpose(-1, -2)   # last-dim stride 8
    with bench.attention_guard():
        assert torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).shape == q.shape
        with pytest.raises(RuntimeError, match="No available kernel"):
            torch.nn.functional.scaled_dot_product_attention(transposed, transposed, transposed)


class TransposedOutput(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, X):
        return self.inner(X).transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("fuse", [False, True])
def test_projection_layout_passes_a_converted_model_and_catches_a_transposed_q(fuse):
    model = tiny_llama().half()
    bench.mask_24(model)
    to_semi_structured(model, kernel="reference", fuse_projections=fuse)
    ids = torch.randint(0, 128, (1, 64))
    seen = bench.projection_layout(model, ids)
    assert all(s["last_stride"] == 1 and s["fused"] is fuse for s in seen.values())
    attn = sparselib.decoder_layers(model)[0].self_attn
    attn.q_proj = TransposedOutput(attn.q_proj)       # what the tensor subclass returned in torch 2.11
    with pytest.raises(AssertionError, match="self_attn.q_proj"):
        bench.projection_layout(model, ids)


# --------------------------------------------------------------------------------------------
# The CPU paths: the checks with the reference kernel, and what the command says
# --------------------------------------------------------------------------------------------
def test_the_check_part_runs_on_cpu_with_the_reference_kernel(tmp_path):
    rec = sp.Recorder(tmp_path / "check.json", limit_s=600)
    bench.part_check(rec, {"device": "cpu", "standin": True, "kernel": {"name": "reference"},
                           "model": "llama2-7b-shape"})
    check = json.loads((tmp_path / "check.json").read_text())["checks"][0]
    assert check["ok"] and check["converted"] and "reference" in check["kernel"]
    assert check["max_abs_diff"] == 0 and check["top1_decisive"] == 1.0 and check["decisive_tokens"] >= 64
    assert check["generate_ok"] and set(check["generate"]) == {"1", "16", "64"}
    assert check["fused_vs_unfused_max_abs_diff"] == 0
    assert "on a GPU: one capture" in check["graph"]["note"]


CPU = {"device": "cpu", "standin": True, "kernel": {"name": "reference"}, "backend": None}


def test_the_gpu_parts_run_their_eager_paths_on_cpu_stand_ins(tmp_path):
    """Every line of the GPU parts that is not a CUDA graph, a GPU kernel or torch.compile runs here, on
    2-layer stand-ins with the reference kernel; what needs a GPU is recorded as a failure saying so."""
    rec = sp.Recorder(tmp_path / "parts.json", limit_s=900)
    bench.part_prefill(rec, {**CPU, "model": "llama2-7b-shape", "variants": list(bench.VARIANTS),
                             "prefill": [[2, 32], [1, 32]], "repeats": 1})
    bench.part_decode(rec, {**CPU, "model": "llama2-7b-shape", "step_context": 16, "decode_batches": [1, 4],
                            "new_tokens": 2, "repeats": 2})
    bench.part_linear(rec, {**CPU, "shapes": [["tiny", "x", 64, 128]], "tokens": [8], "grid": "acceptance"})
    bench.part_host_cost(rec, {**CPU, "points": [[64, 128, 8]], "compile_modes": []})
    data = rec.data
    prefill = [r for r in data["timings"] if r["phase"] == "prefill"]
    assert {r["variant"] for r in prefill if r["what"] == "prefill 2x32"} == {"dense", *bench.VARIANTS}
    assert {r["variant"] for r in prefill if r["what"] == "prefill 1x32"} == {"dense", "2:4"}
    assert all(r["path"] == "eager" and r["ms"] > 0 for r in data["timings"])      # graphs need a GPU
    assert all(r["qkv_layout"] for r in prefill if r["variant"] != "dense")
    decode = {(r["what"], r["variant"]) for r in data["timings"] if r["phase"] in ("decode", "generate")}
    assert decode == {(w, v) for v in ("dense", "2:4")
                      for w in ("decode step b1", "decode step b4", "generate b16")}
    run = {"timings": data["timings"], "linear": data["linear"]}
    bench.derive(run)
    assert {(r["what"], r["variant"]) for r in run["end_to_end"] if r["path"] == "best"} >= {
        ("prefill 2x32", v) for v in bench.VARIANTS}
    linear = data["linear"][0]
    assert linear["path"] == "eager" and linear["sparse_max_abs_diff"] == 0 and linear["copy_ms"] > 0
    assert {r["way"] for r in data["host_cost"]} == {"dense eager", "2:4 eager"}
    assert data["failures"] and all("CUDA" in f["error"] for f in data["failures"]), data["failures"]


def test_the_full_run_without_2_4_kernels_says_why_and_writes_nothing(tmp_path, capsys):
    if sparselib.can_use_sparse_kernels()[0]:
        pytest.skip("this machine has 2:4 kernels")
    assert bench.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no 2:4 measurements on this machine" in out and "Nothing written" in out
    assert "1. preflight" in out and "2. prefill_7b" in out and "3. linear_grid" in out
    assert list(tmp_path.iterdir()) == []


def test_the_plan_puts_the_acceptance_first():
    names = [p.name for p in bench.full_run()]
    assert names[:4] == ["preflight", "prefill_7b", "linear_grid", "check_7b"]
    assert names.index("llama3_8b") < names.index("smollm2") < names.index("compile")
    linear = next(p for p in bench.full_run() if p.name == "linear_grid")
    assert 16384 in linear.context["tokens"] and {2048, 8192} <= set(linear.context["tokens"])
    assert sum(p.limit_s for p in bench.full_run()[:1]) <= 60                        # the preflight's promise


def test_the_preflight_command_runs_on_cpu_and_says_what_it_would_do_on_a_gpu(tmp_path):
    if sparselib.can_use_sparse_kernels()[0]:
        pytest.skip("this machine has 2:4 kernels")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "semi_structured.py"), "--preflight",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on a GPU: 576x576 at 64 tokens and 11008x4096 at 2048" in done.stdout
    assert "preflight 576x576 T=64 reference: ok" in done.stdout and "PASSED" in done.stdout
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# A run file the book can read
# --------------------------------------------------------------------------------------------
def test_a_run_file_loads_with_gpu_runs(tmp_path, monkeypatch):
    from sparselib.course import results

    run = {"provenance": {"date_utc": "2099-01-01T00:00:00+00:00", "gpu": "X", "capability": "9.0"},
           "parts": [], "timings": [timing("dense", "eager", 10.0), timing("2:4", "cuda_graph", 8.0)],
           "linear": [{"out_features": 4096, "in_features": 4096, "tokens": 2048, "path": p, "dense_ms": 1.0,
                       "sparse_ms": 0.8, "speedup": 1.25, "grid": "acceptance"} for p in ("eager", "cuda_graph", "best")]}
    bench.derive(run)
    sp.write_json(tmp_path / "semi_structured_gpu_2099-01-01T000000Z_x.json", run)
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    loaded = results.gpu_runs()[-1]
    assert loaded["name"] == "semi_structured_gpu_2099-01-01T000000Z_x"
    assert {r["path"] for r in loaded["linear"]} == {"eager", "cuda_graph", "best"}
    best = next(r for r in loaded["end_to_end"] if r["path"] == "best")
    assert best["speedup"] == pytest.approx(10.0 / 8.0) and (best["batch"], best["seqlen"]) == (8, 2048)


def test_the_gpu_workflow_runs_the_preflight_and_checks_when_a_gpu_runner_is_configured():
    import yaml

    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu.yml").read_text())
    jobs = flow["jobs"]
    gpu, none = jobs["preflight-and-check"], jobs["no-gpu-runner"]
    assert gpu["runs-on"] == "${{ vars.GPU_RUNNER }}" and "vars.GPU_RUNNER != ''" in gpu["if"]
    assert "vars.GPU_RUNNER == ''" in none["if"] and none["runs-on"] == "ubuntu-latest"
    commands = [step.get("run", "") for step in gpu["steps"]]
    assert "python benchmarks/semi_structured.py --preflight --check" in commands
    assert any("pytest" in c and "tests/test_semistructured.py" in c for c in commands)
    assert "GITHUB_STEP_SUMMARY" in none["steps"][0]["run"]
