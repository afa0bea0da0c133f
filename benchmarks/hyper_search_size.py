"""``hyper-deep-ensemble`` with a wider random search: does the search size buy what the paper says?

Issue 14 asks a hyper-deep ensemble of 5 on LeNet-5 (Fashion-MNIST, 20 epochs) to beat the deep ensemble's
test NLL (0.225 then; 0.2165 rerun on the 2026-12-07 code). The benchmark method searches 10 candidates and
retrains 5 (15 networks, 3x a deep ensemble's training); its first recipe reached 0.227, with a validation NLL
equal to the deep ensemble's (0.2130 against 0.2126). Wenzel et al. 2020 search tens of candidates; this
script measures the next step on that axis, and the other choices of the method (stratification, epoch rule).

It registers ``hyper-deep-ensemble-search<N>`` (opt-in; the method of
:func:`uqkit.bench.methods_hyper.build_hyper_deep_ensemble` with ``N`` searched candidates, the same 5
retrained initialisations and everything else the benchmark method's) and runs ``uqkit bench`` with it in
this process, so the run directory, ``results.json``, report and ``--resume`` are the usual ones. For a
given ``--seed`` the first 10 candidates' hyperparameters are those of ``hyper-deep-ensemble``'s search
(one generator, the rows drawn at once); their networks differ (other batch orders and initialisations in a
larger stack).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/hyper_search_size.py --candidates 20 \\
        -- --model lenet5 --epochs 20 --out runs/lenet20-hde-search20

``--retrained full`` replaces the 5 retrained initialisations with the paper's full stratification: each
distinct hyperparameter of the search's selection gets ``5 - 1`` new initialisations (``K = 5`` networks
each, a pool of up to 25), registered as ``hyper-deep-ensemble-search<N>-full``:

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/hyper_search_size.py --candidates 10 \\
        --retrained full -- --model lenet5 --epochs 20 --out runs/lenet20-hde-full

``--epoch-selection member`` keeps each network at its own epoch of lowest validation NLL instead of each
stack (the search's, the retraining's) at the epoch where its networks' averaged prediction has the lowest
validation NLL (the deep ensemble's rule, the benchmark method's since 2026-12-08); registered as
``hyper-deep-ensemble-search<N>-member-epoch``:

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/hyper_search_size.py --candidates 10 \\
        --epoch-selection member -- --model lenet5 --epochs 20 --out runs/lenet20-hde-member-epoch

(``--epoch-selection ensemble`` was registered as ``hyper-deep-ensemble-search<N>-ensemble-epoch`` before
that: the runs in benchmarks/results/issue14/lenet20-hde-ensemble-epoch*.)

Everything after ``--`` goes to ``uqkit bench`` (``--methods`` is set here).
"""

from __future__ import annotations

import argparse
import sys

from uqkit.bench.methods_hyper import (
    EPOCH_SELECTIONS,
    HYPER_TASKS,
    NUM_MEMBERS,
    RETRAINED,
    build_hyper_deep_ensemble,
)
from uqkit.bench.registry import MethodContext, register_method
from uqkit.cli import main as uqkit_main


def register_search_size(
    candidates: int, retrained: int | None = RETRAINED, epoch_selection: str = "ensemble"
) -> str:
    """Register the variant with ``candidates`` searched networks, ``retrained`` new initialisations
    (``None``: the paper's full stratification) and ``epoch_selection``; returns its method name."""
    name = f"hyper-deep-ensemble-search{candidates}"
    if retrained is None:
        name += "-full"
        budget = (
            f"{NUM_MEMBERS - 1} retrained initialisations of each distinct selected hyperparameter; up to "
            f"{candidates + (NUM_MEMBERS - 1) * NUM_MEMBERS} networks x the run's epochs"
        )
    else:
        if retrained != RETRAINED:
            name += f"-retrained{retrained}"
        budget = (
            f"{retrained} retrained initialisations; {candidates + retrained} networks x the run's epochs "
            f"({(candidates + retrained) / NUM_MEMBERS:g}x a deep ensemble's training)"
        )
    if epoch_selection != "ensemble":
        name += f"-{epoch_selection}-epoch"
        budget += f"; each stack at the {epoch_selection}'s best validation epoch"

    @register_method(
        name,
        f"hyper-deep ensemble (Wenzel et al. 2020) of {NUM_MEMBERS}: random search of {candidates}, {budget}",
        tasks=HYPER_TASKS,
        default=False,
    )
    def _build(context: MethodContext):
        return build_hyper_deep_ensemble(
            context, search_candidates=candidates, retrained=retrained, epoch_selection=epoch_selection
        )

    return name


def _retrained(text: str) -> int | None:
    if text == "full":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of networks or 'full', got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, bench = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=20, help="networks in the random search")
    parser.add_argument(
        "--retrained",
        type=_retrained,
        default=RETRAINED,
        help=f"new initialisations of the selected hyperparameters (default {RETRAINED}), or 'full' for "
        f"{NUM_MEMBERS - 1} of each distinct one (the paper's stratification)",
    )
    parser.add_argument(
        "--epoch-selection",
        choices=EPOCH_SELECTIONS,
        default="ensemble",
        help="'ensemble' (the benchmark method's): each stack at the epoch of its averaged prediction's best "
        "validation NLL (the deep ensemble's rule); 'member': each network at its own best validation epoch",
    )
    args = parser.parse_args(ours)
    if "--methods" in bench:
        parser.error("--methods is set by this script: give only the other uqkit bench options after --")
    name = register_search_size(args.candidates, args.retrained, args.epoch_selection)
    return uqkit_main(["bench", "--methods", name, *bench])


if __name__ == "__main__":
    sys.exit(main())
