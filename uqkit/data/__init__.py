"""Data loaders that never download: deterministic given a seed, returning plain tensors.

* :func:`fashion_mnist` reads local IDX files (Debian ``dataset-fashion-mnist``, ``$UQKIT_DATA`` or ``root``);
  :func:`rotated_fashion_mnist` and :func:`rotate_images` give the rotation shift of Ovadia et al. (2019).
* :func:`digits_ood` (far-OOD) and :func:`holdout_split` (near-OOD by held-out classes).
* :func:`mnist1d` generates MNIST-1D locally; :func:`two_moons` and :func:`two_moons_ood` are 2-D toys.
* Every loader returns a :class:`LabeledData`; :func:`train_val_split` splits one reproducibly.
"""

from uqkit.data.fashion_mnist import FASHION_MNIST_CLASSES, DatasetNotFoundError, fashion_mnist
from uqkit.data.idx import read_idx
from uqkit.data.labeled import LabeledData, train_val_split
from uqkit.data.mnist1d import mnist1d
from uqkit.data.ood import digits_ood, holdout_split
from uqkit.data.shift import ROTATION_ANGLES, rotate_images, rotated_fashion_mnist
from uqkit.data.toy import TWO_MOONS_OOD_CENTER, TWO_MOONS_OOD_STD, two_moons, two_moons_ood

__all__ = [
    "FASHION_MNIST_CLASSES",
    "ROTATION_ANGLES",
    "TWO_MOONS_OOD_CENTER",
    "TWO_MOONS_OOD_STD",
    "DatasetNotFoundError",
    "LabeledData",
    "digits_ood",
    "fashion_mnist",
    "holdout_split",
    "mnist1d",
    "read_idx",
    "rotate_images",
    "rotated_fashion_mnist",
    "train_val_split",
    "two_moons",
    "two_moons_ood",
]
