"""Monte Carlo prediction with a stochastic model: :func:`predict` returns ``[S, B, C]`` logits.

Each of the ``S`` samples is one forward pass through the model with fresh noise in every stochastic layer.
When every sampling layer draws its noise independently (or, for Flipout, uncorrelatedly) per example
(``per_example_noise``: Flipout, Gaussian with local reparameterisation, MC dropout), the ``S`` samples of a
batch are computed in one forward pass over the batch repeated ``S`` times: ``[S * B, ...]`` costs less than
``S`` calls of ``[B, ...]`` because larger matrix products run closer to peak speed and the per-call overhead
(and, for Flipout, the draw of the weight noise) is paid once. Each sample of each example has exactly the
law of the posterior predictive. Samples are independent for local reparameterisation and dropout. Flipout's
copies share one ``Delta W`` per layer and draw independent sign vectors (Wen et al. 2018, Sec. 3.1): they are
pairwise uncorrelated at every pre-activation but not independent, so averages of nonlinear functions
(softmax probabilities, entropies) vary somewhat more from call to call than with ``S`` independent passes,
the more so the narrower the layers (given ``Delta W`` a pre-activation sums ``fan_in`` sign-flipped terms,
close to its marginal Gaussian for a fan-in in the hundreds). Pass ``samples_per_pass=1`` for independent
samples.

The copies are stacked along ``batch_dim``, so every Flipout layer must draw its signs along the dimension
that carries them in its own input (``FlipoutLinear(batch_dim=...)``, ``FlipoutLSTM``'s ``batch_first``);
otherwise copies and examples would share one perturbation and the samples come out identical. The layers
check it during the call (:func:`uqkit.nn.flipout.check_example_dims`) and raise instead.

It is *not* valid for layers that share one weight sample across the batch (plain reparameterisation:
``GaussianLinear`` without local reparameterisation, ``GaussianConv*``, ``GaussianLSTM``): all ``S`` copies
would see the same weights. Models with such a layer get one forward pass per sample.

Member-vectorized models (:class:`uqkit.DeepEnsemble`, or any module with a class attribute
``member_vectorized = True`` and an int ``num_members``) return ``[M, B, C]`` logits from one forward pass:
each pass gives ``M`` samples, one per member, so ``num_samples`` must be a multiple of ``M``: exactly ``M``
for deterministic members, and ``k * M`` (``k`` passes, batched like the samples above) for members with
sampling layers (e.g. an ensemble of MC-dropout networks).
"""

from __future__ import annotations

import torch
from torch import nn

from uqkit._validation import check_float_tensor, check_positive_int, check_tensor
from uqkit.nn import StochasticModule
from uqkit.nn.flipout import check_example_dims
from uqkit.prediction import Prediction

__all__ = ["predict"]


def _repeat_along(x: torch.Tensor, copies: int, dim: int) -> torch.Tensor:
    if copies == 1:
        return x
    repeats = [1] * x.ndim
    repeats[dim] = copies
    return x.repeat(*repeats)  # copy-major: [x, x, ..., x] along dim


def _num_members(model: nn.Module) -> int:
    """``M`` for a member-vectorized model (``member_vectorized = True``), else 1."""
    if getattr(type(model), "member_vectorized", False) is not True:
        return 1
    members = getattr(model, "num_members", None)
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise TypeError(
            f"model: expected a member-vectorized model to have an int num_members >= 1, got {members!r}"
        )
    return members


def predict(
    model: nn.Module,
    x: torch.Tensor,
    num_samples: int,
    *,
    batch_dim: int = 0,
    samples_per_pass: int | None = None,
) -> Prediction:
    """Draw ``num_samples`` stochastic forward passes of a classifier and return them as a Prediction.

    The model runs in eval mode (batch-norm uses its running statistics; ``nn.Dropout`` is off) and under
    ``torch.no_grad()``; the stochastic layers of :mod:`uqkit.nn` sample in eval mode too. Each module's
    training flag is restored afterwards.

    Args:
        model: a classifier returning ``[B, C]`` logits, with stochastic layers (e.g. after
            :func:`uqkit.bayesianize_`, or with :class:`uqkit.nn.MCDropout`), or a member-vectorized model
            (``member_vectorized = True``, such as :class:`uqkit.DeepEnsemble`) returning ``[M, B, C]``.
        x: the input batch; its batch dimension is ``batch_dim``.
        num_samples: ``S``, the number of Monte Carlo samples (1 for a single pass); for a member-vectorized
            model a multiple of ``M`` (``M`` for one pass, one sample per member).
        batch_dim: the dimension of ``x`` that indexes examples (e.g. 1 for a time-major LSTM input). The
            Flipout layers must draw their signs along the repeated examples: ``FlipoutLinear`` layers that
            see the time-major input need ``batch_dim=1`` too (their own argument, or
            ``uqkit.FlipoutConfig(batch_dim=1)``); a layer that does not raises a ``ValueError`` rather than
            giving samples that share one perturbation.
        samples_per_pass: how many samples (per member, for a member-vectorized model) to compute in one
            forward pass over the repeated batch (memory grows with it). Default: all of them when every
            sampling layer has per-example noise, else 1. Values above 1 are refused for models with a
            shared-sample layer.

    Returns:
        :class:`uqkit.Prediction` holding ``[S, B, C]`` logits (for a member-vectorized model, sample
        ``p * M + m`` is member ``m`` in pass ``p``).

    Raises:
        TypeError: for a ``model`` that is not an ``nn.Module`` or an ``x`` that is not a tensor.
        ValueError: for bad ``num_samples``, ``batch_dim`` or ``samples_per_pass``, for ``num_samples > 1``
            with no sampling layer (every sample would be the same), for a ``num_samples`` that is not a
            multiple of a member-vectorized model's ``M``, for batched samples with a shared-sample layer, for
            a sampling Flipout layer whose example dimension does not hold the repeated examples, or for
            model outputs that are not ``[B, C]`` (``[M, B, C]``) logits.

    Example:
        >>> pred = uqkit.predict(model, x, num_samples=32)
        >>> pred.probs, pred.epistemic
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    check_tensor(x, "x")
    num_samples = check_positive_int(num_samples, "num_samples")
    if isinstance(batch_dim, bool) or not isinstance(batch_dim, int) or not -x.ndim <= batch_dim < x.ndim:
        raise ValueError(f"batch_dim: expected an int in [{-x.ndim}, {x.ndim - 1}], got {batch_dim!r}")
    batch_dim %= x.ndim
    batch = x.shape[batch_dim]

    members = _num_members(model)
    if num_samples % members:
        raise ValueError(
            f"num_samples: expected a multiple of the model's {members} members (each forward pass gives one "
            f"sample per member), got {num_samples}"
        )
    passes = num_samples // members  # samples per member

    sampling = [(n, m) for n, m in model.named_modules() if isinstance(m, StochasticModule) and m.samples]
    if members > 1 and passes > 1 and not sampling:
        raise ValueError(
            f"num_samples: expected {members} (one per member) for a member-vectorized model with no "
            f"sampling layer, got {num_samples}; every member's samples would be identical"
        )
    if members == 1 and num_samples > 1 and not sampling:
        raise ValueError(
            f"num_samples: expected 1 for a model with no sampling layer, got {num_samples}; every sample "
            "would be identical (convert the model with uqkit.bayesianize_, add uqkit.nn.MCDropout, or leave "
            "uqkit.nn.use_posterior_mean)"
        )
    shared = [n or type(m).__name__ for n, m in sampling if not m.per_example_noise]
    if samples_per_pass is None:
        samples_per_pass = 1 if shared else passes
    samples_per_pass = min(check_positive_int(samples_per_pass, "samples_per_pass"), passes)
    if shared and samples_per_pass > 1:
        raise ValueError(
            f"samples_per_pass: expected 1 because {', '.join(shared)} share(s) one weight sample across the "
            f"batch, so repeated copies would get identical samples; got {samples_per_pass}"
        )

    training = [(m, m.training) for m in model.modules()]
    model.eval()
    chunks = []
    try:
        with torch.no_grad(), check_example_dims(model) as expect_examples:
            done = 0
            while done < passes:
                copies = min(samples_per_pass, passes - done)
                # each Flipout layer must draw its signs along these copies * batch examples (members of a
                # member-vectorized model may ride in the same dimension)
                expect_examples(
                    {copies * batch, members * copies * batch},
                    f"predict(..., batch_dim={batch_dim}): {copies} sample(s) x a batch of {batch}",
                )
                logits = model(_repeat_along(x, copies, batch_dim))
                if members == 1:
                    check_float_tensor(logits, "model output", 2, "[batch, classes] logits")
                    logits = logits.unsqueeze(0)
                else:
                    check_float_tensor(logits, "model output", 3, "[members, batch, classes] logits")
                if logits.shape[:2] != (members, copies * batch):
                    rows = f"{copies * batch}" if members == 1 else f"{members} x {copies * batch}"
                    raise ValueError(
                        f"model output: expected {rows} rows ({copies} sample(s) of a batch of {batch}), got "
                        f"shape {tuple(logits.shape)}; is batch_dim={batch_dim} right?"
                    )
                # [M, copies * B, C] -> [copies * M, B, C], copy-major as in _repeat_along
                logits = logits.view(members, copies, batch, -1).transpose(0, 1)
                chunks.append(logits.reshape(copies * members, batch, logits.shape[-1]))
                done += copies
    finally:
        for module, was_training in training:
            module.training = was_training
    return Prediction(torch.cat(chunks))
