"""SNGP's Laplace weightings side by side, run through ``uqkit bench`` (docs/sngp.md, "Choice of weights").

Registers one benchmark method per weighting of the GP precision (:class:`uqkit.nn.RandomFeatureGP`),
built exactly as the ``sngp`` method except for ``likelihood``:

* ``sngp-softmax``: one precision per class, ``p_k (1 - p_k)`` (Liu et al. 2020, eq. (9); the default);
* ``sngp-softmax-shared``: one shared precision, ``p (1 - p)`` of the top class (the former default);
* ``sngp-unit``: one shared precision, unit weights (``likelihood="unit"``, formerly ``"gaussian"``; edward2 /
  uncertainty-baselines' ``gp_cov_likelihood='gaussian'``).

All three train the same network with the same seed and batch order (the weights only enter the precision,
never the gradient), so they differ only in the posterior variance. Then runs the ``uqkit`` command line
with the given arguments, e.g.::

    .venv/bin/python benchmarks/sngp_likelihoods.py bench --no-progress --task two-moons \\
        --methods sngp-softmax,sngp-softmax-shared,sngp-unit --out runs/sngp-weights-moons
"""

from __future__ import annotations

import functools
import sys

from uqkit.bench.methods_distance import build_sngp
from uqkit.bench.registry import register_method
from uqkit.cli import main

LIKELIHOODS = ("softmax", "softmax-shared", "unit")

for _likelihood in LIKELIHOODS:
    register_method(f"sngp-{_likelihood}", f"sngp with likelihood={_likelihood!r}")(
        functools.partial(build_sngp, likelihood=_likelihood)
    )

if __name__ == "__main__":
    sys.exit(main())
