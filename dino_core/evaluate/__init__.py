"""Evaluation of DINO backbones: k-NN, linear probe, collapse statistics, attention masks.

Protocols follow the official ``eval_knn.py``, ``eval_linear.py`` and ``visualize_attention.py``
(see each module's docstring for the equations and the documented deviations).
"""
from .attention import attention_jaccard, cls_attention, jaccard, mass_mask, save_attention_overlays, upsample_mask
from .checkpoint import backbone_state_dict, evaluate_checkpoint, infer_arch, load_backbone, read_checkpoint
from .collapse import (collapse_metrics, collapse_verdict, effective_rank, entropy, feature_metrics, feature_std,
                       head_metrics, kl_divergence, teacher_probs)
from .features import backbone_features, extract_features, knn_and_linear_features, split_batch
from .knn import knn_chunk_size, knn_classify, knn_memory_bytes, knn_predict, rank_classes
from .linear import sweep_linear, train_linear
from .protocol import EvalSets, eval_sets, evaluate_backbone

__all__ = [
    "EvalSets", "eval_sets", "evaluate_backbone", "attention_jaccard", "backbone_features", "backbone_state_dict", "cls_attention", "collapse_metrics",
    "collapse_verdict", "effective_rank", "entropy", "evaluate_checkpoint", "extract_features", "feature_metrics",
    "feature_std", "head_metrics", "infer_arch", "jaccard", "kl_divergence", "knn_and_linear_features",
    "knn_chunk_size", "knn_classify", "knn_memory_bytes", "knn_predict", "load_backbone", "mass_mask",
    "rank_classes", "read_checkpoint", "save_attention_overlays", "split_batch", "sweep_linear", "teacher_probs",
    "train_linear", "upsample_mask",
]
