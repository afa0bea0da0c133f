"""Noise-contrastive priors for regression (Hafner, Tran, Lillicrap, Irpan & Davidson 2018, UAI 2019).

A weight-space prior says little about what a network predicts away from its training data, so a network
is often confident in a gap between clusters of inputs. A noise-contrastive prior (NCP) is a prior in data
space instead, made of two parts (Hafner et al., Sec. 3):

* an **input prior** that perturbs the inputs of each minibatch into pseudo-data near, but not on, the data,
  ``p_nc(x~) = 1/N sum_i N(x~; x_i, sigma_x^2 I)``, sampled as ``x~ = x + sigma_x eps``, ``eps ~ N(0, I)``;
* an **output prior**, wide, at those inputs: ``p_nc(y~ | x~) = N(y~; y_i, sigma_y^2)``, centred at the label
  of the point ``x~`` was drawn from (the authors' choice; a zero mean is the other option they name).

Training matches the model's output distribution at ``x~`` to the output prior with the forward KL, the
KL *from* the prior (maximising the likelihood of pseudo-data drawn from it), weighted by ``gamma``::

    loss = E_q[-log p(y | x)] + gamma KL[ N(y, sigma_y^2) || p_theta(. | x~) ]   (+ KL[q(w) || p(w)] / N)

with the closed form ``KL[N(a, alpha^2) || N(b, beta^2)] = log(beta / alpha) + (alpha^2 + (a - b)^2) /
(2 beta^2) - 1/2``. Which output distribution ``p_theta(. | x~)`` is matched depends on the model:

* **a Gaussian-head network** (mean and variance, :class:`~uqkit.nn.StackedGaussianMLP`, any model
  returning ``{"mean", "variance"}``): its predictive ``N(mu(x~), sigma^2(x~))``; the prior teaches the
  head to widen its variance away from the data (the forward KL is minimised at
  ``sigma^2 = sigma_y^2 + (y - mu)^2``).
* **a Bayesian last layer** (:class:`~uqkit.nn.BayesianRegressionHead`, Hafner et al.'s BBB+NCP): the
  *function* distribution ``q(f | x~) = N(m(x~), v(x~))`` induced by the posterior over the mean's weights,
  so the prior lands on epistemic uncertainty and the noise head stays the data's. Its data term
  ``E_q[-log N(y; f, sigma^2)] = 1/2 log(2 pi sigma^2) + ((y - m)^2 + v) / (2 sigma^2)`` is exact here, the
  expectation that Hafner et al. estimate with one reparameterised sample.

The weight-space KL term is optional (``num_data``): the authors' configurations for BBB+NCP set its scale
to 0, the data-space prior taking its place. Hafner et al.'s "ODC" baseline (a separate out-of-distribution
classifier head) is not implemented.

Every function here is elementwise over broadcastable tensors, so a stack of models can carry its own
``sigma_x`` and ``sigma_y`` per model (``[K, 1, 1]`` tensors) as the UCI benchmark does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from uqkit._validation import check_float_tensor, check_positive_float, check_positive_int, describe_value
from uqkit.objectives import ELBO, gaussian_nll_loss

__all__ = [
    "NoiseContrastivePrior",
    "expected_gaussian_nll",
    "ncp_loss",
    "output_prior_divergence",
    "perturb_inputs",
]

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _check_scale(value: Any, name: str, allow_zero: bool) -> float | torch.Tensor:
    """A number or a floating-point tensor of finite values, all ``> 0`` (``>= 0`` with ``allow_zero``)."""
    if isinstance(value, torch.Tensor):
        check_float_tensor(value, name)
        bad = value < 0 if allow_zero else value <= 0
        if bool(bad.any()):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name}: expected values {bound}, got minimum {float(value.min()):.4g}")
        return value
    return check_positive_float(value, name, allow_zero=allow_zero)


def _check_positive(value: torch.Tensor, name: str) -> None:
    check_float_tensor(value, name, finite=False)
    if value.numel() and not bool((value > 0).all()):
        raise ValueError(f"{name}: expected strictly positive values, got minimum {float(value.min()):.4g}")


def perturb_inputs(
    inputs: torch.Tensor, noise_std: float | torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A draw from the input prior: ``x~ = x + noise_std * eps``, ``eps ~ N(0, I)`` (Hafner et al., Sec. 3).

    Args:
        inputs: floating-point inputs, any shape (continuous features; every entry is perturbed).
        noise_std: ``sigma_x >= 0``, a number or a tensor broadcastable to ``inputs`` (one per model of a
            stack: ``[K, 1, 1]``). 0 returns a copy of ``inputs``.
        generator: optional ``torch.Generator`` for the noise.

    Returns:
        The perturbed inputs, the shape of ``inputs``.
    """
    check_float_tensor(inputs, "inputs", finite=False)
    noise_std = _check_scale(noise_std, "noise_std", allow_zero=True)
    noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype, device=inputs.device)
    return inputs + noise_std * noise


def output_prior_divergence(
    mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor, prior_std: float | torch.Tensor
) -> torch.Tensor:
    """``KL[N(y, sigma_y^2) || N(mean, variance)]`` elementwise: the NCP term (Hafner et al., Sec. 3).

    ``= 1/2 log(variance / sigma_y^2) + (sigma_y^2 + (y - mean)^2) / (2 variance) - 1/2``, the forward KL from
    the output prior ``N(y, sigma_y^2)`` (centred at the label) to the model's output distribution at the
    perturbed input. It is 0 exactly when ``mean = y`` and ``variance = sigma_y^2``.

    Args:
        mean: means of the model's output distribution at the perturbed inputs.
        variance: its variances, ``> 0``, the shape of ``mean``.
        targets: the labels ``y`` of the points the inputs were perturbed from, broadcastable to ``mean``.
        prior_std: ``sigma_y > 0``, a number or a tensor broadcastable to ``mean``.

    Returns:
        The KL per element (nats), the broadcast shape.
    """
    check_float_tensor(mean, "mean", finite=False)
    _check_positive(variance, "variance")
    check_float_tensor(targets, "targets", finite=False)
    if mean.shape != variance.shape:
        raise ValueError(
            f"mean and variance: expected the same shape, got {tuple(mean.shape)} and {tuple(variance.shape)}"
        )
    prior_std = _check_scale(prior_std, "prior_std", allow_zero=False)
    prior_variance = prior_std * prior_std
    log_ratio = variance.log() - (
        prior_variance.log() if isinstance(prior_variance, torch.Tensor) else math.log(prior_variance)
    )
    return 0.5 * (log_ratio + (prior_variance + (targets - mean).square()) / variance - 1.0)


def expected_gaussian_nll(
    function_mean: torch.Tensor,
    function_variance: torch.Tensor,
    noise_variance: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """``E_{f ~ N(m, v)}[-log N(y; f, sigma^2)]`` elementwise, in closed form.

    ``= 1/2 log(2 pi sigma^2) + ((y - m)^2 + v) / (2 sigma^2)``: the expected negative log-likelihood of a
    Bayesian last layer's data term (the expectation Bayes by Backprop estimates by sampling). With ``v = 0``
    it is the Gaussian NLL (:func:`uqkit.gaussian_nll_loss`).

    Args:
        function_mean: ``m``, the function distribution's mean.
        function_variance: ``v >= 0``, its variance, the shape of ``function_mean``.
        noise_variance: ``sigma^2 > 0``, the shape of ``function_mean``.
        targets: ``y``, broadcastable to ``function_mean``.

    Returns:
        The expected NLL per element (nats), the broadcast shape.
    """
    check_float_tensor(function_mean, "function_mean", finite=False)
    check_float_tensor(function_variance, "function_variance", finite=False)
    _check_positive(noise_variance, "noise_variance")
    check_float_tensor(targets, "targets", finite=False)
    for name, value in (("function_variance", function_variance), ("noise_variance", noise_variance)):
        if value.shape != function_mean.shape:
            raise ValueError(
                f"{name}: expected the shape of function_mean {tuple(function_mean.shape)}, got "
                f"{tuple(value.shape)}"
            )
    squared = (targets - function_mean).square() + function_variance
    return 0.5 * noise_variance.log() + squared / (2.0 * noise_variance) + _HALF_LOG_TWO_PI


def _gaussian_output(value: Any, what: str) -> dict[str, torch.Tensor | None]:
    """``mean``, ``variance`` and the optional ``function_mean`` / ``function_variance`` of a model output."""
    if isinstance(value, Mapping):
        get = value.get
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        parts = {"mean": value[0], "variance": value[1]}
        get = parts.get
    else:

        def get(key: str) -> Any:
            return getattr(value, key, None)

    parts = {key: get(key) for key in ("mean", "variance", "function_mean", "function_variance")}
    if not isinstance(parts["mean"], torch.Tensor) or not isinstance(parts["variance"], torch.Tensor):
        raise TypeError(
            f"{what}: expected a Gaussian output, a dict or object with 'mean' and 'variance' tensors or a "
            f"(mean, variance) pair, got {describe_value(value)}; pass output=callable mapping it to one"
        )
    has_function = [isinstance(parts[key], torch.Tensor) for key in ("function_mean", "function_variance")]
    if any(has_function) and not all(has_function):
        present = "function_mean" if has_function[0] else "function_variance"
        raise TypeError(
            f"{what}: expected both 'function_mean' and 'function_variance' tensors or neither, got "
            f"{present} only"
        )
    if not all(has_function):
        parts["function_mean"] = parts["function_variance"] = None
    return parts


def _rows(parts: dict[str, torch.Tensor | None], rows: slice) -> dict[str, torch.Tensor | None]:
    return {key: None if value is None else value[rows] for key, value in parts.items()}


def ncp_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    input_noise: float,
    prior_std: float = 1.0,
    weight: float = 0.1,
    num_data: int | None = None,
    generator: torch.Generator | None = None,
    output: Callable[[Any], Any] | None = None,
    parts: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The NCP training loss of a Gaussian regression model on one minibatch (Hafner et al. 2018, Sec. 3).

    ``loss = mean_b sum_d E_q[-log p(y | x)] + weight * mean_b sum_d KL[N(y, prior_std^2) || p(. | x~)]
    (+ KL[q(w) || p(w)] / num_data)``, with ``x~ = x + input_noise * eps``. The model runs once, on the
    clean and perturbed inputs concatenated along the batch (a model with batch statistics sees both).

    When the output carries ``function_mean`` and ``function_variance`` (a Bayesian last layer,
    :class:`~uqkit.nn.BayesianRegressionHead`), the data term is the exact expected NLL under the function
    distribution and the prior acts on that distribution (BBB+NCP); otherwise the data term is the
    Gaussian NLL of ``mean`` and ``variance`` and the prior acts on the predictive ``N(mean, variance)``.
    With ``weight = 0`` no perturbed input is drawn and the loss is the plain one.

    Args:
        model: maps ``[B, ...]`` inputs to a Gaussian output: a dict or object with ``"mean"`` and
            ``"variance"`` (and optionally ``"function_mean"``, ``"function_variance"``) tensors of shape
            ``[B, D]``, or a ``(mean, variance)`` pair.
        inputs: ``[B, ...]`` floating-point inputs.
        targets: ``[B, D]`` targets (``[B]`` when ``D = 1``).
        input_noise: ``sigma_x >= 0``, the input prior's standard deviation, in the inputs' units.
        prior_std: ``sigma_y > 0``, the output prior's standard deviation, in the targets' units.
        weight: ``gamma >= 0``, the weight of the NCP term. Default 0.1 (the authors' configurations).
        num_data: when given, adds the weight-space ``KL[q(w) || p(w)] / num_data`` of the model's Bayesian
            layers (:func:`uqkit.kl_divergence`), the ELBO's per-example scaling; None (default) leaves it
            out, as the authors' BBB+NCP configurations do.
        generator: optional ``torch.Generator`` for the input noise.
        output: optional callable mapping the model's output to one of the forms above.
        parts: optional dict that receives the detached ``"nll"``, ``"divergence"`` (the NCP KL, before
            ``weight``) and ``"kl"`` (weight space, before ``1 / num_data``) terms, for logging.

    Returns:
        A scalar tensor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe_value(model)}")
    check_float_tensor(inputs, "inputs", finite=False)
    if inputs.ndim == 0:
        raise ValueError("inputs: expected a tensor [batch, ...], got a 0-D tensor")
    check_float_tensor(targets, "targets")
    input_noise = check_positive_float(input_noise, "input_noise", allow_zero=True)
    prior_std = check_positive_float(prior_std, "prior_std")
    weight = check_positive_float(weight, "weight", allow_zero=True)
    if num_data is not None:
        check_positive_int(num_data, "num_data")
    if output is not None and not callable(output):
        raise TypeError(f"output: expected a callable or None, got {describe_value(output)}")
    batch = int(inputs.shape[0])
    if targets.ndim == 1:
        targets = targets.unsqueeze(-1)
    if targets.ndim != 2 or targets.shape[0] != batch:
        raise ValueError(
            f"targets: expected [{batch}, D] (or [{batch}] for one output), got shape {tuple(targets.shape)}"
        )
    use_prior = weight > 0
    if use_prior:
        inputs = torch.cat([inputs, perturb_inputs(inputs, input_noise, generator)])
    raw = model(inputs)
    out = _gaussian_output(raw if output is None else output(raw), "model output")
    expected = (int(inputs.shape[0]), int(targets.shape[1]))
    for key, value in out.items():
        if value is not None and tuple(value.shape) != expected:
            raise ValueError(
                f"model output {key!r}: expected shape {list(expected)} (clean then perturbed rows, targets' "
                f"width), got {list(value.shape)}"
            )
    clean = _rows(out, slice(0, batch))
    if clean["function_mean"] is not None:
        nll = expected_gaussian_nll(
            clean["function_mean"], clean["function_variance"], clean["variance"], targets
        )
    else:
        nll = gaussian_nll_loss(clean["mean"], clean["variance"], targets)
    loss = nll.sum(dim=-1).mean()
    if parts is not None:
        parts["nll"] = loss.detach()
    if use_prior:
        noisy = _rows(out, slice(batch, None))
        if noisy["function_mean"] is not None:
            mean, variance = noisy["function_mean"], noisy["function_variance"]
        else:
            mean, variance = noisy["mean"], noisy["variance"]
        divergence = output_prior_divergence(mean, variance, targets, prior_std).sum(dim=-1).mean()
        loss = loss + weight * divergence
        if parts is not None:
            parts["divergence"] = divergence.detach()
    if num_data is not None:
        # the ELBO's weight-space term, KL / N, added by uqkit.ELBO: the NCP objective above is its data term
        elbo = ELBO(num_data, nll=lambda data_term, _targets: data_term)
        loss = elbo(loss, targets, model)
        if parts is not None:
            parts["kl"] = elbo.last_kl
    return loss


class NoiseContrastivePrior(nn.Module):
    """The NCP loss as a module: ``loss = ncp(model, x, y)`` (Hafner et al. 2018; see :func:`ncp_loss`).

    Args:
        input_noise: ``sigma_x >= 0``, the input prior's standard deviation (inputs' units; with standardised
            inputs, 0.1 to 1 puts pseudo-data near the data; the authors use 0.5 on their 1-D toy and 0.1 on
            flight delays).
        prior_std: ``sigma_y > 0``, the output prior's standard deviation (targets' units; the authors use 1
            with standardised targets). Default 1.
        weight: ``gamma >= 0``, the weight of the NCP term. Default 0.1 (the authors'). Pseudo-inputs also
            fall on the data, so a larger weight widens the predictive there too (docs/ncp.md measures it).
        num_data: add the weight-space ``KL / num_data`` of Bayesian layers (None: leave it out).

    After each call, ``last_nll``, ``last_divergence`` and ``last_kl`` hold the detached terms (None when
    absent).

    Example:
        >>> ncp = uqkit.NoiseContrastivePrior(input_noise=0.5, prior_std=1.0)
        >>> loss = ncp(model, x, y)  # model returns {"mean", "variance", ...}
        >>> loss.backward()
    """

    def __init__(
        self,
        input_noise: float,
        prior_std: float = 1.0,
        weight: float = 0.1,
        num_data: int | None = None,
    ) -> None:
        super().__init__()
        self.input_noise = check_positive_float(input_noise, "input_noise", allow_zero=True)
        self.prior_std = check_positive_float(prior_std, "prior_std")
        self.weight = check_positive_float(weight, "weight", allow_zero=True)
        self.num_data = None if num_data is None else check_positive_int(num_data, "num_data")
        self.last_nll: torch.Tensor | None = None
        self.last_divergence: torch.Tensor | None = None
        self.last_kl: torch.Tensor | None = None

    def perturb(self, inputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of the input prior at ``inputs`` (:func:`perturb_inputs` with ``input_noise``)."""
        return perturb_inputs(inputs, self.input_noise, generator)

    def divergence(self, mean: torch.Tensor, variance: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The elementwise NCP term at perturbed inputs (:func:`output_prior_divergence`, ``prior_std``)."""
        return output_prior_divergence(mean, variance, targets, self.prior_std)

    def forward(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None = None,
        output: Callable[[Any], Any] | None = None,
    ) -> torch.Tensor:
        """The loss of ``model`` on the minibatch ``(inputs, targets)`` (:func:`ncp_loss`)."""
        parts: dict[str, torch.Tensor] = {}
        loss = ncp_loss(
            model,
            inputs,
            targets,
            self.input_noise,
            self.prior_std,
            self.weight,
            self.num_data,
            generator,
            output,
            parts,
        )
        self.last_nll = parts.get("nll")
        self.last_divergence = parts.get("divergence")
        self.last_kl = parts.get("kl")
        return loss

    def extra_repr(self) -> str:
        return (
            f"input_noise={self.input_noise}, prior_std={self.prior_std}, weight={self.weight}, "
            f"num_data={self.num_data}"
        )
