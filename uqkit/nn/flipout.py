"""Flipout layers (Wen et al. 2018): pseudo-independent weight perturbations for every example.

One perturbation ``Delta W = sigma * eps`` (``sigma = softplus(rho)``, ``eps ~ N(0, I)``) is drawn per
forward pass and decorrelated across the examples of the batch by random signs (Wen et al. 2018, eq. (4)):
example ``n`` uses ``W_n = mean + Delta W * (s_n r_n^T)`` with ``r_n``, ``s_n`` independent Rademacher vectors
over the input and output features (channels for convolutions, broadcast over the spatial positions). Its
output is

    ``y_n = mean x_n + b + ((Delta W (x_n * r_n) + Delta b) * s_n)``       (Wen et al. 2018, eq. (5))

Because ``Delta W`` is symmetric and independent of the signs, each ``W_n`` has exactly the posterior's
distribution ``N(mean, sigma^2)``, and two examples' perturbations are uncorrelated: gradient variance falls
as ``1 / batch`` like independent weights per example, at the cost of a second matrix product. The bias
perturbation rides on the same output signs (a bias is a weight on a constant input whose sign can be
taken as +1). All signs come from :func:`uqkit.nn._noise.rademacher`.

Layers sample in training and eval mode alike; inside :func:`uqkit.nn.use_posterior_mean` they compute
``mean x + b`` with the twin's own kernel. With the posterior scale at zero they equal their ``torch.nn``
twin exactly.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from uqkit.nn._noise import rademacher
from uqkit.nn._twins import ConvPosterior, LinearPosterior, LSTMPosterior

__all__ = ["FlipoutConv1d", "FlipoutConv2d", "FlipoutLSTM", "FlipoutLinear"]


def _example_signs(
    x: torch.Tensor, widths: tuple[int, ...], trailing_ones: int, features_last: bool
) -> list[torch.Tensor]:
    """One draw of independent signs per example (dim 0 of ``x``), split into vectors of ``widths``.

    Each vector is shaped to broadcast against a tensor of ``x``'s layout: ``[B, 1.., width]`` when features
    are the last dim (Linear), ``[B, width, 1..]`` when they are dim 1 (convolution channels).
    """
    batch = x.shape[0]
    signs = rademacher((batch, sum(widths)), dtype=x.dtype, device=x.device)
    ones = (1,) * trailing_ones
    parts = []
    for part in signs.split(widths, dim=1):
        shape = (batch, *ones, part.shape[1]) if features_last else (batch, part.shape[1], *ones)
        parts.append(part.reshape(shape))
    return parts


class FlipoutLinear(LinearPosterior):
    """Bayesian ``nn.Linear`` with Flipout weight noise (Wen et al. 2018).

    Args:
        in_features, out_features, bias, device, dtype: as ``torch.nn.Linear``.
        prior: prior over the weights and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).

    Shape:
        input ``[*, in_features]``; output ``[*, out_features]``. Examples are indexed by dim 0; extra middle
        dims (e.g. sequence positions) share the example's weight sample.

    Example:
        >>> layer = FlipoutLinear(784, 10)
        >>> layer(torch.randn(32, 784)).shape  # a tensor, never a tuple; KL via layer.kl_divergence()
        torch.Size([32, 10])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        if input.ndim == 1:
            return self.forward(input.unsqueeze(0)).squeeze(0)
        bias = self.bias_mean if self.has_bias else None
        out = F.linear(input, self.weight_mean, bias)
        if not self.samples:
            return out
        r_in, s_out = _example_signs(input, (self.in_features, self.out_features), input.ndim - 2, True)
        bias_noise = self.posterior_perturbation("bias") if self.has_bias else None
        perturbation = F.linear(input * r_in, self.posterior_perturbation("weight"), bias_noise)
        return out.addcmul_(perturbation, s_out)


class _FlipoutConvNd(ConvPosterior):
    """Flipout for ``nn.Conv1d`` / ``nn.Conv2d``: signs per example and per channel (Wen et al. 2018)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, unbatched = self._batched(input)
        out = self._convolve(x, self.weight_mean, self.bias_mean if self.has_bias else None)
        if self.samples:
            r_in, s_out = _example_signs(x, (self.in_channels, self.out_channels), self.spatial_dims, False)
            bias_noise = self.posterior_perturbation("bias") if self.has_bias else None
            perturbation = self._convolve(x * r_in, self.posterior_perturbation("weight"), bias_noise)
            out = out.addcmul_(perturbation, s_out)
        return out.squeeze(0) if unbatched else out


class FlipoutConv1d(_FlipoutConvNd):
    """Bayesian ``nn.Conv1d`` with Flipout weight noise (Wen et al. 2018).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as ``torch.nn.Conv1d``.
        prior: prior over the weights and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).

    Shape:
        input ``[B, C_in, L]`` or ``[C_in, L]``; output ``[B, C_out, L_out]`` (``L_out`` as ``nn.Conv1d``).
    """

    spatial_dims: ClassVar[int] = 1
    conv = staticmethod(F.conv1d)


class FlipoutConv2d(_FlipoutConvNd):
    """Bayesian ``nn.Conv2d`` with Flipout weight noise (Wen et al. 2018).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as ``torch.nn.Conv2d`` (non-square kernels, strides and paddings included).
        prior: prior over the weights and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).

    Shape:
        input ``[B, C_in, H, W]`` or ``[C_in, H, W]``; output ``[B, C_out, H_out, W_out]``.
    """

    spatial_dims: ClassVar[int] = 2
    conv = staticmethod(F.conv2d)


class FlipoutLSTM(LSTMPosterior):
    """Bayesian ``nn.LSTM`` with Flipout weight noise (Wen et al. 2018, Sec. 3.2 applies it to LSTMs).

    Each example keeps one weight sample for the whole sequence: ``Delta W`` and its sign vectors are drawn
    once per forward pass per layer and direction, and reused at every time step, for the input-to-hidden
    and the hidden-to-hidden weights. The recurrence runs in Python (one step per time step); inside
    :func:`uqkit.nn.use_posterior_mean` the layer runs ``nn.LSTM``'s fused kernel with the mean weights.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as
            ``torch.nn.LSTM``. ``proj_size`` must be 0.
        prior: prior over every weight and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).

    Shape:
        as ``torch.nn.LSTM``: input ``[T, B, input_size]`` (``[B, T, input_size]`` if ``batch_first``);
        returns ``(output, (h_n, c_n))``.

    Note:
        With the posterior scale at zero the output equals ``nn.LSTM``'s bit for bit when PyTorch runs its
        native CPU kernel (``torch.backends.mkldnn.flags(enabled=False)``); oneDNN and cuDNN sum the gates
        in another order, so there they agree to float rounding (about 1e-7).
    """

    def _sample_forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h_0, c_0 = hx
        layer_input = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                index = layer * self.num_directions + direction
                out, h, c = self._direction(layer_input, h_0[index], c_0[index], suffix, direction == 1)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n), torch.stack(c_n)

    def _direction(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, suffix: str, reverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer and direction over the sequence ``x`` ``[T, B, F]``; gates as in ``nn.LSTM``."""
        names = self._cell_names(suffix)
        w_ih, w_hh = self.posterior_mean(names[0]), self.posterior_mean(names[1])
        b_ih, b_hh = (self.posterior_mean(n) for n in names[2:]) if self.bias else (None, None)
        d_ih, d_hh = self.posterior_perturbation(names[0]), self.posterior_perturbation(names[1])
        db_ih, db_hh = (self.posterior_perturbation(n) for n in names[2:]) if self.bias else (None, None)
        gates_width = 4 * self.hidden_size
        widths = (x.shape[2], gates_width, self.hidden_size, gates_width)
        r_ih, s_ih, r_hh, s_hh = _example_signs(x[0], widths, 0, True)  # [B, width], shared over time
        input_gates = F.linear(x, w_ih, b_ih)
        input_gates = torch.addcmul(input_gates, F.linear(x * r_ih, d_ih, db_ih), s_ih)
        outputs: list[torch.Tensor] = [x] * x.shape[0]
        for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
            gates = input_gates[t] + F.linear(h, w_hh, b_hh)
            gates = torch.addcmul(gates, F.linear(h * r_hh, d_hh, db_hh), s_hh)
            in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, 1)
            c = forget_gate.sigmoid() * c + in_gate.sigmoid() * cell_gate.tanh()
            h = out_gate.sigmoid() * c.tanh()
            outputs[t] = h
        return torch.stack(outputs), h, c
