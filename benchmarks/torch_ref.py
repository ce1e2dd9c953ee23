"""Eager PyTorch references of the loops jaxdd benchmarks itself against.

Each builder takes NumPy arrays (NHWC, normalised) and returns a zero-argument callable that
runs one unit of work (one outer iteration, or one whole evaluation) in the style of the
reference code: Python loops over classes, models, epochs and minibatches, ``torch.autograd``
for every gradient; DSA's augmentation follows the reference's ``DiffAugment``
(:func:`dsa_augment`). The network is DC's ConvNet (3 x [conv3x3 -> instance norm -> ReLU ->
avg-pool 2] -> linear; the first conv pads 3 on 28x28 inputs), the same as
``jaxdd.models.get_model('ConvNet', ...)``. PyTorch is a benchmark-only dependency
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from jaxdd.augment import DSAParams


def device() -> torch.device:
    """CUDA when this PyTorch build sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    """Waits for queued GPU work (no-op on the CPU), so that wall times are complete."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """NHWC NumPy images as a contiguous NCHW float tensor on :func:`device`."""
    return torch.tensor(np.asarray(images, np.float32)).permute(0, 3, 1, 2).contiguous().to(device())


def convnet(channels: int, size: int, num_classes: int, width: int = 128, depth: int = 3) -> nn.Sequential:
    """DC's ConvNet with instance norm (GroupNorm with one group per channel, affine)."""
    layers, c_in = [], channels
    for d in range(depth):
        pad = 3 if (d == 0 and size == 28) else 1
        layers += [nn.Conv2d(c_in, width, 3, padding=pad), nn.GroupNorm(width, width, affine=True), nn.ReLU(),
                   nn.AvgPool2d(2)]
        c_in = width
    final = (size + (4 if size == 28 else 0)) // 2**depth
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * final * final, num_classes)).to(device())


def lenet(channels: int, size: int, num_classes: int) -> nn.Sequential:
    """LeNet-5 as in DC and DD (``jaxdd.models`` 'LeNet'): 28x28 inputs padded by 2 in the first conv."""
    pad = 2 if size == 28 else 0
    final = (size + 2 * pad - 4) // 2 - 4
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * (final // 2) ** 2, 120), nn.ReLU(), nn.Linear(120, 84),
        nn.ReLU(), nn.Linear(84, num_classes)).to(device())


def _class_rows(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def _layer_distance(gs, gr) -> torch.Tensor:
    """DC's distance: per weight tensor, sum over output nodes of 1 - cos (1-D tensors ignored)."""
    total = torch.zeros((), device=gs[0].device)
    for a, b in zip(gs, gr):
        if a.dim() == 1:
            continue
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        total = total + torch.sum(1 - torch.sum(a * b, -1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6))
    return total


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def dsa_augment(x: torch.Tensor, strategy: str, seed: Optional[int] = None,
                params: DSAParams = DSAParams()) -> torch.Tensor:
    """DSA's augmentation of an NCHW batch: the reference's ``DiffAugment`` with ``aug_mode='S'``.

    One family of ``strategy`` (families joined by '_': color, crop, cutout, flip, scale, rotate)
    is drawn for the whole call, then its parameters. With a ``seed`` every draw reseeds PyTorch
    (``seed``, ``seed + 1``, ...) and one draw serves the whole batch, so the same seed on the real
    and the synthetic batch of a class applies the same transform to both (Siamese, the matching
    steps); without one each image draws its own parameters (the inner training). The affine maps
    are built with tensor operations on the batch's device, where the reference lists them in Python.
    """
    seeds = None if seed is None else itertools.count(seed)
    n = x.shape[0] if seed is None else 1

    def reseed() -> None:
        if seeds is not None:
            torch.manual_seed(next(seeds))

    def uniform() -> torch.Tensor:
        reseed()
        return torch.rand(n, 1, 1, 1, device=x.device)

    def integers(low: int, high: int) -> torch.Tensor:
        reseed()
        return torch.randint(low, high, (n, 1, 1), device=x.device)

    families = strategy.split("_")
    reseed()
    family = families[torch.randint(0, len(families), (1,)).item()]
    height, width = x.shape[2], x.shape[3]
    if family == "color":
        x = x + (uniform() - 0.5) * params.brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (uniform() * params.saturation) + mean
        mean = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - mean) * (uniform() + params.contrast) + mean
    elif family == "crop":
        shift_h, shift_w = int(height * params.crop + 0.5), int(width * params.crop + 0.5)
        rows, cols = integers(-shift_h, shift_h + 1), integers(-shift_w, shift_w + 1)
        grid_batch, grid_rows, grid_cols = torch.meshgrid(
            torch.arange(x.shape[0], device=x.device), torch.arange(height, device=x.device),
            torch.arange(width, device=x.device), indexing="ij")
        grid_rows = torch.clamp(grid_rows + rows + 1, 0, height + 1)
        grid_cols = torch.clamp(grid_cols + cols + 1, 0, width + 1)
        padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1).contiguous()
        x = padded[grid_batch, grid_rows, grid_cols].permute(0, 3, 1, 2)
    elif family == "cutout":
        cut_h, cut_w = int(height * params.cutout + 0.5), int(width * params.cutout + 0.5)
        rows, cols = integers(0, height + (1 - cut_h % 2)), integers(0, width + (1 - cut_w % 2))
        grid_batch, grid_rows, grid_cols = torch.meshgrid(
            torch.arange(x.shape[0], device=x.device), torch.arange(cut_h, device=x.device),
            torch.arange(cut_w, device=x.device), indexing="ij")
        grid_rows = torch.clamp(grid_rows + rows - cut_h // 2, 0, height - 1)
        grid_cols = torch.clamp(grid_cols + cols - cut_w // 2, 0, width - 1)
        mask = torch.ones(x.shape[0], height, width, dtype=x.dtype, device=x.device)
        mask[grid_batch, grid_rows, grid_cols] = 0
        x = x * mask.unsqueeze(1)
    elif family == "flip":
        x = torch.where(uniform() < params.flip, x.flip(3), x)
    elif family == "scale":
        sx = uniform().view(n) * (params.scale - 1.0 / params.scale) + 1.0 / params.scale
        sy = uniform().view(n) * (params.scale - 1.0 / params.scale) + 1.0 / params.scale
        zero = torch.zeros_like(sx)
        x = _affine(x, torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1))
    elif family == "rotate":
        angle = (uniform().view(n) - 0.5) * 2 * params.rotate / 180 * math.pi
        cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
        x = _affine(x, torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1))
    else:
        raise ValueError(f"unknown DSA family {family!r} in {strategy!r}")
    return x.contiguous()


def dc_iteration(images: np.ndarray, labels: np.ndarray, num_classes: int, ipc: int, *, outer_loop: int,
                 inner_loop: int, batch_real: int, width: int = 128, lr_img: float = 0.1,
                 momentum_img: float = 0.5, lr_net: float = 0.01, batch_train: int = 256,
                 dsa_strategy: str = "") -> Callable[[], None]:
    """One DC (or DSA) outer iteration (DC Algorithm 1, the reference's ``main.py``) per call.

    A fresh ConvNet; ``outer_loop`` matching steps, each a Python loop over classes with
    ``autograd.grad(create_graph=True)`` on the synthetic batch, one SGD-momentum step on the
    images; between matching steps ``inner_loop`` epochs of plain SGD on the synthetic set.
    With a ``dsa_strategy`` (DSA) each class's real and synthetic batches are augmented with one
    seed (:func:`dsa_augment`, Siamese; the reference takes the seed from the clock, here from
    NumPy's global state) and every inner minibatch with its own per-image draws.
    """
    x = to_nchw(images)
    by_class = _class_rows(np.asarray(labels), num_classes)
    channels, size = x.shape[1], x.shape[2]
    syn = torch.randn(num_classes * ipc, channels, size, size, device=x.device, requires_grad=True)
    syn_labels = torch.arange(num_classes, device=x.device).repeat_interleave(ipc)
    opt_img = torch.optim.SGD([syn], lr=lr_img, momentum=momentum_img)

    def iteration() -> None:
        net = convnet(channels, size, num_classes, width)
        params = list(net.parameters())
        opt_net = torch.optim.SGD(params, lr=lr_net)
        for ol in range(outer_loop):
            loss = torch.zeros((), device=x.device)
            for c in range(num_classes):
                real = x[np.random.permutation(by_class[c])[:batch_real]]
                s = syn[c * ipc:(c + 1) * ipc]
                if dsa_strategy:
                    seed = int(np.random.randint(100000))
                    real, s = dsa_augment(real, dsa_strategy, seed), dsa_augment(s, dsa_strategy, seed)
                target = torch.full((real.shape[0],), c, dtype=torch.long, device=x.device)
                g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), target), params)]
                s_target = torch.full((ipc,), c, dtype=torch.long, device=x.device)
                g_syn = torch.autograd.grad(F.cross_entropy(net(s), s_target), params, create_graph=True)
                loss = loss + _layer_distance(g_syn, g_real)
            opt_img.zero_grad()
            loss.backward()
            opt_img.step()
            if ol == outer_loop - 1:
                break
            data_syn = syn.detach().clone()
            for _ in range(inner_loop):
                order = torch.randperm(len(data_syn), device=x.device)
                for start in range(0, len(order), batch_train):
                    idx = order[start:start + batch_train]
                    batch = dsa_augment(data_syn[idx], dsa_strategy) if dsa_strategy else data_syn[idx]
                    opt_net.zero_grad()
                    F.cross_entropy(net(batch), syn_labels[idx]).backward()
                    opt_net.step()
        synchronize()

    return iteration


def dm_iteration(images: np.ndarray, labels: np.ndarray, num_classes: int, ipc: int, *, batch_real: int,
                 width: int = 128, lr_img: float = 1.0, momentum_img: float = 0.5) -> Callable[[], None]:
    """One DM iteration (the reference's ``main_DM.py``, without augmentation) per call.

    A fresh random ConvNet; per class the squared distance between the mean embeddings (features
    before the classifier) of a real batch and of the synthetic images; one SGD-momentum step.
    """
    x = to_nchw(images)
    by_class = _class_rows(np.asarray(labels), num_classes)
    channels, size = x.shape[1], x.shape[2]
    syn = torch.randn(num_classes, ipc, channels, size, size, device=x.device, requires_grad=True)
    opt_img = torch.optim.SGD([syn], lr=lr_img, momentum=momentum_img)

    def iteration() -> None:
        net = convnet(channels, size, num_classes, width)
        for p in net.parameters():
            p.requires_grad_(False)
        embed = net[:-1]
        loss = torch.zeros((), device=x.device)
        for c in range(num_classes):
            with torch.no_grad():
                mean_real = embed(x[np.random.permutation(by_class[c])[:batch_real]]).mean(0)
            loss = loss + torch.sum((mean_real - embed(syn[c]).mean(0)) ** 2)
        opt_img.zero_grad()
        loss.backward()
        opt_img.step()
        synchronize()

    return iteration


def dd_iteration(images: np.ndarray, labels: np.ndarray, num_classes: int, *, steps: int, epochs: int,
                 real_batch: int, width: int = 128, distill_lr: float = 0.02, lr: float = 0.01,
                 arch: str = "convnet") -> Callable[[], None]:
    """One DD outer step (fixed init) per call: differentiate through ``steps * epochs`` GD steps.

    ``theta_{t+1} = theta_t - softplus(raw_t) * grad CE(x~_{t mod S}, theta_t)`` from one fixed
    ``theta_0``, unrolled with ``autograd.grad(create_graph=True)``; the meta-loss is CE of
    ``theta_T`` on a real batch; Adam (betas 0.5, 0.999) on the images and raw step sizes.
    ``arch``: 'convnet' (width ``width``) or 'lenet' (DD's MNIST network).
    """
    x = to_nchw(images)
    y = torch.tensor(np.asarray(labels), dtype=torch.long, device=x.device)
    channels, size = x.shape[1], x.shape[2]
    net = lenet(channels, size, num_classes) if arch == "lenet" else convnet(channels, size, num_classes, width)
    theta0 = {name: p.detach().clone() for name, p in net.named_parameters()}
    syn = torch.randn(steps, num_classes, channels, size, size, device=x.device, requires_grad=True)
    syn_labels = torch.arange(num_classes, device=x.device)
    raw = torch.full((steps * epochs,), math.log(math.expm1(distill_lr)), device=x.device, requires_grad=True)
    opt = torch.optim.Adam([syn, raw], lr=lr, betas=(0.5, 0.999))

    def iteration() -> None:
        rows = torch.randperm(x.shape[0], device=x.device)[:real_batch]
        theta = {name: p.clone().requires_grad_() for name, p in theta0.items()}
        for t in range(steps * epochs):
            loss = F.cross_entropy(functional_call(net, theta, (syn[t % steps],)), syn_labels)
            grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
            step = F.softplus(raw[t])
            theta = {name: p - step * g for (name, p), g in zip(theta.items(), grads)}
        meta = F.cross_entropy(functional_call(net, theta, (x[rows],)), y[rows])
        opt.zero_grad()
        meta.backward()
        opt.step()
        synchronize()

    return iteration


def evaluation(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
               num_classes: int, *, num_models: int, epochs: int, width: int = 128, lr: float = 0.01,
               batch_size: int = 256, test_batch: int = 1000) -> Callable[[], np.ndarray]:
    """Trains ``num_models`` fresh ConvNets one after another on a set and tests each (DC protocol).

    SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, lr x0.1 from epoch ``epochs // 2``,
    cross-entropy, no augmentation (jaxdd's ``get_protocol('dc', epochs=E, augment='none')``).
    The call returns the per-model test accuracies.
    """
    x, x_test = to_nchw(images), to_nchw(test_images)
    y = torch.tensor(np.asarray(labels), dtype=torch.long, device=x.device)
    y_test = torch.tensor(np.asarray(test_labels), dtype=torch.long, device=x.device)
    channels, size = x.shape[1], x.shape[2]

    def train_one() -> nn.Module:
        net = convnet(channels, size, num_classes, width)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        for epoch in range(epochs):
            if epoch == epochs // 2:
                for group in opt.param_groups:
                    group["lr"] = lr * 0.1
            order = torch.randperm(x.shape[0], device=x.device)
            for start in range(0, x.shape[0], batch_size):
                idx = order[start:start + batch_size]
                opt.zero_grad()
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
        return net

    def test(net: nn.Module) -> float:
        with torch.no_grad():
            hits = sum(int((net(x_test[i:i + test_batch]).argmax(1) == y_test[i:i + test_batch]).sum())
                       for i in range(0, x_test.shape[0], test_batch))
        return hits / x_test.shape[0]

    def run() -> np.ndarray:
        accs = np.array([test(train_one()) for _ in range(num_models)])
        synchronize()
        return accs

    return run


__all__ = ["convnet", "dc_iteration", "dd_iteration", "device", "dm_iteration", "dsa_augment", "evaluation", "lenet",
           "synchronize", "to_nchw"]
