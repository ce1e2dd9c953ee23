"""Coreset baselines of the DC paper as methods: herding, k-center, forgetting, k-means.

Herding and k-center select in the feature space (``Model.embed``) of the distillation network
trained on the full real data; forgetting counts forgetting events during that same training
(Toneva et al., ICLR 2019); k-means takes per-class centroids in pixel space (DD's baseline).
The selections themselves live in :mod:`jaxdd.coreset`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from jaxdd import coreset
from jaxdd.methods import DistillRequest, MethodSpec, register, request_config
from jaxdd.progress import progress_bar


class FeatureConfig(NamedTuple):
    """Options of the feature-space coresets (herding, k-center, forgetting).

    Attributes:
        feature_epochs: epochs of SGD (lr 0.01, momentum 0.9, batch 256) of the feature network on
            the full real data (jaxdd's choice; the DC paper does not state how it trained it).
    """

    feature_epochs: int = 1


FEATURE_EPOCHS: dict[str, int] = {"smoke": 2, "cpu": 1, "paper": 20}
"""Epochs of the feature network by preset."""


def feature_config(preset: str, ipc: int, dataset: str) -> FeatureConfig:
    """The preset's :class:`FeatureConfig`."""
    if preset not in FEATURE_EPOCHS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(FEATURE_EPOCHS)}")
    return FeatureConfig(feature_epochs=FEATURE_EPOCHS[preset])


class KMeansConfig(NamedTuple):
    """Options of the k-means baseline.

    Attributes:
        iterations: Lloyd iterations per class.
    """

    iterations: int = 30


def kmeans_config(preset: str, ipc: int, dataset: str) -> KMeansConfig:
    """:class:`KMeansConfig` (the same for every preset)."""
    return KMeansConfig()


def _trained(request: DistillRequest):
    """Feature-network params and forgetting counts (:func:`jaxdd.coreset.forgetting_protocol`),
    with a progress bar of its steps if ``request.progress``."""
    epochs = request_config(request, feature_config).feature_epochs
    protocol = coreset.forgetting_protocol(epochs)
    steps = protocol.total_steps(request.images.shape[0])
    with progress_bar(steps, request.progress, "coreset features", "step"):
        params, counts = jax.block_until_ready(jax.jit(coreset.train_and_count_forgetting, static_argnums=(1, 4))(
            jax.random.fold_in(request.key, 1), request.model, request.images, request.labels, epochs
        ))
    recorded = {"feature_epochs": epochs, "feature_lr": protocol.lr, "feature_momentum": protocol.momentum,
                "feature_batch": protocol.batch_size}
    return params, counts, recorded


def _by_features(select):
    def make(request: DistillRequest):
        if request.model.embed is None:
            raise ValueError("this coreset needs a model with an embed function")
        params, _, config = _trained(request)
        features = coreset.embed_all(request.model, params, request.images)
        return select(features, request.images, request.labels, request.num_classes, request.ipc), config

    return make


def _forgetting(request: DistillRequest):
    _, counts, config = _trained(request)
    synset = coreset.forgetting(
        jax.random.fold_in(request.key, 2), counts, request.images, request.labels, request.num_classes, request.ipc
    )
    return synset, config


def _kmeans(request: DistillRequest):
    iterations = request_config(request, kmeans_config).iterations
    synset = coreset.kmeans(request.key, request.images, request.labels, request.num_classes, request.ipc, iterations)
    return synset, {"kmeans_iterations": iterations}


FEATURES = {"config_type": FeatureConfig, "default_config": feature_config}

register(MethodSpec("herding", "herding on trained-ConvNet features (DC's baseline)", _by_features(coreset.herding), **FEATURES))
register(MethodSpec("kcenter", "greedy k-center on trained-ConvNet features (DC's baseline)", _by_features(coreset.kcenter), **FEATURES))
register(MethodSpec("forgetting", "most forgotten images (Toneva et al. 2019)", _forgetting, **FEATURES))
register(
    MethodSpec(
        "kmeans",
        "per-class k-means centroids in pixel space (DD's baseline)",
        _kmeans,
        config_type=KMeansConfig,
        default_config=kmeans_config,
    )
)
