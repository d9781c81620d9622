"""Task accuracy beside perplexity.

* :func:`lastword_accuracy` — offline: LAMBADA-style last-word prediction on passages of the Brown
  test split (``sparselib/data/lastword_brown.json``, built by ``tools/make_lastword.py``).
* :func:`evaluate_tasks` — the zero-shot tasks of the Wanda and SparseGPT papers (BoolQ, RTE,
  HellaSwag, WinoGrande, ARC-e/c, OpenBookQA) through EleutherAI's lm-evaluation-harness
  (``lm-eval``), run on the model already in memory. Its datasets come from the Hugging Face Hub, so
  it needs the network (Colab), unless a task and its data are local (``task_dir``).
"""
from __future__ import annotations

import inspect
import json
import logging
import re
from functools import lru_cache
from pathlib import Path

import torch

from .checks import check_batch_size, check_int, check_seqlen, check_task_names, check_text_items, hub_reachable, \
    max_positions
from .models import model_device

log = logging.getLogger(__name__)

LASTWORD_FILE = Path(__file__).resolve().parent / "data" / "lastword_brown.json"


# --------------------------------------------------------------------------------------------
# Offline: the last word of a Brown passage
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _lastword_data() -> dict:
    return json.loads(LASTWORD_FILE.read_text(encoding="utf-8"))


def lastword_items() -> list[dict]:
    """The committed last-word passages: ``[{"context": str, "target": str, "document": int}, ...]``
    (the selection rule is in ``tools/make_lastword.py`` and in the file's ``"rule"``)."""
    return [dict(item) for item in _lastword_data()["items"]]


@torch.no_grad()
def lastword_correct(model, tokenizer, items: list[dict] | None = None, batch_size: int = 8) -> list[bool]:
    """For each item, whether ``model`` predicts its last word greedily: one bool per item, in order.

    An item is right when every token of ``" " + target`` is the model's most likely next token
    (argmax) given the passage and the target's tokens before it — exactly what greedy decoding
    would write. Passage and target are tokenised separately, without special tokens (as the
    course's perplexity is), and scored in one forward pass per batch (right-padded: in a causal
    model a token never sees the padding after it).
    """
    items = lastword_items() if items is None else items
    check_text_items(items, ("context", "target"))
    check_batch_size(batch_size)
    sequences = []
    for item in items:
        context = tokenizer(item["context"], add_special_tokens=False)["input_ids"]
        target = tokenizer(" " + item["target"], add_special_tokens=False)["input_ids"]
        context, target = [int(t) for t in _flat(context)], [int(t) for t in _flat(target)]
        if not context or not target:
            raise ValueError(f"the tokenizer gave no tokens for the passage or the target of {item!r}")
        sequences.append((context, target))
    longest = max(len(c) + len(t) for c, t in sequences)
    check_seqlen(longest, max_positions(model.config), name="the longest passage with its target (tokens)")
    pad = next((t for t in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
                if t is not None), 0)
    device = model_device(model)
    order = sorted(range(len(sequences)), key=lambda i: -sum(map(len, sequences[i])))  # less padding
    correct = [False] * len(sequences)
    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(sequences[i][0]) + len(sequences[i][1]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            for row, i in enumerate(batch):
                seq = sequences[i][0] + sequences[i][1]
                ids[row, :len(seq)] = torch.tensor(seq)
            # the logits at position p predict token p + 1: the target's tokens, from len(context) on
            spans = [range(len(sequences[i][0]) - 1, len(sequences[i][0]) - 1 + len(sequences[i][1]))
                     for i in batch]
            if keep_logits:  # the output layer only where a target token is predicted (a fifth of the work)
                where = sorted({p for span in spans for p in span})
                column = {p: c for c, p in enumerate(where)}
                logits = model(input_ids=ids.to(device), use_cache=False,
                               logits_to_keep=torch.tensor(where, device=device)).logits
            else:
                column = {p: p for span in spans for p in span}
                logits = model(input_ids=ids.to(device), use_cache=False).logits
            predicted = logits.argmax(-1).cpu()
            for row, (i, span) in enumerate(zip(batch, spans)):
                correct[i] = [int(predicted[row, column[p]]) for p in span] == sequences[i][1]
    finally:
        model.train(was_training)
    return correct


def lastword_accuracy(model, tokenizer, items: list[dict] | None = None, batch_size: int = 8) -> float:
    """The fraction of last-word passages (default: the committed Brown ones) whose final word
    ``model`` predicts greedily, all of its tokens right (:func:`lastword_correct`).

    What it measures: whether the model can carry a word from the passage to where it is needed —
    every target already occurs in its passage (a name, a topic noun), as in LAMBADA, where the
    last word is predictable only from the wider context. A 135M model gets a fair share right
    and pruning visibly lowers it, so it is a task-accuracy check that needs no network.

    Its limits: 164 passages (one item is 0.6 points; the binomial standard error near 40 % is
    about 4 points, so differences of a few points are noise); Brown text, 1961 American English,
    the same genres the course calibrates on (other documents); the selection rule is mechanical
    (the target occurs in the passage), not LAMBADA's human filter, so some items are guessable
    from the sentence alone and a few are not predictable at all; exact match of the tokens, so a
    right word in another form ("jurors" for "jury") counts as wrong. It is not one of the papers'
    benchmarks: compare methods with it, not with published numbers.
    """
    correct = lastword_correct(model, tokenizer, items, batch_size)
    return sum(correct) / len(correct)


def _flat(ids):
    """Token ids as a flat list (a tokenizer may return ``[[...]]`` or a tensor)."""
    if isinstance(ids, torch.Tensor):
        return ids.reshape(-1).tolist()
    return ids[0] if ids and isinstance(ids[0], (list, tuple)) else ids


# --------------------------------------------------------------------------------------------
# Online: lm-eval's zero-shot tasks
# --------------------------------------------------------------------------------------------
#: The zero-shot tasks the Wanda and SparseGPT papers report, by their lm-eval names.
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")

_TASK_LINE = re.compile(r"^task:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


def _local_tasks(task_dir: Path) -> set[str]:
    """The task names that the YAML files under ``task_dir`` define."""
    return {m for path in task_dir.rglob("*.yaml") for m in _TASK_LINE.findall(path.read_text(encoding="utf-8"))}


def evaluate_tasks(model, tokenizer, tasks=PAPER_TASKS, *, num_fewshot: int = 0, limit: int | None = None,
                   batch_size: int = 8, task_dir=None, seed: int = 0) -> dict[str, dict[str, float]]:
    """Accuracy of ``model`` (already loaded, e.g. pruned in place) on lm-eval tasks:
    ``{task: {"acc": ..., "acc_stderr": ..., "acc_norm": ..., "acc_norm_stderr": ...}}`` (the
    metrics each task defines, as fractions).

    The harness does the work (EleutherAI lm-evaluation-harness, ``pip install lm-eval``): its
    ``HFLM`` wraps ``model`` and ``tokenizer`` as they are, and ``simple_evaluate`` scores each
    multiple-choice task by the log-likelihood of every answer, zero-shot by default, as in the
    Wanda and SparseGPT papers (:data:`PAPER_TASKS`).

    tasks:    lm-eval task names (default :data:`PAPER_TASKS`).
    limit:    score only the first ``limit`` examples of each task (a quick look; the papers use all).
    task_dir: a directory of extra task YAML files (lm-eval's ``include_path``); a task defined there
              with local data files runs offline.
    Needs the network for tasks whose data is on the Hugging Face Hub: offline, it raises
    ``ValueError`` at once, before anything is run. Imports lm-eval only when called.
    """
    check_task_names(tasks)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    check_int(num_fewshot, "num_fewshot", 0)
    if limit is not None:
        check_int(limit, "limit", 1)
    check_batch_size(batch_size)
    local = set()
    if task_dir is not None:
        task_dir = Path(task_dir)
        if not task_dir.is_dir():
            raise ValueError(f"task_dir {str(task_dir)!r} is not a directory of lm-eval task YAML files")
        local = _local_tasks(task_dir)
    remote = [t for t in tasks if t not in local]
    if remote and not hub_reachable():
        raise ValueError(f"the lm-eval tasks {remote} read their datasets from the Hugging Face Hub, which cannot "
                         f"be reached (offline). Run this with a network (e.g. on Colab); offline, "
                         f"sparselib.lastword_accuracy(model, tokenizer) measures a task accuracy from committed text")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(f"evaluate_tasks needs lm-eval (EleutherAI lm-evaluation-harness), which is not "
                          f"installed ({err}): pip install 'sparselib[tasks]' (or 'lm-eval>=0.4.13,<0.5')") from None

    manager = TaskManager(include_path=str(task_dir) if task_dir is not None else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm-eval has no task {unknown}; e.g. {', '.join(PAPER_TASKS)}")
    was_training = model.training
    try:  # HFLM puts the model in eval mode; it is given back as it came
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model_device(model)))
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=1000,
                                      log_samples=False)
    finally:
        model.train(was_training)
    results = {}
    for task in tasks:
        metrics = out["results"][task]
        results[task] = {name.split(",")[0]: float(value) for name, value in metrics.items()
                         if "," in name and isinstance(value, (int, float))}
    return results
