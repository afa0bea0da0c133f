"""The post-hoc parts of ``csgmcmc-distilled`` and ``apd`` (uqkit/bench/posterior_distillation.py), on a deep
ensemble method standing in for the sample collector: the student and the generator are fitted on the
training split, predict with ``S = 1`` and ``S = 12``, and travel in the method's saved state."""

from __future__ import annotations

import io

import pytest
import torch

import uqkit
from uqkit.bench.models import build_model
from uqkit.bench.posterior_distillation import (
    APD_DRAWN_NETWORKS,
    DistilledGenerator,
    DistilledStudent,
    cycle_groups,
    distill_generator,
    distill_student,
)
from uqkit.bench.registry import DeepEnsembleMethod
from uqkit.methods.apd import parameter_vectors
from uqkit.methods.distillation import distillation_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _backbone() -> torch.nn.Module:
    return build_model("resmlp", (6,), 4)


class _Student(DistilledStudent, DeepEnsembleMethod):
    shares_training_with = "deep-ensemble"
    student_epochs = 20

    def __init__(self) -> None:
        super().__init__(uqkit.DeepEnsemble(_backbone, 3))
        self.attach_student(_backbone())


class _Generator(DistilledGenerator, DeepEnsembleMethod):
    shares_training_with = "deep-ensemble"
    apd_steps = 5

    def __init__(self) -> None:
        super().__init__(uqkit.DeepEnsemble(_backbone, 3))
        self.attach_generator(_backbone)


def _data(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 6, generator=generator)
    return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()


def test_student_is_distilled_on_the_training_split_and_saved_with_the_method():
    torch.manual_seed(0)
    method = _Student()
    train, val, test = _data(64, 1), _data(16, 2), torch.randn(32, 6)
    teacher = uqkit.predict(method.network, test)
    with torch.no_grad():
        before = float(distillation_loss(teacher, method.student(test)))
    with pytest.raises(ValueError, match="training split"):
        method.fit_post_hoc(*val)
    method.fit_post_hoc(*val, train=train)
    prediction = method.predict(test)
    assert prediction.logits.shape == (1, 32, 4) and method.num_samples == 1
    assert float(distillation_loss(teacher, prediction.logits[0])) < 0.5 * before
    torch.manual_seed(5)
    reloaded = _Student()
    reloaded.load_state_dict(method.state_dict())
    torch.testing.assert_close(reloaded.predict(test).logits, prediction.logits, rtol=0, atol=0)


def test_generator_is_fitted_to_the_members_and_reloads_from_the_saved_state():
    torch.manual_seed(0)
    method = _Generator()
    test = torch.randn(9, 6)
    with pytest.raises(RuntimeError, match="fit_post_hoc"):
        method.predict(test)
    method.fit_post_hoc(*_data(16, 2), train=_data(64, 1))
    prediction = method.predict(test)
    assert prediction.logits.shape == (APD_DRAWN_NETWORKS, 9, 4) == (method.num_samples, 9, 4)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(5)
    reloaded = _Generator()
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(reloaded.predict(test).logits, prediction.logits, rtol=0, atol=0)


def test_helpers_take_an_ensemble_or_its_vectors():
    torch.manual_seed(0)
    teacher = uqkit.DeepEnsemble(_backbone, 3)
    x = torch.randn(40, 6)
    student = distill_student(teacher, x, _backbone, epochs=1)
    assert not student.training
    with pytest.raises(TypeError, match="student_factory"):
        distill_student(teacher, x, _backbone())
    # warm start: the student begins as the teacher's last member (a step of size ~0 leaves it there)
    warm = distill_student(teacher, x, _backbone, epochs=1, learning_rate=1e-12, warm_start=True)
    last = teacher.members()[-1]
    for name, value in warm.state_dict().items():
        torch.testing.assert_close(value, last.state_dict()[name], rtol=0, atol=1e-9)
    with pytest.raises(TypeError, match="DeepEnsemble to warm-start"):
        distill_student(_backbone(), x, _backbone, warm_start=True)
    torch.manual_seed(1)
    from_ensemble = distill_generator(teacher, _backbone(), steps=2, seed=3)
    torch.manual_seed(1)
    from_vectors = distill_generator(parameter_vectors(teacher), _backbone(), steps=2, seed=3)
    torch.testing.assert_close(
        from_ensemble.sample(2, generator=torch.Generator().manual_seed(0)),
        from_vectors.sample(2, generator=torch.Generator().manual_seed(0)),
    )


def test_cycle_groups_and_a_generator_per_cycle():
    assert cycle_groups(12, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert cycle_groups(7, 2).tolist() == [0, 0, 1, 1, 2, 2, 2]  # a lone last sample joins the cycle before
    assert cycle_groups(8, 1) is None  # one sample per cycle: one generator
    assert cycle_groups(3, 3) is None  # one cycle
    torch.manual_seed(0)
    teacher = uqkit.DeepEnsemble(_backbone, 6)
    mixture = distill_generator(teacher, _backbone(), groups=cycle_groups(6, 3), steps=2, seed=3)
    assert isinstance(mixture, uqkit.APDMixture) and mixture.dims == [2, 2]
    assert mixture.sample(5).shape == (5, parameter_vectors(teacher).shape[1])
