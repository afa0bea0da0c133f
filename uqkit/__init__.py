"""uqkit: trustworthy uncertainty for PyTorch models at close to the cost of one model."""

from uqkit.prediction import GaussianPrediction, Prediction

__version__ = "0.1.0"

__all__ = ["GaussianPrediction", "Prediction", "__version__"]
