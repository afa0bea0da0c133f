"""Post-hoc distillation of a trained posterior: the benchmark's ``csgmcmc-distilled`` and ``apd`` methods.

Nothing here is registered: the two methods subclass the method that collects the posterior samples
(``csgmcmc``), share its training (``shares_training_with = "csgmcmc"``) and distil the samples in
:meth:`~uqkit.bench.registry.Method.fit_post_hoc`, which the runner calls with the training split:

    class CSGMCMCDistilled(DistilledStudent, CSGMCMCMethod):
        shares_training_with = "csgmcmc"

        def __init__(self, network, context):
            super().__init__(network, ...)                     # the sample collector: self.network
            self.attach_student(build_model(context.model, context.input_shape, context.num_classes))

    class APDMethod(DistilledGenerator, CSGMCMCMethod):
        shares_training_with = "csgmcmc"

        def __init__(self, network, context):
            super().__init__(network, ...)
            shape, classes = context.input_shape, context.num_classes
            self.attach_generator(lambda: build_model(context.model, shape, classes))

The teacher (``self.network``) is any model :func:`uqkit.predict` turns into ``[K, B, C]``, e.g. a
:class:`uqkit.DeepEnsemble` of the ``K`` samples; APD reads its samples as ``[K, P]`` flattened parameter
vectors (:meth:`DistilledGenerator.posterior_vectors`: :func:`uqkit.methods.apd.parameter_vectors` of
its members by default; a collector that stores ``[K, P]`` already overrides it).

The settings below were measured at small scale (docs/distillation.md, "Measured at small scale"); the full
run on LeNet-5 is to confirm them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from uqkit._validation import check_float_tensor, check_positive_int
from uqkit.methods.apd import APD, parameter_vectors
from uqkit.methods.apd_mixture import APDMixture
from uqkit.methods.distillation import distill_predictive
from uqkit.methods.ensemble import DeepEnsemble
from uqkit.methods.prediction_protocol import predict
from uqkit.prediction import GaussianPrediction, Prediction

__all__ = [
    "APD_DRAWN_NETWORKS",
    "APD_LEARNING_RATE",
    "APD_STEPS",
    "STUDENT_EPOCHS",
    "STUDENT_INPUT_NOISE",
    "STUDENT_LEARNING_RATE",
    "STUDENT_WARM_START",
    "DistilledGenerator",
    "DistilledStudent",
    "cycle_groups",
    "distill_generator",
    "distill_student",
]

STUDENT_EPOCHS = 5
"""Passes of the student over the training inputs (a first setting, not measured at full scale)."""
STUDENT_LEARNING_RATE = 1e-3
"""Adam's step size for the student."""
STUDENT_INPUT_NOISE = 0.0
"""Standard deviation of the Gaussian input noise (in the task's standardised input units); 0.3 helped on one
seed and hurt on another, at twice the cost (docs/distillation.md)."""
STUDENT_WARM_START = True
"""Whether the student starts from the teacher's last member (the chain's last sample) rather than a fresh
initialisation: it recovered 81-118% of the NLL gap against -8% to 90% from scratch (docs/distillation.md)."""
APD_STEPS = 1000
"""Generator updates of APD's WGAN-GP (5 critic updates each): 100 steps were too few, 3,000 no better
(docs/distillation.md)."""
APD_LEARNING_RATE = 1e-3
"""Adam's step size for APD's generator and critic (the WGAN-GP paper's 1e-4 needs ten times the steps)."""
APD_DRAWN_NETWORKS = 12
"""Networks drawn from the APD generator to predict (the ``S`` of its ``[S, B, C]``)."""


def distill_student(
    teacher: nn.Module,
    inputs: torch.Tensor,
    student_factory: Callable[[], nn.Module],
    *,
    epochs: int = STUDENT_EPOCHS,
    batch_size: int = 128,
    learning_rate: float = STUDENT_LEARNING_RATE,
    input_noise: float = STUDENT_INPUT_NOISE,
    seed: int = 0,
    output: Callable[[Any], Any] | None = None,
    warm_start: bool = STUDENT_WARM_START,
) -> nn.Module:
    """A new student from ``student_factory()``, distilled from ``teacher``'s predictive on ``inputs``.

    :func:`uqkit.distill_predictive` with the budget ``epochs`` (passes over the training inputs); the
    student is built from the global random generator and moved to the teacher's device; ``seed`` seeds the
    shuffling and the input noise.

    Args:
        teacher: the posterior (e.g. a ``DeepEnsemble`` of samples), predicting ``[K, B, C]``.
        inputs: the training inputs ``[N, ...]``.
        student_factory: ``() -> nn.Module``, one network of the student's architecture.
        epochs, batch_size, learning_rate, input_noise: the distillation's (module constants by default).
        seed: seed of the shuffling and noise.
        output: ``output=`` of :func:`uqkit.predict` for teacher and student (a likelihood's, e.g. the
            Gaussian head's); ``None`` for logits.
        warm_start: start the student from the teacher's last member (``teacher.members()[-1]``, e.g. the
            last sample of the chain) instead of its own initialisation; the teacher must then be a
            ``DeepEnsemble`` of the student's architecture.

    Returns:
        The trained student, in eval mode.
    """
    if not callable(student_factory) or isinstance(student_factory, nn.Module):
        raise TypeError(
            f"student_factory: expected a callable building the student, got {type(student_factory).__name__}"
        )
    student = student_factory()
    if not isinstance(student, nn.Module):
        raise TypeError(f"student_factory: expected it to return an nn.Module, got {type(student).__name__}")
    if warm_start:
        if not isinstance(teacher, DeepEnsemble):
            raise TypeError(
                "teacher: expected a DeepEnsemble to warm-start the student from, got "
                f"{type(teacher).__name__}"
            )
        student.load_state_dict(teacher.members()[-1].state_dict())
    parameter = next(teacher.parameters(), None)
    if parameter is not None:
        student = student.to(parameter.device)
    generator = torch.Generator().manual_seed(seed)
    distill_predictive(
        teacher,
        student,
        inputs,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        input_noise=input_noise,
        output=output,
        student_output=output,
        generator=generator,
    )
    return student.eval()


def distill_generator(
    teacher: DeepEnsemble | torch.Tensor,
    template: nn.Module,
    *,
    groups: torch.Tensor | None = None,
    steps: int = APD_STEPS,
    learning_rate: float = APD_LEARNING_RATE,
    seed: int = 0,
    **options: Any,
) -> APD | APDMixture:
    """An :class:`uqkit.APD` generator fitted to the teacher's samples, or with ``groups`` an
    :class:`uqkit.APDMixture` of one generator per group (per cycle of a cyclical chain: one generator across
    the cycles' modes puts mass between them, docs/distillation.md "One generator per cycle").

    Args:
        teacher: a ``DeepEnsemble`` of the ``K`` samples, or their ``[K, P]`` flattened parameter vectors.
        template: the architecture of one sample.
        groups: ``[K]`` the group (cycle) of each sample, or ``None`` for one generator.
        steps: generator updates (the budget), of each group's generator.
        learning_rate: Adam's step size for both networks.
        seed: seed of the GAN's noise and batches (the networks are built from the global generator).
        **options: further :class:`uqkit.APD` settings (``coordinates``, ``max_rank``, ``latent_dim``,
            ``hidden``) and :meth:`uqkit.APD.fit` options (``critic_steps``, ``penalty``, ``batch_size``,
            ``betas``, ``average``).
    """
    samples = teacher if isinstance(teacher, torch.Tensor) else parameter_vectors(teacher)
    samples = check_float_tensor(samples, "teacher", 2, "[K, P] flattened weight vectors")
    settings = {
        k: options.pop(k) for k in ("coordinates", "max_rank", "latent_dim", "hidden") if k in options
    }
    generator = torch.Generator().manual_seed(seed)
    fit = {"steps": steps, "learning_rate": learning_rate, "generator": generator, **options}
    if groups is None:
        apd = APD(template, **settings)
        apd.fit(samples, **fit)
        return apd
    mixture = APDMixture(template, **settings)
    mixture.fit(samples, groups, **fit)
    return mixture


def cycle_groups(num_samples: int, samples_per_cycle: int) -> torch.Tensor | None:
    """``[K]`` the cycle of each of ``K`` samples kept in chain order, ``samples_per_cycle`` per cycle (a
    shortened last cycle's single sample joins the cycle before); ``None`` when that leaves fewer than two
    cycles or a cycle of one sample (one generator then fits all the samples)."""
    num_samples = check_positive_int(num_samples, "num_samples")
    samples_per_cycle = check_positive_int(samples_per_cycle, "samples_per_cycle")
    groups = torch.arange(num_samples) // samples_per_cycle
    last = int(groups[-1])
    if last > 0 and int((groups == last).sum()) == 1:
        groups[-1] = last - 1
    counts = torch.bincount(groups)
    if counts.numel() < 2 or int(counts.min()) < 2:
        return None
    return groups


class DistilledStudent:
    """Mixin for a :class:`~uqkit.bench.registry.Method` whose ``network`` is a posterior (the teacher):
    after training, a student of one network's cost is distilled from it and predicts (``S = 1``).

    Call :meth:`attach_student` in ``__init__`` after the teacher is built (the student's initialisation
    then does not change the teacher's). The student is a submodule, so the method's saved state holds it.
    """

    student_epochs: int = STUDENT_EPOCHS
    student_input_noise: float = STUDENT_INPUT_NOISE
    student_warm_start: bool = STUDENT_WARM_START
    distillation_seed: int = 0

    def attach_student(self, student: nn.Module) -> None:
        """Keep ``student`` (initialised) as ``self.student``; predictions come from it (``S = 1``)."""
        self.student = student
        self.num_samples = 1

    def teacher(self) -> nn.Module:
        """The posterior the student is distilled from (default: ``network``; a method whose ``network``
        stores its samples otherwise returns their ``DeepEnsemble``)."""
        return self.network

    def fit_post_hoc(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Distil the teacher's predictive on the training inputs ``train[0]`` into the student (the
        validation split ``inputs, labels`` is not used)."""
        if train is None:
            raise ValueError(
                "distillation: fit_post_hoc needs the training split, train=(inputs, labels): the student is "
                "distilled on the training inputs"
            )
        student = self.student
        distill_student(
            self.teacher(),
            train[0],
            lambda: student,
            epochs=self.student_epochs,
            input_noise=self.student_input_noise,
            seed=self.distillation_seed,
            output=self.likelihood.output,
            warm_start=self.student_warm_start,
        )

    def predict(self, inputs: torch.Tensor) -> Prediction | GaussianPrediction:
        """:func:`uqkit.predict` of the student: one network, ``S = 1``."""
        return predict(self.student, inputs, output=self.likelihood.output)


class DistilledGenerator:
    """Mixin for a :class:`~uqkit.bench.registry.Method` whose ``network`` holds posterior samples: after
    training, an :class:`uqkit.APD` generator is fitted to them, and ``S`` (:data:`APD_DRAWN_NETWORKS`)
    networks drawn from it predict, ``[S, B, C]``.

    The fitted generator travels in the method's saved state (``get_extra_state``), so a saved method
    reloads without refitting; the drawn networks are drawn again from ``distillation_seed`` (the same ones).
    """

    apd_steps: int = APD_STEPS
    drawn_networks: int = APD_DRAWN_NETWORKS
    distillation_seed: int = 0

    def attach_generator(self, template_factory: Callable[[], nn.Module]) -> None:
        """Set the architecture of one sample (``template_factory()`` builds it) and ``S``."""
        self.__dict__["_template_factory"] = template_factory
        self.__dict__["_apd"] = None
        self.__dict__["_drawn"] = None
        self.num_samples = check_positive_int(self.drawn_networks, "drawn_networks")

    def posterior_vectors(self) -> torch.Tensor:
        """``[K, P]`` flattened samples (default: :func:`~uqkit.methods.apd.parameter_vectors` of
        ``network``)."""
        return parameter_vectors(self.network)

    def posterior_groups(self, num_samples: int) -> torch.Tensor | None:
        """``[K]`` the cycle (or chain) of each sample, one generator per group (:class:`uqkit.APDMixture`);
        default ``None``: one generator for all (a collector of a cyclical chain overrides it)."""
        return None

    def fit_post_hoc(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Fit the generator to :meth:`posterior_vectors` (no data is used)."""
        template = self._template_factory()
        vectors = self.posterior_vectors()
        apd = distill_generator(
            vectors,
            template,
            groups=self.posterior_groups(vectors.shape[0]),
            steps=self.apd_steps,
            seed=self.distillation_seed,
        )
        self.__dict__["_apd"] = apd
        self.__dict__["_drawn"] = None

    def _drawn_networks(self, device: torch.device) -> DeepEnsemble:
        apd = self._apd
        if apd is None:
            raise RuntimeError("apd: call fit_post_hoc(...) before predict")
        drawn = self._drawn
        if drawn is None or next(drawn.parameters()).device != device:
            apd.template.to(device)
            apd.to(device)
            generator = torch.Generator().manual_seed(self.distillation_seed)
            drawn = apd.sample_ensemble(self.num_samples, generator=generator)
            self.__dict__["_drawn"] = drawn
        return drawn

    def predict(self, inputs: torch.Tensor) -> Prediction | GaussianPrediction:
        """:func:`uqkit.predict` of the ``S`` drawn networks, ``[S, B, C]``."""
        drawn = self._drawn_networks(inputs.device)
        return predict(drawn, inputs, num_samples=self.num_samples, output=self.likelihood.output)

    def get_extra_state(self) -> dict[str, Any]:
        """The fitted generator (:meth:`uqkit.APD.state` or :meth:`uqkit.APDMixture.state`); ``{}`` before
        the fit."""
        return {} if self._apd is None else self._apd.state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore a generator saved by :meth:`get_extra_state` (``{}``: none)."""
        self.__dict__["_drawn"] = None
        if not state:
            self.__dict__["_apd"] = None
            return
        kind = APDMixture if state.get("format") == APDMixture.state_format else APD
        self.__dict__["_apd"] = kind.from_state(state, self._template_factory())
