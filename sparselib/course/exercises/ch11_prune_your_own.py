"""Chapter 11, prune your own: what `sparselib prune` wrote, read back and checked."""
from __future__ import annotations

import json
from pathlib import Path

from ...eval import EVAL_TOKENS
from ..results import load_result, sweep_point
from ._answers import number
from .registry import checker


def _cli_report(out, method: str) -> dict:
    """The report.json of a ``sparselib prune --method <method>`` run written to ``out``."""
    path = Path(out) / "report.json"
    if not path.is_file():
        raise ValueError(f"{out} holds no report.json; pass the --out directory of `sparselib prune`")
    report = json.loads(path.read_text())
    if report.get("method") != method:
        raise ValueError(f"{out} is a {report.get('method')} run; run `sparselib prune --method {method} ...`")
    return report


def _count_mistakes(fb, dense: float, sliced: float, want_dense: int, want_sliced: int, head: int) -> None:
    """Note what is wrong with the two parameter counts."""
    if dense == want_sliced and sliced == want_dense:
        fb.fail("the two counts are swapped: params_dense is the model before slicing")
        return
    if dense != want_dense:
        if dense == want_dense + head:
            fb.fail("the dense SmolLM2 ties its head to the embedding: one table, count it once")
        else:
            fb.fail(f"params_dense: you have {int(dense):,}, the dense model has {want_dense:,}")
    if sliced != want_sliced:
        scaled = int(sliced) in (int(0.75 * want_dense), round(0.75 * want_dense))
        fb.fail("slicing removes a quarter of the residual width, not a quarter of the parameters; count the "
                "loaded model's parameters" if scaled else
                f"params_sliced: you have {int(sliced):,}, the checkpoint has {want_sliced:,} "
                f"(sum(p.numel() for p in model.parameters()) on the loaded model)")


@checker("ex-cli-slice")
def check_sliced_checkpoint(fb, out, params_dense, params_sliced):
    """The parameter counts you found for the dense model and for the sliced checkpoint that
    `sparselib prune --method slicegpt` wrote to ``out``."""
    from transformers import AutoModelForCausalLM

    report = _cli_report(out, "slicegpt")
    dense, sliced = number(params_dense, "params_dense"), number(params_sliced, "params_sliced")
    want_dense, want_sliced = report["model"]["parameters_before"], report["model"]["parameters_after"]
    model = AutoModelForCausalLM.from_pretrained(out)  # loads because `import sparselib` registered the type
    if sum(p.numel() for p in model.parameters()) != want_sliced:
        return fb.fail(f"the checkpoint in {out} does not match its report.json; run the command again")
    head = model.get_output_embeddings().weight.numel()
    _count_mistakes(fb, dense, sliced, want_dense, want_sliced, head)
    if fb.passed:
        change = "more" if want_sliced > want_dense else "fewer"
        fb.note(f"{want_sliced:,} parameters, {abs(want_sliced - want_dense):,} {change} than dense"
                + (f": slicing unties the head, whose {head:,} weights now count separately"
                   if want_sliced > want_dense else ""))


@checker("ex-cli-sweep")
def check_sweep_table(fb, table: dict, least):
    """``{"2:4": ppl, "4:8": ppl, "0.5": ppl}`` read from your three report.json files (Wanda, default
    options) and the pattern you found costs the least, against the recorded sweep."""
    patterns = ("2:4", "4:8", "0.5")
    if not isinstance(table, dict) or set(map(str, table)) != set(patterns):
        raise TypeError('table must be a dict {"2:4": ppl, "4:8": ppl, "0.5": ppl} of the perplexities after pruning')
    got = {str(k): number(v, f"table[{k!r}]") for k, v in table.items()}
    want = {p: sweep_point("wanda", p)["perplexity"] for p in patterns}
    dense = load_result("sweep_smollm2_brown")["dense"]
    for p in patterns:
        if abs(got[p] / want[p] - 1) <= 0.02:
            continue
        if abs(got[p] / dense - 1) <= 0.02:
            fb.fail(f"{p}: {got[p]:.1f} is the perplexity *before* pruning; read report['perplexity']['after']")
        elif any(abs(got[p] / want[q] - 1) <= 0.02 for q in patterns if q != p):
            fb.fail(f"{p}: {got[p]:.1f} is another pattern's value; check which directory is which")
        else:
            fb.fail(f"{p}: you have {got[p]:.1f}, the recorded sweep {want[p]:.1f} (same protocol: 32 x 256 "
                    f"calibration tokens, the standard {EVAL_TOKENS:,} evaluation tokens); did you change "
                    f"--nsamples, --seqlen or --eval-tokens?")
    best = min(want, key=want.get)
    if str(least) != best:
        worst = max(want, key=want.get)
        fb.fail(f"{least} has the {'highest' if str(least) == worst else 'middle'} perplexity; the least costly "
                f"pattern is the one with the lowest perplexity after pruning")
    if fb.passed:
        fb.note(f"{best} costs the least ({want[best]:.1f}); 2:4 ({want['2:4']:.1f}) is the most constrained, "
                f"and the only one Sparse Tensor Cores run")
