"""AMCL losses (paper and stable forms): loop references on a grid of shapes, the paper form's documented per-pair
optima (where it has an interior optimum and where it drifts to a bound), the stable form's closed forms and its
exact reduction to NT-Xent / InfoNCE / Barlow Twins, C identical heads = C x one head, the shared temperature
network (init at T_base, symmetric, bounded), the per-head log statistics, fp32 under autocast, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vispre.losses import (AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss, BarlowTwinsLoss, ContrastivePairs,
                           InfoNCELoss, NTXentLoss, PairTemperature, barlow_twins_loss, cross_correlation, moco_pairs,
                           omega, paper_barlow_twins_loss, paper_contrastive_loss, paper_negative_term,
                           paper_positive_term, simclr_pairs, stable_barlow_twins_loss, stable_contrastive_loss,
                           temperature_stats)
from vispre.losses.amcl import hardest_negatives

GRID = [(n, d, k) for n in (2, 5) for d in (3, 8) for k in (1, 3, 100)]
TAUS = torch.logspace(math.log10(1e-5), math.log10(2.0), 20001, dtype=torch.float64)  # [tau_min, tau_max]


def net(d: int, init: float | None = None, lo: float = 0.05, hi: float = 2.0) -> PairTemperature:
    torch.manual_seed(d)
    return PairTemperature(d, 6, tau_min=lo, tau_max=hi, init=init).double()


def tau_of(temp: PairTemperature, a: np.ndarray, b: np.ndarray) -> float:
    """One pair's temperature, evaluated alone (the reference for the batched code)."""
    with torch.no_grad():
        return float(temp.pairs(torch.from_numpy(a)[None], torch.from_numpy(b)[None]))


def om(tau: float, kappa: float) -> float:
    return 1 / tau + kappa * math.log(tau)


def rows(pairs: ContrastivePairs) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Queries, keys and each anchor's negative columns, as numpy."""
    q, k = pairs.query.detach().numpy(), pairs.keys.detach().numpy()
    excl = None if pairs.exclude_index is None else pairs.exclude_index.tolist()
    negs = [[m for m in range(len(k)) if m != int(pairs.positive_index[i]) and (excl is None or m != excl[i])]
            for i in range(len(q))]
    return q, k, negs


def paper_loop(pairs: ContrastivePairs, temp: PairTemperature, beta: float, kappa: float, k_neg: int) -> float:
    q, k, negs = rows(pairs)
    total = 0.0
    for i in range(len(q)):
        p = int(pairs.positive_index[i])
        hard = sorted(negs[i], key=lambda m: -(q[i] @ k[m]))[:k_neg]
        tp = tau_of(temp, q[i], k[p])
        total += -(q[i] @ k[p]) / tp + beta * om(tp, kappa)
        total += sum((q[i] @ k[m]) / (tn := tau_of(temp, q[i], k[m])) - beta * om(tn, kappa) for m in hard) / len(hard)
    return total / len(q)


def stable_loop(pairs: ContrastivePairs, temp: PairTemperature, beta: float, kappa: float) -> float:
    q, k, negs = rows(pairs)
    total = 0.0
    for i in range(len(q)):
        p = int(pairs.positive_index[i])
        t = tau_of(temp, q[i], k[p])
        denom = sum(math.exp(q[i] @ k[m] / t) for m in [p, *negs[i]])
        total += -(q[i] @ k[p]) / t + math.log(denom) + beta * om(t, kappa)
    return total / len(q)


@pytest.mark.parametrize("n,d,k", GRID)
@pytest.mark.parametrize("kind", ["simclr", "moco"])
def test_paper_form_matches_loop(kind: str, n: int, d: int, k: int) -> None:
    z1, z2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    pairs = (simclr_pairs if kind == "simclr" else moco_pairs)(z1, z2, False)
    temp = net(d)
    got = paper_contrastive_loss(pairs, temp, beta=0.05, kappa=d / 2, negatives=k)
    assert got.loss.item() == pytest.approx(paper_loop(pairs, temp, 0.05, d / 2, k), rel=1e-10)
    negatives = min(k, 2 * n - 2 if kind == "simclr" else n - 1)
    assert got.tau.shape == (len(pairs.query) * (1 + negatives),)


@pytest.mark.parametrize("n,d,t", [(n, d, t) for n in (2, 5) for d in (3, 8) for t in (0.07, 0.3)])
@pytest.mark.parametrize("kind", ["simclr", "moco"])
def test_stable_form_matches_loop(kind: str, n: int, d: int, t: float) -> None:
    z1, z2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    pairs = (simclr_pairs if kind == "simclr" else moco_pairs)(z1, z2, False)
    temp = net(d)
    got = stable_contrastive_loss(pairs, temp, beta=0.1, kappa=1 / t)
    assert got.loss.item() == pytest.approx(stable_loop(pairs, temp, 0.1, 1 / t), rel=1e-10)
    assert got.tau.shape == (len(pairs.query),)


def test_simclr_anchors_have_2b_minus_2_negatives_and_moco_b_minus_1() -> None:
    z1, z2 = torch.randn(4, 5), torch.randn(4, 5)
    assert hardest_negatives(simclr_pairs(z1, z2, False), 100).shape == (8, 6)
    assert hardest_negatives(moco_pairs(z1, z2, False), 100).shape == (4, 3)
    pairs = simclr_pairs(z1, z2, False)
    cols = hardest_negatives(pairs, 1).squeeze(1)
    assert not bool((cols == pairs.positive_index).any()) and not bool((cols == pairs.exclude_index).any())


# -- the regulariser and the paper form's per-pair optima (docs/amcl.md) -------------------------------------------
@pytest.mark.parametrize("kappa", [0.5, 5.0, 64.0])
def test_omega_minimum_is_one_over_kappa(kappa: float) -> None:
    tau = torch.tensor(1 / kappa, dtype=torch.float64, requires_grad=True)
    omega(tau, kappa).backward()
    assert abs(tau.grad.item()) < 1e-9  # d/dtau (1/tau + kappa ln tau) = 0 at tau = 1/kappa
    assert TAUS[omega(TAUS, kappa).argmin()].item() == pytest.approx(1 / kappa, rel=1e-3)


def test_omega_stationary_at_two_over_d_with_the_papers_kappa() -> None:
    d = 128
    tau = torch.tensor(2 / d, dtype=torch.float64, requires_grad=True)
    omega(tau, d / 2).backward()
    assert abs(tau.grad.item()) < 1e-9


@pytest.mark.parametrize("s", [-0.5, 0.0, 0.05])
def test_paper_positive_term_has_an_interior_optimum_only_below_beta(s: float) -> None:
    beta, kappa = 0.1, 64.0
    best = TAUS[paper_positive_term(torch.tensor(s), TAUS, beta, kappa).argmin()].item()
    assert best == pytest.approx((beta - s) / (beta * kappa), rel=1e-3)  # tau* = 2(beta - s)/(beta d')


@pytest.mark.parametrize("s", [1e-4, 0.3, 0.9])
def test_paper_positive_term_drifts_to_tau_min_at_or_above_beta(s: float) -> None:
    values = paper_positive_term(torch.tensor(s), TAUS, beta=1e-4, kappa=64.0)
    assert int(values.argmin()) == 0 and bool((values.diff() > 0).all())  # increasing: minimum at tau_min


@pytest.mark.parametrize("s,bound", [(-0.3, 0), (0.0, 0), (0.5, -1), (0.95, -1)])
def test_paper_negative_term_drifts_to_a_bound(s: float, bound: int) -> None:
    beta, kappa = 1e-4, 64.0
    values = paper_negative_term(torch.tensor(s), TAUS, beta, kappa)
    assert int(values.argmin()) == (bound if bound == 0 else len(TAUS) - 1)
    if s < beta:  # its stationary point tau0 = (beta - s)/(beta kappa) is a maximum
        tau0 = torch.tensor((beta - s) / (beta * kappa), dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(paper_negative_term(torch.tensor(s), tau0, beta, kappa), tau0, create_graph=True)
        (curv,) = torch.autograd.grad(g, tau0)
        assert abs(g.item()) < 1e-6 * abs(s - beta) / tau0.item() ** 2 and curv.item() < 0


def single_anchor(s_pos: float, s_negs: list[float]) -> ContrastivePairs:
    """One anchor e1 and keys with the given cosine similarities to it (the positive first)."""
    keys = torch.tensor([[s, math.sqrt(1 - s * s)] for s in [s_pos, *s_negs]], dtype=torch.float64)
    return ContrastivePairs(torch.tensor([[1.0, 0.0]], dtype=torch.float64), keys, torch.tensor([0]), None)


def test_paper_form_with_a_fixed_temperature_and_no_regulariser_is_the_margin() -> None:
    got = paper_contrastive_loss(single_anchor(0.8, [0.5, 0.1]), 0.2, beta=0.0).loss.item()
    assert got == pytest.approx(-1.5, abs=1e-12)  # (s_n* - s_p)/T = (0.5 - 0.8)/0.2
    assert paper_contrastive_loss(single_anchor(0.8, [0.5, 0.1]), 0.2, beta=0.3).loss.item() == pytest.approx(-1.5)


@pytest.mark.parametrize("n,t", [(3, 0.1), (8, 0.5)])
def test_nt_xent_bounds_the_paper_margin(n: int, t: float) -> None:
    pairs = simclr_pairs(torch.randn(n, 6, dtype=torch.float64), torch.randn(n, 6, dtype=torch.float64), False)
    margin = paper_contrastive_loss(pairs, t, beta=0.0).per_item
    nt = stable_contrastive_loss(pairs, t, beta=0.0, kappa=1 / t).per_item
    assert bool((nt >= margin - 1e-12).all())
    assert bool((nt - margin.clamp(min=0) <= math.log(2 * n - 1) + 1e-12).all())


# -- the stable form's closed forms and reductions --------------------------------------------------------------
@pytest.mark.parametrize("kappa,want", [(64.0, -14.6756), (5.0, 5.2365)])
def test_stable_closed_form_when_all_keys_are_equally_similar(kappa: float, want: float) -> None:
    pairs = single_anchor(0.3, [0.3] * 254)  # |K| = 255
    at = lambda t: stable_contrastive_loss(pairs, t, beta=0.1, kappa=kappa).loss.item()  # noqa: E731
    assert at(1 / kappa) == pytest.approx(math.log(255) + 0.1 * kappa * (1 - math.log(kappa)), rel=1e-12)
    assert at(1 / kappa) == pytest.approx(want, abs=1e-4)
    grid = TAUS[::50]
    values = torch.tensor([at(float(t)) for t in grid])
    assert grid[values.argmin()].item() == pytest.approx(1 / kappa, rel=0.02)  # tau* = 1/kappa: interior


def test_stable_two_keys_is_a_softplus() -> None:
    got = stable_contrastive_loss(single_anchor(0.7, [0.2]), 0.25, beta=0.0, kappa=4.0).loss.item()
    assert got == pytest.approx(F.softplus(torch.tensor((0.2 - 0.7) / 0.25, dtype=torch.float64)).item(), rel=1e-12)


def test_stable_form_is_bounded_below_for_any_temperature() -> None:
    pairs = simclr_pairs(torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), False)
    kappa, beta = 5.0, 0.1
    floor = beta * kappa * (1 - math.log(kappa))  # CE >= 0 and Omega >= kappa (1 - ln kappa)
    assert min(stable_contrastive_loss(pairs, float(t), beta=beta, kappa=kappa).loss.item() for t in TAUS[::2000]) >= floor


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("t", [0.1, 0.4])
def test_stable_fixed_temperature_no_regulariser_is_nt_xent_and_info_nce_times_heads(heads: int, t: float) -> None:
    z = [torch.randn(6, 8) for _ in range(4)]
    nt = AMCLNTXentLoss(heads, 8, temperature=t, adaptive_temperature=False, beta=0.0, gather=False)
    want = NTXentLoss(temperature=t, gather=False)(z[0], z[1])["loss"]
    torch.testing.assert_close(nt([z[0]] * heads, [z[1]] * heads)["loss"], heads * want, atol=1e-6, rtol=0)
    if heads == 1:  # a single-head projector's tensor is one head
        torch.testing.assert_close(nt(z[0], z[1])["loss"], want, atol=1e-6, rtol=0)
    nce = AMCLInfoNCELoss(heads, 8, temperature=t, adaptive_temperature=False, beta=0.0, gather=False)
    want = InfoNCELoss(temperature=t, gather=False)(*z)["loss"]
    torch.testing.assert_close(nce(*[[x] * heads for x in z])["loss"], heads * want, atol=1e-6, rtol=0)


def test_stable_network_at_init_with_no_regulariser_is_nt_xent_at_t_base() -> None:
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    loss = AMCLNTXentLoss(2, 8, temperature=0.2, beta=0.0, gather=False)  # adaptive, starts at T_base
    want = NTXentLoss(temperature=0.2, gather=False)(z1, z2)["loss"]
    torch.testing.assert_close(loss([z1, z1], [z2, z2])["loss"], 2 * want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("form", ["paper", "stable"])
def test_identical_heads_give_c_times_one_head(form: str) -> None:
    z = [torch.randn(5, 8) for _ in range(4)]
    for cls, n_in in ((AMCLNTXentLoss, 2), (AMCLInfoNCELoss, 4), (AMCLBarlowTwinsLoss, 2)):
        torch.manual_seed(0)
        loss = cls(3, 8, form=form, tau_hidden_dim=4, gather=False)
        one, three = loss(*[[x] for x in z[:n_in]]), loss(*[[x] * 3 for x in z[:n_in]])
        torch.testing.assert_close(three["loss"], 3 * one["loss"], rtol=1e-6, atol=1e-6)
        assert torch.equal(three["tau_mean_head2"], one["tau_mean_head0"])


# -- the temperature network ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0, 1.9])
def test_network_initialised_at_t_base_outputs_t_base_and_every_parameter_learns(t: float) -> None:
    temp = PairTemperature(8, 16, tau_min=1e-5, tau_max=2.0, init=t)
    a, b = torch.randn(5, 8) * 3, torch.randn(7, 8)
    tau = temp.matrix(a, b)
    torch.testing.assert_close(tau, torch.full((5, 7), t), atol=1e-6, rtol=1e-6)
    loss = AMCLNTXentLoss(1, 8, temperature=t, gather=False)
    loss(a.requires_grad_(), torch.randn(5, 8))["loss"].backward()
    assert all(p.grad is not None and bool(p.grad.any()) for p in loss.temperature_net.parameters())


def test_network_is_symmetric_bounded_and_shared_by_all_heads() -> None:
    temp = PairTemperature(6, 8, tau_min=0.05, tau_max=0.5)
    with torch.no_grad():
        temp.phi[2].bias.fill_(30.0)  # saturate: every dot product huge
    a, b = torch.randn(4, 6), torch.randn(3, 6)
    torch.testing.assert_close(temp.matrix(a, b), temp.matrix(b, a).T)
    torch.testing.assert_close(temp.pairs(a[:3], b), torch.diagonal(temp.matrix(a[:3], b)))
    assert bool((temp.matrix(a, b) >= 0.05).all()) and bool((temp.matrix(a, b) <= 0.5).all())
    loss = AMCLNTXentLoss(3, 8)
    assert isinstance(loss.temperature_net, PairTemperature) and loss.temperature_net.dim == 8
    assert sum(isinstance(m, PairTemperature) for m in loss.modules()) == 1  # one network for the 3 heads


def test_paper_form_at_the_bounds_keeps_finite_loss_and_gradients() -> None:
    temp = PairTemperature(8, 16, tau_min=1e-5, tau_max=2.0)
    with torch.no_grad():
        temp.phi[2].bias.fill_(20.0)  # dot >> 0: sigmoid(-dot) -> 0, tau at tau_min
    z1, z2 = (torch.randn(6, 8) * 100).requires_grad_(), torch.randn(6, 8, requires_grad=True)
    head = paper_contrastive_loss(simclr_pairs(z1, z2, False), temp, negatives=100)
    head.loss.backward()
    assert torch.isfinite(head.loss) and head.tau.min().item() >= 1e-5 * (1 - 1e-6)
    assert temperature_stats(head.tau, 1e-5, 2.0)["tau_at_bound"].item() == 1.0
    for g in [z1.grad, z2.grad, *(p.grad for p in temp.parameters())]:
        assert g is not None and bool(torch.isfinite(g).all())


# -- Barlow Twins ----------------------------------------------------------------------------------------------------
def bt_loop(c: np.ndarray, tau: np.ndarray, lambd: float, beta: float, kappa: float, form: str) -> float:
    total, d = 0.0, len(c)
    for l in range(d):
        if form == "paper":
            total += (1 - c[l, l] / tau[l, l]) ** 2 + beta * om(tau[l, l], kappa)
            total += sum(lambd * c[l, m] ** 2 / tau[l, m] - beta * om(tau[l, m], kappa) for m in range(d) if m != l)
        else:
            row = (1 - c[l, l]) ** 2 + lambd * sum(c[l, m] ** 2 for m in range(d) if m != l)
            total += row / tau[l, l] + beta * om(tau[l, l], kappa)
    return total


@pytest.mark.parametrize("n,d", [(4, 3), (10, 6), (16, 8)])
@pytest.mark.parametrize("form", ["paper", "stable"])
def test_barlow_twins_forms_match_loop_with_data_dependent_temperatures(form: str, n: int, d: int) -> None:
    c = cross_correlation(torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64), False)
    temp = net(d, lo=0.1)
    fn = paper_barlow_twins_loss if form == "paper" else stable_barlow_twins_loss
    got = fn(c, temp, lambd=0.05, beta=0.01, kappa=2.0)
    cn = c.numpy()
    tau = np.array([[tau_of(temp, cn[l], cn[:, m]) for m in range(d)] for l in range(d)])
    assert got.loss.item() == pytest.approx(bt_loop(cn, tau, 0.05, 0.01, 2.0, form), rel=1e-10)


@pytest.mark.parametrize("heads", [1, 3])
def test_stable_barlow_twins_at_unit_temperature_without_regulariser_is_barlow_twins(heads: int) -> None:
    z1, z2 = torch.randn(10, 6), torch.randn(10, 6)
    want = BarlowTwinsLoss(gather=False)(z1, z2)["loss"]
    fixed = AMCLBarlowTwinsLoss(heads, 6, adaptive_temperature=False, beta=0.0, gather=False)
    torch.testing.assert_close(fixed([z1] * heads, [z2] * heads)["loss"], heads * want, rtol=1e-6, atol=1e-6)
    at_init = AMCLBarlowTwinsLoss(heads, 6, beta=0.0, gather=False)  # network starts at T_base = 1
    torch.testing.assert_close(at_init([z1] * heads, [z2] * heads)["loss"], heads * want, rtol=1e-6, atol=1e-6)
    c = cross_correlation(z1, z2, False)
    torch.testing.assert_close(stable_barlow_twins_loss(c, 0.5, beta=0.0).loss, 2 * barlow_twins_loss(z1, z2, gather=False))


def test_stable_barlow_twins_per_feature_optimum_is_interior() -> None:
    c = cross_correlation(torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64), False)
    beta, kappa = 1.0, 1.0
    per = torch.stack([stable_barlow_twins_loss(c, float(t), beta=beta, kappa=kappa).per_item for t in TAUS[::20]])
    rows = stable_barlow_twins_loss(c, 1.0, beta=0.0).per_item  # D_l: each row's Barlow Twins loss
    best = TAUS[::20][per.argmin(0)]
    torch.testing.assert_close(best, ((rows + beta) / (beta * kappa)).clamp(max=2.0), rtol=3e-3, atol=0)


def test_paper_barlow_twins_off_diagonal_term_is_the_negative_term() -> None:
    c = torch.tensor([[0.9, 0.4], [-0.2, 0.7]], dtype=torch.float64)
    lambd, beta, kappa, t = 5e-3, 1e-6, 1.0, 0.3
    got = paper_barlow_twins_loss(c, t, lambd=lambd, beta=beta, kappa=kappa).per_item
    off = paper_negative_term(lambd * c[0, 1] ** 2, torch.tensor(t, dtype=torch.float64), beta, kappa)
    on = (1 - c[0, 0] / t) ** 2 + beta * om(t, kappa)
    assert got[0].item() == pytest.approx((on + off).item(), rel=1e-12)


# -- log terms, fp32, errors ------------------------------------------------------------------------------------------
def test_temperature_stats_on_known_values() -> None:
    tau = torch.tensor([1e-5, 1e-5, 0.015, 0.5, 0.5, 1.0, 1.0, 1.5, 1.99, 2.0])  # 10 values
    stats = temperature_stats(tau, 1e-5, 2.0)
    assert stats["tau_mean"].item() == pytest.approx(float(tau.double().mean()), rel=1e-6)
    assert stats["tau_p05"].item() == pytest.approx(1e-5) and stats["tau_p95"].item() == pytest.approx(2.0)
    assert stats["tau_at_bound"].item() == pytest.approx(0.5)  # 1e-5 x2, 0.015, 1.99, 2.0: within 0.02 of a bound
    assert temperature_stats(torch.arange(1.0, 101.0), 0.0 + 1e-9, 1000.0)["tau_p05"].item() == 5.0


@pytest.mark.parametrize("form", ["paper", "stable"])
def test_modules_log_per_head_temperature_statistics(form: str) -> None:
    loss = AMCLInfoNCELoss(2, 8, form=form, tau_hidden_dim=4, gather=False)
    terms = loss(*[[torch.randn(5, 8) for _ in range(2)] for _ in range(4)])
    per_head = {f"{k}_head{c}" for c in range(2) for k in ("loss", "tau_mean", "tau_p05", "tau_p95", "tau_at_bound")}
    paper_only = {f"{k}_head{c}" for c in range(2) for k in ("tau_pos", "tau_neg")}
    assert set(terms) == {"loss", "tau_mean", "tau_at_bound"} | per_head | (paper_only if form == "paper" else set())
    assert all(v.ndim == 0 for v in terms.values())
    assert terms["tau_p05_head0"] - 1e-6 <= terms["tau_mean_head0"] <= terms["tau_p95_head0"] + 1e-6
    torch.testing.assert_close(terms["loss"], terms["loss_head0"] + terms["loss_head1"])


@pytest.mark.parametrize("cls,n_in", [(AMCLNTXentLoss, 2), (AMCLInfoNCELoss, 4), (AMCLBarlowTwinsLoss, 2)])
def test_loss_runs_in_fp32_under_autocast(cls, n_in: int) -> None:
    torch.manual_seed(0)
    loss = cls(2, 8, form="paper", tau_hidden_dim=4, gather=False)
    z = [[torch.randn(6, 8) for _ in range(2)] for _ in range(n_in)]
    want = loss(*z)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(*[[x.bfloat16() for x in heads] for heads in z])["loss"]
    assert got.dtype == torch.float32
    bf16_inputs = loss(*[[x.bfloat16().float() for x in heads] for heads in z])["loss"]
    assert torch.equal(got, bf16_inputs) and abs(got.item() - want.item()) < 0.05 * abs(want.item()) + 0.05


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"temperature bounds must satisfy 0 < tau_min < tau_max, got \[2.0, 1.0\]"):
        PairTemperature(4, tau_min=2.0, tau_max=1.0)
    with pytest.raises(ValueError, match=r"init must lie strictly inside the bounds \(1e-05, 2.0\), got 2.5"):
        PairTemperature(4, init=2.5)
    with pytest.raises(ValueError, match=r"AMCLNTXentLoss.form must be one of \('paper', 'stable'\), got 'hardest'"):
        AMCLNTXentLoss(2, 8, form="hardest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="AMCLBarlowTwinsLoss.form must be one of"):
        AMCLBarlowTwinsLoss(2, 8, form="logsumexp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="AMCLInfoNCELoss.temperature must be > 0, got -1.0"):
        AMCLInfoNCELoss(2, 8, temperature=-1.0)
    with pytest.raises(ValueError, match="AMCLNTXentLoss.negatives must be >= 1"):
        AMCLNTXentLoss(2, 8, form="paper", negatives=0)
    with pytest.raises(ValueError, match=r"init must lie strictly inside the bounds \(0.5, 2.0\), got 0.2"):
        AMCLInfoNCELoss(2, 8, tau_min=0.5)  # the stable form starts at T = 0.2
    z = torch.randn(1, 4)
    with pytest.raises(ValueError, match="needs at least one negative per anchor"):
        paper_contrastive_loss(moco_pairs(z, z, False), 0.1)
