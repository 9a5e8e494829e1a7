"""Rank-gauss: fitted on training rows only, bounded, monotone, invertible on the knots."""
import numpy as np
import pytest
from scipy.stats import norm, spearmanr

from impumae.kinds.rank_gauss import RankGauss


def heavy_tailed(n=400, f=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(df=1.5, size=(n, f))
    x[:, 1] = np.exp(rng.normal(size=n) * 2)          # log-normal, |z| of the max is large
    x[:, 2] = rng.integers(0, 2, size=n)               # binary: ties
    x[:, 3] = 7.0                                      # constant
    return x


def test_training_values_become_standard_normal_and_bounded():
    x = heavy_tailed()
    rg = RankGauss.fit(x)
    z = rg.apply(x)
    bound = norm.ppf(1 - 0.5 / len(x))
    assert np.abs(z).max() <= bound + 1e-9
    for f in (0, 1, 4):                                # continuous columns: ~N(0, 1) on training rows
        assert abs(z[:, f].mean()) < 0.05 and abs(z[:, f].std() - 1) < 0.1
        assert spearmanr(x[:, f], z[:, f]).statistic > 0.999  # rank order kept
    assert np.all(z[:, 3] == 0.0)                      # no variation: the median
    assert len(np.unique(z[:, 2])) == 2 and z[x[:, 2] == 0, 2][0] < z[x[:, 2] == 1, 2][0]


def test_fit_sees_training_rows_only_and_unseen_values_are_clamped():
    x = heavy_tailed()
    train, other = x[:300], x[300:].copy()
    other[0, 0] = 1e6                                  # far beyond anything in training
    rg = RankGauss.fit(train)
    assert np.array_equal(rg.apply(other[:1])[0, 0], norm.ppf(1 - 0.5 / 300))
    refit = RankGauss.fit(np.concatenate([train, other[:1]]))
    assert not np.allclose(refit.quantiles, rg.quantiles)   # a training row changes the fit; others do not


def test_inverse_maps_back_to_store_space():
    x = heavy_tailed()
    rg = RankGauss.fit(x, n_knots=len(x))             # one knot per patient: exact on training values
    back = rg.inverse(rg.apply(x))
    for f in (0, 1, 4):
        np.testing.assert_allclose(back[:, f], x[:, f], rtol=1e-6, atol=1e-6)
    coarse = RankGauss.fit(x)                         # 101 knots: monotone, inside the training range
    grid = np.linspace(-4, 4, 50)[:, None].repeat(x.shape[1], axis=1)
    inv = coarse.inverse(grid)
    assert np.all(np.diff(inv, axis=0) >= 0)
    assert np.all(inv >= x.min(axis=0) - 1e-9) and np.all(inv <= x.max(axis=0) + 1e-9)


def test_missing_values_stay_missing_and_state_round_trips():
    x = heavy_tailed()
    x[::7, 0] = np.nan
    rg = RankGauss.fit(x)
    z = rg.apply(x)
    assert np.isnan(z[::7, 0]).all() and np.isfinite(np.delete(z[:, 0], np.s_[::7])).all()
    again = RankGauss.from_dict(rg.to_dict())
    np.testing.assert_allclose(again.apply(x), z, atol=1e-5, equal_nan=True)


def test_wrong_width_is_refused():
    rg = RankGauss.fit(heavy_tailed())
    with pytest.raises(ValueError, match="fitted on 5 features"):
        rg.apply(np.zeros((3, 4)))
