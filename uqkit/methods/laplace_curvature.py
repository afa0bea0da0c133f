"""The generalized Gauss-Newton (GGN) of a last linear layer, in three structures, for the Laplace method.

The last layer computes ``f = W phi + b`` (``C`` outputs, ``D`` features). With ``phi~ = [phi, 1]`` (the bias
as a constant feature, ``F = D + 1``; ``F = D`` without a bias) and the weights ``theta~ = [W | b]`` as a
``C x F`` matrix read row by row (index ``c * F + d``, the bias of output ``c`` at ``d = D``), the Jacobian
of ``f`` with respect to ``theta~`` is ``J = I_C (x) phi~^T``, and the GGN of the negative log-likelihood is

    H = sum_i J_i^T Lambda_i J_i = sum_i Lambda_i (x) phi~_i phi~_i^T

with ``Lambda_i`` the Hessian of the per-example loss in the outputs: ``diag(p_i) - p_i p_i^T`` for a
softmax likelihood (``p_i`` the predicted probabilities) and ``I / sigma^2`` for a Gaussian one. This module
never forms a per-example Jacobian; it accumulates ``H`` from ``phi~`` and ``p`` batch by batch:

* :class:`FullGGN`: ``H`` itself. For the softmax its ``F x F`` block ``(c, k)`` is
  ``Phi~^T diag(delta_ck p_c - p_c p_k) Phi~``: one matrix product per output ``c`` gives the blocks
  ``k >= c`` (about half the work of one product with the ``[N, C F]`` matrix ``p (x) phi~``), and the
  blocks below the diagonal are copied at the end. For the Gaussian likelihood ``H = I_K (x) G / sigma^2``
  with ``G = Phi~^T Phi~``: only ``G`` is kept (``outputs = 1`` here, ``K`` identical copies).
* :class:`KronGGN`: the Kronecker-factored approximation of K-FAC (Martens & Grosse 2015; for the Laplace
  approximation Ritter et al. 2018) as laplace-torch's ``KronLLLaplace`` computes it with its default
  (curvlinops, exact "type-2") backend: a weight block ``B (x) A`` with ``B = sum_i Lambda_i`` and
  ``A = (1 / N) sum_i phi_i phi_i^T`` (features without the constant), a separate bias block ``B``, and no
  weight-bias cross terms.
* :class:`DiagGGN`: the diagonal of ``H``, ``h_cd = sum_i Lambda_i[c, c] phi~_id^2``.

Each structure holds one GGN per member (a leading dimension ``M``: 1 for a plain model, ``M`` for a
:class:`uqkit.DeepEnsemble`) and answers, for a scalar prior precision ``delta`` per member (posterior
precision ``P = H + delta I``), what the Laplace method needs: the eigenvalues of ``H`` (the log-determinant
``log det P = sum_j log(lambda_j + delta)`` of the marginal likelihood), and the variances and covariances
of the linearised outputs ``J Sigma J^T`` (``Sigma = P^-1``) at new features.

Work matrices are chunked over examples to at most :data:`CHUNK_ELEMENTS` elements.
"""

from __future__ import annotations

import torch
from torch import nn

from uqkit._deprecation import deprecated_property, renamed_keywords

__all__ = [
    "CHUNK_ELEMENTS",
    "STRUCTURES",
    "DiagGGN",
    "FullGGN",
    "KronGGN",
    "LastLayerCurvature",
    "softmax_variances",
]

CHUNK_ELEMENTS = 1 << 22
"""Largest temporary (in elements, 16 MiB in float32) that the structures allocate per chunk of examples."""


def softmax_variances(probs: torch.Tensor) -> torch.Tensor:
    """``p_c (1 - p_c)``, the diagonal of ``diag(p) - p p^T``, without cancellation.

    ``1 - p_c`` is summed from the other classes' probabilities rather than subtracted from 1: for a confident
    prediction (``p_c = 1 - 1e-5`` in float32, spacing 6e-8) the subtraction loses about 3 of 7 digits, and
    ``sum_i p_ic - sum_i p_ic^2`` over a data set can lose them all.
    """
    classes = probs.shape[-1]
    others = 1 - torch.eye(classes, dtype=probs.dtype, device=probs.device)
    return probs * (probs @ others)


def _chunks(rows: int, elements_per_row: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, elements_per_row))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class LastLayerCurvature(nn.Module):
    """Base class: the GGN of one last linear layer per member, in one structure.

    Args:
        num_members: ``M`` (formerly ``members``, deprecated).
        outputs: ``C``, the outputs that the curvature couples (the classes; 1 for the Gaussian likelihood,
            whose ``K`` outputs share one block).
        features: ``D``, the layer's input features.
        bias: whether the layer has a bias (a constant feature ``phi~_F = 1``).
        dtype, device: of the accumulated matrices (the features').

    Shape:
        ``features`` arguments: ``[M, n, F]`` with the constant 1 appended when the layer has a bias.
        ``probs``: ``[M, n, C]`` softmax probabilities, or ``None`` for the Gaussian likelihood.
    """

    structure: str = ""

    @renamed_keywords(members="num_members")
    def __init__(
        self,
        num_members: int,
        outputs: int,
        features: int,
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.num_members, self.outputs, self.features, self.bias = num_members, outputs, features, bias
        self.width = features + int(bias)  # F
        self.num_data = 0
        self._factory = {"dtype": dtype, "device": device}  # for the buffers made in __init__

    members = deprecated_property("members", "num_members")

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(*shape, **self._factory)

    @classmethod
    @renamed_keywords(members="num_members")
    def nbytes(cls, num_members: int, outputs: int, features: int, bias: bool, itemsize: int) -> int:
        """Bytes of the matrices this structure holds at its peak (fit and first prediction)."""
        raise NotImplementedError

    @property
    def num_parameters(self) -> int:
        """``C F``, the parameters of one member's last layer that the curvature covers (per output copy)."""
        return self.outputs * self.width

    def accumulate(self, features: torch.Tensor, probs: torch.Tensor | None) -> None:
        """Add the GGN of a batch of examples."""
        raise NotImplementedError

    def finalize(self, scale: torch.Tensor) -> None:
        """End of the data: multiply the GGN by ``scale`` ``[M]`` (``1 / sigma^2`` for the Gaussian)."""
        raise NotImplementedError

    def eigenvalues(self) -> torch.Tensor:
        """``[M, C F]`` eigenvalues of ``H`` (clamped at 0: ``H`` is positive semi-definite)."""
        raise NotImplementedError

    def variances(self, features: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """``[M, n, C, G]``: the diagonal of ``J (H + delta I)^-1 J^T`` for each of ``G`` prior precisions
        ``deltas`` ``[M, G]``."""
        raise NotImplementedError

    def variance(self, features: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``[M, n, C]``: :meth:`variances` for one prior precision per member (``delta`` ``[M]``)."""
        return self.variances(features, delta[:, None])[..., 0]

    def covariance(self, features: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``[M, n, C, C]``: ``J (H + delta I)^-1 J^T`` per example (``delta`` ``[M]``)."""
        raise NotImplementedError

    def precision(self, delta: torch.Tensor) -> torch.Tensor:
        """``[M, C F, C F]`` dense posterior precision ``H + delta I``, index ``c * F + d``."""
        raise NotImplementedError


class FullGGN(LastLayerCurvature):
    """The exact GGN ``H`` ``[M, C F, C F]`` (see the module docstring).

    For a fixed prior precision the posterior covariance ``Sigma = (H + delta I)^-1`` comes from a Cholesky
    factorisation (kept until ``delta`` changes; where round-off makes it fail, from the eigendecomposition
    with the eigenvalues of ``H`` clamped at 0); the marginal likelihood needs only the eigenvalues of ``H``
    (``torch.linalg.eigvalsh``, about twice the cost of the factorisation); the eigenvectors, needed only to
    evaluate a grid of prior precisions at once, are computed when first asked for.
    """

    structure = "full"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = self.num_parameters
        self.register_buffer("hessian", self._zeros(self.num_members, p, p))
        self._clear_cache()

    def _clear_cache(self) -> None:
        self._eigenvalues: torch.Tensor | None = None
        self._eigenvectors: torch.Tensor | None = None
        self._covariance: tuple[tuple[float, ...], torch.Tensor] | None = None

    def _apply(self, fn, recurse: bool = True):  # .to(), .double(), ...: the caches are recomputed
        self._clear_cache()
        return super()._apply(fn, recurse)

    @classmethod
    @renamed_keywords(members="num_members")
    def nbytes(cls, num_members: int, outputs: int, features: int, bias: bool, itemsize: int) -> int:
        p = outputs * (features + int(bias))
        return 3 * num_members * p * p * itemsize  # H, the covariance and one work matrix (P or its factor)

    def _blocks(self) -> torch.Tensor:
        """``H`` viewed as ``[M, C, F, C, F]``."""
        c, f = self.outputs, self.width
        return self.hessian.view(self.num_members, c, f, c, f)

    def accumulate(self, features: torch.Tensor, probs: torch.Tensor | None) -> None:
        c, f = self.outputs, self.width
        self.num_data += features.shape[1]
        if probs is None:  # Gaussian: H = I_K (x) Phi~^T Phi~ (before 1 / sigma^2)
            self.hessian.baddbmm_(features.mT, features)
            return
        rows = self.hessian.view(self.num_members, c, f, c * f)
        for part in _chunks(features.shape[1], self.num_members * c * f):
            phi, p = features[:, part], probs[:, part]
            variances = softmax_variances(p)
            for out in range(c):
                # blocks (out, k >= out): Phi~^T diag(delta_{out,k} p_out - p_out p_k) Phi~, in one product
                weights = -p[..., out : out + 1] * p[..., out:]  # [M, n, C - out]
                weights[..., 0] = variances[..., out]
                scaled = (weights[..., :, None] * phi[..., None, :]).flatten(2)  # [M, n, (C - out) F]
                rows[:, out, :, out * f :].baddbmm_(phi.mT, scaled)

    def finalize(self, scale: torch.Tensor) -> None:
        blocks = self._blocks()
        for out in range(self.outputs):  # copy the blocks above the diagonal into those below
            for k in range(out + 1, self.outputs):
                blocks[:, k, :, out, :] = blocks[:, out, :, k, :].mT
        self.hessian.mul_(scale[:, None, None])

    def eigenvalues(self) -> torch.Tensor:
        if self._eigenvalues is None:
            self._eigenvalues = torch.linalg.eigvalsh(self.hessian).clamp_min(0)
        return self._eigenvalues

    def _eigen(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eigenvectors is None:
            values, self._eigenvectors = torch.linalg.eigh(self.hessian)
            self._eigenvalues = values.clamp_min(0)
        return self.eigenvalues(), self._eigenvectors

    def posterior_covariance(self, delta: torch.Tensor) -> torch.Tensor:
        """``[M, C F, C F]``: ``(H + delta I)^-1``, cached for the last ``delta``."""
        key = tuple(float(d) for d in delta)
        if self._covariance is None or self._covariance[0] != key:
            self._covariance = None  # free the old one first
            precision = self.precision(delta)
            factor, info = torch.linalg.cholesky_ex(precision)
            del precision
            if bool((info > 0).any()):
                # lost to round-off (float32, a prior precision far below H's scale): the eigendecomposition,
                # with H's eigenvalues clamped at 0, gives a positive definite covariance whatever delta
                values, vectors = self._eigen()
                covariance = (vectors / (values + delta[:, None])[:, None, :]) @ vectors.mT
            else:
                covariance = torch.cholesky_inverse(factor)  # symmetric; LAPACK returns it column-major
                if not covariance.is_contiguous():
                    covariance = covariance.mT if covariance.mT.is_contiguous() else covariance.contiguous()
            self._covariance = (key, covariance)
        return self._covariance[1]

    def variances(self, features: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        m, n, f = features.shape
        c = self.outputs
        if deltas.shape[1] == 1:  # one precision: the diagonal blocks Sigma_cc, phi~^T Sigma_cc phi~
            sigma = self.posterior_covariance(deltas[:, 0]).view(m, c, f, c, f)
            blocks = sigma.diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)  # [M, C, F, F]
            out = features.new_empty(m, n, c, 1)
            for part in _chunks(n, m * c * f):
                phi = features[:, part]
                projected = torch.einsum("mnd,mcde->mnce", phi, blocks)
                out[:, part, :, 0] = (projected * phi[:, :, None, :]).sum(-1)
            return out
        values, vectors = self._eigen()  # Sigma = V diag(1 / (lambda + delta)) V^T for every delta
        inverse = (values[:, :, None] + deltas[:, None, :]).reciprocal()  # [M, P, G]
        out = features.new_empty(m, n, c, deltas.shape[1])
        for part in _chunks(n, m * vectors.shape[-1]):
            for out_index in range(c):
                rows = vectors[:, out_index * f : (out_index + 1) * f]  # [M, F, P]
                projected = torch.bmm(features[:, part], rows)  # J_c V: [M, n, P]
                out[:, part, out_index] = torch.bmm(projected.square(), inverse)
        return out

    def covariance(self, features: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        m, n, f = features.shape
        c = self.outputs
        sigma = self.posterior_covariance(delta).view(m, c * f * c, f)  # rows (c, d, k), columns e
        out = features.new_empty(m, n, c, c)
        for part in _chunks(n, m * c * f * c):
            phi = features[:, part]
            projected = torch.bmm(phi, sigma.mT).view(m, phi.shape[1], c, f, c)
            out[:, part] = torch.einsum("mncdk,mnd->mnck", projected, phi)
        return out

    def precision(self, delta: torch.Tensor) -> torch.Tensor:
        precision = self.hessian.clone()
        precision.diagonal(dim1=1, dim2=2).add_(delta[:, None])
        return precision


class KronGGN(LastLayerCurvature):
    """The Kronecker-factored GGN: weight block ``B (x) A``, bias block ``B`` (see the module docstring).

    ``B = Q_B diag(l_B) Q_B^T`` and ``A = Q_A diag(l_A) Q_A^T`` are eigendecomposed once; the weight block of
    ``P = H + delta I`` then has eigenvalues ``l_B l_A^T + delta`` with eigenvectors ``Q_B (x) Q_A`` (no
    "damping" approximation, laplace-torch's default), and for features ``phi`` (``psi = Q_A^T phi``) the
    output covariance is ``Q_B diag(s) Q_B^T + (B + delta I)^-1`` with ``s_j = sum_k psi_k^2 /
    (l_Bj l_Ak + delta)``: ``O(D^2 + C D)`` per example.
    """

    structure = "kron"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        m, c, d = self.num_members, self.outputs, self.features
        self.register_buffer("output_factor", self._zeros(m, c, c))  # B
        self.register_buffer("input_factor", self._zeros(m, d, d))  # A
        for name in ("values_b", "vectors_b", "values_a", "vectors_a"):  # set by finalize
            self.register_buffer(name, None)

    @classmethod
    @renamed_keywords(members="num_members")
    def nbytes(cls, num_members: int, outputs: int, features: int, bias: bool, itemsize: int) -> int:
        # the Kronecker factors and their eigenvectors
        return 2 * num_members * (outputs * outputs + features * features) * itemsize

    def accumulate(self, features: torch.Tensor, probs: torch.Tensor | None) -> None:
        n = features.shape[1]
        self.num_data += n
        phi = features[..., : self.features]
        self.input_factor.baddbmm_(phi.mT, phi)
        if probs is None:
            self.output_factor.add_(float(n))
        else:  # sum_i diag(p_i) - p_i p_i^T
            product = -torch.bmm(probs.mT, probs)
            product.diagonal(dim1=1, dim2=2).copy_(softmax_variances(probs).sum(1))
            self.output_factor.add_(product)

    def finalize(self, scale: torch.Tensor) -> None:
        self.input_factor.div_(max(self.num_data, 1))
        self.output_factor.mul_(scale[:, None, None])
        values_b, self.vectors_b = torch.linalg.eigh(self.output_factor)
        values_a, self.vectors_a = torch.linalg.eigh(self.input_factor)
        self.values_b, self.values_a = values_b.clamp_min(0), values_a.clamp_min(0)

    def _decomposition(self) -> tuple[torch.Tensor, ...]:
        return self.values_b, self.vectors_b, self.values_a, self.vectors_a

    def eigenvalues(self) -> torch.Tensor:
        values_b, _, values_a, _ = self._decomposition()
        weight = (values_b[:, :, None] * values_a[:, None, :]).flatten(1)
        return torch.cat([weight, values_b], dim=1) if self.bias else weight

    def variances(self, features: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        values_b, vectors_b, values_a, vectors_a = self._decomposition()
        m, n, _ = features.shape
        c, d, g = self.outputs, self.features, deltas.shape[1]
        # 1 / (l_Bj l_Ak + delta_g) as [M, D, C G]
        inverse = values_b[:, None, :, None] * values_a[:, :, None, None] + deltas[:, None, None, :]
        inverse = inverse.reciprocal().reshape(m, d, c * g)
        squared_b = vectors_b.square()  # [M, C, C]: Q_B[c, j]^2
        out = features.new_empty(m, n, c, g)
        for part in _chunks(n, m * max(d, c * g)):
            psi = torch.bmm(features[:, part, :d], vectors_a).square()  # [M, n, D]
            s = torch.bmm(psi, inverse).view(m, -1, c, g)  # [M, n, C (j), G]
            out[:, part] = torch.einsum("mcj,mnjg->mncg", squared_b, s)
        if self.bias:
            bias = (values_b[:, :, None] + deltas[:, None, :]).reciprocal()  # [M, C (j), G]
            out += torch.einsum("mcj,mjg->mcg", squared_b, bias)[:, None]
        return out

    def covariance(self, features: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        values_b, vectors_b, values_a, vectors_a = self._decomposition()
        m, n, _ = features.shape
        d = self.features
        inverse = (
            values_b[:, None, :] * values_a[:, :, None] + delta[:, None, None]
        ).reciprocal()  # [M, D, C]
        out = features.new_empty(m, n, self.outputs, self.outputs)
        for part in _chunks(n, m * max(d, self.outputs * self.outputs)):
            psi = torch.bmm(features[:, part, :d], vectors_a).square()
            s = torch.bmm(psi, inverse)  # [M, n, C (j)]
            if self.bias:
                s = s + (values_b + delta[:, None]).reciprocal()[:, None]
            out[:, part] = torch.einsum("mcj,mnj,mkj->mnck", vectors_b, s, vectors_b)
        return out

    def precision(self, delta: torch.Tensor) -> torch.Tensor:
        m, c, d, f = self.num_members, self.outputs, self.features, self.width
        dense = self.input_factor.new_zeros(m, c, f, c, f)
        dense[:, :, :d, :, :d] = torch.einsum("mck,mde->mcdke", self.output_factor, self.input_factor)
        if self.bias:
            dense[:, :, d, :, d] = self.output_factor
        dense = dense.view(m, c * f, c * f)
        dense.diagonal(dim1=1, dim2=2).add_(delta[:, None])
        return dense


class DiagGGN(LastLayerCurvature):
    """The diagonal of the GGN, ``h`` ``[M, C, F]``: ``h_cd = sum_i Lambda_i[c, c] phi~_id^2``."""

    structure = "diag"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("diagonal", self._zeros(self.num_members, self.outputs, self.width))

    @classmethod
    @renamed_keywords(members="num_members")
    def nbytes(cls, num_members: int, outputs: int, features: int, bias: bool, itemsize: int) -> int:
        return num_members * outputs * (features + int(bias)) * itemsize

    def accumulate(self, features: torch.Tensor, probs: torch.Tensor | None) -> None:
        self.num_data += features.shape[1]
        squared = features.square()
        if probs is None:
            self.diagonal.add_(squared.sum(1)[:, None, :])
        else:  # Lambda_i[c, c] = p_ic (1 - p_ic)
            self.diagonal.baddbmm_(softmax_variances(probs).mT, squared)

    def finalize(self, scale: torch.Tensor) -> None:
        self.diagonal.mul_(scale[:, None, None])

    def eigenvalues(self) -> torch.Tensor:
        return self.diagonal.flatten(1)

    def variances(self, features: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        m, n, f = features.shape
        c, g = self.outputs, deltas.shape[1]
        inverse = (self.diagonal[..., None] + deltas[:, None, None, :]).reciprocal()  # [M, C, F, G]
        inverse = inverse.permute(0, 2, 1, 3).reshape(m, f, c * g)
        return torch.bmm(features.square(), inverse).view(m, n, c, g)

    def covariance(self, features: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(self.variance(features, delta))

    def precision(self, delta: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(self.diagonal.flatten(1) + delta[:, None])


STRUCTURES: dict[str, type[LastLayerCurvature]] = {
    "full": FullGGN,
    "kron": KronGGN,
    "diag": DiagGGN,
}
"""The ``hessian=`` options of :class:`uqkit.LastLayerLaplace`, cheapest last."""
