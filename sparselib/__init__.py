"""sparselib: LLM weight sparsification on real Hugging Face causal LMs, on CPU or GPU.

    model, tokenizer = sparselib.load_model()                 # SmolLM2-135M-Instruct, offline
    calib = sparselib.calibration_data(tokenizer)             # [32, 256] Brown windows
    report = sparselib.prune(model, "wanda", "2:4", calib)    # or "magnitude", "sparsegpt"; 0.5, "4:8"
    sparselib.perplexity(model, sparselib.test_data(tokenizer, max_tokens=sparselib.EVAL_TOKENS))
"""
from .calibration import LinearStats, capture_inputs, layerwise, module_inputs
from .data import calibration_data, load_text, test_data
from . import exercises
from .eval import perplexity
from .masks import (Pattern, is_nm, mask_for, nm_mask, nm_violations, parse_sparsity, sparsity,
                    structured_mask, unstructured_mask)
from .models import (ADAPTERS, OFFLINE_MODEL, adapter_for, decoder_layers, layer_linears, load_model,
                     weight_of)
from .prune import METHODS, PruneReport, model_sparsity, prune
from .scores import input_norms, magnitude_scores, wanda_scores
from .sparsegpt import sparsegpt_prune, sparsegpt_prune_shared

__version__ = "0.1.0"

#: The course's standard evaluation slice: the first 16,384 tokens of the Brown test split
#: (64 windows of 256), so a CPU evaluation takes about 40 s. Benchmarks and chapters all use it.
EVAL_TOKENS = 16384
#: The course's standard evaluation window length.
EVAL_SEQLEN = 256


from .quiz import load_quiz, show_quiz  # noqa: E402
from .format24 import Compressed24, compress_24, decompress_24, storage_bytes  # noqa: E402
from .semistructured import (SparseKernelsUnavailable, benchmark_linear, can_use_sparse_kernels,  # noqa: E402
                             to_semi_structured)
from .results import (check_agreement, load_result, missing, provenance, recorded, save_result,  # noqa: E402
                      sweep_point)
from .slicegpt import SliceReport, load_sliced, save_sliced, slice_model  # noqa: E402
from .viz import (outlier_channels, row_errors, seed_example, visualizer_data, visualizer_html,  # noqa: E402
                  visualizer_widget)
