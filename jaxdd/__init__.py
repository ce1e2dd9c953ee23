"""jaxdd: dataset distillation in JAX/Flax.

The public API in one screen; every name below is a pure function or a small data type.
"""

from jaxdd import augment, continual, coreset, experts, export, krr, sampling, sharding
from jaxdd.augment import dsa, dsa_strategy
from jaxdd.continual import class_split_tasks, run_continual
from jaxdd.coreset import class_mean, herding, kcenter, kmeans, random_real
from jaxdd.data import DATASETS, Dataset, DatasetInfo, load_dataset
from jaxdd.distill import CheckpointError, NonFiniteError, run
from jaxdd.evaluate import PROTOCOLS, EvalResult, evaluate_synset, get_protocol, train_models
from jaxdd.experts import ensure_experts, load_experts, train_experts
from jaxdd.export import export_synset, import_reference
from jaxdd.krr import analytic_labels, krr_loss, ridge_solve
from jaxdd.io import FileCheckError, SynSetError, load_synset, save_synset, write_file_atomically, write_folder_atomically
from jaxdd.methods import METHODS, DistillRequest, IterativeMethod, MethodSpec, get_method, register, resolve_config
from jaxdd.quickstart import compare_to_random
from jaxdd.sampling import RealByClass, group_by_class, sample_batch, sample_classes, sample_per_class, split_per_class
from jaxdd.sharding import make_mesh
from jaxdd.models import ARCHITECTURES, from_functions, from_linen, from_nnx, get_model
from jaxdd.train import CycledGD, Protocol, accuracy, loss_fn, train_loop, train_on_set
from jaxdd.types import Model, Params, PRNGKey, SynSet

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "CycledGD",
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DistillRequest",
    "EvalResult",
    "FileCheckError",
    "IterativeMethod",
    "METHODS",
    "MethodSpec",
    "Model",
    "NonFiniteError",
    "PRNGKey",
    "PROTOCOLS",
    "Params",
    "Protocol",
    "RealByClass",
    "SynSet",
    "SynSetError",
    "accuracy",
    "analytic_labels",
    "augment",
    "class_mean",
    "class_split_tasks",
    "compare_to_random",
    "continual",
    "coreset",
    "dsa",
    "dsa_strategy",
    "ensure_experts",
    "evaluate_synset",
    "experts",
    "export",
    "export_synset",
    "from_functions",
    "from_linen",
    "from_nnx",
    "get_method",
    "get_model",
    "get_protocol",
    "group_by_class",
    "herding",
    "import_reference",
    "kcenter",
    "kmeans",
    "krr",
    "krr_loss",
    "load_dataset",
    "load_experts",
    "load_synset",
    "loss_fn",
    "make_mesh",
    "random_real",
    "register",
    "resolve_config",
    "ridge_solve",
    "run",
    "run_continual",
    "sample_batch",
    "sample_classes",
    "sample_per_class",
    "sampling",
    "save_synset",
    "sharding",
    "split_per_class",
    "train_experts",
    "train_loop",
    "train_models",
    "train_on_set",
    "write_file_atomically",
    "write_folder_atomically",
]
