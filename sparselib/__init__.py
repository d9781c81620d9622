"""sparselib: LLM weight sparsification on real Hugging Face causal LMs, on CPU or GPU.

    model, tokenizer = sparselib.load_model()                 # SmolLM2-135M-Instruct, offline
    calib = sparselib.calibration_data(tokenizer)             # [32, 256] Brown windows
    report = sparselib.prune(model, "wanda", "2:4", calib)    # or "magnitude", "sparsegpt"; 0.5, "4:8"
    sparselib.perplexity(model, sparselib.test_data(tokenizer, max_tokens=sparselib.EVAL_TOKENS))

The core (this namespace) never imports the teaching support in ``sparselib.course`` (exercise
checkers, quizzes, the visualizer, recorded results). Its names are still reachable from here
(``sparselib.show_quiz``, ``sparselib.exercises``), imported on first use.
"""
from .interrupts import guard_command_start as _guard_command_start

_guard_command_start()  # in the `sparselib` process only: Ctrl-C exits cleanly while torch is imported

import importlib

from .calibration import LinearStats, capture_inputs, layerwise, module_inputs
from .checkpoint24 import load_24, save_24
from .data import calibration_data, load_text, test_data
from .export import save_compressed
from .eval import EVAL_SEQLEN, EVAL_TOKENS, PROMPT, forward_times, generate_text, perplexity
from .format24 import Compressed24, compress_24, decompress_24, nm_storage_bytes, storage_bytes
from .masks import (Pattern, is_nm, mask_for, nm_mask, nm_violations, parse_sparsity, sparsity,
                    structured_mask, unstructured_mask)
from .models import (ADAPTERS, OFFLINE_MODEL, adapter_for, decoder_layers, layer_linears, load_model,
                     weight_of)
from .owl import layer_outlier_ratios, owl_layer_sparsity, owl_sparsities
from .prune import METHODS, PruneReport, model_sparsity, prune
from .quantize import QuantReport, QuantSpec, QuantState, quant_state, quantize
from .recovery import RecoveryReport, merge_lora, recover
from .scores import input_norms, magnitude_scores, relative_error, wanda_scores
from .semistructured import (FastPathUnavailable, SparseKernelsUnavailable, SparseLinear24,
                             benchmark_linear, can_use_sparse_kernels, fast_inference, to_semi_structured)
from .slicegpt import SliceReport, slice_model
from .sliced_checkpoint import load_sliced, register_sliced, save_sliced
from .sliced_checkpoint import register_when_transformers_loads as _register_when_transformers_loads
from .sparsegpt import sparsegpt_prune, sparsegpt_prune_shared
from .storage import SCHEMES, Storage, matrix_bytes, model_bytes
from .tasks import PAPER_TASKS, evaluate_tasks, lastword_accuracy, lastword_correct, lastword_items
from .version import __version__

# AutoModelForCausalLM.from_pretrained loads a SliceGPT checkpoint after `import sparselib`: the sliced
# types are registered with transformers as soon as it is imported (this import does not import it).
_register_when_transformers_loads()

# Teaching support, imported lazily: name -> module of sparselib.course that defines it.
_COURSE = {
    "exercises": "exercises",
    "load_quiz": "quiz", "show_quiz": "quiz",
    "check_agreement": "results", "gpu_runs": "results", "load_result": "results", "missing": "results",
    "provenance": "results", "recorded": "results", "save_result": "results", "sweep_point": "results",
    "compare": "results", "over_seeds": "results", "seed_point": "results", "spread": "results",
    "outlier_channels": "viz", "row_errors": "viz", "seed_example": "viz", "toy_layer": "viz",
    "visualizer_data": "viz", "visualizer_html": "viz", "visualizer_widget": "viz",
}


def __getattr__(name):
    if name in _COURSE:
        module = importlib.import_module(f".course.{_COURSE[name]}", __name__)
        return module if name == _COURSE[name] else getattr(module, name)
    if name in ("course", "results", "viz", "quiz"):
        return importlib.import_module(f".course.{name}" if name != "course" else ".course", __name__)
    raise AttributeError(f"module 'sparselib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_COURSE))
