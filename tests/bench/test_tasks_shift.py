"""The rotation shift of the Fashion-MNIST tasks is evaluated on a fixed subset of the test set, with its own
labels: each shifted input at angle 0 must be the test image whose label it carries."""

import torch

from uqkit.bench import tasks


def test_shift_subset_pairs_each_rotated_image_with_its_own_label(fake_fashion_mnist, monkeypatch):
    monkeypatch.setattr(tasks, "SHIFT_TEST_SIZE", 37)
    task = tasks.build_task("fashion-mnist")
    assert task.shift is not None and task.shift.labels is not None
    unrotated = task.shift.inputs_at(0.0)
    assert unrotated.shape[0] == len(task.shift.labels) == 37
    flat_test = task.test.inputs.flatten(1)
    for row, label in zip(unrotated.flatten(1), task.shift.labels, strict=True):
        matches = torch.nonzero(torch.isclose(flat_test, row, atol=1e-5).all(dim=1)).flatten()
        assert len(matches) >= 1, "a shifted image at 0 degrees is not an image of the test set"
        assert label in task.test.labels[matches], "a shifted image carries another image's label"
    # the subset is fixed by the seed: building the task again gives the same images and labels
    assert torch.equal(task.shift.labels, tasks.build_task("fashion-mnist").shift.labels)
