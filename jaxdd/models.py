"""The network zoo of the dataset-distillation literature, as pure ``Model`` pairs.

Every architecture is a Flax Linen module, but nothing outside this file sees one: :func:`get_model`
returns a :class:`~jaxdd.types.Model` of pure functions ``init(key) -> params``,
``apply(params, x) -> logits`` and ``embed(params, x) -> features`` with ``x`` in NHWC. ``params``
is the plain nested dict of the module's ``'params'`` collection; no other collection exists, so
``apply`` is pure and jits, vmaps over stacked parameters and differentiates w.r.t. the images.

Architectures (DC/DSA/DM reference code, Zhao et al. ICLR 2021, and DD, Wang et al. 2018):

- ``ConvNet``: ``depth`` x [Conv3x3(width) -> norm -> act -> pool 2x2] -> flatten -> Linear(C).
  Norms ``none | instance | group | layer | batch`` (instance = GroupNorm with groups = channels,
  group = GroupNorm(4), layer = LayerNorm over (C, H, W) with per-element affine, all eps 1e-5);
  activations ``relu | sigmoid | leaky_relu`` (slope 0.01) ``| swish``; pooling ``avg | max | none``.
  The reference's names (``instancenorm``, ``leakyrelu``, ``avgpooling``, ...) are accepted too.
- ``MLP``: flatten -> 128 -> 128 -> C, ReLU.
- ``LeNet``: Conv5x5(6) -> ReLU -> MaxPool2 -> Conv5x5(16) -> ReLU -> MaxPool2 -> 120 -> 84 -> C.
- ``AlexNet`` (DC's 32-pixel variant): Conv5x5 128 -> MaxPool2 -> Conv5x5 192 -> MaxPool2 -> Conv3x3
  256 -> Conv3x3 192 -> Conv3x3 192 -> MaxPool2 -> Linear(3072, C), ReLU after every conv.
- ``VGG11``: [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M], Conv3x3 + instance norm + ReLU,
  Linear(512, C). ``width`` (default 64) scales every channel count.
- ``ResNet18``: CIFAR-style BasicBlocks [2, 2, 2, 2] with widths 64, 128, 256, 512 (``width``
  scales them), 3x3 stride-1 stem, no max-pool, bias-free convs, instance norm, global average pool,
  Linear(512, C).
- ``AlexCifarNet`` (DD's CIFAR-10 network): Conv5x5 64 -> ReLU -> MaxPool3 s2 -> LRN -> Conv5x5 64 ->
  ReLU -> LRN -> MaxPool3 s2 -> 4096 -> 384 -> 192 -> C, LRN as ``torch.nn.LocalResponseNorm(4,
  alpha=0.001/9, beta=0.75, k=1)``.
- Registry aliases of the reference: ``ConvNetW32/W64/W128/W256``, ``ConvNetD1..D4``, ``ConvNetAS``
  (sigmoid), ``ConvNetAR`` (relu), ``ConvNetAL`` (leaky relu), ``ConvNetASwish``, ``ConvNetASwishBN``,
  ``ConvNetNN`` (no norm), ``ConvNetBN``, ``ConvNetLN``, ``ConvNetIN``, ``ConvNetGN``, ``ConvNetNP``
  (no pooling), ``ConvNetMP`` (max), ``ConvNetAP`` (avg), ``AlexNetBN``, ``VGG11BN``, ``ResNet18BN``.

Flattening follows PyTorch: features are ordered (C, H, W), as ``x.view(N, -1)`` on NCHW, so a
reference checkpoint's Linear weights load by a plain transpose and ``embed`` matches the reference.

Input sizes. The reference networks are written for 32x32 images; 28x28 one-channel images are
padded to 32 by the first layer (ConvNet pad 3, LeNet pad 2, AlexNet pad 4, VGG11 pad 3). jaxdd keys
that extra padding on the input being 28x28 (the reference keys it on one channel, which coincides
for every reference dataset). Other sizes (the 8x8 scikit-learn digits):

- ``ConvNet`` and ``MLP`` run on any size natively: ConvNet pads 1 everywhere; its default depth
  follows the input (:func:`convnet_depth`): 3 on 28x28 and 32x32 as the reference, 2 on the 8x8
  digits, which pool 8 -> 4 -> 2 (4 * width features). At the reference's depth 3 the last
  instance norm would normalise 2x2 maps, on which DC blows the images up and DD evaluates at
  chance; ``depth=3`` (or ``ConvNetD3``) still asks for it. A depth that would pool below one
  pixel raises ``ValueError``. The MLP flattens what it gets.
- ``LeNet``, ``AlexNet``, ``VGG11``, ``AlexCifarNet``, ``ResNet18`` need 32x32 (fixed-size
  classifiers, five poolings; ResNet18's last stage would be 1x1 on 8x8 inputs, where instance norm
  maps every value to 0 and the logits stop depending on the image): inputs of any other size than
  28x28 and 32x32 are resized bilinearly to 32x32 at the start of ``apply`` (``jax.image.resize``,
  differentiable). ResNet18 runs 28x28 natively (28 -> 14 -> 7 -> 4) and pools globally, which on
  32 and 28 inputs equals the reference's ``avg_pool2d(4)``. The digits are 32x32 bitmaps
  block-averaged to 8x8, so this restores their original resolution. AlexCifarNet, which DD only
  defines for 32x32, treats 28x28 like AlexNet does: 2 more pixels of first-conv padding (= zero
  padding to 32).

Initialisation (``init`` of :func:`get_model`):

- ``'torch'`` (default): PyTorch's defaults, as in the reference code: conv and linear weights
  ``kaiming_uniform(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in * kh * kw;
  biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norm scales 1, biases 0.
- ``'flax'``: Flax's defaults (lecun_normal weights, zero biases).
- ``'dd'``: DD's ``xavier_normal`` weights (std sqrt(2 / (fan_in + fan_out))), zero biases; the
  default of ``AlexCifarNet`` (``init=None`` picks each architecture's default).

Deviations from the reference:

- Batch norm (``norm='batch'``, the ``*BN`` names) always normalises with the statistics of the
  batch it is given (PyTorch's train mode, biased variance) and keeps no running averages, so
  ``apply`` stays pure; evaluation therefore also uses test-batch statistics, and a sample's output
  depends on the rest of its batch.
- DD gives two-class problems a single output unit; jaxdd always returns ``num_classes`` logits.
- The reference's ``ResNet18BN_AP`` (average-pool downsampling) is not provided.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxdd.types import CALL_SITE_CONV, CONV_IMPLS, Array, Model, Params, PRNGKey

INIT_SCHEMES = ("torch", "flax", "dd")

_NORM_ALIASES = {"instancenorm": "instance", "groupnorm": "group", "layernorm": "layer",
                 "batchnorm": "batch"}
_ACT_ALIASES = {"leakyrelu": "leaky_relu"}
_POOL_ALIASES = {"avgpooling": "avg", "maxpooling": "max"}
_NORMS = ("none", "instance", "group", "layer", "batch")
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=0.01),
    "swish": nn.swish,
}
_POOLS = ("avg", "max", "none")
_EPS = 1e-5  # PyTorch's default for every norm layer


def _canonical(value: str, allowed: Sequence[str], aliases: dict[str, str], what: str) -> str:
    value = aliases.get(value, value)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")
    return value


# ----------------------------------------------------------------------------- initialisers


def _uniform(bound: float) -> Callable:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _kernel_init(scheme: str) -> Callable:
    if scheme == "torch":  # kaiming_uniform(a=sqrt(5)): gain^2 = 1/3, bound = 1/sqrt(fan_in)
        return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    if scheme == "dd":  # xavier_normal, gain 1
        return nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
    if scheme == "flax":
        return nn.linear.default_kernel_init
    raise ValueError(f"unknown init scheme {scheme!r}; expected one of {list(INIT_SCHEMES)}")


def _bias_init(scheme: str, fan_in: int) -> Callable:
    return _uniform(1.0 / math.sqrt(fan_in)) if scheme == "torch" else nn.initializers.zeros


# ----------------------------------------------------------------------------- layers


def conv_impl() -> str:
    """The convolution traced now: ``$JAXDD_CONV`` ('xla' or 'patches') when set, else the one the
    :meth:`~jaxdd.types.Model.with_conv` functions being traced ask for, else 'patches' on CPU
    and 'xla' elsewhere."""
    chosen = os.environ.get("JAXDD_CONV", "auto")
    if chosen == "auto":
        return CALL_SITE_CONV.get() or ("patches" if jax.default_backend() == "cpu" else "xla")
    if chosen not in CONV_IMPLS:
        raise ValueError(f"JAXDD_CONV must be auto, xla or patches (got {chosen!r})")
    return chosen


def patch_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, precision=None, **unused):
    """``lax.conv_general_dilated`` for NHWC/HWIO as shifted slices and one matmul (im2col).

    Same result as XLA's convolution (to float rounding). It exists for speed on CPU: XLA:CPU
    runs a convolution's weight gradient inside a ``while`` loop (every ``lax.scan`` training
    loop of jaxdd) about 30x slower than outside one, while a matmul is fast in both
    (``benchmarks/conv_in_scan.py``). Dilated, grouped or string-padded convolutions, and every
    convolution when :func:`conv_impl` is 'xla', go to XLA unchanged.
    """
    plain = (feature_group_count == 1 and not isinstance(padding, str)
             and all(d == 1 for d in (lhs_dilation or (1, 1)))
             and all(d == 1 for d in (rhs_dilation or (1, 1))))
    if not plain or conv_impl() == "xla":
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision)
    kh, kw, cin, cout = rhs.shape
    (top, bottom), (left, right) = padding
    sh, sw = window_strides
    x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    patches = jnp.concatenate(
        [x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw, :]
         for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


def _conv(x: Array, features: int, kernel: int, scheme: str, *, stride: int = 1,
          padding: int = 0, use_bias: bool = True, name: Optional[str] = None) -> Array:
    """A PyTorch-style Conv2d (symmetric zero padding) inside the calling compact module."""
    fan_in = kernel * kernel * x.shape[-1]
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                   kernel_init=_kernel_init(scheme), bias_init=_bias_init(scheme, fan_in),
                   conv_general_dilated=patch_conv, name=name)(x)


def _dense(x: Array, features: int, scheme: str, name: Optional[str] = None) -> Array:
    return nn.Dense(features, kernel_init=_kernel_init(scheme),
                    bias_init=_bias_init(scheme, x.shape[-1]), name=name)(x)


def _flatten(x: Array) -> Array:
    """NHWC -> (N, C*H*W) in PyTorch's NCHW order."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _max_pool(x: Array, window: int = 2, stride: int = 2, padding: int = 0) -> Array:
    return nn.max_pool(x, (window, window), (stride, stride),
                       padding=((padding, padding), (padding, padding)))


def _to_32(x: Array) -> tuple[Array, int]:
    """Bring an input to the reference size: (x, extra first-layer padding).

    32x32 passes through; 28x28 gets 2 more pixels of first-conv padding (the reference's trick);
    any other size is resized bilinearly to 32x32.
    """
    hw = tuple(x.shape[1:3])
    if hw == (32, 32):
        return x, 0
    if hw == (28, 28):
        return x, 2
    return jax.image.resize(x, (x.shape[0], 32, 32, x.shape[3]), method="linear"), 0


class BatchStatNorm(nn.Module):
    """Batch norm with the current batch's statistics only (no running averages).

    ``y = (x - mean_B(x)) / sqrt(var_B(x) + eps) * scale + bias`` with mean and biased variance over
    every axis but the channel, i.e. ``torch.nn.BatchNorm2d`` in train mode (Ioffe and Szegedy 2015).
    """

    epsilon: float = _EPS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def _norm(x: Array, kind: str, name: str) -> Array:
    if kind == "instance":
        return nn.GroupNorm(num_groups=None, group_size=1, epsilon=_EPS, use_fast_variance=False,
                            name=name)(x)
    if kind == "group":
        return nn.GroupNorm(num_groups=4, epsilon=_EPS, use_fast_variance=False, name=name)(x)
    if kind == "layer":
        return nn.LayerNorm(epsilon=_EPS, reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1),
                            use_fast_variance=False, name=name)(x)
    if kind == "batch":
        return BatchStatNorm(name=name)(x)
    return x


def local_response_norm(x: Array, size: int = 4, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> Array:
    """``torch.nn.LocalResponseNorm`` on NHWC input (Krizhevsky et al. 2012).

    ``y_c = x_c / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x_{c'}^2) ** beta``,
    channels outside the range counting as zero.
    """
    pad = ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2))
    window_sum = jax.lax.reduce_window(jnp.square(x), 0.0, jax.lax.add, (1, 1, 1, size),
                                       (1, 1, 1, 1), pad)
    return x / (k + alpha / size * window_sum) ** beta


# ----------------------------------------------------------------------------- architectures


def convnet_depth(height: int, width: int) -> int:
    """ConvNet's default depth for an input of ``height`` x ``width``: 3, the reference's, or less.

    The largest depth <= 3 at which every convolution and its norm see a map of at least 4x4
    (28x28 inputs count as the 32x32 their first convolution pads them to): 3 for 32x32 and
    28x28, 2 for the 8x8 digits, 1 below 8x8. At depth 3 on 8x8 the last instance norm
    normalises 2x2 maps (four values per channel), which makes gradient matching blow the images
    up (DC on digits reaches about +-18 and chance accuracy) and DD evaluate at chance; depth 2
    keeps every method stable there.
    """
    size = 32 if (height, width) == (28, 28) else min(height, width)
    depth = 3
    while depth > 1 and size // 2 ** (depth - 1) < 4:
        depth -= 1
    return depth


class ConvNet(nn.Module):
    """DC's ConvNet: ``depth`` x [Conv3x3 -> norm -> act -> pool] -> flatten -> Linear.

    The first conv pads 3 on 28x28 inputs (28 -> 32, as the reference), 1 otherwise.
    ``depth=None`` takes :func:`convnet_depth` of the input (3 on 28x28 and 32x32, 2 on 8x8).
    """

    num_classes: int
    width: int = 128
    depth: Optional[int] = None
    norm: str = "instance"
    act: str = "relu"
    pool: str = "avg"
    init_scheme: str = "torch"

    def __post_init__(self):
        _canonical(self.norm, _NORMS, _NORM_ALIASES, "norm")
        _canonical(self.act, tuple(_ACTIVATIONS), _ACT_ALIASES, "activation")
        _canonical(self.pool, _POOLS, _POOL_ALIASES, "pooling")
        if self.norm in ("group", "groupnorm") and self.width % 4:
            raise ValueError(f"group norm uses 4 groups; width {self.width} is not divisible by 4")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, features_only: bool = False) -> Array:
        norm = _canonical(self.norm, _NORMS, _NORM_ALIASES, "norm")
        act = _ACTIVATIONS[_canonical(self.act, tuple(_ACTIVATIONS), _ACT_ALIASES, "activation")]
        pool = _canonical(self.pool, _POOLS, _POOL_ALIASES, "pooling")
        depth = convnet_depth(*x.shape[1:3]) if self.depth is None else self.depth
        for d in range(depth):
            padding = 3 if d == 0 and tuple(x.shape[1:3]) == (28, 28) else 1
            x = _conv(x, self.width, 3, self.init_scheme, padding=padding, name=f"conv{d}")
            x = act(_norm(x, norm, f"norm{d}"))
            if pool != "none":
                if min(x.shape[1:3]) < 2:
                    raise ValueError(f"ConvNet depth {depth} pools a {x.shape[1]}x"
                                     f"{x.shape[2]} map at layer {d}; use a smaller depth")
                window = (2, 2)
                x = (nn.avg_pool if pool == "avg" else nn.max_pool)(x, window, window)
        x = _flatten(x)
        if features_only:
            return x
        return _dense(x, self.num_classes, self.init_scheme, name="classifier")


class MLP(nn.Module):
    """flatten -> Linear(128) -> ReLU -> Linear(128) -> ReLU -> Linear(C)."""

    num_classes: int
    width: int = 128
    init_scheme: str = "torch"

    @nn.compact
    def __call__(self, x: Array, features_only: bool = False) -> Array:
        x = _flatten(x)
        x = nn.relu(_dense(x, self.width, self.init_scheme, name="fc1"))
        x = nn.relu(_dense(x, self.width, self.init_scheme, name="fc2"))
        if features_only:
            return x
        return _dense(x, self.num_classes, self.init_scheme, name="classifier")


class LeNet(nn.Module):
    """LeNet-5 as in DC and DD: 32x32 input (28x28 padded by 2 in the first conv), 84 features."""

    num_classes: int
    init_scheme: str = "torch"

    @nn.compact
    def __call__(self, x: Array, features_only: bool = False) -> Array:
        s = self.init_scheme
        x, extra = _to_32(x)
        x = _max_pool(nn.relu(_conv(x, 6, 5, s, padding=extra, name="conv1")))
        x = _max_pool(nn.relu(_conv(x, 16, 5, s, name="conv2")))
        x = _flatten(x)
        x = nn.relu(_dense(x, 120, s, name="fc1"))
        x = nn.relu(_dense(x, 84, s, name="fc2"))
        if features_only:
            return x
        return _dense(x, self.num_classes, s, name="classifier")


class AlexNet(nn.Module):
    """DC's AlexNet for 32x32 inputs (``norm='batch'`` is the reference's AlexNetBN)."""

    num_classes: int
    norm: str = "none"
    init_scheme: str = "torch"

    def __post_init__(self):
        _canonical(self.norm, _NORMS, _NORM_ALIASES, "norm")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, features_only: bool = False) -> Array:
        norm = _canonical(self.norm, _NORMS, _NORM_ALIASES, "norm")
        x, extra = _to_32(x)
        layers = ((128, 5, 2 + extra, True), (192, 5, 2, True), (256, 3, 1, False),
                  (192, 3, 1, False), (192, 3, 1, True))
        for i, (features, kernel, padding, pool) in enumerate(layers):
            x = _conv(x, features, kernel, self.init_scheme, padding=padding, name=f"conv{i}")
            x = nn.relu(_norm(x, norm, f"norm{i}"))
            if pool:
                x = _max_pool(x)
        x = _flatten(x)
        if features_only:
            return x
        return _dense(x, self.num_classes, self.init_scheme, name="classifier")


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """DC's VGG11: Conv3x3 + norm + ReLU blocks, 5 max-pools, Linear(8 * width, C)."""

    num_classes: int
    width: int = 64
    norm: str = "instance"
    init_scheme: str = "torch"

    def __post_init__(self):
        if _canonical(self.norm, _NORMS, _NORM_ALIASES, "norm") not in ("instance", "batch"):
            raise ValueError(f"VGG11 norm must be 'instance' or 'batch', got {self.norm!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, features_only: bool = False) -> Array:
        norm = _canonical(self.norm, _NORMS, _NORM_ALIASES, "norm")
        x, extra = _to_32(x)
        i = 0
        for v in _VGG11:
            if v == "M":
                x = _max_pool(x)
                continue
            x = _conv(x, v * self.width // 64, 3, self.init_scheme, padding=1 + (extra if i == 0 else 0),
                      name=f"conv{i}")
            x = nn.relu(_norm(x, norm, f"norm{i}"))
            i += 1
        x = _flatten(x)
        if features_only:
            return x
        return _dense(x, self.num_classes, self.init_scheme, name="classifier")


class BasicBlock(nn.Module):
    """ResNet basic block: relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))."""

    features: int
    stride: int
    norm: str
    init_scheme: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = self.init_scheme
        y = _conv(x, self.features, 3, s, stride=self.stride, padding=1, use_bias=False,
                  name="conv1")
        y = nn.relu(_norm(y, self.norm, "norm1"))
        y = _conv(y, self.features, 3, s, padding=1, use_bias=False, name="conv2")
        y = _norm(y, self.norm, "norm2")
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _conv(x, self.features, 1, s, stride=self.stride, use_bias=False,
                      name="shortcut_conv")
            x = _norm(x, self.norm, "shortcut_norm")
        return nn.relu(y + x)


class ResNet18(nn.Module):
    """DC's CIFAR ResNet-18 (He et al. 2016): stem conv, 4 stages of 2 BasicBlocks, global pool."""

    num_classes: int
    width: int = 64
    norm: str = "instance"
    init_scheme: str = "torch"

    def __post_init__(self):
        if _canonical(self.norm, _NORMS, _NORM_ALIASES, "norm") not in ("instance", "batch"):
            raise ValueError(f"ResNet18 norm must be 'instance' or 'batch', got {self.norm!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, features_only: bool = False) -> Array:
        norm = _canonical(self.norm, _NORMS, _NORM_ALIASES, "norm")
        if tuple(x.shape[1:3]) != (28, 28):  # 28 -> 14 -> 7 -> 4 natively, like 32
            x, _ = _to_32(x)
        x = _conv(x, self.width, 3, self.init_scheme, padding=1, use_bias=False, name="conv1")
        x = nn.relu(_norm(x, norm, "norm1"))
        for stage, mult in enumerate((1, 2, 4, 8)):
            for b in range(2):
                stride = 2 if stage > 0 and b == 0 else 1
                x = BasicBlock(self.width * mult, stride, norm, self.init_scheme,
                               name=f"layer{stage + 1}_{b}")(x)
        x = jnp.mean(x, axis=(1, 2))
        if features_only:
            return x
        return _dense(x, self.num_classes, self.init_scheme, name="classifier")


class AlexCifarNet(nn.Module):
    """DD's AlexCifarNet (the TensorFlow CIFAR-10 tutorial network); DD's init by default."""

    num_classes: int
    init_scheme: str = "dd"

    @nn.compact
    def __call__(self, x: Array, features_only: bool = False) -> Array:
        s = self.init_scheme
        lrn = functools.partial(local_response_norm, size=4, alpha=0.001 / 9.0, beta=0.75, k=1.0)
        x, extra = _to_32(x)
        x = nn.relu(_conv(x, 64, 5, s, padding=2 + extra, name="conv1"))
        x = lrn(_max_pool(x, 3, 2, 1))
        x = nn.relu(_conv(x, 64, 5, s, padding=2, name="conv2"))
        x = _max_pool(lrn(x), 3, 2, 1)
        x = _flatten(x)
        x = nn.relu(_dense(x, 384, s, name="fc1"))
        x = nn.relu(_dense(x, 192, s, name="fc2"))
        if features_only:
            return x
        return _dense(x, self.num_classes, s, name="classifier")


_p = functools.partial
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "ConvNet": ConvNet,
    "MLP": MLP,
    "LeNet": LeNet,
    "AlexNet": AlexNet,
    "AlexNetBN": _p(AlexNet, norm="batch"),
    "VGG11": VGG11,
    "VGG11BN": _p(VGG11, norm="batch"),
    "ResNet18": ResNet18,
    "ResNet18BN": _p(ResNet18, norm="batch"),
    "AlexCifarNet": AlexCifarNet,
    **{f"ConvNetW{w}": _p(ConvNet, width=w) for w in (32, 64, 128, 256)},
    **{f"ConvNetD{d}": _p(ConvNet, depth=d) for d in (1, 2, 3, 4)},
    "ConvNetAS": _p(ConvNet, act="sigmoid"),
    "ConvNetAR": _p(ConvNet, act="relu"),
    "ConvNetAL": _p(ConvNet, act="leaky_relu"),
    "ConvNetASwish": _p(ConvNet, act="swish"),
    "ConvNetASwishBN": _p(ConvNet, act="swish", norm="batch"),
    "ConvNetNN": _p(ConvNet, norm="none"),
    "ConvNetBN": _p(ConvNet, norm="batch"),
    "ConvNetLN": _p(ConvNet, norm="layer"),
    "ConvNetIN": _p(ConvNet, norm="instance"),
    "ConvNetGN": _p(ConvNet, norm="group"),
    "ConvNetNP": _p(ConvNet, pool="none"),
    "ConvNetMP": _p(ConvNet, pool="max"),
    "ConvNetAP": _p(ConvNet, pool="avg"),
}
"""Registry: name -> Linen constructor ``(num_classes=..., init_scheme=..., **arch_kwargs)``."""
del _p


def list_architectures() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(ARCHITECTURES)


# ----------------------------------------------------------------------------- adapters


def from_linen(module: nn.Module, sample_input: Array, *,
               embed_method: Union[str, Callable[..., Array], None] = None) -> Model:
    """Wrap a Linen module whose only variable collection is ``'params'``.

    Args:
        module: the module; ``module(x)`` must return logits.
        sample_input: an array (or ``jax.ShapeDtypeStruct``) with the input's shape and dtype
            (batch size irrelevant); only its shape and dtype are used.
        embed_method: optional method (name, or function ``f(module, x)``) passed as
            ``module.apply(..., method=embed_method)`` to compute the features for ``embed``.

    Returns:
        ``Model`` with ``init(key) = module.init(key, zeros_like(sample))['params']`` and
        ``apply(params, x) = module.apply({'params': params}, x)``.

    Raises:
        ValueError: if the module creates another collection (e.g. ``batch_stats``), whose updates
            would make ``apply`` impure; use :func:`from_functions` for such models.
    """
    shape, dtype = tuple(sample_input.shape), sample_input.dtype
    collections = jax.eval_shape(lambda k: module.init(k, jnp.zeros(shape, dtype)),
                                 jax.random.key(0))
    extra = sorted(set(collections) - {"params"})
    if extra:
        raise ValueError(f"from_linen needs a module whose only collection is 'params', "
                         f"{type(module).__name__} also creates {extra}")

    def init(key: PRNGKey) -> Params:
        return module.init(key, jnp.zeros(shape, dtype))["params"]

    def apply(params: Params, x: Array) -> Array:
        return module.apply({"params": params}, x)

    embed = None
    if embed_method is not None:
        def embed(params: Params, x: Array) -> Array:
            return module.apply({"params": params}, x, method=embed_method)

    return Model(init, apply, embed)


def from_nnx(module: Union[nnx.Module, Callable[[nnx.Rngs], nnx.Module]], *,
             embed_method: Optional[str] = None) -> Model:
    """Wrap an NNX module through ``nnx.split`` / ``nnx.merge`` so that ``apply`` is pure.

    Args:
        module: an NNX module instance, or a factory ``rngs -> module``. With a factory,
            ``init(key)`` builds a fresh module from ``nnx.Rngs(key)``; with an instance, ``init``
            returns that instance's parameters whatever the key.
        embed_method: optional name of a method of the module returning the (N, F) features.

    Returns:
        ``Model`` whose params are the pure dict of the ``nnx.Param`` variables. Every other
        variable (batch statistics, RNG state) is frozen at the template's value; updates made
        inside ``apply`` are discarded.
    """
    factory = None if isinstance(module, nnx.Module) else module
    template = module if factory is None else factory(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(template, nnx.Param, ...)
    params, rest = params.to_pure_dict(), rest.to_pure_dict()

    def init(key: PRNGKey) -> Params:
        if factory is None:
            return params
        return nnx.split(factory(nnx.Rngs(key)), nnx.Param, ...)[1].to_pure_dict()

    def apply(p: Params, x: Array) -> Array:
        return nnx.merge(graphdef, p, rest)(x)

    embed = None
    if embed_method is not None:
        def embed(p: Params, x: Array) -> Array:
            return getattr(nnx.merge(graphdef, p, rest), embed_method)(x)

    return Model(init, apply, embed)


def from_functions(init: Callable[[PRNGKey], Params], apply: Callable[[Params, Array], Array],
                   embed: Optional[Callable[[Params, Array], Array]] = None) -> Model:
    """Any pure ``init(key) -> params`` / ``apply(params, x) -> logits`` (/ ``embed``) as a Model."""
    for name, f in (("init", init), ("apply", apply), ("embed", embed)):
        if f is not None and not callable(f):
            raise TypeError(f"{name} must be callable, got {type(f).__name__}")
    return Model(init, apply, embed)


# ----------------------------------------------------------------------------- factory


def get_model(arch: str, image_shape: Sequence[int], num_classes: int, *,
              init: Optional[str] = None, **arch_kwargs: Any) -> Model:
    """Build a registered architecture as a pure ``Model``.

    Args:
        arch: a name from :data:`ARCHITECTURES` (see :func:`list_architectures`).
        image_shape: (H, W, C) of one input image.
        num_classes: number of logits.
        init: ``'torch'`` (PyTorch defaults, as the reference code), ``'flax'`` (Flax defaults) or
            ``'dd'`` (xavier_normal weights, zero biases); None takes the architecture's default
            (``'dd'`` for AlexCifarNet, ``'torch'`` for every other).
        **arch_kwargs: constructor options, e.g. ``width``, ``depth``, ``norm``, ``act``, ``pool``
            for ConvNet.

    Returns:
        ``Model(init, apply, embed)``; ``embed`` returns the input of the final linear layer.

    Raises:
        ValueError: unknown architecture, init scheme, option value or malformed shape.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(list_architectures())}")
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if init is not None:
        if init not in INIT_SCHEMES:
            raise ValueError(f"unknown init {init!r}; expected one of {list(INIT_SCHEMES)}")
        arch_kwargs["init_scheme"] = init
    module = ARCHITECTURES[arch](num_classes=int(num_classes), **arch_kwargs)
    sample = jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32)
    return from_linen(module, sample,
                      embed_method=lambda m, x: m(x, features_only=True))
