"""Functional attention operators of DynaST and StyA2K.

* :func:`dynamic_attention`: dense attention with DynaST's learned pruning gate (coarsest scale).
* :func:`inter_scale_sparse_attention`, :func:`inner_scale_sparse_attention`: the sparse cascade.
* :func:`all_to_key_attention` (:func:`distributed_attention`, :func:`progressive_attention`,
  :func:`parameter_free_all_to_key`): StyA2K's all-to-key attention.

All operators are differentiable, batched, keep the input dtype, and process queries in chunks whose size
the caller can bound (``query_chunk_size`` or ``memory_budget``).
"""
from .all_to_key import (AllToKeyResult, all_to_key_attention, distributed_attention,
                         parameter_free_all_to_key, progressive_attention)
from .dense import DenseAttentionResult, dynamic_attention
from .gate import hard_gate
from .sparse import (SparseAttentionResult, inner_scale_candidates, inner_scale_sparse_attention,
                     inter_scale_candidates, inter_scale_sparse_attention, sparse_attention)

__all__ = [
    "DenseAttentionResult", "SparseAttentionResult", "dynamic_attention", "hard_gate",
    "inter_scale_sparse_attention", "inner_scale_sparse_attention", "sparse_attention",
    "inter_scale_candidates", "inner_scale_candidates", "AllToKeyResult", "all_to_key_attention",
    "distributed_attention", "progressive_attention", "parameter_free_all_to_key",
]
