"""k-means, the elbow rule, ARI, cluster statistics and PCA against hand-computed cases."""

import numpy as np
import pytest

from diffptycho.analysis import clustering
from diffptycho.analysis.clustering import (
    adjusted_rand_index,
    cluster_descriptors,
    cluster_fractions,
    cluster_mean_spectra,
    descriptor_densities,
    elbow_curve,
    elbow_k,
    kmeans,
    pca,
)


def blobs(rng, centres, n=200, spread=0.05):
    centres = np.asarray(centres, float)
    truth = np.repeat(np.arange(len(centres)), n)
    return centres[truth] + rng.normal(0, spread, (truth.size, centres.shape[1])), truth


def test_ari_hand_cases(rng):
    # contingency [[2,0,0],[0,1,1]]: Σ C(n_ij,2) = 1, Σ C(a_i,2) = 2, Σ C(b_j,2) = 1, C(4,2) = 6
    # ARI = (1 − 2·1/6) / ((2 + 1)/2 − 2·1/6) = 4/7
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == pytest.approx(1.0)
    assert adjusted_rand_index([1, 1, 1], [2, 2, 2]) == 1.0
    a, b = rng.integers(0, 3, 5000), rng.integers(0, 3, 5000)
    assert abs(adjusted_rand_index(a, b)) < 0.01
    with pytest.raises(ValueError, match="labels_true, labels_pred"):
        adjusted_rand_index([0, 1], [0, 1, 2])


def test_kmeans_recovers_blobs_sorted_and_reproducible(rng):
    x, truth = blobs(rng, [[5.0, 0.0], [0.0, 0.0], [2.0, 3.0]])
    res = kmeans(x, 3, seed=1)
    assert adjusted_rand_index(truth, res.labels) == 1.0
    np.testing.assert_allclose(res.centers, [[0, 0], [2, 3], [5, 0]], atol=0.02)
    assert np.array_equal(res.labels, kmeans(x, 3, seed=1).labels)
    # inertia is the within-cluster sum of squares
    expect = sum(((x[res.labels == j] - res.centers[j]) ** 2).sum() for j in range(3))
    assert res.inertia == pytest.approx(expect)


def test_kmeans_hand_case():
    res = kmeans([[0.0], [0.2], [10.0], [10.4]], 2)
    assert res.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(res.centers[:, 0], [0.1, 10.2])
    assert res.inertia == pytest.approx(0.02 + 0.08)


def test_weighted_kmeans_hand_case():
    x = [[0.0], [1.0], [10.0], [12.0]]
    res = kmeans(x, 2, sample_weight=[3.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(res.centers[:, 0], [0.25, 10.0])  # weighted means
    assert res.inertia == pytest.approx(3 * 0.25**2 + 0.75**2)
    with pytest.raises(ValueError, match="k=2: larger than the 1 distinct"):
        kmeans(x, 2, sample_weight=[1.0, 0.0, 0.0, 0.0])  # zero weight drops a point
    with pytest.raises(ValueError, match="sample_weight"):
        kmeans(x, 2, sample_weight=[1.0, -1.0, 1.0, 1.0])


def test_kmeans_degenerate_inputs():
    x = np.array([[1.0, 1.0]] * 5 + [[2.0, 2.0]] * 5)
    with pytest.raises(ValueError, match="k=3: larger than the 2 distinct points"):
        kmeans(x, 3)
    assert kmeans(x, 2).inertia == pytest.approx(0.0)
    with pytest.raises(ValueError, match="k=0"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="features: non-finite"):
        kmeans([[np.nan, 1.0]], 1)
    with pytest.raises(ValueError, match="features: expected a non-empty"):
        kmeans(np.zeros((0, 2)), 1)
    ks, w = elbow_curve(x, k_max=8)  # capped at the distinct points
    assert ks.tolist() == [1, 2] and w[1] == pytest.approx(0.0)


def test_elbow_rule_hand_case_and_blobs(rng):
    # linear: x = (k−1)/4, y = (W − 1)/99; 1 − x − y = 0, 0.343, 0.455, 0.24, 0 → k = 3
    assert elbow_k([1, 2, 3, 4, 5], [100.0, 41.0, 5.0, 2.0, 1.0], "linear") == 3
    # log: y = ln W / ln 100 = 1, 0.806, 0.349, 0.151, 0; 1 − x − y = 0, −0.06, 0.15, 0.1, 0
    assert elbow_k([1, 2, 3, 4, 5], [100.0, 41.0, 5.0, 2.0, 1.0]) == 3
    # one far cluster: the first split dominates W; only the log rule sees the elbow at 3
    w = [1.0, 0.14, 0.006, 0.004, 0.003, 0.0025, 0.002, 0.0018]
    assert elbow_k(range(1, 9), w, "linear") == 2 and elbow_k(range(1, 9), w) == 3
    assert elbow_k([1, 2, 3, 4], [4.0, 1.0, 0.0, 0.0]) == 3  # perfect split at 3
    with pytest.raises(ValueError, match="scale="):
        elbow_k([1, 2, 3], [3.0, 2.0, 1.0], "sqrt")
    assert elbow_k([1, 2, 3], [1.0, 1.0, 1.0]) == 1
    assert elbow_k([1, 2], [5.0, 1.0]) == 1
    for k_true in (2, 3, 4):
        centres = [
            [3.0 * np.cos(t), 3.0 * np.sin(t)] for t in np.arange(k_true) * 2 * np.pi / k_true
        ]
        x, _ = blobs(rng, centres, n=150, spread=0.2)
        assert elbow_k(*elbow_curve(x, 8)) == k_true


def test_fractions_weighted_by_density():
    labels = np.array([[0, 0, 1], [1, -1, 2]])
    w = np.array([[1.0, 3.0, 2.0], [2.0, 100.0, np.nan]])
    np.testing.assert_allclose(cluster_fractions(labels, 3, w), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(cluster_fractions(labels, 3), [0.4, 0.4, 0.2])
    assert np.isnan(cluster_fractions(np.full(3, -1), 2)).all()
    with pytest.raises(ValueError, match="weights"):
        cluster_fractions(labels, 3, np.ones(4))


def test_descriptor_densities_integrate_to_one(rng):
    v = rng.normal(size=1000)
    lab = (v > 0).astype(int)
    lab[:10] = -1
    centres, dens = descriptor_densities(v, lab, 3, bins=25)
    width = centres[1] - centres[0]
    np.testing.assert_allclose(dens[:2].sum(axis=1) * width, 1.0)
    assert dens[2].sum() == 0.0  # empty cluster
    assert np.all(dens[0][centres > width] == 0)  # cluster 0 holds only v ≤ 0


def test_cluster_mean_spectra_hand_case():
    spectra = np.array([[[1.0, 3.0], [5.0, np.nan]], [[2.0, 4.0], [6.0, 0.0]]])  # (E=2, 2, 2)
    labels = np.array([[0, 0], [1, -1]])
    mean, std = cluster_mean_spectra(spectra, labels, 3)
    np.testing.assert_allclose(mean[:2], [[2.0, 3.0], [5.0, 6.0]])
    np.testing.assert_allclose(std[0], [1.0, 1.0])
    assert np.isnan(mean[2]).all()
    with pytest.raises(ValueError, match="labels"):
        cluster_mean_spectra(spectra, labels[0], 2)


def test_edge_normalized_hand_case():
    spectra = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])  # (E=3, 2 pixels)
    out = clustering.edge_normalized(spectra, np.array([1.0, 2.0]), np.array([4.0, 0.0]))
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 1.0])
    assert np.isnan(out[:, 1]).all()  # no edge: undefined


def test_pca_of_rank_two_spectra(rng):
    e = np.linspace(0, 1, 30)
    basis = np.stack([np.sin(3 * e), e**2])
    x = rng.normal(size=(100, 2)) @ basis + 0.5
    res = pca(x, 3)
    np.testing.assert_allclose(res.explained_variance_ratio[:2].sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(3), atol=1e-12)
    recon = res.mean + res.scores[:, :2] @ res.components[:2]
    np.testing.assert_allclose(recon, x, atol=1e-10)
    with pytest.raises(ValueError, match="n_components"):
        pca(x, 0)


def test_cluster_descriptors_maps_masks_and_errors(rng):
    truth = np.repeat(np.arange(3), 100).reshape(15, 20)
    maps = {
        "edge_energy_ev": 5478.0 + 3.0 * truth + rng.normal(0, 0.1, truth.shape),
        "pre_edge_ratio": np.array([0.3, 0.8, 1.7])[truth] + rng.normal(0, 0.05, truth.shape),
    }
    maps["edge_energy_ev"][0, :5] = np.nan
    res = cluster_descriptors(maps, weights=np.ones(truth.shape))
    assert res.k == 3 and np.all(res.labels[0, :5] == -1)
    use = res.labels >= 0
    assert adjusted_rand_index(truth[use], res.labels[use]) == 1.0
    np.testing.assert_allclose(res.centers[:, 0], [5478, 5481, 5484], atol=0.05)
    masked = cluster_descriptors(maps, k=2, mask=truth < 2)
    assert masked.k == 2 and np.all(masked.labels[truth == 2] == -1)
    with pytest.raises(ValueError, match="every pixel is masked"):
        cluster_descriptors({k: np.full((2, 2), np.nan) for k in maps})
    with pytest.raises(ValueError, match="features: \\['edge_jump'\\] not among"):
        cluster_descriptors(maps, ["edge_jump"])
    with pytest.raises(ValueError, match="mask: expected"):
        cluster_descriptors(maps, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="sample_weight: expected"):
        cluster_descriptors(maps, sample_weight=np.ones(3))
    weighted = cluster_descriptors(maps, sample_weight=np.ones(truth.shape))
    assert weighted.k == 3 and np.array_equal(weighted.labels, res.labels)
    assert clustering.standardize(np.ones((4, 2)))[0].tolist() == np.zeros((4, 2)).tolist()


def heteroscedastic(rng, n=600, a=(0.01, 0.01), b=(9.0, 900.0)):
    """Three clusters whose 2nd feature is 10× noisier per unit 1/SNR than the 1st.

    Feature f of a point with SNR s has variance a_f + b_f/s² about its centre (exactly the
    model of :func:`noise_aware_assign`); SNR log-uniform in [5, 200].
    """
    truth = np.repeat(np.arange(3), n)
    centres = np.array([[0.0, 0.0], [3.0, 1.0], [6.0, 2.0]])
    snr = np.exp(rng.uniform(np.log(5.0), np.log(200.0), truth.size))
    std = np.sqrt(np.asarray(a)[None] + np.asarray(b)[None] / snr[:, None] ** 2)
    return centres[truth] + std * rng.normal(size=(truth.size, 2)), truth, snr


def test_noise_aware_assign_recovers_the_noise_model_and_beats_nearest(rng):
    x, truth, snr = heteroscedastic(rng)
    km = kmeans(x, 3, sample_weight=snr**2, seed=1)
    res = clustering.noise_aware_assign(x, km.centers, snr)
    ari_nearest = adjusted_rand_index(truth, km.labels)
    ari_aware = adjusted_rand_index(truth, res.labels)
    # measured: ARI 0.89 → 1.00 on this draw; the noisy 2nd feature misplaces thin points
    assert ari_aware > ari_nearest + 0.05 and ari_aware > 0.9
    np.testing.assert_allclose(res.coefficients[:, 1], [9.0, 900.0], rtol=0.2)
    np.testing.assert_allclose(res.coefficients[:, 0], [0.01, 0.01], atol=0.01)
    np.testing.assert_allclose(res.centers, [[0, 0], [3, 1], [6, 2]], atol=0.05)
    assert res.variance.shape == x.shape and 1 <= res.n_iter <= 50


def test_noise_aware_assign_keeps_a_clean_partition_and_checks_inputs(rng):
    x, truth = blobs(rng, [[0, 0], [1, 1], [2, 0]])
    km = kmeans(x, 3)
    res = clustering.noise_aware_assign(x, km.centers, np.full(len(x), 100.0))
    assert np.array_equal(res.labels, km.labels) and res.n_iter == 1
    for bad, match in [
        ({"centers": np.zeros((3, 3))}, "centers: expected"),
        ({"centers": np.full((3, 2), np.nan)}, "centers: expected"),
        ({"snr": np.ones(3)}, "snr: expected"),
        ({"snr": np.zeros(len(x))}, "snr: expected"),
        ({"snr": np.full(len(x), np.nan)}, "snr: expected"),
        ({"max_iter": 0}, "max_iter=0"),
    ]:
        kwargs = {"centers": km.centers, "snr": np.ones(len(x)), **bad}
        with pytest.raises(ValueError, match=match):
            clustering.noise_aware_assign(x, **kwargs)


def test_cluster_descriptors_noise_aware_on_maps(rng):
    x, truth, snr = heteroscedastic(rng, n=300)
    maps = {
        "edge_energy_ev": (5478.0 + x[:, 0]).reshape(30, 30),
        "pre_edge_ratio": (0.5 + 0.2 * x[:, 1]).reshape(30, 30),
    }
    weight = (snr**2).reshape(30, 30)
    plain = cluster_descriptors(maps, k=3, sample_weight=weight, seed=1)
    aware = cluster_descriptors(maps, k=3, sample_weight=weight, snr=snr.reshape(30, 30), seed=1)
    t = truth.reshape(30, 30)
    assert adjusted_rand_index(t, aware.labels) > adjusted_rand_index(t, plain.labels) + 0.05
    np.testing.assert_allclose(aware.centers[:, 0], [5478, 5481, 5484], atol=0.05)
    with pytest.raises(ValueError, match="snr: expected the maps' shape"):
        cluster_descriptors(maps, k=3, snr=np.ones(4))
    with pytest.raises(ValueError, match="1 clustered pixel\\(s\\) without"):
        cluster_descriptors(maps, k=3, snr=np.where(np.arange(900) == 5, 0.0, 1.0).reshape(30, 30))


def test_noise_stability_keeps_true_clusters_and_flags_a_noise_split(rng):
    """Two far clusters and a majority cluster whose thin points are noisy: the true k
    reproduces itself under a fresh noise draw, a fourth cluster (a split of the noisy
    majority) does not; clean separated clusters score 1."""
    truth = np.repeat(np.arange(3), [640, 80, 80])
    snr = np.exp(rng.uniform(np.log(5.0), np.log(200.0), truth.size))
    std = np.sqrt(0.01 + np.array([9.0, 900.0]) / snr[:, None] ** 2)  # a_f + b_f/SNR²
    x = np.array([[0.0, 0.0], [3.0, 1.0], [6.0, 2.0]])[truth] + std * rng.normal(size=(800, 2))
    z = clustering.standardize(x)[0]
    part, s3 = clustering.noise_stability(z, 3, snr, sample_weight=snr**2)
    _, s4 = clustering.noise_stability(z, 4, snr, sample_weight=snr**2)
    # measured over six draws: 0.99-1.00 and 0.56-0.66
    assert s3 > 0.95 and s4 < 0.8
    assert adjusted_rand_index(truth, part.labels) > 0.95
    clean, _ = blobs(rng, [[0, 0], [1, 1]], n=50)
    assert clustering.noise_stability(clean, 2, np.full(100, 100.0))[1] == 1.0
    for bad in (0, True, float("nan"), 8.0):
        with pytest.raises(ValueError, match="n_resamples="):
            clustering.noise_stability(z, 3, snr, n_resamples=bad)


def test_min_stability_corrects_the_elbow_on_descriptors_from_frames():
    """Descriptors of phantom 5 reconstructed from simulated frames with the probe retrieved
    (``tests/data/make_vanadium_descriptors_fixture.py``): the elbow picks k = 4, splitting
    the majority species (80 % of the pixels) along its thin pixels' noisy pre-edge ratio;
    stepping down while the partition is unstable under resampled noise finds the 3 species.
    """
    import pathlib

    a = np.load(pathlib.Path(__file__).parent / "data" / "vanadium_descriptors_seed5.npz")
    maps = {f: a[f] for f in ("edge_energy_ev", "pre_edge_ratio")}
    snr, inside = a["snr"], a["domain"] >= 0
    elbow = cluster_descriptors(maps, sample_weight=snr**2, snr=snr)
    stable = cluster_descriptors(maps, sample_weight=snr**2, snr=snr, min_stability=0.9)
    ari = [adjusted_rand_index(a["domain"][inside], c.labels[inside]) for c in (elbow, stable)]
    # measured: k 4 → 3, ARI 0.35 → 1.00, stability {4: 0.61, 3: 0.96}
    assert (elbow.k, stable.k) == (4, 3) and elbow.stability == {}
    assert ari[0] < 0.6 and ari[1] > 0.95
    assert stable.stability[4] < 0.9 <= stable.stability[3]
    given = cluster_descriptors(maps, k=4, sample_weight=snr**2, snr=snr, min_stability=0.9)
    assert given.k == 4  # a given k is kept
    for bad in (
        {"min_stability": 0.9, "snr": None},
        {"min_stability": 1.5, "snr": snr},
        {"min_stability": True, "snr": snr},
        {"min_stability": "0.9", "snr": snr},
    ):
        with pytest.raises(ValueError, match="min_stability="):
            cluster_descriptors(maps, **bad)


def test_unmixed_fractions_split_mixed_pixels_exactly(rng):
    """Noiseless pure and 50/50 pixels: the split recovers the true shares exactly, while
    counting each mixed pixel wholly for one cluster does not."""
    e = np.linspace(5420.0, 5540.0, 40)
    shapes = np.stack([0.5 * (1 + np.tanh((e - c) / 2.0)) for c in (5478.0, 5481.0, 5484.0)])
    n = 300
    share = np.zeros((3, n))
    share[np.arange(n) % 3, np.arange(n)] = 1.0  # pure pixels of each species
    mixed = np.arange(n) >= 240  # the last 60: half species 0, half species 2
    share[:, mixed] = [[0.5], [0.0], [0.5]]
    n_v = np.where(mixed, 0.2, 1.0) * rng.uniform(0.5, 1.5, n)  # mixed pixels are thin
    jump, background = 0.05 * n_v, rng.uniform(0.0, 0.01, n)
    mu_t = background + jump * np.einsum("sn,se->en", share, shapes)
    labels = np.where(mixed, 1, np.argmax(share, axis=0))  # the mix looks like species 1
    snr = jump / 1e-3
    res = clustering.unmixed_fractions(mu_t, labels, 3, background, jump, n_v, snr=snr)
    truth = (share * n_v).sum(axis=1) / n_v.sum()
    np.testing.assert_allclose(res.fractions, truth, atol=1e-6)
    expected = np.broadcast_to([[0.5], [0.0], [0.5]], (3, int(mixed.sum())))
    np.testing.assert_allclose(res.shares[:, mixed], expected, atol=1e-6)
    np.testing.assert_allclose(res.endmembers, shapes, atol=1e-9)
    hard = cluster_fractions(labels, 3, n_v)
    assert np.max(np.abs(hard - truth)) > 0.03  # what the split corrects (0.046)
    no_core = clustering.unmixed_fractions(mu_t, labels, 3, background, jump, n_v)
    np.testing.assert_allclose(no_core.fractions, truth, atol=1e-6)  # shares sum to 1 anyway
    assert np.max(np.abs(no_core.endmembers[1] - shapes[1])) > 0.01  # its mean holds the mix
    # the mixing test: at σ = 1e-3 the thinnest 50/50 pixels (SNR 5-15) fit species 1 within
    # the noise (Δχ² ≤ 10) and stay whole, the others split exactly; at σ = 1e-5 all split
    tested = [
        clustering.unmixed_fractions(
            mu_t, labels, 3, background, jump, n_v, snr=jump / s, min_mixing_chi2=10.0
        )
        for s in (1e-3, 1e-5)
    ]
    got, snr_mixed = tested[0].shares[:, mixed], snr[mixed]
    whole = np.isclose(got[1], 1.0)
    np.testing.assert_allclose(got[:, ~whole], expected[:, ~whole], atol=1e-6)
    assert 0 < whole.sum() < whole.size and snr_mixed[whole].max() < snr_mixed[~whole].min()
    np.testing.assert_allclose(tested[1].fractions, truth, atol=1e-6)


def test_unmixed_fractions_mixing_test_keeps_noise_out_of_the_fractions(rng):
    """Pure pixels only, 85 % of the absorber in species 0, noisy thin pixels: NNLS shares
    cannot go negative, so noise leaks absorber into the other species; splitting only
    where the mixture fits significantly better (Δχ² > 10) does not."""
    e = np.linspace(5420.0, 5540.0, 40)
    shapes = np.stack([0.5 * (1 + np.tanh((e - c) / 2.0)) for c in (5478.0, 5481.0, 5484.0)])
    labels = np.repeat([0, 1, 2], [850, 75, 75])
    jump = np.exp(rng.uniform(np.log(0.005), np.log(0.1), labels.size))
    sigma = 2e-3  # OD noise per energy: SNR 2.5-50
    mu_t = jump * shapes[labels].T + rng.normal(0.0, sigma, (e.size, labels.size))
    truth = np.bincount(labels, jump) / jump.sum()
    args = (mu_t, labels, 3, np.zeros(labels.size), jump, jump)
    split = clustering.unmixed_fractions(*args, snr=jump / sigma)
    tested = clustering.unmixed_fractions(*args, snr=jump / sigma, min_mixing_chi2=10.0)
    err = [np.max(np.abs(r.fractions - truth)) for r in (split, tested)]
    # measured: 0.044 → 0.001
    assert err[0] > 0.02 and err[1] < 0.01
    with pytest.raises(ValueError, match="min_mixing_chi2=10.0: expected"):
        clustering.unmixed_fractions(*args, min_mixing_chi2=10.0)
    with pytest.raises(ValueError, match="min_mixing_chi2=-1.0: expected"):
        clustering.unmixed_fractions(*args, snr=jump / sigma, min_mixing_chi2=-1.0)
    for bad in (True, "10", float("inf")):
        with pytest.raises(ValueError, match="min_mixing_chi2="):
            clustering.unmixed_fractions(*args, snr=jump / sigma, min_mixing_chi2=bad)
    # float labels work; a pixel without a finite SNR has no evidence of a mixture: kept whole
    no_snr = np.where(np.arange(labels.size) < 425, np.nan, jump / sigma)
    res = clustering.unmixed_fractions(
        mu_t, labels.astype(float), 3, *args[3:], snr=no_snr, min_mixing_chi2=10.0
    )
    whole = np.arange(labels.size) < 425
    np.testing.assert_array_equal(res.shares[0, whole], 1.0)


def test_unmixed_fractions_errors():
    mu_t, lab = np.ones((8, 4, 5)), np.zeros((4, 5), int)
    ones = np.ones((4, 5))
    with pytest.raises(ValueError, match="edge_jump: expected the stack's pixel shape"):
        clustering.unmixed_fractions(mu_t, lab, 1, ones, np.ones(3), ones)
    with pytest.raises(ValueError, match="snr: expected"):
        clustering.unmixed_fractions(mu_t, lab, 1, ones, ones, ones, snr=np.ones(2))
    with pytest.raises(ValueError, match="cluster 1 has no usable pixel"):
        clustering.unmixed_fractions(mu_t, lab, 2, ones, ones, ones)
