"""Every sweep preset's training path, on small generated data in the preset's real on-disk
format: its dataset loader and transforms, its model at a tiny width, its optimizer and LR
schedule, one epoch of the same functions the Ray Train loop runs (``ce_ray.worker.loop``), and
the test error over the whole test set. No Ray: the loop's Ray parts are covered by
experiments/test_sweep.py."""

import io
import os
import pickle
import random
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ce_ray.presets import DATASET_EXAMPLES, SWEEP_PRESETS
from ce_ray.worker import data
from ce_ray.worker.loop import evaluate, make_optimizer, train_epoch

# A tiny (m, n) for each family: small enough for a CPU, still an ensemble.
TINY_POINT = {
    "fc": (2, 3),
    "cifar-resnext29": (2, 2),
    "imagenet-resnext50": (2, 1),
    "imagenet-resnext101": (2, 1),
}
CLASSES_IN_DATA = 3  # labels drawn from the first few classes of each dataset


def write_mnist(root, train=24, test=12):
    """MNIST's four IDX files (uncompressed), as torchvision reads them from MNIST/raw/."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, CLASSES_IN_DATA, count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">iiii", 2051, count, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">ii", 2049, count) + labels.tobytes()
        )


def write_downsampled_imagenet(root, name, side, per_batch=3):
    """The published pickles: train_data_batch_1..10 (with the mean image) and val_data."""
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)

    def batch(count, with_mean):
        content = {
            "data": rng.integers(0, 256, (count, 3 * side * side), dtype=np.uint8),
            "labels": list(rng.integers(1, CLASSES_IN_DATA + 1, count)),  # 1-based
        }
        if with_mean:
            content["mean"] = np.full(3 * side * side, 127.5, dtype=np.float32)
        return content

    for index in range(1, data.DOWNSAMPLED_TRAIN_BATCHES + 1):
        with open(folder / f"train_data_batch_{index}", "wb") as stream:
            pickle.dump(batch(per_batch, with_mean=True), stream)
    with open(folder / "val_data", "wb") as stream:
        pickle.dump(batch(2 * per_batch, with_mean=False), stream)


def write_image_folder(root, size=(60, 80), per_class=2):
    """imagenet/{train,val}/<class>/*.JPEG with images of uneven sizes (crops make 224)."""
    rng = np.random.default_rng(2)
    for split, count in (("train", per_class), ("val", max(1, per_class // 2))):
        for label in range(CLASSES_IN_DATA):
            folder = root / "imagenet" / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for index in range(count):
                shape = (size[0] + 7 * index, size[1], 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"image_{index}.JPEG")


class PILImages(Dataset):
    """CIFAR-shaped PIL images with labels, read through a transform (torchvision's CIFAR
    loader checks the MD5 of the real files, so generated batches cannot go through it)."""

    def __init__(self, count, transform, seed):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        self.labels = rng.integers(0, CLASSES_IN_DATA, count)
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def datasets_for(preset, root):
    if preset.dataset in ("cifar10", "cifar100"):
        train_transform, test_transform = data.cifar_transforms()
        return PILImages(16, train_transform, 3), PILImages(8, test_transform, 4)
    if preset.dataset == "mnist":
        write_mnist(root)
    elif preset.dataset in data.DOWNSAMPLED_SIDES:
        write_downsampled_imagenet(root, preset.dataset, data.DOWNSAMPLED_SIDES[preset.dataset])
    elif preset.dataset == "imagenet":
        write_image_folder(root)
    return data.load(preset.dataset, str(root))


@pytest.mark.parametrize("name", list(SWEEP_PRESETS))
def test_each_preset_trains_an_epoch_on_data_in_its_format(tmp_path, name):
    preset = SWEEP_PRESETS[name]
    train_set, test_set = datasets_for(preset, tmp_path)
    torch.manual_seed(0)
    model = preset.space.build(*TINY_POINT[preset.space.name])
    optimizer, schedule = make_optimizer(model, preset.recipe)
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(train_set, batch_size=preset.recipe.batch_size, shuffle=True)
    [loss] = train_epoch(model, loader, optimizer, torch.device("cpu"))
    schedule.step()
    classes = preset.space.num_classes
    [errors] = evaluate(model, test_set, 8, torch.device("cpu"), 0, 1, top5=classes > 5)
    assert np.isfinite(loss) and loss > 0
    assert any(
        not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True)
    )
    assert errors["test_examples"] == len(test_set) and 0 <= errors["test_error"] <= 100
    assert ("test_error_top5" in errors) == (classes > 5)
    # What a member's --input-shape and network are checked against before Ray starts.
    assert (tuple(train_set[0][0].shape), classes) == DATASET_EXAMPLES[preset.dataset]


def test_downsampled_imagenet_rows_are_channel_major_images_centred_on_the_mean(tmp_path):
    write_downsampled_imagenet(tmp_path, "imagenet32", 32)
    train, test = data.load("imagenet32", str(tmp_path))
    assert len(train) == 3 * data.DOWNSAMPLED_TRAIN_BATCHES and len(test) == 6
    with open(tmp_path / "imagenet32" / "val_data", "rb") as stream:
        raw = pickle.load(stream)
    image, label = test[0]
    expected = torch.from_numpy(raw["data"][0].reshape(3, 32, 32)).float() / 255 - 0.5
    torch.testing.assert_close(image, expected)
    assert label == raw["labels"][0] - 1  # 0-based


@pytest.mark.parametrize("name", ["imagenet32", "imagenet64"])
def test_missing_downsampled_imagenet_says_which_files_go_where(tmp_path, name):
    with pytest.raises(data.DatasetMissing, match="put train_data_batch_1..10 and val_data"):
        data.load(name, str(tmp_path))


def test_mnist_as_one_tensor_holds_what_the_per_image_transform_gave(tmp_path):
    from torchvision import datasets
    from torchvision import transforms as T

    write_mnist(tmp_path)
    train, _ = data.load("mnist", str(tmp_path))
    per_image = datasets.MNIST(
        str(tmp_path),
        train=True,
        transform=T.Compose(
            [T.ToTensor(), T.Normalize((0.1307,), (0.3081,)), T.Lambda(torch.flatten)]
        ),
    )
    for index in (0, 5, len(per_image) - 1):
        torch.testing.assert_close(train[index][0], per_image[index][0], rtol=0, atol=0)
        assert int(train[index][1]) == per_image[index][1]


class RunsCode:
    """What a tampered pickle holds: unpickling it would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_downsampled_imagenet_file_that_would_run_code_is_refused(tmp_path):
    write_downsampled_imagenet(tmp_path, "imagenet32", 32)
    marker = tmp_path / "ran"
    with open(tmp_path / "imagenet32" / "val_data", "wb") as stream:
        pickle.dump({"data": RunsCode(marker), "labels": [1]}, stream)
    with pytest.raises(ValueError, match="posix.system is not allowed|os.system is not allowed"):
        data.load("imagenet32", str(tmp_path))
    assert not marker.exists()


def test_a_checkpoint_loads_with_weights_only_and_restores_every_rng():
    from ce_ray.worker.loop import _rng_state, _set_rng_state, _state

    network = torch.nn.Linear(4, 3)
    optimizer, schedule = make_optimizer(network, SWEEP_PRESETS["cifar10-resnext29"].recipe)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    buffer = io.BytesIO()
    torch.save(
        _state(network, optimizer, schedule, scaler, 3, 1.5) | {"rng": [_rng_state()]}, buffer
    )
    expected = (torch.rand(3), np.random.rand(3), random.random())
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # builds tensors and plain values only
    _set_rng_state(state["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert state["epoch"] == 3 and set(state["model"]) == {"weight", "bias"}


def test_a_worker_beats_while_it_waits_alive_and_not_once_stopped(tmp_path, monkeypatch):
    """Slow but alive (a checkpoint's upload, a wait for Tune's decision, a first compiled
    step): the heartbeat goes on from a thread; after the block it is the loop's again."""
    import time

    from ce_ray.worker import records

    monkeypatch.setattr(records, "HEARTBEAT_S", 0.05)
    record = str(tmp_path / "trial")
    beat = records.Heartbeat(record, start=0)
    with records.beating(beat):
        time.sleep(0.5)  # a call that blocks: the upload, the decision
    beats = records.read_heartbeat(record)
    assert beats[0] == 0 and beats[1] >= 3
    time.sleep(0.3)
    assert records.read_heartbeat(record) == beats  # nothing beats outside the block
