"""Sets that travel: the PyTorch layout (NCHW images, int64 labels, as the DC/DSA/DM res_*.pt files),
NCHW .npz, PNG folders, and import of reference files with their normalisation."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from jaxdd import data, export, io
from jaxdd.cli import main
from jaxdd.types import SynSet


def _make_set(folder, dataset="digits", ipc=2, soft=False, seed=0):
    info = data.DATASETS[dataset]
    rng = np.random.default_rng(seed)
    n = info.num_classes * ipc
    images = rng.normal(size=(n, *info.image_shape)).astype(np.float32)
    labels = np.repeat(np.arange(info.num_classes), ipc).astype(np.int32)
    if soft:
        labels = rng.dirichlet(np.ones(info.num_classes), size=n).astype(np.float32)
    meta = {"dataset": dataset, "image_shape": list(info.image_shape), "num_classes": info.num_classes,
            "mean": list(info.mean), "std": list(info.std), "zca": False, "method": "dc", "arch": "ConvNet", "ipc": ipc}
    io.save_synset(folder, SynSet(images, labels, None), meta)
    return images, labels


@pytest.mark.parametrize("soft", [False, True])
def test_npz_export_is_the_nchw_layout_and_imports_back_exactly(tmp_path, soft):
    images, labels = _make_set(tmp_path / "set", soft=soft)
    written = export.export_synset(tmp_path / "set", "npz")
    with np.load(written) as f:
        assert f["images"].dtype == np.float32 and f["images"].shape == (20, 1, 8, 8)
        np.testing.assert_array_equal(f["images"], images.transpose(0, 3, 1, 2))
        assert f["labels"].dtype == (np.float32 if soft else np.int64)
        np.testing.assert_array_equal(f["labels"], labels)
        np.testing.assert_array_equal(f["mean"], np.float32(data.DATASETS["digits"].mean))
    back = export.import_reference(written, tmp_path / "back")
    synset, meta, _ = io.load_synset(back)
    np.testing.assert_array_equal(synset.images, images)  # same normalisation: no arithmetic at all
    np.testing.assert_array_equal(synset.labels, labels)
    assert meta["dataset"] == "digits" and meta["imported"]["source_normalisation"]["std"] == [np.float32(0.37600559619100277).item()]


def test_png_folders_hold_the_displayable_pixels_per_class(tmp_path):
    images, labels = _make_set(tmp_path / "set", ipc=1)
    folder = export.export_synset(tmp_path / "set", "png")
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [str(c) for c in range(10)]
    info = data.DATASETS["digits"]
    for index, c in enumerate(labels):
        stored = np.asarray(Image.open(folder / str(c) / f"{index}.png"))
        pixels = np.clip(images[index, ..., 0] * info.std[0] + info.mean[0], 0, 1)
        np.testing.assert_array_equal(stored, np.round(pixels * 255).astype(np.uint8))
    assert (folder / "classes.txt").read_text().splitlines()[3] == "3 3"


def test_reference_file_names_say_dataset_method_model_and_ipc():
    assert export.parse_reference_name("res_DC_MNIST_ConvNet_10ipc.pt") == {
        "dataset": "mnist", "method": "dc", "arch": "ConvNet", "ipc": 10}
    assert export.parse_reference_name("res_CIFAR10_ConvNet_1ipc.pt") == {  # DC's older naming
        "dataset": "cifar10", "method": None, "arch": "ConvNet", "ipc": 1}
    assert export.parse_reference_name("images.pt")["dataset"] is None
    meta = {"dataset": "fashion_mnist", "method": "dm", "arch": "ConvNetW32", "ipc": 10}
    assert export.reference_file_name(meta) == "res_DM_FashionMNIST_ConvNetW32_10ipc.pt"


def test_import_renormalises_from_the_files_mean_and_std(tmp_path):
    """x_jaxdd = ((x_src * std_src + mean_src) - mean) / std: the same pixels in jaxdd's normalisation."""
    info = data.DATASETS["digits"]
    rng = np.random.default_rng(1)
    pixels = rng.uniform(size=(10, 1, 8, 8))
    src_mean, src_std = 0.5, 0.25
    np.savez(tmp_path / "set.npz", images=((pixels - src_mean) / src_std).astype(np.float32),
             labels=np.arange(10), dataset="digits")
    export.import_reference(tmp_path / "set.npz", tmp_path / "out", mean=(src_mean,), std=(src_std,))
    synset, meta, _ = io.load_synset(tmp_path / "out")
    expected = (pixels.transpose(0, 2, 3, 1) - info.mean[0]) / info.std[0]
    np.testing.assert_allclose(synset.images, expected, atol=2e-6)
    assert meta["imported"]["source_normalisation"] == {"mean": [0.5], "std": [0.25]}


def test_torch_export_is_what_the_reference_code_loads(tmp_path):
    torch = pytest.importorskip("torch")
    images, labels = _make_set(tmp_path / "set")
    written = export.export_synset(tmp_path / "set", "torch")
    assert written.name == "res_DC_digits_ConvNet_2ipc.pt"
    saved = torch.load(written, weights_only=True)
    image_syn, label_syn = saved["data"][0]  # as the reference: data[exp] = [image_syn, label_syn]
    assert image_syn.dtype == torch.float32 and tuple(image_syn.shape) == (20, 1, 8, 8)
    assert label_syn.dtype == torch.int64 and label_syn.tolist() == labels.tolist()
    np.testing.assert_array_equal(image_syn.numpy(), images.transpose(0, 3, 1, 2))
    assert saved["dataset"] == "digits" and saved["meta"]["method"] == "dc"


def test_import_of_a_released_reference_file(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    pairs = [[torch.from_numpy(rng.normal(size=(10, 1, 28, 28)).astype(np.float32)),
              torch.arange(10, dtype=torch.long)] for _ in range(2)]
    file = tmp_path / "res_DSA_MNIST_ConvNet_1ipc.pt"
    torch.save({"data": pairs, "accs_all_exps": {"ConvNet": [0.88, 0.87]}}, file)
    assert main(["import", str(file), "--experiment", "1", "--out", str(tmp_path / "out")]) == 0
    assert "normalised by mean [0.1307" in capsys.readouterr().out
    synset, meta, _ = io.load_synset(tmp_path / "out")
    # MNIST's reference normalisation is jaxdd's: the images arrive unchanged, NHWC.
    np.testing.assert_array_equal(synset.images, pairs[1][0].numpy().transpose(0, 2, 3, 1))
    assert synset.labels.tolist() == list(range(10))
    assert meta["method"] == "dsa" and meta["eval_protocol"] == "dsa" and meta["ipc"] == 1
    assert meta["imported"]["experiment"] == 1 and meta["imported"]["experiments_in_file"] == 2
    assert meta["imported"]["reference_accuracies"] == {"ConvNet": [0.88, 0.87]}


def test_import_refuses_images_that_do_not_fit_the_dataset(tmp_path, capsys):
    np.savez(tmp_path / "res_DC_MNIST_ConvNet_1ipc.npz", images=np.zeros((10, 1, 8, 8), np.float32), labels=np.arange(10))
    code = main(["import", str(tmp_path / "res_DC_MNIST_ConvNet_1ipc.npz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "mnist images are (N, 1, 28, 28)" in err, err
    assert not (tmp_path / "out").exists()


def test_torch_export_without_torch_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    _make_set(tmp_path / "set")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert main(["export", str(tmp_path / "set"), "--to", "torch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs PyTorch" in err and "--to npz" in err, err
    assert main(["export", str(tmp_path / "set"), "--to", "npz", "--quiet"]) == 0
    assert json.loads((tmp_path / "set" / "synset.json").read_text())["dataset"] == "digits"
