"""Image augmentations as pure JAX functions of a key.

Two families live here:

* **DSA**, differentiable Siamese augmentation (Zhao & Bilen, "Dataset Condensation with
  Differentiable Siamese Augmentation", ICML 2021): six transform families (color, crop, cutout,
  flip, scale, rotate). One call draws *one* family from the key (the reference's ``aug_mode='S'``)
  and its parameters. With ``per_sample=False`` every image of the batch gets the same transform,
  and since the parameters depend only on the key (never on the batch), calling :func:`dsa` with
  the same key on a real and a synthetic batch applies the identical transform to both: the
  *Siamese* use inside gradient / distribution matching. Every transform is linear in the pixels
  (bilinear resampling, masks, affine colour maps), so gradients flow to the images.
  With ``per_sample=True`` each image gets its own parameters (evaluation, ``AUGMENTATIONS['dsa']``).
* **DC's MNIST evaluation augmentation** (``AUGMENTATIONS['dc_mnist']``, Zhao et al. ICLR 2021,
  ``utils.augment`` with ``get_daparam``'s MNIST strategy 'crop_scale_rotate'): per image, one of
  crop (4 px shift, mean fill), scale (each axis x U(0.8, 1.2), zero fill) or rotate (integer
  degrees in [-45, 45), mean fill). ``AUGMENTATIONS['dc_mnist_noise']`` adds the reference's
  fourth family, noise (std 0.001), to the draw; the reference never uses it for MNIST.

Images are NHWC in the dataset's normalised space, as everywhere in jaxdd. A single image
(H, W, C) is accepted too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxdd.types import Array, PRNGKey

FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
"""DSA's transform families, in the reference's order."""

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
"""The reference strategy for Fashion-MNIST, CIFAR-10/100 (and any dataset not listed)."""

DSA_STRATEGIES: dict[str, str] = {
    "mnist": "color_crop_cutout_scale_rotate",
    "svhn": "color_crop_cutout_scale_rotate",
    "usps": "color_crop_cutout_scale_rotate",
    "digits": "color_crop_cutout_scale_rotate",
    "fashion_mnist": DEFAULT_STRATEGY,
    "cifar10": DEFAULT_STRATEGY,
    "cifar100": DEFAULT_STRATEGY,
}
"""The reference's strategy per dataset: no flip for digits (a flipped 2 is no 2)."""


def dsa_strategy(dataset: str) -> str:
    """DSA strategy used by the reference for ``dataset`` (default: all six families)."""
    return DSA_STRATEGIES.get(dataset, DEFAULT_STRATEGY)


@dataclasses.dataclass(frozen=True)
class DSAParams:
    """Ranges of the DSA families (the reference's ``ParamDiffAug``).

    Attributes:
        brightness: additive brightness U(-b/2, b/2).
        saturation: factor U(0, s) on the deviation from the channel mean.
        contrast: factor U(c, 1 + c) on the deviation from the image mean.
        crop: shift up to ``round(crop * side)`` pixels per axis, zero fill.
        cutout: zero square of ``round(cutout * side)`` pixels per side.
        flip: probability of a horizontal flip.
        scale: each axis scaled by U(1/scale, scale).
        rotate: rotation angle U(-rotate, rotate) degrees.
    """

    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop: float = 0.125
    cutout: float = 0.5
    flip: float = 0.5
    scale: float = 1.2
    rotate: float = 15.0


class _Transform(NamedTuple):
    """Parameters of one image's transform; the identity for families not drawn."""

    brightness: Array  # () additive
    saturation: Array  # () factor
    contrast: Array  # () factor
    theta: Array  # (2, 2) affine on normalised (x = column, y = row) coordinates, about the centre
    shift: Array  # (2,) source offset in pixels (rows, columns)
    cut_center: Array  # (2,) int32 cutout centre (rows, columns)
    cut_on: Array  # () bool


def _parse(strategy: str) -> tuple[str, ...]:
    if strategy in ("", "none", "None"):
        return ()
    names = tuple(strategy.split("_"))
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown DSA families {unknown}; known: {', '.join(FAMILIES)}")
    return names


def _sample_transform(key: PRNGKey, family: Array, families: tuple[str, ...], hw: tuple[int, int], p: DSAParams) -> _Transform:
    """Draws every family's parameters from ``key`` and keeps those of ``families[family]``."""
    height, width = hw
    k = jax.random.split(key, 10)

    def chosen(name):
        return (family == families.index(name)) if name in families else jnp.bool_(False)

    one, zero = jnp.float32(1.0), jnp.float32(0.0)
    color = chosen("color")
    brightness = jnp.where(color, (jax.random.uniform(k[0]) - 0.5) * p.brightness, zero)
    saturation = jnp.where(color, jax.random.uniform(k[1]) * p.saturation, one)
    contrast = jnp.where(color, jax.random.uniform(k[2]) + p.contrast, one)

    shift_rows, shift_cols = int(height * p.crop + 0.5), int(width * p.crop + 0.5)
    crop_shift = jnp.stack(
        [
            jax.random.randint(k[3], (), -shift_rows, shift_rows + 1),
            jax.random.randint(k[4], (), -shift_cols, shift_cols + 1),
        ]
    ).astype(jnp.float32)
    shift = jnp.where(chosen("crop"), crop_shift, jnp.zeros(2, jnp.float32))

    eye = jnp.eye(2, dtype=jnp.float32)
    flip = jnp.where(jax.random.uniform(k[5]) < p.flip, -1.0, 1.0)
    flip_theta = jnp.array([[1.0, 0.0], [0.0, 1.0]], jnp.float32).at[0, 0].set(flip)
    sx, sy = jax.random.uniform(k[6], (2,)) * (p.scale - 1.0 / p.scale) + 1.0 / p.scale
    scale_theta = jnp.diag(jnp.stack([sx, sy]))
    angle = (jax.random.uniform(k[7]) - 0.5) * 2.0 * p.rotate / 180.0 * math.pi
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotate_theta = jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])])
    theta = jnp.where(chosen("flip"), flip_theta, eye)
    theta = jnp.where(chosen("scale"), scale_theta, theta)
    theta = jnp.where(chosen("rotate"), rotate_theta, theta)

    cut_h, cut_w = int(height * p.cutout + 0.5), int(width * p.cutout + 0.5)
    cut_center = jnp.stack(
        [
            jax.random.randint(k[8], (), 0, height + (1 - cut_h % 2)),
            jax.random.randint(k[9], (), 0, width + (1 - cut_w % 2)),
        ]
    )
    return _Transform(brightness, saturation, contrast, theta, shift, cut_center, chosen("cutout"))


def warp(image: Array, theta: Array, shift: Array) -> Array:
    """Bilinear resampling of one (H, W, C) image with zero fill outside (``grid_sample``).

    The output pixel at offset ``d = (col - cx, row - cy)`` from the centre reads the input at
    ``centre + D theta D^-1 d + shift`` with ``D = diag(cx, cy)``, i.e. ``theta`` acts on the
    normalised coordinates of PyTorch's ``affine_grid(align_corners=True)``. Linear in ``image``.
    """
    height, width = image.shape[:2]
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    du, dv = cols - cx, rows - cy
    src_cols = theta[0, 0] * du + theta[0, 1] * (cx / max(cy, 1e-6)) * dv + cx + shift[1]
    src_rows = theta[1, 0] * (cy / max(cx, 1e-6)) * du + theta[1, 1] * dv + cy + shift[0]
    r0, c0 = jnp.floor(src_rows), jnp.floor(src_cols)
    wr, wc = src_rows - r0, src_cols - c0
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)

    def tap(r, c):
        valid = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        value = image[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
        return value * valid[..., None].astype(image.dtype)

    return (
        ((1 - wr) * (1 - wc))[..., None] * tap(r0, c0)
        + ((1 - wr) * wc)[..., None] * tap(r0, c0 + 1)
        + (wr * (1 - wc))[..., None] * tap(r0 + 1, c0)
        + (wr * wc)[..., None] * tap(r0 + 1, c0 + 1)
    )


def _apply_transform(t: _Transform, image: Array, cutout: tuple[int, int]) -> Array:
    x = image + t.brightness
    mean = x.mean(axis=-1, keepdims=True)
    x = (x - mean) * t.saturation + mean
    mean = x.mean()
    x = (x - mean) * t.contrast + mean
    x = warp(x, t.theta, t.shift)
    height, width = image.shape[:2]
    r0 = t.cut_center[0] - cutout[0] // 2
    c0 = t.cut_center[1] - cutout[1] // 2
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= r0) & (rows < r0 + cutout[0]) & (cols >= c0) & (cols < c0 + cutout[1])
    keep = jnp.where(t.cut_on & inside, 0.0, 1.0).astype(x.dtype)
    return x * keep[..., None]


def dsa(
    key: PRNGKey,
    x: Array,
    strategy: str = DEFAULT_STRATEGY,
    *,
    per_sample: bool = False,
    params: DSAParams = DSAParams(),
) -> Array:
    """Differentiable Siamese augmentation of a batch (Zhao & Bilen 2021, ``DiffAugment``).

    One family of ``strategy`` is drawn from ``key`` for the whole call, then its parameters:
    shared by all images (``per_sample=False``, the Siamese mode used in matching: the same key
    on the real and on the synthetic batch gives the same transform) or one draw per image
    (``per_sample=True``, used when training evaluation networks).

    Args:
        key: typed key; the transform is a deterministic function of it (and of the image size).
        x: (N, H, W, C) or (H, W, C) images.
        strategy: families joined by '_' (e.g. 'color_crop_cutout_scale_rotate'); 'none' or ''
            returns ``x``.
        per_sample: independent parameters per image.
        params: ranges of the families.

    Returns:
        The augmented images, same shape; differentiable with respect to ``x``.
    """
    families = _parse(strategy)
    if not families:
        return x
    if x.ndim == 3:
        return dsa(key, x[None], strategy, per_sample=per_sample, params=params)[0]
    height, width = x.shape[1:3]
    cutout = (int(height * params.cutout + 0.5), int(width * params.cutout + 0.5))
    family_key, param_key = jax.random.split(key)
    family = jax.random.randint(family_key, (), 0, len(families))

    def sample(k):
        return _sample_transform(k, family, families, (height, width), params)

    def apply(t, image):
        return _apply_transform(t, image, cutout)

    if per_sample:
        transforms = jax.vmap(sample)(jax.random.split(param_key, x.shape[0]))
        return jax.vmap(apply)(transforms, x)
    return jax.vmap(apply, in_axes=(None, 0))(sample(param_key), x)


DC_FAMILIES: tuple[str, ...] = ("crop", "scale", "rotate", "noise")
"""The transform families of DC's ``utils.augment``, in the reference's order."""

DC_MNIST_STRATEGY = "crop_scale_rotate"
"""The reference's MNIST evaluation strategy (``get_daparam``): no noise."""


def dc_mnist_augment(
    key: PRNGKey,
    x: Array,
    crop: int = 4,
    scale: float = 0.2,
    rotate: int = 45,
    noise: float = 0.001,
    *,
    strategy: str = DC_MNIST_STRATEGY,
) -> Array:
    """DC's evaluation augmentation: one random transform per image (``utils.augment``).

    Per image, uniformly one family of ``strategy`` (families joined by '_', from
    :data:`DC_FAMILIES`): crop (shift by an integer in [-crop, crop) per axis, the uncovered border
    filled with the batch's channel mean), scale (height and width each by
    U(1 - scale, 1 + scale) about the centre, zero fill), rotate (integer degrees in
    [-rotate, rotate), mean fill) or noise (Gaussian, std ``noise``). The default is the
    reference's MNIST strategy 'crop_scale_rotate' (``get_daparam``); 'crop_scale_rotate_noise'
    draws noise for a quarter of the images instead. Resampling is bilinear (the reference uses
    nearest resizing for scale and cubic splines for rotation).

    Args:
        key: typed key.
        x: (N, H, W, C) or (H, W, C) images.
        crop, scale, rotate, noise: ranges of the families.
        strategy: the families to draw from.

    Returns:
        Augmented images of the same shape.
    """
    if x.ndim == 3:
        return dc_mnist_augment(key, x[None], crop, scale, rotate, noise, strategy=strategy)[0]
    names = tuple(strategy.split("_"))
    unknown = [n for n in names if n not in DC_FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown DC augmentation families {unknown}; known: {', '.join(DC_FAMILIES)}")
    family_ids = jnp.array([DC_FAMILIES.index(n) for n in names], jnp.int32)
    channel_mean = x.mean(axis=(0, 1, 2))  # (C,)

    def one(k, image):
        kc, kr, ks, ka, kn = jax.random.split(k, 5)
        choice = family_ids[jax.random.randint(kc, (), 0, len(names))]  # 0 crop, 1 scale, 2 rotate, 3 noise
        shift = jax.random.randint(kr, (2,), -crop, crop).astype(jnp.float32)
        factors = jax.random.uniform(ks, (2,), minval=1.0 - scale, maxval=1.0 + scale)
        angle = jax.random.randint(ka, (), -rotate, rotate).astype(jnp.float32) * (math.pi / 180.0)
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        eye = jnp.eye(2, dtype=jnp.float32)
        theta = jnp.where(choice == 1, jnp.diag(1.0 / factors), eye)
        theta = jnp.where(choice == 2, jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])]), theta)
        shift = jnp.where(choice == 0, shift, jnp.zeros(2, jnp.float32))
        fill = jnp.where(choice == 1, 0.0, jnp.where(choice == 2, channel_mean.mean(), channel_mean))
        fill = jnp.broadcast_to(fill, channel_mean.shape)
        out = warp(image - fill, theta, shift) + fill
        return out + jnp.where(choice == 3, noise, 0.0) * jax.random.normal(kn, image.shape, image.dtype)

    return jax.vmap(one)(jax.random.split(key, x.shape[0]), x)


def _dc_with_noise(key: PRNGKey, x: Array) -> Array:
    """DC's augmentation with the noise family added ('crop_scale_rotate_noise')."""
    return dc_mnist_augment(key, x, strategy="crop_scale_rotate_noise")


def _dsa_per_sample(strategy: str) -> Callable[[PRNGKey, Array], Array]:
    def augment(key: PRNGKey, x: Array) -> Array:
        return dsa(key, x, strategy, per_sample=True)

    augment.__doc__ = f"DSA '{strategy}' with per-sample parameters (evaluation)."
    return augment


AUGMENTATIONS: dict[str, Callable[[PRNGKey, Array], Array]] = {
    "dc_mnist": dc_mnist_augment,
    "dc_mnist_noise": _dc_with_noise,
    "dsa": _dsa_per_sample(DEFAULT_STRATEGY),
    "dsa_noflip": _dsa_per_sample(DSA_STRATEGIES["mnist"]),
}
"""Per-sample augmentations ``f(key, x) -> x`` that evaluation protocols name: 'dc_mnist' (DC's
MNIST augmentation, the reference's 'crop_scale_rotate'), 'dc_mnist_noise' (the same with DC's noise
family added), 'dsa' (all six DSA families, per-sample parameters) and 'dsa_noflip' (the
reference's MNIST / SVHN strategy, without flip)."""


__all__ = [
    "AUGMENTATIONS",
    "DC_FAMILIES",
    "DC_MNIST_STRATEGY",
    "DEFAULT_STRATEGY",
    "DSAParams",
    "DSA_STRATEGIES",
    "FAMILIES",
    "dc_mnist_augment",
    "dsa",
    "dsa_strategy",
    "warp",
]
