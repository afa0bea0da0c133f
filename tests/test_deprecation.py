"""Deprecated names (uqkit/_deprecation.py): each warns, names its replacement, and is the new object.

The renamed attributes of ``Prediction`` / ``GaussianPrediction`` are tested in tests/test_prediction.py, the
former ``RandomFeatureGP(likelihood="gaussian")`` in tests/nn/test_gp.py, and the renamed keywords next to
their functions.
"""

from __future__ import annotations

import importlib
import re
import warnings

import pytest
import torch

import uqkit
from uqkit._deprecation import REMOVED_IN, deprecated_property, renamed_keywords

# (module, old name, new name): every module attribute kept under its former name.
MODULE_ALIASES = [
    ("uqkit.nn", "GaussianLinear", "ReparameterizationLinear"),
    ("uqkit.nn", "GaussianConv1d", "ReparameterizationConv1d"),
    ("uqkit.nn", "GaussianConv2d", "ReparameterizationConv2d"),
    ("uqkit.nn", "GaussianLSTM", "ReparameterizationLSTM"),
    ("uqkit.nn.reparam", "GaussianLinear", "ReparameterizationLinear"),
    ("uqkit.nn.reparam", "GaussianConv1d", "ReparameterizationConv1d"),
    ("uqkit.nn.reparam", "GaussianConv2d", "ReparameterizationConv2d"),
    ("uqkit.nn.reparam", "GaussianLSTM", "ReparameterizationLSTM"),
    ("uqkit.nn.priors", "gaussian_entropy", "normal_entropy"),
    ("uqkit", "GaussianConfig", "ReparameterizationConfig"),
    ("uqkit.methods", "GaussianConfig", "ReparameterizationConfig"),
    ("uqkit.methods.convert", "GaussianConfig", "ReparameterizationConfig"),
]


@pytest.mark.parametrize(("module", "old", "new"), MODULE_ALIASES, ids=lambda value: str(value))
def test_a_former_module_attribute_warns_and_is_the_new_one(module, old, new):
    namespace = importlib.import_module(module)
    pattern = rf"{re.escape(module)}\.{old} is deprecated .*{REMOVED_IN}; use {re.escape(module)}\.{new} "
    with pytest.warns(DeprecationWarning, match=pattern):
        value = getattr(namespace, old)
    assert value is getattr(namespace, new)
    assert old not in getattr(namespace, "__all__", ())


def test_the_warning_points_at_the_callers_line():
    with pytest.warns(DeprecationWarning) as record:
        uqkit.nn.GaussianLinear  # noqa: B018 (the lookup is what warns)
    assert record[0].filename == __file__


def test_from_import_of_a_former_name_warns_and_builds_the_same_layer():
    with pytest.warns(DeprecationWarning, match="uqkit.nn.GaussianLinear is deprecated"):
        from uqkit.nn import GaussianLinear
    torch.manual_seed(0)
    old = GaussianLinear(3, 2, posterior_scale_init=0.1, local_reparameterization=True)
    torch.manual_seed(0)
    new = uqkit.nn.ReparameterizationLinear(3, 2, posterior_scale_init=0.1, local_reparameterization=True)
    assert type(old) is type(new)
    torch.testing.assert_close(old.state_dict(), new.state_dict(), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="uqkit.GaussianConfig is deprecated"):
        config = uqkit.GaussianConfig(posterior_scale_init=0.0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    report = uqkit.bayesianize_(model, config)
    assert report.converted == [("0", "Linear", "ReparameterizationLinear")]


def test_an_unknown_module_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match=r"module 'uqkit\.nn' has no attribute 'GaussianDense'"):
        uqkit.nn.GaussianDense  # noqa: B018
    assert not hasattr(uqkit, "no_such_name")


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module, _, new in MODULE_ALIASES:
            getattr(importlib.import_module(module), new)


class _Renamed:
    width = 3
    size = deprecated_property("size", "width")

    @renamed_keywords(size="num_members")
    def scaled(self, factor: float, num_members: int = 1) -> float:
        return factor * num_members


def test_deprecated_property_and_renamed_keyword():
    thing = _Renamed()
    with pytest.warns(
        DeprecationWarning, match=r"_Renamed\.size is deprecated .*use _Renamed\.width instead"
    ):
        assert thing.size == 3
    with pytest.warns(
        DeprecationWarning, match=r"_Renamed\.scaled\(size=\.\.\.\) is deprecated .*num_members="
    ):
        assert thing.scaled(2.0, size=4) == 8.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert thing.scaled(2.0, num_members=4) == thing.scaled(2.0, 4) == 8.0
    with pytest.raises(TypeError, match=r"got both num_members= and its deprecated name size="):
        thing.scaled(2.0, size=4, num_members=4)


def test_curvature_members_is_num_members():
    """``LastLayerCurvature(members=...)``, ``.members`` and ``nbytes(members=...)`` (deprecated)."""
    from uqkit.methods.laplace_curvature import DiagGGN

    shape = dict(outputs=3, features=4, bias=True)
    new = DiagGGN(num_members=2, **shape, dtype=torch.float64, device=torch.device("cpu"))
    with pytest.warns(DeprecationWarning, match=r"__init__\(members=\.\.\.\) is deprecated .*num_members="):
        old = DiagGGN(members=2, **shape, dtype=torch.float64, device=torch.device("cpu"))
    assert old.diagonal.shape == new.diagonal.shape == (2, 3, 5)
    with pytest.warns(DeprecationWarning, match=r"DiagGGN\.members is deprecated .*DiagGGN\.num_members"):
        assert old.members == old.num_members == 2
    with pytest.warns(DeprecationWarning, match=r"nbytes\(members=\.\.\.\)"):
        assert DiagGGN.nbytes(members=2, **shape, itemsize=8) == DiagGGN.nbytes(2, **shape, itemsize=8) == 240
