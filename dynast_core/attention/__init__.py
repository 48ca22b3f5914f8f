"""Functional attention operators of DynaST and StyA2K.

* :func:`dynamic_attention`: dense attention with DynaST's learned pruning gate (coarsest scale).
* :func:`inter_scale_sparse_attention`, :func:`inner_scale_sparse_attention`: the sparse cascade.
* all-to-key attention of StyA2K lives in :mod:`dynast_core.attention.all_to_key`.

All operators are differentiable, batched, keep the input dtype, and process queries in chunks whose size
the caller can bound (``query_chunk_size`` or ``memory_budget``).
"""
from .dense import DenseAttentionResult, dynamic_attention
from .gate import hard_gate
from .sparse import (SparseAttentionResult, inner_scale_candidates, inner_scale_sparse_attention,
                     inter_scale_candidates, inter_scale_sparse_attention, sparse_attention)

__all__ = [
    "DenseAttentionResult", "SparseAttentionResult", "dynamic_attention", "hard_gate",
    "inter_scale_sparse_attention", "inner_scale_sparse_attention", "sparse_attention",
    "inter_scale_candidates", "inner_scale_candidates",
]
