"""jaxdd: dataset distillation in JAX/Flax.

The public API in one screen; every name below is a pure function or a small data type.
"""

from jaxdd import augment, coreset, krr, sampling, sharding
from jaxdd.augment import dsa, dsa_strategy
from jaxdd.coreset import class_mean, herding, kcenter, random_real
from jaxdd.data import DATASETS, Dataset, DatasetInfo, load_dataset
from jaxdd.distill import NonFiniteError, run
from jaxdd.evaluate import PROTOCOLS, EvalResult, evaluate_synset, get_protocol, train_models
from jaxdd.krr import analytic_labels, krr_loss, ridge_solve
from jaxdd.io import SynSetError, load_synset, save_synset
from jaxdd.methods import METHODS, DistillRequest, IterativeMethod, MethodSpec, get_method, register, resolve_config
from jaxdd.sampling import RealByClass, group_by_class, sample_batch, sample_per_class
from jaxdd.sharding import make_mesh
from jaxdd.models import ARCHITECTURES, from_functions, from_linen, from_nnx, get_model
from jaxdd.train import Protocol, accuracy, loss_fn, train_on_set
from jaxdd.types import Model, Params, PRNGKey, SynSet

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "DATASETS",
    "METHODS",
    "PROTOCOLS",
    "Dataset",
    "DatasetInfo",
    "DistillRequest",
    "EvalResult",
    "IterativeMethod",
    "MethodSpec",
    "Model",
    "NonFiniteError",
    "Params",
    "PRNGKey",
    "Protocol",
    "RealByClass",
    "SynSet",
    "SynSetError",
    "accuracy",
    "analytic_labels",
    "augment",
    "class_mean",
    "coreset",
    "dsa",
    "dsa_strategy",
    "evaluate_synset",
    "from_functions",
    "from_linen",
    "from_nnx",
    "get_method",
    "get_model",
    "get_protocol",
    "group_by_class",
    "herding",
    "kcenter",
    "krr",
    "krr_loss",
    "load_dataset",
    "load_synset",
    "loss_fn",
    "make_mesh",
    "random_real",
    "register",
    "resolve_config",
    "ridge_solve",
    "run",
    "sample_batch",
    "sample_per_class",
    "sampling",
    "save_synset",
    "sharding",
    "train_models",
    "train_on_set",
]
