"""Checkers for the chapters' exercises: call one on *your* answer and read what it says.

    from sparselib import exercises
    exercises.check_magnitude_mask(magnitude_mask)     # your function
    exercises.check_meta_byte((0, 1), (1, 3))          # your numbers

Each checker recomputes the answer with ``sparselib`` itself (never a stored number), runs your code on
ordinary and awkward cases (ties, all-zero rows, ...) and returns a :class:`Feedback`: passed or not,
and one note per finding that says *what* differs and the usual reason. Instructors can grade with
``feedback.passed``; :data:`CHECKERS` maps each exercise label of the book to its checker.

One module per chapter (``ch02_magnitude`` holds chapter 2's checkers); each checker registers itself
under its exercise label with ``@checker("ex-...")`` (see :mod:`.registry`).
"""
from .registry import CHECKERS, Feedback, checker
from .ch00_how_to_use import check_embedding_share, check_seqlen_effect
from .ch01_landscape import check_breakeven, check_group_code_saving, check_nm_saving
from .ch02_magnitude import check_magnitude_mask, check_magnitude_types
from .ch03_wanda import check_outlier_fractions, check_wanda_24
from .ch04_visualizer import check_outlier_threshold, check_row_errors
from .ch05_sparsegpt import check_blocksize_claim, check_damping_errors, check_sparsegpt_columns
from .ch06_slicegpt import check_fold, check_slice_head, check_sliced_params
from .ch07_beyond_50 import (check_layer_allocation, check_masked_merge, check_masked_step,
                             check_owl_sparsities)
from .ch08_sparse_tensor_cores import check_meta_byte, check_roofline
from .ch09_smaller import check_bits_24_int4, check_rtn_groups
from .ch10_comparison import check_stored_size_24, check_within_budget
from .ch11_prune_your_own import check_sliced_checkpoint, check_sweep_table

__all__ = ["CHECKERS", "Feedback", "checker", *sorted(f.__name__ for f in CHECKERS.values())]
