"""The `sparselib` command against its promises: the checkpoint it writes *is* the pruned model (it
reloads with AutoModelForCausalLM, keeps the pattern, and gives the perplexity the report states); a
bad input is one line on stderr naming the fix, exit status 2, nothing written; an interrupted run
leaves nothing behind. Plumbing on tiny random-weight models; the acceptance commands on SmolLM2 (slow)."""
import contextlib
import dataclasses
import gc
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import tqdm
from conftest import tiny_llama, tiny_opt
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel,
                          GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

import sparselib
from sparselib.cli import main
from sparselib.slicegpt import SlicedLayer, kept_dim, save_sliced, slice_model

FAST = ["--nsamples", "4", "--seqlen", "32", "--eval-tokens", "1024", "--eval-seqlen", "64"]


def char_tokenizer(whole_text: bool = False) -> PreTrainedTokenizerFast:
    """One token per ASCII character (ids 0..127, the tiny models' vocabulary). ``whole_text``: the
    whole text is one (unknown) token, so no corpus is long enough to calibrate with."""
    tok = Tokenizer(models.WordLevel({chr(i): i for i in range(128)}, unk_token=chr(0)))
    if not whole_text:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=chr(3), model_max_length=64)


def _save(model, path: Path, tokenizer=None) -> str:
    model.save_pretrained(path)
    (tokenizer or char_tokenizer()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Model directories, by name, as ``--model`` takes them."""
    root = tmp_path_factory.mktemp("models")
    small = dict(vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                 max_position_embeddings=64)
    dirs = {
        "llama": _save(tiny_llama(), root / "llama"),
        "opt": _save(tiny_opt(), root / "opt"),
        "gpt2": _save(GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=1, n_head=4, n_positions=64)),
                      root / "gpt2"),
        "gpt_neox": _save(GPTNeoXForCausalLM(GPTNeoXConfig(intermediate_size=128, **small)), root / "gpt_neox"),
        "bert": _save(BertForMaskedLM(BertConfig(intermediate_size=128, **small)), root / "bert"),
        "down132": _save(LlamaForCausalLM(LlamaConfig(intermediate_size=132, num_key_value_heads=2, **small)),
                         root / "down132"),  # mlp.down_proj has 132 inputs: not a multiple of 8
        "one-token": _save(tiny_llama(), root / "one-token", char_tokenizer(whole_text=True)),
    }
    sliced = tiny_llama()
    slice_model(sliced, torch.randint(0, 128, (4, 16)), 0.25, progress=False)
    save_sliced(sliced, root / "sliced")
    char_tokenizer().save_pretrained(root / "sliced")
    dirs["sliced"] = str(root / "sliced")
    truncated = Path(_save(tiny_llama(), root / "truncated")) / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    dirs["truncated"] = str(truncated.parent)
    (root / "config-only").mkdir()
    tiny_llama().config.save_pretrained(root / "config-only")
    dirs["config-only"] = str(root / "config-only")
    (root / "empty").mkdir()
    dirs["empty"] = str(root / "empty")
    (root / "a-file.txt").write_text("not a model")
    dirs["file"] = str(root / "a-file.txt")
    return dirs


def run(argv, capsys):
    """Run the command in this process: ``(exit status, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(path: Path) -> set:
    return {p.relative_to(path) for p in path.rglob("*")}


def reload(out: Path):
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    return model, json.loads((out / "report.json").read_text())


def decoder_linears(model):
    for layer in sparselib.decoder_layers(model):
        inner = layer.layer if isinstance(layer, SlicedLayer) else layer
        yield from ((name, sparselib.weight_of(m)) for name, m in sparselib.layer_linears(inner).items())


def reloaded_perplexity(model, out: Path, report: dict) -> float:
    """The reloaded checkpoint's perplexity on the report's own evaluation tokens."""
    from transformers import AutoTokenizer

    p = report["perplexity"]
    ids = sparselib.test_data(AutoTokenizer.from_pretrained(out), p["data"], max_tokens=p["tokens"])
    return sparselib.perplexity(model, ids, seqlen=p["seqlen"], progress=False)


# --------------------------------------------------------------------------------------------
# Plumbing on tiny models
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, method, sparsity", [
    ("llama", "wanda", "2:4"), ("opt", "sparsegpt", "4:8"), ("llama", "magnitude", "0.5"), ("opt", "wanda", "0.3"),
])
def test_the_checkpoint_is_the_pruned_model(tiny, tmp_path, capsys, arch, method, sparsity):
    out = tmp_path / "out"
    code, stdout, err = run(["prune", "--model", tiny[arch], "--method", method, "--sparsity", sparsity,
                             "--out", out, "--eval", *FAST], capsys)
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} == {"out"}  # no temporary directory left behind
    assert {"config.json", "model.safetensors", "tokenizer.json", "report.json"} <= {p.name for p in out.iterdir()}
    model, report = reload(out)
    pattern = sparselib.parse_sparsity(sparsity)
    linears = list(decoder_linears(model))
    assert len(linears) == len(report["linears"]) == 2 * (7 if arch == "llama" else 6)
    for (name, W), record in zip(linears, report["linears"]):
        assert record["name"] == name and record["shape"] == list(W.shape)
        assert record["sparsity"] == pytest.approx(sparselib.sparsity(W))
        if pattern.is_nm:
            assert sparselib.nm_violations(W, pattern.n, pattern.m) == 0
        assert sparselib.sparsity(W) >= pattern.sparsity - 1 / W.shape[1]
    assert [l["layer"] for l in report["layers"]] == [0, 1]
    assert report["method"] == method and report["pattern"] == str(pattern)
    before, after = report["perplexity"]["before"], report["perplexity"]["after"]
    assert math.isfinite(before) and math.isfinite(after)
    assert reloaded_perplexity(model, out, report) == pytest.approx(after, rel=1e-4)
    assert report["peak_memory"]["cpu_rss_bytes"] > 0 and report["peak_memory"]["cuda_bytes"] is None
    prov = report["provenance"]
    assert prov["torch"] == torch.__version__ and prov["sparselib"] == sparselib.__version__ and prov["transformers"]
    assert {"load", "prune", "eval_before", "eval_after", "save", "total"} <= set(report["seconds"])
    assert f"{after:.3f}" in stdout


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_a_sliced_checkpoint_loads_with_auto_model(tiny, tmp_path, capsys, arch):
    out = tmp_path / "sliced"
    code, _, err = run(["prune", "--model", tiny[arch], "--method", "slicegpt", "--sparsity", "0.25",
                        "--out", out, "--eval", *FAST], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == f"sparselib_sliced_{arch}" and "auto_map" not in config  # no remote code
    model, report = reload(out)
    assert type(model).__name__.startswith("Sliced") and isinstance(sparselib.decoder_layers(model)[0], SlicedLayer)
    d = kept_dim(64, 0.25)
    assert report["result"]["slicing"] == {"hidden_size": 64, "dim": d}
    assert model.get_input_embeddings().weight.shape[1] == d
    assert report["model"]["parameters_after"] == sum(p.numel() for p in model.parameters())
    for record in report["linears"]:  # the fraction of each linear's weights deleted, from its shapes
        (o, i), (o0, i0) = record["shape"], record["shape_before"]
        assert record["sparsity"] == pytest.approx(1 - o * i / (o0 * i0))
    assert reloaded_perplexity(model, out, report) == pytest.approx(report["perplexity"]["after"], rel=1e-4)
    assert sparselib.load_sliced(out).state_dict().keys() == model.state_dict().keys()


def test_a_sliced_model_can_then_be_pruned(tiny, tmp_path, capsys):
    out = tmp_path / "sliced-24"
    code, _, err = run(["prune", "--model", tiny["sliced"], "--method", "wanda", "--sparsity", "2:4",
                        "--out", out, *FAST], capsys)
    assert code == 0, err
    model, _ = reload(out)
    assert isinstance(sparselib.decoder_layers(model)[0], SlicedLayer)
    assert all(sparselib.is_nm(W, 2, 4) for _, W in decoder_linears(model))


def test_force_replaces_an_earlier_output_and_only_that(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["prune", "--model", tiny["llama"], "--method", "magnitude", "--out", out, "--quiet"]
    assert run([*base, "--sparsity", "0.5"], capsys)[0] == 0
    assert run([*base, "--sparsity", "0.7", "--force"], capsys)[0] == 0
    _, report = reload(out)
    assert report["sparsity"] == "0.7" and {p.name for p in tmp_path.iterdir()} == {"out"}


def test_the_output_is_marked_with_every_file_it_holds(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["prune", "--model", tiny["llama"], "--method", "magnitude", "--sparsity", "0.5", "--out", out,
                "--quiet"], capsys)[0] == 0
    mark = json.loads((out / sparselib.io.MARKER).read_text())
    assert mark["written_by"] == "sparselib" and mark["id"] == json.loads((out / "report.json").read_text())["output_id"]
    assert set(mark["files"]) == {p.name for p in out.iterdir()} - {sparselib.io.MARKER}
    assert all(mark["files"][p.name] == p.stat().st_size for p in out.iterdir() if p.name != sparselib.io.MARKER)


@pytest.mark.parametrize("change, fix", [
    (lambda out: (out / "notes.txt").write_text("mine"), "holds files sparselib did not write (notes.txt)"),
    (lambda out: (out / "sub").mkdir(), "holds files sparselib did not write (sub)"),
    (lambda out: (out / "config.json").write_text("{}"), "was changed since sparselib wrote it (config.json"),
    (lambda out: (out / "sparselib-output.json").unlink(), "has no sparselib-output.json"),
    (lambda out: (out / "sparselib-output.json").write_text("{"), "sparselib did not write"),
    (lambda out: (out / "report.json").write_text(json.dumps({"output_id": "someone else"}).ljust(
        (out / "report.json").stat().st_size)), "does not match"),
])
def test_force_refuses_an_output_that_holds_anything_else(change, fix, tiny, tmp_path, capsys):
    """Issue 27: --force replaces sparselib's own output as it wrote it, and nothing more."""
    out = tmp_path / "out"
    base = ["prune", "--model", tiny["llama"], "--method", "magnitude", "--out", out, "--quiet"]
    assert run([*base, "--sparsity", "0.5"], capsys)[0] == 0
    change(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run([*base, "--sparsity", "0.7", "--force"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fix in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # not a byte lost
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_second_run_to_the_same_out_is_refused_at_once(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    with sparselib.io.exclusive(out):  # as another `sparselib prune --out out` holds it while it works
        code, _, err = run(["prune", "--model", tiny["llama"], *WANDA, "--out", out, *FAST], capsys)
    assert code == 2 and "being written by another sparselib run" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("theirs", ["sparselib", "user"])
def test_an_out_written_meanwhile_is_never_mixed(force, theirs, tiny, tmp_path, capsys, monkeypatch):
    """Another writer fills --out while this run works (the lock is per machine; say, another host):
    at the rename, the run refuses, or (--force, sparselib's own output) replaces it whole."""
    out = tmp_path / "out"
    other = tmp_path / "other"
    if theirs == "sparselib":
        assert run(["prune", "--model", tiny["llama"], "--method", "magnitude", "--sparsity", "0.3", "--out", other,
                    "--quiet"], capsys)[0] == 0
    else:
        other.mkdir()
        (other / "thesis.tex").write_text("mine")
    real = sparselib.cli._save

    def save(*args):
        os.replace(other, out)  # the other writer finishes first
        return real(*args)
    monkeypatch.setattr(sparselib.cli, "_save", save)
    code, _, err = run(["prune", "--model", tiny["llama"], *WANDA, "--out", out, *FAST, "--quiet",
                        *(["--force"] if force else [])], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory either
    if force and theirs == "sparselib":
        assert code == 0 and reload(out)[1]["sparsity"] == "2:4" and sparselib.io.output_problem(out) is None
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        if theirs == "user":
            assert (out / "thesis.tex").read_text() == "mine" and len(list(out.iterdir())) == 1
        else:
            assert reload(out)[1]["sparsity"] == "0.3" and sparselib.io.output_problem(out) is None


@pytest.mark.parametrize("force", [False, True])
def test_two_commands_to_the_same_out_at_once(force, tiny, tmp_path):
    """Two real `sparselib prune` processes started together: one complete checkpoint, and the other
    run either refused in one line or (with --force) replacing it whole; never a mixed directory."""
    out = tmp_path / "out"
    procs = [_command(["--model", tiny["llama"], "--method", "magnitude", "--sparsity", sparsity, "--quiet",
                       *(["--force"] if force else [])], out) for sparsity in ("0.3", "0.6")]
    results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]) if force else codes == [0, 2], results
    for code, err in results:
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and ("another sparselib run" in err or "already exists" in err)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sparselib.io.output_problem(out) is None
    model, report = reload(out)
    assert report["sparsity"] in ("0.3", "0.6") and all(
        sparselib.sparsity(W) == pytest.approx(float(report["sparsity"]), abs=0.02) for _, W in decoder_linears(model))


def test_parent_directories_are_created(tiny, tmp_path, capsys):
    out = tmp_path / "runs" / "a" / "b"
    assert run(["prune", "--model", tiny["llama"], "--method", "magnitude", "--sparsity", "0.5", "--out", out,
                "--quiet"], capsys)[0] == 0
    assert (out / "report.json").is_file()


def test_an_interrupted_write_leaves_nothing(tiny, tmp_path, capsys, monkeypatch):
    """Ctrl-C after the weights are written into the temporary directory, before the rename."""
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sparselib.cli, "_peak_memory", interrupt)  # called in _save after the weights
    code, _, err = run(["prune", "--model", tiny["llama"], "--method", "magnitude", "--sparsity", "0.5",
                        "--out", tmp_path / "new" / "out", "--quiet"], capsys)
    assert code == 130 and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []  # neither --out, nor the temporary directory, nor new/


def test_eval_agrees_with_the_library(tiny, capsys):
    code, stdout, err = run(["eval", "--model", tiny["llama"], "--tokens", "1024", "--seqlen", "64", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    model, tokenizer = sparselib.load_model(tiny["llama"])
    ids = sparselib.test_data(tokenizer, max_tokens=1024)
    assert result["perplexity"] == pytest.approx(sparselib.perplexity(model, ids, seqlen=64, progress=False), rel=1e-5)
    assert result["tokens"] == 1024 and result["seqlen"] == 64


def test_info_says_whether_24_kernels_can_run(capsys):
    code, stdout, _ = run(["info", "--json"], capsys)
    assert code == 0
    info = json.loads(stdout)
    ok, reason = sparselib.can_use_sparse_kernels()
    assert info["2:4 kernels"] == f"{'yes' if ok else 'no'}: {reason}"
    assert info["torch"] == torch.__version__


def test_help_has_examples(capsys):
    for argv in (["--help"], ["prune", "--help"]):
        code, stdout, _ = run(argv, capsys)
        assert code == 0 and "examples:" in stdout and "--sparsity 2:4" in stdout


def test_console_script_and_python_m():
    (script,) = entry_points(group="console_scripts", name="sparselib")
    assert script.value == "sparselib.cli:main"
    done = subprocess.run([sys.executable, "-m", "sparselib", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"sparselib {sparselib.__version__}"


def test_the_chapter_checkers(tiny, tmp_path, capsys):
    """sparselib.exercises' checkers for chapter 11: right answers pass, the usual mistakes are named."""
    from sparselib import exercises

    out = tmp_path / "sliced"
    assert run(["prune", "--model", tiny["llama"], "--method", "slicegpt", "--sparsity", "0.25", "--out", out,
                "--quiet", *FAST[:4]], capsys)[0] == 0
    report = json.loads((out / "report.json").read_text())
    dense, sliced = report["model"]["parameters_before"], report["model"]["parameters_after"]
    assert exercises.check_sliced_checkpoint(out, dense, sliced)
    assert "swapped" in str(exercises.check_sliced_checkpoint(out, sliced, dense))
    assert "count it once" in str(exercises.check_sliced_checkpoint(out, dense + 128 * 64, sliced))
    assert "not a quarter of the parameters" in str(exercises.check_sliced_checkpoint(out, dense, int(0.75 * dense)))
    with pytest.raises(ValueError, match="report.json"):
        exercises.check_sliced_checkpoint(tmp_path, dense, sliced)

    table = {p: sparselib.sweep_point("wanda", p)["perplexity"] for p in ("2:4", "4:8", "0.5")}
    least = min(table, key=table.get)
    assert exercises.check_sweep_table(table, least)
    dense_ppl = sparselib.load_result("sweep_smollm2_brown")["dense"]
    assert "before" in str(exercises.check_sweep_table({**table, "2:4": dense_ppl}, least))
    assert "another pattern" in str(exercises.check_sweep_table({**table, "2:4": table["0.5"]}, least))
    assert "lowest perplexity" in str(exercises.check_sweep_table(table, max(table, key=table.get)))
    with pytest.raises(TypeError, match="2:4"):
        exercises.check_sweep_table({"2:4": 1.0}, "2:4")


# --------------------------------------------------------------------------------------------
# Bad input: exit status 2, one line that names the fix, no traceback, nothing written
# --------------------------------------------------------------------------------------------
WANDA = ["--method", "wanda", "--sparsity", "2:4"]
BAD = {
    # id: (arguments after `prune`, with {model}/{out}/{dir} filled in; what the one line must say)
    "unknown method": (["--model", "{llama}", "--method", "foo", "--sparsity", "0.5"], "choose one of magnitude"),
    "sparsity above 1": (["--model", "{llama}", "--method", "wanda", "--sparsity", "1.2"], "[0, 1)"),
    "N:M with N > M": (["--model", "{llama}", "--method", "wanda", "--sparsity", "3:2"], "0 < N < M"),
    "N:M with N = 0": (["--model", "{llama}", "--method", "wanda", "--sparsity", "0:4"], "0 < N < M"),
    "sparsity not a number": (["--model", "{llama}", "--method", "wanda", "--sparsity", "half"], "like 0.5"),
    "slicegpt with 2:4": (["--model", "{llama}", "--method", "slicegpt", "--sparsity", "2:4"], "--sparsity 0.25"),
    "slicegpt deleting everything": (["--model", "{llama}", "--method", "slicegpt", "--sparsity", "0.95"],
                                     "use --sparsity <="),
    "unknown calibration set": (["--model", "{llama}", *WANDA, "--calib", "c4"], "wikitext2"),
    "unknown dtype": (["--model", "{llama}", *WANDA, "--dtype", "bogus"], "bfloat16"),
    "unknown device": (["--model", "{llama}", *WANDA, "--device", "tpu"], "use cpu or cuda"),
    "nsamples 0": (["--model", "{llama}", *WANDA, "--nsamples", "0"], "--nsamples must be at least 1"),
    "nsamples not an int": (["--model", "{llama}", *WANDA, "--nsamples", "many"], "invalid int value"),
    "seqlen 1": (["--model", "{llama}", *WANDA, "--seqlen", "1"], "--seqlen must be at least 2"),
    "seqlen above the model's maximum": (["--model", "{llama}", *WANDA, "--seqlen", "128"], "use --seqlen <= 64"),
    "eval shorter than a window": (["--model", "{llama}", *WANDA, "--eval", "--eval-tokens", "100"],
                                   "use --eval-tokens >= 256"),
    "model path missing": (["--model", "/nonexistent/model", *WANDA], "no such file or directory"),
    "model is a file": (["--model", "{file}", *WANDA], "is a file, not a model directory"),
    "model dir without config": (["--model", "{empty}", *WANDA], "no config.json"),
    "model without safetensors": (["--model", "{config-only}", *WANDA], "only safetensors"),
    "truncated model.safetensors": (["--model", "{truncated}", *WANDA], "damaged or incomplete"),
    "batch size 0": (["--model", "{llama}", *WANDA, "--batch-size", "0"], "--batch-size must be at least 1"),
    "batch size -1": (["--model", "{llama}", *WANDA, "--batch-size", "-1"], "--batch-size must be at least 1"),
    "batch size 2.5": (["--model", "{llama}", *WANDA, "--batch-size", "2.5"], "invalid int value"),
    "not a causal LM": (["--model", "{bert}", *WANDA], "not a causal language model"),
    "architecture not supported": (["--model", "{gpt_neox}", *WANDA], "Add an entry to sparselib.models.ADAPTERS"),
    "slicegpt on GPT-2": (["--model", "{gpt2}", "--method", "slicegpt", "--sparsity", "0.25"],
                          "SliceGPT supports pre-LN models of type llama, mistral, opt, qwen2"),
    "slicing a sliced model": (["--model", "{sliced}", "--method", "slicegpt", "--sparsity", "0.25"],
                               "already sliced"),
    "4:8 on 132 inputs": (["--model", "{down132}", "--method", "wanda", "--sparsity", "4:8"], "multiple of 8"),
    "calibration text too short": (["--model", "{one-token}", *WANDA], "fewer than one window"),
    "out exists": (["--model", "{llama}", *WANDA, "--out", "{dir}/existing"], "add --force"),
    "force on a directory sparselib did not write": (["--model", "{llama}", *WANDA, "--out", "{dir}/existing",
                                                      "--force"], "sparselib did not write"),
    "force on a directory with a report.json of its own": (["--model", "{llama}", *WANDA, "--out", "{dir}/reported",
                                                            "--force"], "has no sparselib-output.json"),
    "out under a regular file": (["--model", "{llama}", *WANDA, "--out", "{dir}/a-file/out"],
                                 "is a file, not a directory"),
    "out on a file system that refuses it": (["--model", "{llama}", *WANDA, "--out", "/proc/sparselib-out"],
                                             "choose another --out"),
    "cuda without a GPU": (["--model", "{llama}", *WANDA, "--device", "cuda"], "use --device cpu"),
    "no --out": (["--model", "{llama}", *WANDA], "required: --out"),
}


QUANT_BAD = {
    "wbits 5": (["--model", "{llama}", *WANDA, "--wbits", "5"], "--wbits must be one of 2, 3, 4, 8"),
    "group size without wbits": (["--model", "{llama}", *WANDA, "--group-size", "64"], "add --wbits"),
    "group size not a number": (["--model", "{llama}", *WANDA, "--wbits", "4", "--group-size", "many"], "'channel'"),
    "group size not dividing the inputs": (["--model", "{llama}", *WANDA, "--wbits", "4", "--group-size", "48"],
                                           "use --group-size 64"),
    "group size 128 on 64 inputs (the default)": (["--model", "{llama}", *WANDA, "--wbits", "4"],
                                                  "does not divide the 64 inputs"),
    "compressed-tensors without wbits": (["--model", "{llama}", *WANDA, "--format", "compressed-tensors"],
                                         "add --wbits 4"),
    "2:4 format for 50 %": (["--model", "{llama}", "--method", "wanda", "--sparsity", "0.5", "--format", "2:4"],
                            "use --sparsity 2:4"),
    "2:4 format with 3-bit values": (["--model", "{llama}", *WANDA, "--wbits", "3", "--group-size", "16",
                                      "--format", "2:4"], "use --wbits 4 or 8"),
    "sliced model in compressed-tensors": (["--model", "{llama}", "--method", "slicegpt", "--sparsity", "0.25",
                                            "--wbits", "4", "--format", "compressed-tensors"], "use --format hf"),
    "unknown format": (["--model", "{llama}", *WANDA, "--format", "gguf"], "invalid choice"),
}
BAD.update(QUANT_BAD)  # --wbits, --group-size, --format (issue 25)


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_writes_nothing(case, tiny, tmp_path, capsys):
    argv, fix = BAD[case]
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case.startswith("out on a file system") and not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("mine")
    (tmp_path / "a-file").write_text("a file")
    (tmp_path / "reported").mkdir()  # issue 27: --force deleted any directory holding a report.json
    (tmp_path / "reported" / "report.json").write_text("{}")
    (tmp_path / "reported" / "thesis.tex").write_text("mine")
    argv = [a.format(dir=tmp_path, **tiny) for a in argv]
    if "--out" not in argv and case != "no --out":
        argv += ["--out", str(tmp_path / "out")]
    before = tree(tmp_path)
    code, stdout, err = run(["prune", "--nsamples", "4", "--seqlen", "32", *argv], capsys)  # the case's own win
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("sparselib: error: "), err
    assert fix in lines[0], lines[0]
    assert "Traceback" not in err and stdout == ""
    assert tree(tmp_path) == before and (tmp_path / "existing" / "keep.txt").read_text() == "mine"
    assert (tmp_path / "reported" / "thesis.tex").read_text() == "mine"


def test_there_are_at_least_15_bad_inputs():
    assert len(BAD) >= 15


def test_eval_bad_input(tiny, capsys):
    for argv, fix in ((["--model", tiny["bert"]], "not a causal language model"),
                      (["--model", tiny["llama"], "--seqlen", "128"], "use --seqlen <= 64"),
                      (["--model", tiny["llama"], "--tokens", "10"], "--tokens >= 256")):
        code, _, err = run(["eval", *argv], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and fix in err, err


# --------------------------------------------------------------------------------------------
# Ctrl-C wherever it lands: exit 130, one line, no traceback, nothing left beside --out.
# Deterministic: the signal is raised (signal.raise_signal, through the command's own handler) at
# each point of a run, in this process; then a few real signals against a subprocess.
# --------------------------------------------------------------------------------------------
def _interrupt():
    """Ctrl-C, delivered to this process as a terminal would."""
    signal.raise_signal(signal.SIGINT)


def _nth_call(n: int, fn=None):
    """A function that interrupts on its ``n``-th call (1-based), and otherwise calls ``fn``."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            _interrupt()
        return fn(*args, **kwargs) if fn is not None else None
    return wrapper


def _with_model_hook(monkeypatch, attach):
    """Wrap the CLI's load_model so that ``attach(model)`` can hook the model it loads."""
    real = sparselib.cli.load_model

    def load(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        attach(model)
        return model, tok
    monkeypatch.setattr(sparselib.cli, "load_model", load)


def _forward_hook(module_of, n):
    """``attach`` for :func:`_with_model_hook`: interrupt in the ``n``-th forward of ``module_of(model)``."""
    def attach(model):
        module_of(model).register_forward_pre_hook(_nth_call(n))
    return attach


def _method(monkeypatch, name, n):
    methods = importlib.import_module("sparselib.prune").METHODS  # (sparselib.prune is the function)
    monkeypatch.setitem(methods, name, dataclasses.replace(methods[name], fn=_nth_call(n, methods[name].fn)))


def _tqdm_init(desc):
    """A bar named ``desc`` interrupted half-way through its __init__ (before tqdm sets ``pos``):
    its __del__ later fails, the flake of issue 24."""
    real = tqdm.std.tqdm.__init__

    def init(self, *args, **kwargs):
        if str(kwargs.get("desc", "")).startswith(desc):
            self.disable = False
            _interrupt()
        real(self, *args, **kwargs)
    return init


def _tqdm_close(desc):
    """Ctrl-C inside the ``close`` of the bar named ``desc`` (its teardown)."""
    real = tqdm.std.tqdm.close

    def close(self):
        if str(getattr(self, "desc", "")).startswith(desc) and not getattr(self, "disable", True):
            _interrupt()
        real(self)
    return close


def _tqdm_del():
    """Ctrl-C inside a bar's __del__, where an exception cannot propagate."""
    real, calls = tqdm.std.tqdm.__del__, []

    def __del__(self):
        calls.append(1)
        if len(calls) == 1:
            _interrupt()
        real(self)
    return __del__


EMBED = lambda m: m.get_input_embeddings()  # noqa: E731
HEAD = lambda m: m.get_output_embeddings()  # noqa: E731
# name: (method, sparsity, extra arguments, patch(monkeypatch)); with --eval: 16 evaluation windows
# of 64 tokens, 4 per forward pass (4 passes before pruning, 4 after); calibration: 4 windows, 2 per pass
POINTS = {
    "parsing the command line": ("wanda", "2:4", [], lambda mp: mp.setattr(
        sparselib.cli, "build_parser", _nth_call(1, sparselib.cli.build_parser))),
    "probing --out": ("wanda", "2:4", [], lambda mp: mp.setattr(
        sparselib.checks.tempfile, "mkdtemp", _nth_call(1, tempfile.mkdtemp))),
    "reading the config": ("wanda", "2:4", [], lambda mp: mp.setattr(
        sparselib.cli, "load_config", _nth_call(1, sparselib.cli.load_config))),
    "loading the model": ("wanda", "2:4", [], lambda mp: mp.setattr(
        sparselib.cli, "load_model", _nth_call(1, sparselib.cli.load_model))),
    "tokenizing the calibration text": ("wanda", "2:4", [], lambda mp: mp.setattr(
        sparselib.cli, "calibration_data", _nth_call(1, sparselib.cli.calibration_data))),
    "evaluating before": ("wanda", "2:4", ["--eval"], lambda mp: _with_model_hook(mp, _forward_hook(HEAD, 2))),
    "capturing calibration inputs": ("wanda", "2:4", ["--eval"], lambda mp: _with_model_hook(
        mp, _forward_hook(EMBED, 4 + 2))),  # the embedding runs 4 times in the first evaluation
    "gathering statistics": ("sparsegpt", "2:4", [], lambda mp: mp.setattr(
        sparselib.calibration.LinearStats, "add", _nth_call(3, sparselib.calibration.LinearStats.add))),
    "magnitude, layer 1": ("magnitude", "0.5", [], lambda mp: _method(mp, "magnitude", 8)),
    "wanda, layer 1": ("wanda", "2:4", [], lambda mp: _method(mp, "wanda", 8)),
    "sparsegpt, layer 1": ("sparsegpt", "0.5", [], lambda mp: _method(mp, "sparsegpt", 5)),
    "slicegpt, layer 1": ("slicegpt", "0.25", [], lambda mp: mp.setattr(
        sparselib.slicegpt, "pca", _nth_call(4, sparselib.slicegpt.pca))),
    "running a pruned layer": ("wanda", "0.5", [], lambda mp: mp.setattr(
        sparselib.calibration, "run_layer", _nth_call(1, sparselib.calibration.run_layer))),
    "evaluating after": ("wanda", "2:4", ["--eval"], lambda mp: _with_model_hook(mp, _forward_hook(HEAD, 4 + 2))),
    "writing the report": ("wanda", "2:4", [], lambda mp: mp.setattr(
        sparselib.cli, "provenance", _nth_call(1, sparselib.cli.provenance))),
    "saving the weights": ("wanda", "2:4", [], lambda mp: mp.setattr(
        sparselib.cli, "_peak_memory", _nth_call(1, sparselib.cli._peak_memory))),
    "marking the output": ("wanda", "2:4", [], lambda mp: mp.setattr(
        sparselib.cli, "mark_output", _nth_call(1, sparselib.cli.mark_output))),
    "creating the pruning bar": ("wanda", "2:4", [], lambda mp: mp.setattr(
        tqdm.std.tqdm, "__init__", _tqdm_init("wanda"))),
    "creating the evaluation bar": ("wanda", "2:4", ["--eval"], lambda mp: mp.setattr(
        tqdm.std.tqdm, "__init__", _tqdm_init("perplexity"))),
    "creating the slicing bar": ("slicegpt", "0.25", [], lambda mp: mp.setattr(
        tqdm.std.tqdm, "__init__", _tqdm_init("SliceGPT"))),
    "closing the pruning bar": ("wanda", "2:4", [], lambda mp: mp.setattr(
        tqdm.std.tqdm, "close", _tqdm_close("wanda"))),
    "closing the evaluation bar": ("wanda", "2:4", ["--eval"], lambda mp: mp.setattr(
        tqdm.std.tqdm, "close", _tqdm_close("perplexity"))),
    "inside a bar's __del__": ("wanda", "2:4", ["--eval"], lambda mp: mp.setattr(
        tqdm.std.tqdm, "__del__", _tqdm_del())),
}


@contextlib.contextmanager
def _no_unraisable():
    """Fails if anything reports an error from a __del__ (Python's "Exception ignored in ...")."""
    seen, hook = [], sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        yield
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert not seen, [f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}" for u in seen]


def _assert_interrupted(code, err, where):
    lines = err.strip().splitlines()
    assert code == 130, err
    assert lines and lines[-1] in (f"sparselib: interrupted{where}", "sparselib: interrupted; nothing was written"), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    assert sys.unraisablehook is not None


@pytest.mark.parametrize("point", POINTS)
def test_ctrl_c_anywhere_leaves_nothing(point, tiny, tmp_path, capsys, monkeypatch):
    method, sparsity, extra, patch = POINTS[point]
    out = tmp_path / "new" / "out"
    argv = ["prune", "--model", tiny["llama"], "--method", method, "--sparsity", sparsity, "--out", out,
            "--nsamples", "4", "--seqlen", "32", "--batch-size", "2", "--eval-tokens", "1024", "--eval-seqlen", "64",
            *extra]
    patch(monkeypatch)
    with _no_unraisable():
        code, _, err = run(argv, capsys)
    _assert_interrupted(code, err, f"; nothing was written to {out}")
    assert list(tmp_path.iterdir()) == []  # neither --out, nor a temporary directory, nor new/


def test_ctrl_c_during_the_rename_waits_for_it(tiny, tmp_path, capsys, monkeypatch):
    """The rename is never cut in half: a signal that arrives during it is handled once --out is complete."""
    out = tmp_path / "out"
    monkeypatch.setattr(sparselib.io.os, "replace", _nth_call(1, os.replace))
    with _no_unraisable():
        code, _, err = run(["prune", "--model", tiny["llama"], "--method", "wanda", "--sparsity", "2:4",
                            "--out", out, *FAST], capsys)
    _assert_interrupted(code, err, f" after writing {out}")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sparselib.io.output_problem(out) is None and reload(out)[1]["sparsity"] == "2:4"


@pytest.mark.parametrize("point", ["loading", "evaluating", "creating the bar"])
def test_ctrl_c_in_eval(point, tiny, capsys, monkeypatch):
    if point == "loading":
        monkeypatch.setattr(sparselib.cli, "load_model", _nth_call(1, sparselib.cli.load_model))
    elif point == "evaluating":
        _with_model_hook(monkeypatch, _forward_hook(HEAD, 2))
    else:
        monkeypatch.setattr(tqdm.std.tqdm, "__init__", _tqdm_init("perplexity"))
    with _no_unraisable():
        code, stdout, err = run(["eval", "--model", tiny["llama"], "--tokens", "1024", "--seqlen", "64"], capsys)
    _assert_interrupted(code, err, "; nothing was written")
    assert stdout == ""


def test_sigterm_is_handled_like_ctrl_c(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sparselib.cli, "calibration_data",
                        lambda *a, **k: signal.raise_signal(signal.SIGTERM))
    out = tmp_path / "out"
    code, _, err = run(["prune", "--model", tiny["llama"], *WANDA, "--out", out, *FAST], capsys)
    assert code == 143 and err.strip().splitlines()[-1] == f"sparselib: terminated; nothing was written to {out}"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# Real signals against the command in a subprocess. Each waits for a sign of the phase it aims at, so
# the machine's load changes only how long it waits, not where the signal lands.
def _command(argv, out: Path, **popen):
    # as from a terminal: a shell that starts jobs in the background (nohup, `&` without job control)
    # makes them ignore SIGINT, and Python then installs no KeyboardInterrupt handler
    return subprocess.Popen([sys.executable, "-m", "sparselib", "prune", *argv, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def _wait_for(proc, text: bytes) -> bytes:
    """stderr up to and including ``text`` (tqdm bars end in \\r, not \\n: read bytes, not lines)."""
    seen = b""
    while text not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the command ended before {text!r}: {seen.decode(errors='replace')}"
        seen += chunk
    return seen


def test_sigint_while_evaluating_leaves_nothing(tiny, tmp_path):
    """SIGINT while the whole test split is evaluated (several seconds): exit 130, one line, nothing written."""
    out = tmp_path / "out"
    proc = _command(["--model", tiny["llama"], *WANDA, "--nsamples", "4", "--seqlen", "32", "--eval",
                     "--eval-tokens", "10000000", "--eval-seqlen", "64"], out)
    try:
        seen = _wait_for(proc, b"perplexity")  # the bar of the evaluation before pruning
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=300)
    finally:
        proc.kill()
    err = (seen + rest).decode()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].endswith(f"sparselib: interrupted; nothing was written to {out}"), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_sigint_while_importing_is_one_line(tmp_path):
    """Ctrl-C in the command's first seconds, while torch is imported: the same line and status,
    not a traceback. The signal is sent the moment the import of torch begins."""
    script = ("import os, signal, sys\n"
              "class Trip:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'torch':\n"
              "            os.kill(os.getpid(), signal.SIGINT)\n"
              "sys.meta_path.insert(0, Trip())\n"
              "sys.argv[0] = os.path.join(os.path.dirname(sys.executable), 'sparselib')  # as the console script\n"
              "from sparselib.cli import main\n"
              "sys.exit(main())\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", script, "prune", "--method", "wanda", "--sparsity", "2:4",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130, done.stderr
    assert done.stderr == "sparselib: interrupted; nothing was written\n"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The acceptance commands on SmolLM2 (fewer calibration samples and a shorter evaluation than the
# defaults, to keep CI short; the defaults are what `sparselib prune` runs without these flags)
# --------------------------------------------------------------------------------------------
SMALL = ["--nsamples", "8", "--seqlen", "128", "--eval-tokens", "2048"]


@pytest.mark.slow
@pytest.mark.parametrize("method, sparsity", [("wanda", "2:4"), ("sparsegpt", "2:4"), ("slicegpt", "0.25")])
def test_acceptance_on_smollm2(method, sparsity, tmp_path):
    out = tmp_path / "x"
    done = subprocess.run([sys.executable, "-m", "sparselib", "prune", "--model", "smollm2-135m", "--method", method,
                           "--sparsity", sparsity, "--out", str(out), "--eval", *SMALL],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
    model, report = reload(out)
    if method == "slicegpt":
        assert model.get_input_embeddings().weight.shape[1] == kept_dim(576, 0.25)
    else:
        for name, W in decoder_linears(model):
            assert sparselib.nm_violations(W, 2, 4) == 0, name
            assert sparselib.sparsity(W) == pytest.approx(0.5, abs=1e-3), name
    before, after = report["perplexity"]["before"], report["perplexity"]["after"]
    assert 1 < before < after < 10 * before  # pruning costs quality, and the model still works
    assert reloaded_perplexity(model, out, report) == pytest.approx(after, rel=1e-4)


@pytest.mark.slow
def test_sigint_on_smollm2_leaves_nothing(tmp_path):
    out = tmp_path / "x"
    proc = _command(["--model", "smollm2-135m", "--method", "sparsegpt", "--sparsity", "2:4", "--nsamples", "8",
                     "--seqlen", "128"], out)
    try:
        seen = _wait_for(proc, b"sparsegpt 2:4")  # the pruning bar: the layers are being pruned
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=300)
    finally:
        proc.kill()
    err = (seen + rest).decode()
    assert proc.returncode == 130, err
    assert "interrupted; nothing was written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# --wbits, --group-size, --format: smaller checkpoints (issue 25)
# --------------------------------------------------------------------------------------------
def _on_grid(W: torch.Tensor, bits: int, group: int | None) -> bool:
    """At most 2^bits distinct values in every row's group of ``group`` inputs (all of a row: None)."""
    rows, cols = W.shape
    g = group or cols
    return all(len(torch.unique(x)) <= 2 ** bits for x in W.float().reshape(rows * (cols // g), g))


def test_joint_24_int4_checkpoint_holds_the_pruned_quantized_model(tiny, tmp_path, capsys):
    from sparselib.checkpoint24 import file_bytes, storage_of
    from sparselib.storage import Storage

    out = tmp_path / "24-int4"
    code, stdout, err = run(["prune", "--model", tiny["llama"], "--method", "sparsegpt", "--sparsity", "2:4",
                             "--wbits", "4", "--group-size", "16", "--format", "2:4", "--out", out, "--quiet",
                             *FAST[:4]], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["options"] | {"wbits": 4, "group_size": 16, "format": "2:4"} == report["options"]
    assert report["quantization"]["method"].startswith("sparsegpt (joint")
    assert report["checkpoint_bytes"] == file_bytes(out)
    assert "format 2:4" in stdout and "int4 weights, groups of 16" in stdout
    section = json.loads((out / "config.json").read_text())["sparselib_24"]
    assert storage_of(section) == Storage("2:4 + int4", bits=4, group_size=16, sparsity="2:4", density=0.5)
    model = sparselib.load_24(out)
    converted = [(n, m.dense_weight()) for n, m in model.named_modules() if isinstance(m, sparselib.SparseLinear24)]
    assert len(converted) == 14
    for name, W in converted:
        assert (W.reshape(-1, 4) != 0).sum(1).max() <= 2, name
        assert _on_grid(W, 4, 16), name


def test_prune_then_gptq_compressed_tensors_loads_with_transformers(tiny, tmp_path, capsys):
    pytest.importorskip("compressed_tensors")
    out = tmp_path / "w4"
    code, stdout, err = run(["prune", "--model", tiny["llama"], "--method", "wanda", "--sparsity", "0.5",
                             "--wbits", "4", "--group-size", "32", "--format", "compressed-tensors", "--out", out,
                             "--eval", "--quiet", *FAST], capsys)
    assert code == 0, err
    model, report = reload(out)
    assert report["quantization"]["method"].startswith("gptq") and report["quantization"]["bits"] == 4
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"
    p = report["perplexity"]
    assert p["after"] != p["before"]
    # (the first forward decompresses the packed weights; fp16 as stored)
    assert reloaded_perplexity(model, out, report) == pytest.approx(p["after"], rel=2e-2)
    for name, W in decoder_linears(model):
        assert (W == 0).float().mean() >= 0.5 - 1e-6, name          # GPTQ kept Wanda's zeros
        assert _on_grid(W, 4, 32), name


def test_per_channel_int8_in_the_hf_format(tiny, tmp_path, capsys):
    out = tmp_path / "int8"
    assert run(["prune", "--model", tiny["opt"], "--method", "magnitude", "--sparsity", "2:4", "--wbits", "8",
                "--group-size", "channel", "--out", out, "--quiet", *FAST[:4]], capsys)[0] == 0
    model, report = reload(out)
    assert report["options"]["group_size"] is None and report["options"]["format"] == "hf"
    for name, W in decoder_linears(model):
        assert (W.reshape(-1, 4) != 0).sum(1).max() <= 2 and _on_grid(W, 8, None), name
