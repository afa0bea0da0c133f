"""SplitConformalClassifier: thresholds and sets against MAPIE, crepes and the RAPS reference algorithm on
the same scores and the same uniform draws; the coverage guarantee over random splits; input errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import uqkit
from uqkit.conformal import SplitConformalClassifier, raps_scores
from uqkit.metrics import empirical_coverage, set_size

ALPHA = 0.1


def _problem(size: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), and the probabilities of a deliberately miscalibrated model:
    softmax(2.5 z + bias), over-confident and biased towards the first classes."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(size, classes, generator=generator, dtype=torch.float64) * 1.5
    labels = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator).squeeze(1)
    bias = torch.linspace(1.0, -1.0, classes, dtype=torch.float64)
    return torch.softmax(2.5 * z + bias, dim=-1), labels


def _uniform(count: int, seed: int) -> torch.Tensor:
    """The draws the calibrator makes with ``torch.Generator().manual_seed(seed)``."""
    return torch.rand(count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the oracles --------------------------------------------------------------------------------------------
MAPIE_EPSILON = 1e-8  # mapie._machine_precision.EPSILON: its sets include classes this close to the last one


def _separated(probs: torch.Tensor) -> torch.Tensor:
    """``[B]`` rows whose probabilities are all more than MAPIE's tolerance apart, where its sets and exact
    comparisons must agree (two tail classes at 1.02451e-4 and 1.02444e-4 are one class to MAPIE)."""
    ordered = probs.sort(dim=-1).values
    return (ordered[:, 1:] - ordered[:, :-1] > MAPIE_EPSILON).all(dim=-1)


class _Replay(np.random.RandomState):
    """A numpy RandomState whose ``uniform`` returns queued draws: MAPIE then uses our uniforms."""

    def __init__(self, *draws: np.ndarray) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.asarray(self.draws.pop(0)).reshape(size)


def _mapie_sets(score: str, probs_cal, labels_cal, probs_test, include_last_label, random_state):
    """MAPIE's split-conformal classifier on a prefit classifier whose ``predict_proba`` is its input."""
    from mapie.classification import SplitConformalClassifier as MapieClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Passthrough(ClassifierMixin, BaseEstimator):
        def __init__(self, num_classes: int = 2) -> None:
            self.num_classes = num_classes

        def fit(self, X, y=None):
            self.classes_ = np.arange(self.num_classes)
            return self

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.asarray(X).argmax(axis=1)

    estimator = Passthrough(probs_cal.shape[1]).fit(None)
    mapie = MapieClassifier(
        estimator, confidence_level=1 - ALPHA, conformity_score=score, prefit=True, random_state=random_state
    )
    mapie.conformalize(probs_cal.numpy(), labels_cal.numpy())
    params = None if include_last_label is None else {"include_last_label": include_last_label}
    _, sets = mapie.predict_set(probs_test.numpy(), conformity_score_params=params)
    threshold = float(mapie._mapie_classifier.conformity_score_function_.quantiles_[0])
    return torch.from_numpy(sets[:, :, 0]), threshold


def test_lac_matches_mapie():
    pytest.importorskip("mapie")
    probs, labels = _problem(500, 5, seed=0)
    ours = SplitConformalClassifier("lac", ALPHA).fit(probs[:149], labels[:149])
    sets, threshold = _mapie_sets("lac", probs[:149], labels[:149], probs[149:], None, None)
    assert ours.threshold_ == threshold
    rows = _separated(probs[149:])
    assert torch.equal(ours.predict(probs[149:])[rows], sets[rows])


@pytest.mark.parametrize("randomized", [False, True])
def test_aps_matches_mapie_with_the_same_uniforms(randomized):
    """MAPIE's APS calibration scores always subtract u p_y; with u = 0 they are the non-randomised scores,
    and its ``include_last_label=True`` sets (up to and including the class that crosses the threshold) are
    the non-randomised sets; ``"randomized"`` is the randomised level set."""
    pytest.importorskip("mapie")
    probs, labels = _problem(500, 6, seed=1)
    n = 199
    ours = SplitConformalClassifier("aps", ALPHA, randomized=randomized)
    ours.fit(probs[:n], labels[:n], generator=_generator(10))
    predicted = ours.predict(probs[n:], generator=_generator(11))
    u_cal = _uniform(n, 10).numpy() if randomized else np.zeros(n)
    u_test = _uniform(500 - n, 11).numpy()
    sets, threshold = _mapie_sets(
        "aps",
        probs[:n],
        labels[:n],
        probs[n:],
        "randomized" if randomized else True,
        _Replay(u_cal, u_test),
    )
    assert ours.threshold_ == pytest.approx(threshold, rel=0, abs=1e-12)
    rows = _separated(probs[n:])
    assert int(rows.sum()) >= 280
    assert torch.equal(predicted[rows], sets[rows])
    assert set_size(predicted).mean < 6  # the sets are not trivially full


def _raps_reference_sets(probs: torch.Tensor, tau: float, k_reg: int, lam: float, u: torch.Tensor):
    """Randomised RAPS sets by the reference code of Angelopoulos et al. 2021 (``gcq`` in
    aangelopoulos/conformal_classification, allow_zero_sets=True), one example at a time. Their draw ``U``
    enters the score as ``+ U p_y`` on the mass above ``y``, ours as ``- u p_y`` on the mass including ``y``:
    the same score for ``U = 1 - u``."""
    out = torch.zeros(probs.shape, dtype=torch.bool)
    for b, row in enumerate(probs.tolist()):
        ranking = sorted(range(len(row)), key=lambda c, row=row: (-row[c], c))
        ordered = [row[c] for c in ranking]
        cumsum = np.cumsum(ordered)
        penalties_cumsum = np.cumsum([lam * (j >= k_reg) for j in range(len(row))])
        size = min(int(((cumsum + penalties_cumsum) <= tau).sum()) + 1, len(row))
        v = (tau - (cumsum[size - 1] - ordered[size - 1]) - penalties_cumsum[size - 1]) / ordered[size - 1]
        size -= int(1 - float(u[b]) >= v)
        out[b, ranking[:size]] = True
    return out


@pytest.mark.parametrize(("k_reg", "lam"), [(1, 0.05), (2, 0.2), (0, 0.01)])
def test_randomized_raps_matches_the_reference_algorithm(k_reg, lam):
    probs, labels = _problem(400, 6, seed=2)
    ours = SplitConformalClassifier("raps", ALPHA, randomized=True, k_reg=k_reg, lam=lam)
    predicted = ours.fit(probs[:199], labels[:199], generator=_generator(3)).predict(
        probs[199:], _generator(4)
    )
    expected = _raps_reference_sets(probs[199:], ours.threshold_, k_reg, lam, _uniform(201, 4))
    assert torch.equal(predicted, expected)


@pytest.mark.parametrize(
    ("randomized", "k_reg", "lam"), [(False, 1, 0.05), (False, 3, 0.2), (True, 4, 0.05), (True, 5, 0.2)]
)
def test_raps_matches_mapie_score_and_sets(randomized, k_reg, lam):
    """MAPIE's RAPS picks k_reg and lambda itself on part of the calibration data, so its score object is
    driven directly with ours. Its randomised sets remove the crossing class with probability
    ``(s_L - q) / (p_L - lam (L - k_reg - 1)^+)``, which is the paper's ``(s_L - q) / p_L`` only when the
    crossing class's rank ``L <= k_reg + 1``: those rows are compared (all rows are compared with the
    reference algorithm above), with a ``k_reg`` large enough to leave most rows."""
    conformity_scores = pytest.importorskip("mapie.conformity_scores")
    mapie_utils = pytest.importorskip("mapie.utils")
    probs, labels = _problem(500, 6, seed=5)
    n, m = 199, 301
    ours = SplitConformalClassifier("raps", ALPHA, randomized=randomized, k_reg=k_reg, lam=lam)
    predicted = ours.fit(probs[:n], labels[:n], generator=_generator(6)).predict(probs[n:], _generator(7))

    u_cal = _uniform(n, 6).numpy() if randomized else np.zeros(n)
    p_cal, y_cal = probs[:n].numpy(), labels[:n].numpy()
    mass, rank = conformity_scores.APSConformityScore.get_true_label_cumsum_proba(y_cal, p_cal, np.arange(6))
    mass = mass - u_cal[:, None] * np.take_along_axis(p_cal, y_cal[:, None], axis=1)
    regularized = conformity_scores.RAPSConformityScore._regularize_conformity_score(
        np.array([k_reg]), lam, mass, rank
    )
    threshold = mapie_utils._compute_classification_quantile(regularized, np.array([ALPHA]))
    assert ours.threshold_ == pytest.approx(float(threshold[0]), rel=0, abs=1e-12)

    score = conformity_scores.RAPSConformityScore()
    score.k_star, score.lambda_star, score.quantiles_ = np.array([k_reg]), lam, threshold
    score.random_state = _Replay(_uniform(m, 7).numpy()[:, None])
    sets = score.get_prediction_sets(
        probs[n:].numpy()[:, :, None],
        regularized,
        np.array([ALPHA]),
        cv="prefit",
        include_last_label="randomized" if randomized else True,
    )
    sets = torch.from_numpy(sets[:, :, 0])
    crossing_rank = (raps_scores(probs[n:], k_reg, lam) <= ours.threshold_).sum(dim=1) + 1
    rows = _separated(probs[n:]) & (crossing_rank <= k_reg + 1 if randomized else True)
    assert int(rows.sum()) >= 100
    assert torch.equal(predicted[rows], sets[rows])


def _crepes_p_value_sets(cal_scores, test_scores, smoothing: bool, u, monkeypatch):
    """crepes' conformal classifier, one class at a time; its smoothing draws ``np.random.rand(B)``, which is
    replaced by our per-example draws (one shared by the classes of an example)."""
    crepes = pytest.importorskip("crepes")
    if smoothing:
        monkeypatch.setattr(np.random, "rand", lambda count: u[:count])
    classifier = crepes.ConformalClassifier()
    classifier.fit(cal_scores.numpy())
    columns = [
        classifier.predict_set(test_scores[:, c].numpy(), confidence=1 - ALPHA, smoothing=smoothing)
        for c in range(test_scores.shape[1])
    ]
    return torch.from_numpy(np.stack(columns, axis=1)).bool()


@pytest.mark.parametrize("randomized", [False, True])
def test_lac_matches_crepes_p_values(randomized, monkeypatch):
    """Non-randomised LAC is crepes' conformal classifier with plain p-values ``(#{s_i >= s} + 1)/(n + 1)``;
    randomised LAC is its smoothed p-values ``(#{s_i > s} + u (#{s_i = s} + 1))/(n + 1)``, with our ``u``."""
    probs, labels = _problem(600, 5, seed=8)
    n = 57  # alpha (n + 1) = 5.8: crepes' p >= alpha and our p > alpha agree
    ours = SplitConformalClassifier("lac", ALPHA, randomized=randomized).fit(probs[:n], labels[:n])
    predicted = ours.predict(probs[n:], generator=_generator(9))
    cal_scores = 1 - probs[:n].gather(1, labels[:n, None]).squeeze(1)
    expected = _crepes_p_value_sets(
        cal_scores, 1 - probs[n:], randomized, _uniform(600 - n, 9).numpy(), monkeypatch
    )
    assert torch.equal(predicted, expected)
    if randomized:  # the smoothing changed some sets, or the comparison shows nothing
        assert not torch.equal(
            predicted, SplitConformalClassifier("lac", ALPHA).fit(probs[:n], labels[:n]).predict(probs[n:])
        )


# -- behaviour ----------------------------------------------------------------------------------------------
def test_prediction_input_uses_its_predictive_probabilities():
    generator = _generator(12)
    logits = torch.randn(4, 120, 5, generator=generator, dtype=torch.float64)  # 4 samples
    labels = torch.randint(0, 5, (120,), generator=generator)
    prediction = uqkit.Prediction(logits)
    for score in ("lac", "aps", "raps"):
        from_prediction = SplitConformalClassifier(score, ALPHA).fit(prediction[:60], labels[:60])
        from_probs = SplitConformalClassifier(score, ALPHA).fit(prediction.probs[:60], labels[:60])
        assert from_prediction.threshold_ == from_probs.threshold_
        assert torch.equal(
            from_prediction.predict(prediction[60:]), from_probs.predict(prediction.probs[60:])
        )


@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_randomized_sets_are_reproducible_with_a_generator(score):
    probs, labels = _problem(300, 5, seed=13)

    def run(seed_fit: int, seed_predict: int) -> torch.Tensor:
        calibrator = SplitConformalClassifier(score, ALPHA, randomized=True)
        calibrator.fit(probs[:100], labels[:100], generator=_generator(seed_fit))
        return calibrator.predict(probs[100:], generator=_generator(seed_predict))

    assert torch.equal(run(0, 1), run(0, 1))
    assert not torch.equal(run(0, 1), run(0, 2))


def test_non_randomized_adaptive_sets_contain_the_level_set_and_are_never_empty():
    """The non-randomised APS / RAPS set adds the class that crosses the threshold to ``{y : s(y) <= q}``."""
    probs, labels = _problem(400, 6, seed=14)
    for score, extra in (("aps", {}), ("raps", {"k_reg": 1, "lam": 0.1})):
        calibrator = SplitConformalClassifier(score, ALPHA, **extra).fit(probs[:150], labels[:150])
        sets = calibrator.predict(probs[150:])
        scores = raps_scores(probs[150:], extra.get("k_reg", 0), extra.get("lam", 0.0))
        level_set = scores <= calibrator.threshold_
        assert bool((sets | ~level_set).all())  # level set inside
        assert torch.equal(sets.sum(1), (level_set.sum(1) + 1).clamp_max(6))  # plus exactly one class
        assert int(set_size(sets).counts[0]) == 0


@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_too_small_a_calibration_split_gives_full_sets_with_a_warning(score):
    probs, labels = _problem(20, 4, seed=15)
    calibrator = SplitConformalClassifier(score, 0.05)
    with pytest.warns(UserWarning, match="at least 19 calibration examples"):
        calibrator.fit(probs[:10], labels[:10])
    assert calibrator.threshold_ == float("inf")
    assert bool(calibrator.predict(probs[10:]).all())


def test_randomized_lac_needs_no_minimum_calibration_size():
    probs, labels = _problem(20, 4, seed=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrator = SplitConformalClassifier("lac", 0.05, randomized=True).fit(probs[:3], labels[:3])
    assert calibrator.threshold_ is None
    assert calibrator.predict(probs[3:], generator=_generator(0)).shape == (17, 4)


# -- the coverage guarantee ---------------------------------------------------------------------------------
POOL, N_CAL, SPLITS = 300, 14, 300  # alpha (n + 1) = 1.5: the guaranteed range is [0.9, 0.9667]
VARIANTS = [
    ("lac", False, {}, True),
    ("lac", True, {}, True),
    ("aps", True, {}, True),
    ("raps", True, {"k_reg": 1, "lam": 0.05}, True),
    ("aps", False, {}, False),  # conservative: it adds the class that crosses the threshold
    ("raps", False, {"k_reg": 1, "lam": 0.05}, False),
]


def _split_coverages(score: str, randomized: bool, extra: dict) -> list[float]:
    probs, labels = _problem(POOL, 5, seed=20)
    generator = _generator(21)
    coverages = []
    for _ in range(SPLITS):
        order = torch.randperm(POOL, generator=generator)
        cal, test = order[:N_CAL], order[N_CAL:]
        calibrator = SplitConformalClassifier(score, ALPHA, randomized=randomized, **extra)
        calibrator.fit(probs[cal], labels[cal], generator=generator)
        coverages.append(
            empirical_coverage(calibrator.predict(probs[test], generator=generator), labels[test])
        )
    return coverages


@pytest.mark.parametrize(("score", "randomized", "extra", "tight"), VARIANTS)
def test_mean_coverage_over_random_splits_is_within_the_guarantee(
    score, randomized, extra, tight, check_mean_coverage, one_thread
):
    """Over 300 random calibration/test splits of one fixed problem (a miscalibrated model), the mean
    coverage is >= 1 - alpha, and <= 1 - alpha + 1/(n + 1) for sets that are level sets of a continuous
    score; the slack is 4 standard errors of the mean (conftest.coverage_standard_error)."""
    coverages = _split_coverages(score, randomized, extra)
    check_mean_coverage(coverages, N_CAL, POOL - N_CAL, ALPHA, upper=tight)


def test_randomized_lac_coverage_is_exactly_one_minus_alpha(coverage_standard_error, one_thread):
    """Smoothed p-values are uniform, so the mean coverage is 1 - alpha itself, not k / (n + 1) = 0.933."""
    mean = float(np.mean(_split_coverages("lac", True, {})))
    assert abs(mean - (1 - ALPHA)) <= 4 * coverage_standard_error(N_CAL, POOL - N_CAL, ALPHA, SPLITS)


# -- input errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"score": "thr"}, ValueError, "score: expected one of 'lac', 'aps', 'raps', got 'thr'"),
        ({"score": None}, ValueError, "score: expected one of"),
        ({"alpha": 0.0}, ValueError, r"alpha: expected a number in \(0, 1\)"),
        ({"alpha": 1.0}, ValueError, r"alpha: expected a number in \(0, 1\)"),
        ({"alpha": "0.1"}, TypeError, "alpha: expected a number"),
        ({"randomized": 1}, TypeError, "randomized: expected a bool"),
        ({"score": "aps", "k_reg": 2}, ValueError, "k_reg and lam: apply to score='raps' only"),
        ({"score": "lac", "lam": 0.1}, ValueError, "k_reg and lam: apply to score='raps' only"),
        ({"score": "raps", "k_reg": -1}, ValueError, r"k_reg: expected an int >= 0"),
        ({"score": "raps", "lam": -0.5}, ValueError, "lam: expected a finite number >= 0"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SplitConformalClassifier(**kwargs)


def test_fit_and_predict_reject_malformed_inputs():
    probs, labels = _problem(40, 4, seed=22)
    calibrator = SplitConformalClassifier("aps", ALPHA, randomized=True)
    with pytest.raises(RuntimeError, match="call fit"):
        calibrator.predict(probs)
    cases = [
        ((probs * 2, labels), ValueError, "prediction: expected probabilities"),
        ((torch.log(probs), labels), ValueError, r"prediction: expected probabilities in \[0, 1\]"),
        ((probs.numpy(), labels), TypeError, "prediction: expected a uqkit.Prediction or a"),
        ((probs[:0], labels[:0]), ValueError, "prediction: expected at least one example"),
        ((probs, labels[:-1]), ValueError, "labels: expected 40 labels"),
        ((probs, labels + 4), ValueError, r"labels: expected class indices in \[0, 3\]"),
        ((probs, labels.double()), TypeError, "labels: expected integer class indices"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            calibrator.fit(*args)
    with pytest.raises(TypeError, match=r"generator: expected a torch\.Generator or None"):
        calibrator.fit(probs, labels, generator=0)
    calibrator.fit(probs, labels)
    with pytest.raises(ValueError, match="prediction: expected 4 classes"):
        calibrator.predict(torch.softmax(torch.randn(3, 5), -1))
    with pytest.raises(TypeError, match=r"generator: expected a torch\.Generator"):
        calibrator.predict(probs, generator=np.random.default_rng(0))
    # the generator is checked even where the variant draws nothing
    with pytest.raises(TypeError, match="generator"):
        SplitConformalClassifier("lac").fit(probs, labels, generator="seed")


def test_randomized_lac_only_thins_the_last_step_below_the_threshold():
    """With distinct scores, the smoothed sets are the plain LAC sets except for the classes whose score lies
    in (s_(k-1), s_(k)], kept with probability 1 - frac(alpha (n + 1))."""
    probs, labels = _problem(20000, 5, seed=23)
    n = 24  # alpha (n + 1) = 2.5: k = 23, the band is kept with probability 0.5
    plain = SplitConformalClassifier("lac", ALPHA).fit(probs[:n], labels[:n])
    smoothed = SplitConformalClassifier("lac", ALPHA, randomized=True).fit(probs[:n], labels[:n])
    test = probs[n:]
    kept, full = smoothed.predict(test, generator=_generator(24)), plain.predict(test)
    assert bool((full | ~kept).all())  # smoothed sets inside the plain ones
    ordered = plain.calibration_scores_
    scores = 1 - test
    band = (scores > ordered[21]) & (scores <= ordered[22])
    assert torch.equal(full & ~band, kept & ~band)  # equal outside the band
    # one draw u per example: the band classes of an example are kept together, with probability 0.5
    rows = band.any(dim=1)
    kept_rows = (kept & band).any(dim=1)[rows]
    assert torch.equal(kept_rows, (kept & band).sum(1)[rows] == band.sum(1)[rows])
    assert abs(float(kept_rows.double().mean()) - 0.5) < 4 * (0.25 / int(rows.sum())) ** 0.5
