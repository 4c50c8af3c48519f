"""Datasets: shapes generator, folder reader, Fashion-MNIST IDX, registry errors (tiny and fast)."""
from __future__ import annotations

import gzip
import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino_core.data import fashion_mnist, registry, shapes
from dino_core.data.folder import CorruptImageError, FolderDataset
from pipelines import prepare as prepare_stage

SMALL = {"num_train": 16, "num_val": 8, "image_size": 32, "seed": 0}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "s32"
    shapes.prepare_shapes(root, **SMALL)
    return root


def test_shapes_deterministic_for_a_seed_and_different_across_seeds(tmp_path, shapes_root):
    again = shapes.prepare_shapes(tmp_path / "again", **SMALL)
    first = shapes.read_index(shapes_root)
    assert again["sha256"] == first["sha256"] == shapes.content_hash(shapes_root, shapes.SPLIT_IDS)
    assert shapes.content_hash(tmp_path / "again", shapes.SPLIT_IDS) == first["sha256"]
    assert shapes.prepare_shapes(tmp_path / "parallel", **SMALL, workers=2)["sha256"] == first["sha256"]
    other = shapes.prepare_shapes(tmp_path / "other", **{**SMALL, "seed": 1})
    assert other["sha256"] != first["sha256"]
    assert (tmp_path / "again" / "index.json").read_bytes() == (shapes_root / "index.json").read_bytes()


def test_shapes_layout_and_every_class_in_both_splits(shapes_root):
    index = shapes.read_index(shapes_root)
    assert index["classes"] == list(shapes.CLASSES) == sorted(shapes.CLASSES) and len(shapes.CLASSES) >= 6
    for split, total in (("train", 16), ("val", 8)):
        counts = index["counts"][split]
        assert set(counts) == set(shapes.CLASSES) and min(counts.values()) >= 1 and sum(counts.values()) == total
        assert [len(list((shapes_root / split / k).rglob("*.png"))) for k in ("images", "masks")] == [total] * 2
        dataset = registry.build_dataset("shapes", str(shapes_root), split)
        assert set(dataset.targets) == set(range(len(shapes.CLASSES)))
        for i in (0, 3, total - 1):  # the folder label is the generator's label of that file
            path, label = dataset.samples[i]
            assert label == int(path.stem) % len(shapes.CLASSES) and path.parent.name == shapes.CLASSES[label]
        image, label = dataset[3]
        assert image.mode == "RGB" and image.size == (32, 32) and label == dataset.targets[3]


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_masks_cover_the_generated_geometry(size):
    for idx in range(len(shapes.CLASSES)):
        image, mask, geometry = shapes.render(5, "val", idx, size)
        assert image.size == mask.size == (size, size)
        px = np.asarray(image)   # generator 3: grey, no hue for two crops to share
        assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
        m = np.asarray(mask) >= 128
        cx, cy = int(geometry.cx), int(geometry.cy)
        if shapes.CLASSES[geometry.label] == "ring":  # the centre is the hole, the band is object
            assert not m[cy, cx]
            r, a = 0.775 * geometry.radius, geometry.angle
            assert m[int(geometry.cy + r * np.sin(a)), int(geometry.cx + r * np.cos(a))]
        else:
            assert m[cy, cx]
        assert abs(m.sum() - geometry.area()) <= 0.2 * geometry.area()


def test_shapes_reuse_mismatch_overwrite_and_atomic_failure(tmp_path, monkeypatch):
    root = tmp_path / "s"
    index = shapes.prepare_shapes(root, **SMALL)
    stamp = (root / "index.json").stat().st_mtime_ns
    assert shapes.prepare_shapes(root, **SMALL, verify=True) == index
    assert (root / "index.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="overwrite"):
        shapes.prepare_shapes(root, **{**SMALL, "seed": 3})
    assert shapes.prepare_shapes(root, **{**SMALL, "seed": 3}, overwrite=True)["params"]["seed"] == 3
    with pytest.raises(FileExistsError, match="no index.json"):
        (tmp_path / "foreign").mkdir()
        (tmp_path / "foreign" / "x").write_text("x")
        shapes.prepare_shapes(tmp_path / "foreign", **SMALL)
    monkeypatch.setattr(shapes, "render", lambda *args: 1 / 0)  # fails after the temp dir exists
    with pytest.raises(ZeroDivisionError):
        shapes.prepare_shapes(tmp_path / "t", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "s"]  # no partial root, no temp dir


def test_shapes_with_masks_through_the_registry(shapes_root):
    transform = registry.eval_transform("shapes", 32)
    dataset = registry.build_dataset("shapes", str(shapes_root), "val", transform, with_masks=True)
    image, label, mask = dataset[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.bool
    assert label == 2 and 0 < mask.sum() < 32 * 32
    for idx in (0, 2, 7):  # mask files (native size) equal the generator's masks of the same image
        native = registry.build_dataset("shapes", str(shapes_root), "val", with_masks=True)[idx][2]
        assert torch.equal(native, torch.from_numpy(np.asarray(shapes.render(0, "val", idx, 32)[1]) >= 128))
    assert registry.build_dataset("shapes", str(shapes_root), "val", transform, with_masks=True,
                                  mask_size=16)[2][2].shape == (16, 16)


def _folder(tmp_path: Path, shapes_root: Path) -> Path:
    root = tmp_path / "folder"
    for name, idxs in (("cat", (0, 1)), ("dog", (2, 3, 4))):
        (root / name).mkdir(parents=True)
        for idx in idxs:
            (src,) = (shapes_root / "train" / "images").glob(f"*/{idx:05d}.png")
            shutil.copy(src, root / name / f"{idx}.png")
    return root


def test_folder_loads_generated_pngs_with_the_right_labels(tmp_path, shapes_root):
    dataset = FolderDataset(_folder(tmp_path, shapes_root))
    assert dataset.classes == ["cat", "dog"] and dataset.targets == [0, 0, 1, 1, 1]
    assert [(x.mode, x.size, y) for x, y in [dataset[4]]] == [("RGB", (32, 32), 1)]


def test_folder_corrupt_png_is_reported_and_skipped(tmp_path, shapes_root, caplog):
    root = _folder(tmp_path, shapes_root)
    (root / "dog" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(CorruptImageError, match=f"cannot read image {root / 'dog' / 'bad.png'}"):
        FolderDataset(root)
    good = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptImageError, match="truncated.png"):
        FolderDataset(root)
    with caplog.at_level(logging.WARNING):
        dataset = FolderDataset(root, skip_corrupt=True)
    assert len(dataset) == 5 and dataset.num_skipped == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2" in warnings[0]
    [path.write_bytes(b"garbage") for path in root.rglob("[0-9]*.png")]
    with pytest.raises(ValueError, match="no readable images"):  # never a silent empty dataset
        FolderDataset(root, skip_corrupt=True)


def test_folder_missing_root_empty_class_and_mask_mismatch(tmp_path, shapes_root):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        FolderDataset(tmp_path / "nowhere")
    root = _folder(tmp_path, shapes_root)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=f"empty class folder: {root / 'empty'}"):
        FolderDataset(root)
    (root / "empty").rmdir()
    masks = tmp_path / "masks"
    for path in root.rglob("*.png"):
        (masks / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32)).save(masks / path.parent.name / path.name)
    assert FolderDataset(root, masks_root=masks)[0][2].shape == (32, 32)
    Image.new("L", (30, 32)).save(masks / "dog" / "3.png")
    with pytest.raises(ValueError, match=r"30x32 of .*3\.png differs from image size 32x32 of .*3\.png"):
        FolderDataset(root, masks_root=masks)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress,layout", [(True, ""), (False, "FashionMNIST/raw")])
def test_fashion_mnist_reads_tiny_idx_files(tmp_path, compress, layout):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), np.array([3, 0, 9, 1, 3])
    for image_file, label_file in fashion_mnist.FILES.values():
        for name, array in ((image_file, images), (label_file, labels)):
            _write_idx(tmp_path / layout / (name + (".gz" if compress else "")), array, compress)
    dataset = registry.build_dataset("fashion_mnist", str(tmp_path), "test")
    assert len(dataset) == 5 and dataset.targets == [3, 0, 9, 1, 3] and len(dataset.classes) == 10
    image, label = dataset[2]
    assert image.mode == "RGB" and image.size == (28, 28) and label == 9
    assert np.array_equal(np.asarray(image), np.repeat(images[2, :, :, None], 3, axis=2))
    tensor, _ = registry.build_dataset("fashion_mnist", str(tmp_path), "train", registry.eval_transform(
        "fashion_mnist", 28))[0]
    assert tensor.shape == (3, 28, 28)
    # the silhouette mask: pixel > 0 (objects lie on an exact-zero background), through the eval resize + crop
    images[1, :4] = 0
    _write_idx(tmp_path / layout / (fashion_mnist.FILES["test"][0] + (".gz" if compress else "")), images, compress)
    native = registry.build_dataset("fashion_mnist", str(tmp_path), "test", with_masks=True)
    _, label, mask = native[1]
    assert label == 0 and mask.dtype == torch.bool and torch.equal(mask, torch.from_numpy(images[1] > 0))
    _, _, mask32 = registry.build_dataset("fashion_mnist", str(tmp_path), "test", registry.eval_transform(
        "fashion_mnist", 32), with_masks=True)[1]
    assert mask32.shape == (32, 32) and not mask32[0].any() and mask32.float().mean() > 0.5


def test_fashion_mnist_bad_and_missing_files(tmp_path):
    for content, match in ((b"\x01\x02\x03\x04", "not an IDX file"),  # bad magic; then 4 of 5 bytes:
                           (struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"\0" * 4, r"dims \(5,\) \(13 bytes\)")):
        (tmp_path / "idx").write_bytes(content)
        with pytest.raises(ValueError, match=match):
            fashion_mnist.read_idx(tmp_path / "idx")
    with pytest.raises(FileNotFoundError) as error:
        registry.build_dataset("fashion_mnist", str(tmp_path / "none"), "train")
    assert all(text in str(error.value) for text in (str(tmp_path / "none"), "download=True",
                                                     "apt-get install dataset-fashion-mnist"))


@pytest.mark.skipif(not fashion_mnist.DEBIAN_ROOT.is_dir(),
                    reason=f"{fashion_mnist.DEBIAN_ROOT} absent: apt-get install dataset-fashion-mnist")
def test_fashion_mnist_debian_package_files():
    """train = train images 0-49,999, val = 50,000-59,999 (the holdout), test = the 10,000 test images."""
    train = registry.build_dataset("fashion_mnist", str(fashion_mnist.DEBIAN_ROOT), "train")
    val = registry.build_dataset("fashion_mnist", "auto", "val")
    test = registry.build_dataset("fashion_mnist", "auto", "test")
    assert (len(train), len(val), len(test)) == (50_000, 10_000, 10_000)
    files = fashion_mnist.read_idx(fashion_mnist.find_file(fashion_mnist.DEBIAN_ROOT, fashion_mnist.TRAIN_FILES[0]))
    assert np.array_equal(val.images, files[50_000:]) and np.array_equal(train.images, files[:50_000])
    assert set(train.targets) == set(val.targets) == set(test.targets) == set(range(10))
    assert train[0][0].size == (28, 28) and train[0][0].mode == "RGB"


def test_report_split_skips_the_images_that_chose_the_recipe():
    """test_skip 1000 + num_test 9000 is the class-balanced complement of the first 1,000: together
    they are the whole test split, without overlap; the holdout never meets the pre-training images."""
    first = registry.build_dataset("fashion_mnist", "auto", "test", limit=1000)
    rest = registry.build_dataset("fashion_mnist", "auto", "test", limit=9000, skip=1000)
    assert set(first.indices).isdisjoint(rest.indices) and len(set(first.indices) | set(rest.indices)) == 10_000
    assert sorted(rest.targets.count(c) for c in range(10)) == [900] * 10
    with pytest.raises(ValueError, match="fewer than skip 1000 \\+ limit 9001"):
        registry.build_dataset("fashion_mnist", "auto", "test", limit=9001, skip=1000)


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("stl10", "stl10_binary"), ("imagefolder", "train")])
def test_torchvision_datasets_missing_root_errors(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as error:
        registry.build_dataset(name, str(tmp_path), "train")
    assert str(tmp_path / folder) in str(error.value) and "manually" in str(error.value)
    assert name == "imagefolder" or "download=True" in str(error.value)


def test_registry_names_stats_transforms_and_limit(shapes_root):
    with pytest.raises(ValueError, match="allowed: cifar10, cifar100, fashion_mnist, imagefolder, shapes, stl10"):
        registry.build_dataset("mnist", "x", "train")
    with pytest.raises(ValueError, match="cifar10 has no masks"):
        registry.build_dataset("cifar10", "x", "val", with_masks=True)
    with pytest.raises(ValueError, match="unknown split"):
        registry.build_dataset("shapes", str(shapes_root), "test")
    assert set(registry.NORMALIZATION) == set(registry.DATASETS)
    assert registry.NORMALIZATION["stl10"] == registry.NORMALIZATION["imagefolder"] == registry.IMAGENET_STATS
    assert registry.num_classes("cifar100") == 100 and registry.num_classes("shapes") == len(shapes.CLASSES)
    resize = registry.eval_transform("cifar10", 32).transforms[0]
    assert resize.size == 36 and resize.interpolation.value == "bicubic"
    assert registry.eval_transform("imagefolder", 224).transforms[0].size == 256
    limited = registry.build_dataset("shapes", str(shapes_root), "train", limit=10)
    assert len(limited) == 10 and len(set(limited.targets)) == 8 and limited.classes == list(shapes.CLASSES)


def test_prepare_stage(tmp_path):
    summary = prepare_stage.main(["--dataset", "shapes", "--root", str(tmp_path / "p"), "--num-train", "8",
                                  "--num-val", "8", "--image-size", "64", "--seed", "2"])
    assert summary["params"]["image_size"] == 64
    assert summary["sha256"] == shapes.content_hash(tmp_path / "p", shapes.SPLIT_IDS)
    assert Image.open(next((tmp_path / "p" / "val" / "images").rglob("*.png"))).size == (64, 64)
    assert prepare_stage.prepare("shapes", str(tmp_path / "p"), num_train=8, num_val=8, image_size=64,
                                 seed=2)["sha256"] == summary["sha256"]
    with pytest.raises(ValueError, match="only apply to shapes"):
        prepare_stage.prepare("cifar10", str(tmp_path), num_train=3)


# ----- bad data found before training (dino_core/data/check.py) -----------------------------------


def _tiny_shapes_cfg(root: Path, **data):
    from helpers import tiny_config
    return tiny_config(data={"dataset": "shapes", "root": str(root), "image_size": 16, "num_train": 0, "num_val": 0,
                             "download": False, **data}, optim={"batch_size": 8})


def _broken_copy(tmp_path: Path, shapes_root: Path) -> tuple[Path, list[Path]]:
    """A copy of the shapes set with one corrupt image in train, one truncated in val."""
    root = tmp_path / "broken"
    shutil.copytree(shapes_root, root)
    bad = [sorted((root / "train" / "images").glob("*/*.png"))[0], sorted((root / "val" / "images").glob("*/*.png"))[-1]]
    bad[0].write_bytes(b"not a png")
    bad[1].write_bytes(bad[1].read_bytes()[:40])   # a valid header, a cut body: only decoding finds it
    return root, bad


def test_bad_data_is_reported_once_fully_before_training(tmp_path, shapes_root):
    from dino_core.data.check import DataError, check_data
    root, bad = _broken_copy(tmp_path, shapes_root)
    with pytest.raises(DataError) as err:
        check_data(_tiny_shapes_cfg(root))
    msg = str(err.value)
    assert "\n" not in msg and "2 unreadable image(s)" in msg and "data.skip_corrupt: true" in msg
    assert all(str(p) in msg for p in bad)
    empty = root / "train" / "images" / "circle"
    shutil.rmtree(empty)
    empty.mkdir()
    with pytest.raises(DataError) as err:   # an empty class is an error even with the flag; corrupt files listed too
        check_data(_tiny_shapes_cfg(root, skip_corrupt=True))
    msg = str(err.value)
    assert f"1 empty class folder(s): {empty}" in msg and all(str(p) in msg for p in bad)


def test_skip_corrupt_skips_the_same_files_in_training_and_evaluation(tmp_path, shapes_root, caplog):
    from dino_core.data.check import check_data
    from pipelines.cell import eval_loaders, pretrain_dataset
    root, bad = _broken_copy(tmp_path, shapes_root)
    cfg = _tiny_shapes_cfg(root, skip_corrupt=True)
    with caplog.at_level(logging.WARNING):
        check_data(cfg)
    assert any(str(bad[0]) in r.getMessage() and str(bad[1]) in r.getMessage() for r in caplog.records)
    train_eval, val_eval = (loader.dataset for loader in eval_loaders(cfg, with_masks=True))
    paths = lambda ds: {p for p, _ in ds.samples}   # noqa: E731
    assert paths(pretrain_dataset(cfg)) == paths(train_eval)
    assert bad[0] not in paths(train_eval) and bad[1] not in paths(val_eval)
    assert len(val_eval) == SMALL["num_val"] - 1 and len(train_eval) == SMALL["num_train"] - 1
    assert all(torch.is_tensor(val_eval[i][0]) for i in range(len(val_eval)))   # every kept file decodes


def test_batch_larger_than_the_data_and_missing_root_are_reported(tmp_path, shapes_root):
    from dino_core.data.check import DataError, check_data
    with pytest.raises(DataError, match=r"optim.batch_size: 8 per process x 3 process\(es\) is more than the 16 "
                                        r"pre-training images .*allowed: batch_size <= 5"):
        check_data(_tiny_shapes_cfg(shapes_root), world_size=3)
    with pytest.raises(DataError, match=f"data.root {tmp_path / 'none'}: shapes: .*index.json not found"):
        check_data(_tiny_shapes_cfg(tmp_path / "none"))
