"""Datasets: the procedural `shapes` set with masks, Fashion-MNIST read offline, CIFAR-10/100,
STL-10 and ImageNet-layout folders through torchvision, behind one registry."""
from dino_core.data.fashion_mnist import FashionMNIST, read_idx
from dino_core.data.folder import CorruptImageError, FolderDataset
from dino_core.data.registry import (DATASETS, NORMALIZATION, build_dataset, eval_transform,
                                     mask_transform, num_classes)
from dino_core.data.shapes import prepare_shapes

__all__ = ["DATASETS", "NORMALIZATION", "CorruptImageError", "FashionMNIST", "FolderDataset",
           "build_dataset", "eval_transform", "mask_transform", "num_classes", "prepare_shapes", "read_idx"]
