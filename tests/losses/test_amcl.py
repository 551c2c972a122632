"""AMCL losses: exact reduction to the base losses, hand-computed forms, temperature bounds, finite grads, and
the loss modules (sized by their head, own log terms, MoCo symmetrisation)."""

from __future__ import annotations

import math

import pytest
import torch

from vispre.losses import (AMCLBarlowTwinsLoss, AMCLInfoNCELoss, AMCLNTXentLoss, BarlowTwinsLoss,
                           FeaturePairTemperature, InfoNCELoss, NTXentLoss, PairTemperature, amcl_barlow_twins_loss,
                           amcl_contrastive_loss, barlow_twins_loss, contrastive_loss, moco_pairs, nt_xent_loss, omega,
                           simclr_pairs)


@pytest.mark.parametrize("n,d,t", [(3, 4, 0.1), (8, 16, 0.5)])
def test_fixed_temperature_logsumexp_is_exactly_the_base_loss(n: int, d: int, t: float) -> None:
    z1, z2 = torch.randn(n, d), torch.randn(n, d)
    assert torch.equal(amcl_contrastive_loss(simclr_pairs(z1, z2, False), t, "logsumexp").loss,
                       nt_xent_loss(z1, z2, t, gather=False))
    assert torch.equal(amcl_contrastive_loss(moco_pairs(z1, z2, False), t, "logsumexp").loss,
                       contrastive_loss(moco_pairs(z1, z2, False), t))
    assert torch.equal(amcl_barlow_twins_loss(z1, z2, None, gather=False).loss,
                       barlow_twins_loss(z1, z2, gather=False))


def test_hardest_form_matches_hand_computation() -> None:
    q = torch.randn(5, 6, dtype=torch.float64)
    k = torch.randn(5, 6, dtype=torch.float64)
    temp = PairTemperature(6, 8, tau_min=0.05, tau_max=2.0).double()
    beta = 0.1
    got = amcl_contrastive_loss(moco_pairs(q, k, False), temp, "hardest", beta)
    qn, kn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    total, taus_p, taus_n = 0.0, [], []
    for i in range(5):
        sims = [float(qn[i] @ kn[j]) for j in range(5)]
        neg = max((j for j in range(5) if j != i), key=lambda j: sims[j])
        with torch.no_grad():
            tp = float(temp.pairs(qn[i:i + 1], kn[i:i + 1]))
            tn = float(temp.pairs(qn[i:i + 1], kn[neg:neg + 1]))
        om = lambda t: 1 / t + 3 * math.log(t)  # noqa: E731 - d/2 = 3
        total += -sims[i] / tp + sims[neg] / tn + beta * (om(tp) - om(tn))
        taus_p.append(tp)
        taus_n.append(tn)
    assert got.loss.item() == pytest.approx(total / 5, rel=1e-10)
    assert got.tau_pos.item() == pytest.approx(sum(taus_p) / 5, rel=1e-10)
    assert got.tau_neg.item() == pytest.approx(sum(taus_n) / 5, rel=1e-10)


def test_logsumexp_form_matches_loop_with_per_pair_temperature() -> None:
    z1, z2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    temp = PairTemperature(4, 8, tau_min=0.1, tau_max=1.0).double()
    pairs = simclr_pairs(z1, z2, False)
    got = amcl_contrastive_loss(pairs, temp, "logsumexp", beta=0.1).loss.item()
    with torch.no_grad():
        tau = temp.matrix(pairs.query, pairs.keys)
    s = pairs.query @ pairs.keys.T
    total = 0.0
    for i in range(6):
        p = int(pairs.positive_index[i])
        denom = sum(math.exp(s[i, m] / tau[i, m]) for m in range(6) if m != i)
        total += -float(s[i, p] / tau[i, p]) + math.log(denom) + 0.1 * float(omega(tau[i, p], 4))
    assert got == pytest.approx(total / 6, rel=1e-10)


def test_pair_temperature_matrix_agrees_with_pairs_and_concat_mlp() -> None:
    temp = PairTemperature(5, 7, tau_min=0.2, tau_max=0.9)
    a, b = torch.randn(3, 5), torch.randn(4, 5)
    m = temp.matrix(a, b)
    direct = temp.tau_min + (temp.tau_max - temp.tau_min) * torch.sigmoid(
        temp.out(torch.relu(temp.first(torch.cat([a[1], b[2]])))))
    assert torch.allclose(m[1, 2], direct.squeeze(), atol=1e-6)
    assert torch.allclose(temp.pairs(a[[0, 2]], b[[3, 1]]), m[[0, 2], [3, 1]], atol=1e-6)


@pytest.mark.parametrize("form", ["hardest", "logsumexp"])
def test_temperatures_within_bounds_and_gradients_finite_even_for_extreme_inputs(form: str) -> None:
    temp = PairTemperature(8, 16, tau_min=1e-5, tau_max=2.0)
    with torch.no_grad():
        temp.out.bias.fill_(-50.0)  # sigmoid -> 0: tau at tau_min
    z1 = (torch.randn(6, 8) * 100).requires_grad_()
    z2 = torch.randn(6, 8, requires_grad=True)
    terms = amcl_contrastive_loss(simclr_pairs(z1, z2, False), temp, form)
    terms.loss.backward()
    lo, hi = torch.tensor(1e-5), torch.tensor(2.0)  # the bounds as float32 values
    tau = temp.matrix(torch.randn(6, 8), torch.randn(6, 8))
    assert bool((tau >= lo).all()) and bool((tau <= hi).all())
    for mean_tau in (terms.tau_pos, terms.tau_neg):
        assert lo * (1 - 1e-6) <= mean_tau <= hi
    assert torch.isfinite(terms.loss)
    for g in [z1.grad, z2.grad, *(p.grad for p in temp.parameters())]:
        assert g is not None and bool(torch.isfinite(g).all())


def test_barlow_twins_amcl_bounds_and_unit_temperature_reduction() -> None:
    z1, z2 = torch.randn(10, 6, requires_grad=True), torch.randn(10, 6)
    temp = FeaturePairTemperature(6, tau_min=0.5, tau_max=1.5)  # logits 0 -> tau = 1 everywhere
    terms = amcl_barlow_twins_loss(z1, z2, temp, lambd=5e-3, beta=0.0, gather=False)
    assert terms.loss.item() == pytest.approx(barlow_twins_loss(z1, z2, gather=False).item(), rel=1e-6)
    assert terms.tau_pos.item() == pytest.approx(1.0) and terms.tau_neg.item() == pytest.approx(1.0)
    terms = amcl_barlow_twins_loss(z1, z2, temp, beta=0.1, gather=False)
    terms.loss.backward()
    assert bool(torch.isfinite(z1.grad).all()) and bool(torch.isfinite(temp.off_logit.grad).all())


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"temperature bounds must satisfy 0 < tau_min < tau_max, got \[2.0, 1.0\]"):
        PairTemperature(4, tau_min=2.0, tau_max=1.0)
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="AMCL form must be one of"):
        amcl_contrastive_loss(simclr_pairs(z, z, False), 0.1, "softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs at least one negative per anchor"):
        amcl_contrastive_loss(moco_pairs(z[:1], z[:1], False), 0.1, "hardest")


def test_loss_modules_size_one_temperature_network_per_head() -> None:
    loss = AMCLNTXentLoss(3, 8, tau_hidden_dim=5)
    assert len(loss.temperatures) == 3 and loss.temperatures[0].first.weight.shape == (5, 16)
    assert loss.temperature == 0.1 and AMCLInfoNCELoss(2, 8).temperature == 0.2  # the base losses' T
    bt = AMCLBarlowTwinsLoss(2, 6)
    assert len(bt.temperatures) == 2 and bt.temperatures[1].off_logit.shape == (6,)
    assert AMCLNTXentLoss(3, 8, adaptive_temperature=False).temperatures is None


def test_nt_xent_module_logs_per_head_terms_and_sums_the_heads() -> None:
    loss = AMCLNTXentLoss(2, 8, tau_hidden_dim=4, tau_min=0.05, tau_max=0.5, gather=False)
    z1s, z2s = [torch.randn(5, 8) for _ in range(2)], [torch.randn(5, 8) for _ in range(2)]
    terms = loss(z1s, z2s)
    assert set(terms) == {"loss", "tau_pos", "tau_neg"} | {f"{k}_head{c}" for k in ("loss", "tau_pos", "tau_neg")
                                                             for c in range(2)}
    for c in range(2):
        want = amcl_contrastive_loss(simclr_pairs(z1s[c], z2s[c], False), loss.temperatures[c], "hardest", 0.1)
        assert torch.equal(terms[f"loss_head{c}"], want.loss)
    assert torch.equal(terms["loss"], terms["loss_head0"] + terms["loss_head1"])
    assert 0.05 <= terms["tau_pos"].item() <= 0.5


def test_info_nce_module_adds_the_two_directions_and_averages_temperatures() -> None:
    loss = AMCLInfoNCELoss(1, 8, temperature=0.25, tau_hidden_dim=4, form="logsumexp", gather=False)
    q1, q2, k1, k2 = ([torch.randn(4, 8)] for _ in range(4))
    terms = loss(q1, q2, k1, k2)
    a = amcl_contrastive_loss(moco_pairs(q1[0], k2[0], False), loss.temperatures[0], "logsumexp", 0.1)
    b = amcl_contrastive_loss(moco_pairs(q2[0], k1[0], False), loss.temperatures[0], "logsumexp", 0.1)
    torch.testing.assert_close(terms["loss"], 0.5 * a.loss + 0.5 * b.loss)  # each direction x 2T
    torch.testing.assert_close(terms["tau_pos"], (a.tau_pos + b.tau_pos) / 2)


@pytest.mark.parametrize("amcl,base,call", [
    (AMCLNTXentLoss(1, 8, temperature=0.3, adaptive_temperature=False, form="logsumexp", gather=False),
     NTXentLoss(temperature=0.3, gather=False), 2),
    (AMCLInfoNCELoss(1, 8, temperature=0.3, adaptive_temperature=False, form="logsumexp", gather=False),
     InfoNCELoss(temperature=0.3, gather=False), 4),
    (AMCLBarlowTwinsLoss(1, 8, adaptive_temperature=False, gather=False), BarlowTwinsLoss(gather=False), 2),
])
def test_one_head_fixed_temperature_modules_are_exactly_their_base(amcl, base, call) -> None:
    zs = [torch.randn(6, 8) for _ in range(call)]
    assert torch.equal(amcl(*[[z] for z in zs])["loss"], base(*zs)["loss"])
    assert torch.equal(amcl(*zs)["loss"], base(*zs)["loss"])  # a single-head tensor is one head


def test_module_arguments_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="AMCLNTXentLoss.form must be one of"):
        AMCLNTXentLoss(2, 8, form="softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="AMCLInfoNCELoss.temperature must be > 0, got -1.0"):
        AMCLInfoNCELoss(2, 8, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature bounds must satisfy"):
        AMCLBarlowTwinsLoss(2, 8, tau_min=0.0)
