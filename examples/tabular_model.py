"""Model factories for ``uqkit bench --data TABLE.csv --model examples/tabular_model.py:FACTORY``.

A factory takes no arguments and returns a fresh ``torch.nn.Module``; ``uqkit bench`` calls it once for
every copy a method needs. The model maps ``[B, features]`` (standardised by uqkit with the training
statistics) to one logit per class, or, for regression, to two values per target: the mean, then an
unconstrained scale that uqkit maps to a variance (``softplus + 1e-6``).

The README's run on scikit-learn's breast cancer table, exported to CSV with::

    from sklearn.datasets import load_breast_cancer
    load_breast_cancer(as_frame=True).frame.to_csv("cancer.csv", index=False)

then ``uqkit bench --data cancer.csv --target target --model examples/tabular_model.py:breast_cancer_mlp``.
"""

from __future__ import annotations

from torch import nn

BREAST_CANCER_FEATURES = 30
DIABETES_FEATURES = 10
HIDDEN = 64
DROPOUT = 0.1


def mlp(in_features: int, out_features: int, hidden: int = HIDDEN, dropout: float = DROPOUT) -> nn.Sequential:
    """Two hidden ReLU layers with dropout (which ``mc-dropout`` keeps on at prediction time)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, out_features),
    )


def breast_cancer_mlp() -> nn.Module:
    """scikit-learn's breast cancer table: 30 features, 2 classes (one logit each)."""
    return mlp(BREAST_CANCER_FEATURES, 2)


def diabetes_mlp() -> nn.Module:
    """scikit-learn's diabetes table (regression): 10 features, one target: its mean and scale."""
    return mlp(DIABETES_FEATURES, 2)
