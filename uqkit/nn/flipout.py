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

Which dimension indexes the examples matters: an example must keep one weight sample at all of its positions
(time steps, pixels), and two examples must get independent signs. Convolutions take ``[B, C, ...]`` inputs
and :class:`FlipoutLSTM` follows ``batch_first``; :class:`FlipoutLinear` takes a ``batch_dim`` (default 0;
``batch_dim=1`` for time-major ``[T, B, F]`` inputs). :func:`uqkit.predict` repeats the batch along its own
``batch_dim`` and checks, through :func:`check_example_dims`, that every sampling Flipout layer draws its
signs along the repeated examples; a layer that would share one perturbation among examples and samples
raises instead of returning identical samples.

Layers sample in training and eval mode alike; inside :func:`uqkit.nn.use_posterior_mean` they compute
``mean x + b`` with the twin's own kernel. With the posterior scale at zero they equal their ``torch.nn``
twin exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from uqkit._validation import check_positive_int
from uqkit.nn._noise import rademacher
from uqkit.nn._twins import ConvPosterior, LinearPosterior, LSTMPosterior
from uqkit.nn.priors import Prior

__all__ = ["FlipoutConv1d", "FlipoutConv2d", "FlipoutLSTM", "FlipoutLinear", "check_example_dims"]


def _example_signs(
    x: torch.Tensor, widths: tuple[int, ...], batch_dim: int | None, feature_dim: int
) -> list[torch.Tensor]:
    """One draw of independent signs per example (dim ``batch_dim`` of ``x``), split into ``widths`` vectors.

    Each vector is shaped to broadcast against a tensor of ``x``'s layout: the examples along ``batch_dim``,
    the vector along ``feature_dim`` (which must come after ``batch_dim``), size 1 elsewhere, so that every
    other position of an example (time steps, pixels) shares its signs. ``batch_dim=None`` is an input
    without a batch dimension: one example.
    """
    batch = 1 if batch_dim is None else x.shape[batch_dim]
    signs = rademacher((batch, sum(widths)), dtype=x.dtype, device=x.device)
    parts = []
    for part in signs.split(widths, dim=1):
        shape = [1] * x.ndim
        if batch_dim is not None:
            shape[batch_dim] = batch
        shape[feature_dim] = part.shape[1]
        parts.append(part.reshape(shape))
    return parts


class _ExampleDims:
    """The examples that :func:`check_example_dims` expects each Flipout layer to draw signs for."""

    def __init__(self) -> None:
        self.counts: Collection[int] = ()
        self.description = ""

    def expect(self, counts: Collection[int], description: str) -> None:
        """Expect every sampling Flipout layer's example dimension to have one of ``counts`` entries.

        ``description`` says where the count comes from, for the error message.
        """
        self.counts, self.description = tuple(counts), description

    def check(self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not module.samples or not self.counts:
            return
        input = args[0] if args else kwargs.get("input")
        if not isinstance(input, torch.Tensor):
            return  # the layer's own forward reports a bad input
        dim = module.example_dim(input)
        count = 1 if dim is None else input.shape[dim]
        if count in self.counts:
            return
        counts = " or ".join(str(c) for c in sorted(self.counts))
        drawn = "one sign vector (no batch dimension)" if dim is None else f"{count} sign vectors (dim {dim})"
        raise ValueError(
            f"{type(module).__name__} {name!r}: expected one sign vector for each of the {counts} examples "
            f"of {self.description}, got {drawn} for its input of shape {tuple(input.shape)}; examples and "
            f"samples would share weight perturbations. {module.layout_hint}"
        )


@contextmanager
def check_example_dims(model: nn.Module) -> Iterator[Callable[[Collection[int], str], None]]:
    """Within the context, each sampling Flipout layer of ``model`` checks the dimension it draws signs along.

    Flipout decorrelates examples only if each gets its own signs (Wen et al. 2018, Sec. 3.1): a layer that
    draws them along another dimension (e.g. time steps of a time-major input into a ``FlipoutLinear`` with
    ``batch_dim=0``) gives every example the same perturbation, and copies of one example identical samples.
    :func:`uqkit.predict` knows how many examples it passes (samples times batch size), so it enters this
    context and, before each forward pass, calls the yielded ``expect(counts, description)``; a layer whose
    example dimension holds another number of entries raises a ``ValueError`` naming the layer, the shape it
    saw and how to fix it. Shapes are all it sees: a wrong dimension that happens to hold exactly the
    expected number of entries passes.

    Args:
        model: the model whose Flipout layers to check (checked through forward pre-hooks, removed on exit).

    Yields:
        ``expect(counts, description)``: the accepted numbers of examples, and what they are, for the message.
    """
    expected = _ExampleDims()
    handles = [
        module.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: expected.check(name, m, args, kwargs), with_kwargs=True
        )
        for name, module in model.named_modules()
        if isinstance(module, _FLIPOUT_LAYERS)
    ]
    try:
        yield expected.expect
    finally:
        for handle in handles:
            handle.remove()


class FlipoutLinear(LinearPosterior):
    """Bayesian ``nn.Linear`` with Flipout weight noise (Wen et al. 2018).

    Args:
        in_features, out_features, bias, device, dtype: as ``torch.nn.Linear``.
        batch_dim: the dimension of the input that indexes examples, ``>= 0`` (default 0; 1 for time-major
            ``[T, B, in_features]`` inputs). Each example draws its own signs; its other positions (e.g.
            sequence steps) share them, and with them the example's weight sample.
        prior: prior over the weights and bias (default ``NormalPrior(scale=1.0)``).
        posterior_scale_init: initial posterior standard deviation, ``>= 0`` (default 0.01).

    Shape:
        input ``[*, in_features]``; output ``[*, out_features]``. Examples are indexed by dim ``batch_dim``;
        an input with at most ``batch_dim + 1`` dims has no batch dimension and is one example.

    Example:
        >>> layer = FlipoutLinear(784, 10)
        >>> layer(torch.randn(32, 784)).shape  # a tensor, never a tuple; KL via layer.kl_divergence()
        torch.Size([32, 10])
        >>> FlipoutLinear(16, 8, batch_dim=1)(torch.randn(20, 32, 16)).shape  # [T, B, F]: one sample per b
        torch.Size([20, 32, 8])
    """

    layout_hint: ClassVar[str] = (
        "Build the layer with batch_dim set to the dimension of its input that indexes examples "
        "(FlipoutLinear(..., batch_dim=k), or uqkit.FlipoutConfig(batch_dim=k) when converting)."
    )

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        batch_dim: int = 0,
        prior: Prior | None = None,
        posterior_scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            bias,
            prior=prior,
            posterior_scale_init=posterior_scale_init,
            device=device,
            dtype=dtype,
        )
        self.batch_dim = check_positive_int(batch_dim, "batch_dim", minimum=0)

    def example_dim(self, input: torch.Tensor) -> int | None:
        """The dimension of ``input`` that indexes examples, ``None`` for an input without one."""
        return self.batch_dim if input.ndim > self.batch_dim + 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        bias = self.bias_mean if self.has_bias else None
        out = F.linear(input, self.weight_mean, bias)
        if not self.samples:
            return out
        widths = (self.in_features, self.out_features)
        r_in, s_out = _example_signs(input, widths, self.example_dim(input), input.ndim - 1)
        bias_noise = self.posterior_perturbation("bias") if self.has_bias else None
        perturbation = F.linear(input * r_in, self.posterior_perturbation("weight"), bias_noise)
        return out.addcmul_(perturbation, s_out)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.batch_dim == 0 else f"{text}, batch_dim={self.batch_dim}"


class _FlipoutConvNd(ConvPosterior):
    """Flipout for ``nn.Conv1d`` / ``nn.Conv2d``: signs per example and per channel, shared over space
    (Wen et al. 2018)."""

    layout_hint: ClassVar[str] = "Convolutions take batch-first inputs [batch, channels, ...]."

    def example_dim(self, input: torch.Tensor) -> int | None:
        """The dimension of ``input`` that indexes examples: 0, or ``None`` for an unbatched input."""
        return 0 if input.ndim == self.spatial_dims + 2 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, unbatched = self._batched(input)
        out = self._convolve(x, self.weight_mean, self.bias_mean if self.has_bias else None)
        if self.samples:
            r_in, s_out = _example_signs(x, (self.in_channels, self.out_channels), 0, 1)
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

    layout_hint: ClassVar[str] = (
        "An LSTM's examples are dim 1 of its input, dim 0 with batch_first=True; set batch_first to match."
    )

    def example_dim(self, input: torch.Tensor) -> int | None:
        """The dimension of ``input`` that indexes examples (by ``batch_first``), ``None`` if unbatched."""
        if input.ndim == 2:
            return None
        return 0 if self.batch_first else 1

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
        r_ih, s_ih, r_hh, s_hh = _example_signs(x[0], widths, 0, 1)  # [B, width], shared over time
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


_FLIPOUT_LAYERS = (FlipoutLinear, _FlipoutConvNd, FlipoutLSTM)
