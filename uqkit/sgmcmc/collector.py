"""Thinned SG-MCMC samples kept as one member-vectorized model: :class:`SampleCollector`.

The collector copies the state of a model (its parameters and persistent buffers) at the steps its thinning
rule picks (:mod:`uqkit.sgmcmc.thinning`). Predicting with the ``K`` samples runs them as one
:class:`uqkit.DeepEnsemble` built from the stored states (stacked parameters, one vectorized forward pass
instead of a loop over ``K`` models), so ``uqkit.predict(collector, x)`` gives ``[K, B, C]`` logits, member
``k`` the ``k``-th sample, and the predictive is the Monte Carlo average of the posterior predictive
``p(y | x, D) ~ (1 / K) sum_k p(y | x, theta_k)`` (Welling & Teh 2011, Sec. 5; Zhang et al. 2020, Sec. 3).

A large batch runs one sample at a time (the ensemble's member-by-member inference on CPU, see
:class:`uqkit.DeepEnsemble`: its activations are one model's); a batch that the ensemble would fold into one
pass of more than ``rows_per_pass`` rows (``K`` times the examples, :data:`ROWS_PER_PASS`), i.e. many samples
of a small batch, is predicted in slices, which keeps a pass's activations in the CPU's caches and its
memory bounded.

Storage: a list of per-sample states, so that keeping a sample costs one copy of the model whatever ``K``;
the vectorized model is built on first use after a change (it holds a second copy of the samples while it
is cached). The samples travel in the collector's ``state_dict()`` (as its extra state: a ``[K, *shape]``
tensor per state entry), so a checkpoint of a module holding a collector keeps them, and
``load_state_dict`` restores any ``K``. :meth:`~SampleCollector.save` / :meth:`~SampleCollector.load` write
and read the same tensors to a file atomically, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from uqkit._atomic import CorruptFileError, atomic_write, read_torch
from uqkit._validation import check_float_tensor, check_positive_int
from uqkit.methods.ensemble import DeepEnsemble
from uqkit.methods.prediction_protocol import predict
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = ["ROWS_PER_PASS", "SAMPLES_FORMAT", "SampleCollector"]

SAMPLES_FORMAT = "uqkit.sgmcmc.SampleCollector/1"
"""The ``"format"`` entry of a file written by :meth:`SampleCollector.save`."""

ROWS_PER_PASS = 768
"""Default bound on the rows (samples times examples) of one folded vectorized pass of :func:`uqkit.predict`:
the ``K * B`` rows of a batch that the samples' ensemble runs folded (fewer than
:data:`uqkit.methods.ensemble.MEMBER_BY_MEMBER_MIN_BATCH` examples, or on a GPU) are predicted in slices of
the batch, so that the activations of a pass stay in the CPU's caches and its memory stays bounded whatever
``K``. A batch run sample by sample (the ensemble's member-by-member inference) is not sliced: its
activations are one model's. Measured with 12 LeNet-5 samples at batch 256 (``benchmarks/sgmcmc.py``, one
thread, torch 2.13, a shared 2-core machine): one folded pass of all 3,072 rows took 1.4x the time of a loop
over the 12 models, slices of 768 rows 0.95x-1.1x (with 28,000-38,000 page faults per call), the whole batch
sample by sample 0.54x-0.58x."""

_PREDICT_OPTIONS = ("num_samples", "output", "batch_dim", "samples_per_pass", "mean_field")


def _slice_size(batch: int, limit: int, tensors: list[torch.Tensor], batch_dim: int) -> int | None:
    """The examples per pass: the largest ``n <= limit`` (at least 1) such that neither ``n`` nor the last
    slice's size is the size along ``batch_dim`` of an input that is not batch-shaped (the member model would
    take such an input for a slice of the batch and tile it); ``None``: one pass (``batch <= limit``, or no
    such ``n``)."""
    if batch <= max(limit, 1):
        return None
    others = {t.shape[batch_dim] for t in tensors if t.dim() > batch_dim and t.shape[batch_dim] != batch}
    for size in range(max(limit, 1), 0, -1):
        if size not in others and (batch % size) not in others:
            return size
    return None


class SampleCollector(nn.Module):
    """Thinned samples of a model's parameters, predicted with as one member-vectorized model.

    Args:
        model: the network the sampler updates; the collector reads its state when it keeps a sample and
            takes its architecture (every sample has this model's parameter and buffer names and shapes).
            It is not a submodule of the collector (its parameters are not the collector's).
        thinning: ``thinning(step) -> bool`` deciding at :meth:`step` whether the state after 0-based
            ``step`` is kept (:class:`~uqkit.sgmcmc.EveryKSteps`, :class:`~uqkit.sgmcmc.CycleEnds`, or any
            callable); ``None``: only explicit :meth:`collect` calls keep samples.
        rows_per_pass: the most rows (``K`` times the examples) one folded vectorized pass of
            :func:`uqkit.predict` runs; a larger batch that the ensemble runs folded is predicted in slices
            (:data:`ROWS_PER_PASS`); ``None``: the whole batch in one pass.

    Attributes:
        num_samples: ``K``, the samples kept.
        thinning: the thinning rule (may be set after construction).

    Shape:
        ``collector(*inputs)`` runs the samples' :class:`uqkit.DeepEnsemble` on the model's inputs and
        returns ``[K * B, ...]`` (samples folded into the batch, member-major); ``uqkit.predict(collector,
        *inputs)`` returns a :class:`uqkit.Prediction` with ``[K, B, C]`` logits (a
        :class:`uqkit.GaussianPrediction` for a Gaussian-head model).

    Raises:
        TypeError: for a ``model`` that is not an ``nn.Module`` or a ``thinning`` that is not callable.

    Example:
        >>> schedule = CyclicalSchedule(base_lr=0.1, total_steps=steps, num_cycles=4, exploration=0.8)
        >>> optimizer = SGHMC(model.parameters(), lr=0.1, num_data=len(dataset), prior_precision=1.0)
        >>> collector = SampleCollector(model, CycleEnds(schedule, samples_per_cycle=3))
        >>> for step, (x, y) in enumerate(batches):
        ...     schedule.apply(optimizer, step)
        ...     optimizer.zero_grad(); F.cross_entropy(model(x), y).backward(); optimizer.step()
        ...     collector.step(step)
        >>> uqkit.predict(collector, x_test)  # [12, B, C]
        >>> collector.save("samples.pt")  # later: SampleCollector(Net()).load("samples.pt")
        >>> collector.flat_samples()  # [12, P], the parameters of each sample in a row
    """

    def __init__(
        self,
        model: nn.Module,
        thinning: Callable[[int], bool] | None = None,
        rows_per_pass: int | None = ROWS_PER_PASS,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if thinning is not None and not callable(thinning):
            raise TypeError(f"thinning: expected a callable thinning(step) -> bool or None, got {thinning!r}")
        if rows_per_pass is not None:
            check_positive_int(rows_per_pass, "rows_per_pass")
        self.thinning = thinning
        self.rows_per_pass = rows_per_pass
        state = model.state_dict()
        self.__dict__["_model"] = model
        self.__dict__["_template"] = copy.deepcopy(model).to("meta")  # the architecture, no memory
        self.__dict__["_shapes"] = {name: tuple(tensor.shape) for name, tensor in state.items()}
        self.__dict__["_parameter_names"] = [name for name, _ in model.named_parameters()]
        self.__dict__["_samples"] = []
        self.__dict__["_ensemble"] = None

    # -- keeping samples -----------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """``K``, the number of samples kept."""
        return len(self._samples)

    def collect(self) -> int:
        """Keep a copy of the model's current state (parameters and persistent buffers) as a sample.

        Returns:
            The new sample's index.
        """
        state = self._model.state_dict()
        self._check_names(list(state), "the model's state")
        self._samples.append({name: tensor.detach().clone() for name, tensor in state.items()})
        self.__dict__["_ensemble"] = None
        return len(self._samples) - 1

    def step(self, step: int) -> bool:
        """Keep the model's state if the thinning rule picks 0-based ``step`` (call after every optimizer
        step).

        Returns:
            Whether a sample was kept.

        Raises:
            ValueError: when the collector has no thinning rule.
        """
        if self.thinning is None:
            raise ValueError(
                "thinning: this collector has no thinning rule; pass one (e.g. EveryKSteps(10)) or call "
                "collect() to keep a sample"
            )
        check_positive_int(step, "step", minimum=0)
        if not self.thinning(step):
            return False
        self.collect()
        return True

    def clear(self) -> None:
        """Drop every sample."""
        self.__dict__["_samples"] = []
        self.__dict__["_ensemble"] = None

    # -- predicting ----------------------------------------------------------------------------------------
    @property
    def ensemble(self) -> DeepEnsemble:
        """The ``K`` samples as one :class:`uqkit.DeepEnsemble` (built on first use after a change, cached;
        in the collector's training mode).

        Raises:
            RuntimeError: when no sample has been kept.
        """
        if not self._samples:
            raise RuntimeError(
                "SampleCollector: no samples kept yet; call collect(), or step(step) after each optimizer "
                "step with a thinning rule that picks some steps"
            )
        if self._ensemble is None:
            members = iter([self._member(index) for index in range(len(self._samples))])
            ensemble = DeepEnsemble(lambda: next(members), len(self._samples))
            self.__dict__["_ensemble"] = ensemble.train(self.training)
        return self._ensemble

    def _member(self, index: int) -> nn.Module:
        """Sample ``index`` as a module of the model's architecture (its tensors are the stored ones)."""
        member = copy.deepcopy(self._template)
        member.load_state_dict(self._samples[index], assign=True)
        for name, buffer in list(member.named_buffers()):  # non-persistent buffers: not in a state dict
            if buffer.is_meta:
                owner_name, _, attribute = name.rpartition(".")
                live = self._model.get_buffer(name)
                member.get_submodule(owner_name)._buffers[attribute] = live.detach().clone()
        return member.train(self.training)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """The samples' :class:`uqkit.DeepEnsemble` on the inputs: ``[K * B, ...]`` outputs, member-major."""
        return self.ensemble(*inputs, **kwargs)

    def uqkit_predict(self, *inputs: Any, **options: Any) -> Prediction | GaussianPrediction:
        """The hook :func:`uqkit.predict` calls: ``uqkit.predict(self.ensemble, *inputs, **options)``, over
        slices of the batch of at most ``rows_per_pass // K`` examples (at least one) when the ``K * B``
        rows of one folded pass would exceed ``rows_per_pass`` (a batch that the ensemble runs sample by
        sample, :meth:`uqkit.DeepEnsemble.runs_member_by_member`, goes whole); the slices' predictions are
        concatenated along the batch (examples are predicted independently in eval mode, so the result is
        the same up to rounding).
        Every tensor input whose size along ``batch_dim`` is ``B`` is sliced; a slice size that equals the
        size of another tensor input (which the member model would then take for a batch) is avoided."""
        ensemble = self.ensemble
        batch_dim = options.get("batch_dim", 0)
        model_kwargs = {k: v for k, v in options.items() if k not in _PREDICT_OPTIONS}
        tensors = [v for v in (*inputs, *model_kwargs.values()) if isinstance(v, torch.Tensor)]
        if self.rows_per_pass is None or not tensors or not isinstance(batch_dim, int):
            return predict(ensemble, *inputs, **options)
        first = tensors[0]
        if not -first.dim() <= batch_dim < first.dim():
            return predict(ensemble, *inputs, **options)  # predict names the bad batch_dim
        batch = first.shape[batch_dim]
        if batch_dim % first.dim() == 0 and ensemble.runs_member_by_member(batch, first.device):
            return predict(ensemble, *inputs, **options)  # one sample at a time: activations of one model
        chunk = _slice_size(batch, self.rows_per_pass // len(self._samples), tensors, batch_dim)
        if chunk is None:
            return predict(ensemble, *inputs, **options)

        def piece(value: Any, start: int) -> Any:
            if (
                isinstance(value, torch.Tensor)
                and value.dim() > batch_dim
                and value.shape[batch_dim] == batch
            ):
                return value.narrow(batch_dim, start, min(chunk, batch - start))
            return value

        parts = []
        for start in range(0, batch, chunk):
            part_inputs = [piece(value, start) for value in inputs]
            part_options = {k: piece(v, start) if k in model_kwargs else v for k, v in options.items()}
            parts.append(predict(ensemble, *part_inputs, **part_options))
        if isinstance(parts[0], GaussianPrediction):
            return GaussianPrediction(
                torch.cat([p.sample_mean for p in parts], 1), torch.cat([p.sample_variance for p in parts], 1)
            )
        return Prediction(torch.cat([p.logits for p in parts], 1))

    def train(self, mode: bool = True) -> SampleCollector:
        super().train(mode)
        if self._ensemble is not None:
            self._ensemble.train(mode)
        return self

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> SampleCollector:
        """``.to()``, ``.double()``, ``.cuda()``, ...: applied to every stored sample too."""
        super()._apply(fn, recurse)
        self.__dict__["_samples"] = [{k: fn(v) for k, v in sample.items()} for sample in self._samples]
        self.__dict__["_ensemble"] = None
        return self

    # -- samples as tensors --------------------------------------------------------------------------------
    def samples(self) -> dict[str, torch.Tensor]:
        """Every state entry of every sample, stacked: ``{name: [K, *shape]}`` (copies), in the model's
        ``state_dict()`` order: the chains' traces."""
        if not self._samples:
            reference = self._model.state_dict()
            return {name: reference[name].new_empty((0, *shape)) for name, shape in self._shapes.items()}
        return {name: torch.stack([sample[name] for sample in self._samples]) for name in self._shapes}

    @property
    def parameter_names(self) -> list[str]:
        """The parameters' names in :meth:`flat_samples`' column order (``model.named_parameters()``)."""
        return list(self._parameter_names)

    def flat_samples(self) -> torch.Tensor:
        """The samples as a ``[K, P]`` matrix: row ``k`` is sample ``k``'s parameters, each flattened
        row-major and concatenated in :attr:`parameter_names` order (``model.named_parameters()``, as
        ``torch.nn.utils.parameters_to_vector(model.parameters())`` orders them). Buffers are not included.

        Returns:
            A new ``[K, P]`` tensor (``[0, P]`` when empty).
        """
        if not self._samples:
            count = sum(torch.Size(self._shapes[name]).numel() for name in self._parameter_names)
            reference = next(iter(self._model.parameters()), torch.empty(0))
            return reference.new_empty((0, count))
        rows = [
            torch.cat([sample[name].reshape(-1) for name in self._parameter_names])
            for sample in self._samples
        ]
        return torch.stack(rows)

    def set_flat_samples(self, matrix: torch.Tensor) -> None:
        """Replace the samples by the rows of a ``[K', P]`` matrix (the inverse of :meth:`flat_samples`):
        row ``k`` gives sample ``k``'s parameters, in :attr:`parameter_names` order. Buffers (state that is
        not a parameter, e.g. batch-norm statistics) are copied from the model's current ones. Each sample
        takes the dtype and device of the model's parameters.

        Raises:
            TypeError: for a non-floating-point ``matrix``.
            ValueError: for a ``matrix`` that is not 2-D with ``P`` columns, or holds non-finite values.
        """
        check_float_tensor(matrix, "matrix")
        sizes = [torch.Size(self._shapes[name]).numel() for name in self._parameter_names]
        if matrix.dim() != 2 or matrix.shape[1] != sum(sizes):
            raise ValueError(
                f"matrix: expected [K, P] with P = {sum(sizes)} parameters per sample, got shape "
                f"{list(matrix.shape)}"
            )
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError("matrix: expected finite values, got NaN or infinite entries")
        live = self._model.state_dict()
        samples = []
        for row in matrix.detach():
            pieces = dict(zip(self._parameter_names, row.split(sizes), strict=True))
            sample = {}
            for name, shape in self._shapes.items():
                reference = live[name]
                if name in pieces:
                    sample[name] = pieces[name].reshape(shape).to(reference.device, reference.dtype).clone()
                else:
                    sample[name] = reference.detach().clone()
            samples.append(sample)
        self.__dict__["_samples"] = samples
        self.__dict__["_ensemble"] = None

    # -- state_dict, save, load ----------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """The samples, as ``{"format", "num_samples", "samples": {name: [K, *shape]}}`` (tensors only)."""
        return {"format": SAMPLES_FORMAT, "num_samples": len(self._samples), "samples": self.samples()}

    def set_extra_state(self, state: Any) -> None:
        """Restore the samples of :meth:`get_extra_state` (any ``K``), on the model's device and dtypes.

        Raises:
            ValueError: for a state that does not hold samples of this model's architecture.
        """
        self._restore(state, "state_dict")

    def save(self, path: str | os.PathLike) -> None:
        """Write the samples to ``path`` atomically (a temporary file beside it, then renamed), as
        ``torch.save`` of tensors, numbers and strings only (readable with ``weights_only=True``)."""
        state = self.get_extra_state()
        atomic_write(path, lambda handle: torch.save(state, handle))

    def load(self, path: str | os.PathLike) -> SampleCollector:
        """Replace the samples by those saved in ``path`` (read with ``torch.load(weights_only=True)``).

        Returns:
            ``self``.

        Raises:
            FileNotFoundError: when ``path`` does not exist.
            uqkit._atomic.CorruptFileError: (a ``ValueError``) naming the file, when it is truncated or
                garbled, is not a file of saved samples, or holds samples of another architecture.
        """
        state = read_torch(path)
        try:
            self._restore(state, "file")
        except ValueError as error:
            raise CorruptFileError(path, str(error)) from None
        return self

    def _restore(self, state: Any, source: str) -> None:
        if not isinstance(state, dict) or state.get("format") != SAMPLES_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"{source}: expected SG-MCMC samples of format {SAMPLES_FORMAT!r}, got {found!r}"
            )
        stacked = state.get("samples")
        count = state.get("num_samples")
        if not isinstance(stacked, dict) or not isinstance(count, int):
            raise ValueError(f"{source}: expected 'samples' (a dict of tensors) and 'num_samples' (an int)")
        self._check_names(list(stacked), f"{source}'s samples")
        live = self._model.state_dict()
        for name, shape in self._shapes.items():
            tensor = stacked[name]
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (count, *shape):
                got = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(
                    f"{source}: expected {name!r} of shape {[count, *shape]} ({count} samples), got {got}"
                )
        self.__dict__["_samples"] = [
            {
                name: stacked[name][index].to(live[name].device, live[name].dtype).clone()
                for name in self._shapes
            }
            for index in range(count)
        ]
        self.__dict__["_ensemble"] = None

    def _check_names(self, names: list[str], what: str) -> None:
        if set(names) != set(self._shapes):
            missing = [name for name in self._shapes if name not in names]
            extra = [name for name in names if name not in self._shapes]
            raise ValueError(
                f"{what}: expected the entries of the collector's model, got {len(missing)} missing "
                f"({missing[:4]}) and {len(extra)} unexpected ({extra[:4]})"
            )

    def extra_repr(self) -> str:
        return f"num_samples={len(self._samples)}, model={type(self._model).__name__}"
