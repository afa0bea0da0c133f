"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks", Section 4.2).

Temperature scaling divides a classifier's logits by one scalar ``T > 0`` fitted on held-out data:
``q_i = softmax(z_i / T)``. It leaves the predicted class unchanged (dividing by a positive scalar keeps the
argmax) and so cannot change accuracy; it only softens (``T > 1``) or sharpens (``T < 1``) the confidence.
``T`` is the minimiser of the negative log-likelihood on a validation split. We optimise ``log T`` so that
``T`` stays positive without constraints.

For a stochastic model (``S`` samples or members, logits ``[S, B, C]``) one temperature divides every
sample's logits, and it is fitted on the NLL of the averaged predictive ``(1/S) sum_s softmax(z_s / T)``, the
distribution that :class:`uqkit.Prediction` reports ("pool-then-calibrate", Rahaman & Thiery 2021, for deep
ensembles). Fitting on the ``S * B`` rows as if they
were separate examples would calibrate the members, whose average is then under-confident.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from uqkit._validation import check_float_tensor, check_labels, check_logits, check_positive_int

__all__ = ["TemperatureScaler"]

_PROBABILITY_ROW_ATOL = 1e-4


def _refuse_probabilities(logits: torch.Tensor, name: str = "logits") -> None:
    """Raise ``ValueError`` if every row of ``logits`` looks like a probability vector.

    Softmax outputs passed by mistake would be "calibrated" into nonsense without any error, so we refuse a
    tensor whose entries all lie in [0, 1] and whose rows all sum to 1 within ``1e-4``.
    """
    if logits.numel() == 0:
        return
    logits = logits.detach()
    in_unit_interval = float(logits.min()) >= 0.0 and float(logits.max()) <= 1.0
    if not in_unit_interval:
        return
    row_sums = logits.sum(dim=-1, dtype=torch.float64)
    if bool(((row_sums - 1.0).abs() <= _PROBABILITY_ROW_ATOL).all()):
        raise ValueError(
            f"{name}: got what look like probabilities (rows in [0, 1] summing to 1); "
            "pass the pre-softmax logits"
        )


def _check_num_classes(logits: torch.Tensor, name: str = "logits") -> None:
    if logits.shape[-1] < 2:
        raise ValueError(
            f"{name}: expected at least 2 classes in the last dimension, got shape {tuple(logits.shape)}"
        )


class TemperatureScaler(torch.nn.Module):
    """Post-hoc calibration of a classifier's logits by one temperature (Guo et al. 2017, Section 4.2).

    Calibrated logits are ``z / T`` with ``T = exp(log_temperature)``; the calibrated probabilities are
    ``softmax(z / T)``. :meth:`fit` sets ``T`` to the minimiser of the mean negative log-likelihood

    ``NLL(T) = -(1/n) sum_i log softmax(z_i / T)[y_i]``

    over a **validation** split; for ``[S, B, C]`` logits, of the averaged predictive,
    ``NLL(T) = -(1/n) sum_i log (1/S) sum_s softmax(z_si / T)[y_i]``. Never fit on the test split: the test
    metrics would then measure the fit, not the calibration. Calling the module before :meth:`fit` is
    allowed and is the identity (``T = 1``).

    The scaler is a plain ``nn.Module``: its one parameter ``log_temperature`` is saved in ``state_dict``
    and moves with ``.to(device)``.

    The temperature starts at ``T = 1`` (``log_temperature = 0``).

    Shape:
        ``forward``: logits ``[..., C]`` (``[B, C]``, or ``[S, B, C]`` for samples or ensemble members),
        returns the calibrated logits of the same shape and dtype.

    Example::

        scaler = TemperatureScaler().fit(val_logits, val_labels)  # validation split, never test
        test_probs = torch.softmax(scaler(test_logits), dim=-1)
        # a stochastic model: fit on the averaged predictive of its samples, scale every sample
        scaler = TemperatureScaler().fit(uqkit.predict(model, x_val).logits, y_val)
        prediction = uqkit.Prediction(scaler(uqkit.predict(model, x_test).logits))
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = torch.nn.Parameter(torch.zeros(()))

    @property
    def temperature(self) -> float:
        """The current temperature ``T = exp(log_temperature)``."""
        return math.exp(float(self.log_temperature.detach()))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Divide ``logits`` by the temperature.

        Args:
            logits: ``[..., C]`` finite pre-softmax scores with ``C >= 2`` classes in the last dimension.

        Returns:
            ``logits / T`` with the shape and dtype of ``logits``. Gradients flow to ``logits`` and to
            ``log_temperature``.
        """
        logits = check_float_tensor(logits, "logits")
        if logits.ndim < 1:
            raise ValueError(f"logits: expected a tensor [..., classes], got shape {tuple(logits.shape)}")
        _check_num_classes(logits)
        _refuse_probabilities(logits)
        return logits / self.log_temperature.exp().to(dtype=logits.dtype)

    def fit(self, logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> TemperatureScaler:
        """Fit ``T`` by minimising the validation NLL of ``softmax(logits / T)`` over ``log T``.

        The objective is one-dimensional (and convex in ``1 / T`` for ``[B, C]`` logits); we minimise it over
        ``log T`` with L-BFGS and a strong-Wolfe line search, in float64, always starting from ``T = 1``, so
        the result is deterministic. ``logits`` are detached: no gradient reaches the network.

        Args:
            logits: ``[B, C]`` finite pre-softmax scores of a **validation** split (not test), ``C >= 2``; or
                ``[S, B, C]`` logits of ``S`` samples or members (``uqkit.predict(...).logits``): one ``T``
                divides every sample, fitted on the NLL of the mean over ``S`` of ``softmax(logits / T)``.
            labels: ``[B]`` integer class indices in ``[0, C)``.
            max_iter: maximum number of L-BFGS iterations.

        Returns:
            ``self``, with ``log_temperature`` set to the fitted value.

        Raises:
            ValueError, TypeError: on malformed inputs, or if ``logits`` look like probabilities.
            RuntimeError: if the NLL or its gradient is not finite, or the fitted temperature is not finite,
                or the optimiser ends at a higher NLL than it started from.
        """
        logits = check_logits(logits, "logits", (2, 3))  # [B, C] or [S, B, C]
        _check_num_classes(logits)
        if logits.shape[-2] == 0 or logits.shape[0] == 0:
            raise ValueError(f"logits: expected at least one example, got shape {tuple(logits.shape)}")
        _refuse_probabilities(logits)
        labels = check_labels(labels, "labels", num_classes=logits.shape[-1], length=logits.shape[-2])
        max_iter = check_positive_int(max_iter, "max_iter")

        z = logits.detach().to(torch.float64)
        z = z.unsqueeze(0) if z.ndim == 2 else z  # [S, B, C]
        y = labels.detach().to(device=z.device, dtype=torch.long)
        log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        log_samples = math.log(z.shape[0])

        def nll() -> torch.Tensor:
            # log of the averaged predictive, (1/S) sum_s softmax(z_s / T), by log-sum-exp over samples
            log_probs = torch.logsumexp(F.log_softmax(z * torch.exp(-log_t), dim=-1), dim=0) - log_samples
            return F.nll_loss(log_probs, y)

        start_loss = nll()
        (start_grad,) = torch.autograd.grad(start_loss, log_t)
        start = start_loss.detach()
        if not (math.isfinite(float(start)) and math.isfinite(float(start_grad))):
            raise RuntimeError(
                f"temperature scaling: the NLL at T = 1 is {float(start)} with gradient "
                f"{float(start_grad)}; the logits overflow in float64 (largest |logit| "
                f"{float(z.abs().max()):.4g})"
            )

        optimizer = torch.optim.LBFGS(
            [log_t],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = nll()
            loss.backward()
            return loss

        optimizer.step(closure)

        with torch.no_grad():
            fitted_log_t = float(log_t)
            end = float(nll()) if math.isfinite(fitted_log_t) else float("nan")
        fitted_t = math.exp(fitted_log_t) if math.isfinite(fitted_log_t) else float("nan")
        if not (math.isfinite(fitted_t) and fitted_t > 0.0 and math.isfinite(end)):
            raise RuntimeError(
                f"temperature scaling diverged: log T = {fitted_log_t}, T = {fitted_t}, NLL = {end} "
                f"(NLL at T = 1 was {float(start):.6g})"
            )
        if end > float(start) + 1e-12 * max(1.0, abs(float(start))):
            raise RuntimeError(
                f"temperature scaling diverged: NLL rose from {float(start):.6g} at T = 1 to {end:.6g} "
                f"at T = {fitted_t:.6g}"
            )
        with torch.no_grad():
            self.log_temperature.copy_(torch.tensor(fitted_log_t))
        return self

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}"
