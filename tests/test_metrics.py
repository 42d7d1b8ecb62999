"""metrics against independent computations (scipy, plain loops, worked examples)."""
import math

import numpy as np
import pytest
from scipy import stats

from teachfit import metrics


def test_car_worked_examples():
    # CAR = r / (1 + beta * L): 6 / (1 + 3 * 1.0) = 1.5 ; 2.4 / (1 + 0.5 * 2) = 1.2
    assert metrics.car(6.0, 1.0, 3.0) == pytest.approx(1.5)
    assert metrics.car(2.4, 2.0, 0.5) == pytest.approx(1.2)
    assert metrics.car(5.0, 7.0, 0.0) == 5.0
    with pytest.raises(ValueError):
        metrics.car(1.0, 1.0, -1.0)


def test_ppl_and_ifd_worked_examples():
    assert metrics.ppl(math.log(8.0)) == pytest.approx(8.0)
    # PPL(y|x) = 4, PPL(y) = 8 -> IFD 0.5; losses log 4 / log 8 = 2/3
    assert metrics.ifd(math.log(4.0), math.log(8.0)) == pytest.approx(0.5)
    assert metrics.ifd_loss_ratio(math.log(4.0), math.log(8.0)) == pytest.approx(2.0 / 3.0)


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    ta, tb = rng.integers(0, 5, size=30), rng.integers(0, 4, size=30)  # many ties
    assert metrics.spearman(ta, tb) == pytest.approx(stats.spearmanr(ta, tb).statistic, abs=1e-12)


def test_average_ranks_match_scipy():
    values = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    assert np.allclose(metrics.average_ranks(values), stats.rankdata(values))


def test_spearman_equals_paper_formula_for_19_untied_ranks():
    rng = np.random.default_rng(7)
    truth = rng.permutation(19) + 1
    estimate = rng.permutation(19) + 1
    d = truth - estimate
    expected = 1 - 6 * np.sum(d ** 2) / (19 * (19 ** 2 - 1))
    assert metrics.spearman(truth, estimate) == pytest.approx(expected, abs=1e-12)
    assert metrics.spearman_from_rank_differences(d) == pytest.approx(expected, abs=1e-12)
    # one swapped neighbour among 19: sum d^2 = 2 -> rho = 1 - 12/6840
    assert metrics.spearman_from_rank_differences([1, -1] + [0] * 17) == pytest.approx(1 - 12 / 6840)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(10.0, 2.0, size=50)
    large = rng.normal(10.0, 2.0, size=5000)
    lo_s, hi_s = metrics.bootstrap_ci(small, n_resamples=500)
    lo_l, hi_l = metrics.bootstrap_ci(large, n_resamples=500)
    assert lo_s < small.mean() < hi_s and lo_l < 10.0 < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4


def test_reward_transforms():
    r = np.array([-2.0, 0.0, 3.0])
    assert np.allclose(metrics.transform_rewards(r, "raw"), r)
    assert np.allclose(metrics.transform_rewards(r, "shift"), [0.0, 2.0, 5.0])
    assert np.allclose(metrics.transform_rewards(r, "shift", reference=np.array([-4.0, 1.0])), [2.0, 4.0, 7.0])
    assert np.allclose(metrics.transform_rewards(r, "sigmoid"), 1 / (1 + np.exp(-r)))
    with pytest.raises(ValueError):
        metrics.transform_rewards(r, "log")


def test_metrics_import_without_torch():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import teachfit, teachfit.metrics, teachfit.rank, teachfit.records"
    subprocess.run([sys.executable, "-c", code], check=True)
