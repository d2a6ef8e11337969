"""Rollout correction (TIS / MIS, token and sequence level) against hand-computed weights."""

from __future__ import annotations

import math

import pytest
import torch

from rl_vlm.algorithms.core import clipped_policy_loss
from rl_vlm.algorithms.rollout_correction import rollout_correction
from rl_vlm.algorithms.rollout_correction_config import RolloutCorrectionConfig
from rl_vlm.errors import ConfigError

# Two responses; ρ_t = exp(p_t − b_t) = 0.5, 1, 4 for the first and e^0.2 for the second.
PROX = [torch.tensor([math.log(0.5), 0.0, math.log(4.0)]), torch.tensor([0.1])]
BEHAV = [[0.0, 0.0, 0.0], [-0.1]]


def test_token_tis_truncates_each_ratio_at_the_cap() -> None:
    out = rollout_correction(PROX, BEHAV, RolloutCorrectionConfig(mode="tis", cap=2.0))
    assert out.weights is not None
    torch.testing.assert_close(out.weights[0], torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(out.weights[1], torch.tensor([math.exp(0.2)]))
    m = out.metrics
    assert m["rollout_corr/capped_frac"] == pytest.approx(1 / 4)
    assert m["rollout_corr/weight_mean"] == pytest.approx((0.5 + 1 + 2 + math.exp(0.2)) / 4)
    assert m["rollout_corr/ratio_max"] == pytest.approx(4.0)
    # KL(behaviour ‖ proximal), k1 under the behaviour samples: mean of b − p.
    assert m["rollout_corr/kl"] == pytest.approx((math.log(2) + 0 - math.log(4) - 0.2) / 4)
    k3 = [r - 1 - math.log(r) for r in (0.5, 1.0, 4.0, math.exp(0.2))]
    assert m["rollout_corr/k3_kl"] == pytest.approx(sum(k3) / 4)


def test_token_mis_masks_ratios_above_the_cap() -> None:
    out = rollout_correction(PROX, BEHAV, RolloutCorrectionConfig(mode="mis", cap=2.0))
    assert out.weights is not None
    torch.testing.assert_close(out.weights[0], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(out.weights[1], torch.tensor([math.exp(0.2)]))


def test_sequence_level_uses_the_product_of_the_response_ratios() -> None:
    # Response 0: ρ = 0.5 · 1 · 4 = 2 (at the cap, kept); response 1: e^0.2.
    tis = rollout_correction(PROX, BEHAV, RolloutCorrectionConfig(mode="tis", level="sequence", cap=1.5))
    assert tis.weights is not None
    torch.testing.assert_close(tis.weights[0], torch.full((3,), 1.5))
    torch.testing.assert_close(tis.weights[1], torch.tensor([math.exp(0.2)]))
    assert tis.metrics["rollout_corr/capped_frac"] == pytest.approx(3 / 4)  # the tokens of response 0
    mis = rollout_correction(PROX, BEHAV, RolloutCorrectionConfig(mode="mis", level="sequence", cap=1.5))
    assert mis.weights is not None
    torch.testing.assert_close(mis.weights[0], torch.zeros(3))


def test_no_mode_gives_diagnostics_only_and_equal_policies_weigh_one() -> None:
    out = rollout_correction(PROX, BEHAV, RolloutCorrectionConfig())
    assert out.weights is None and "rollout_corr/weight_mean" not in out.metrics
    same = rollout_correction(PROX, [p.tolist() for p in PROX], RolloutCorrectionConfig(mode="tis"))
    assert same.weights is not None and all(torch.equal(w, torch.ones_like(w)) for w in same.weights)
    assert same.metrics["rollout_corr/kl"] == 0.0


def test_weighting_the_advantages_equals_weighting_the_clipped_loss() -> None:
    # The driver multiplies A by w >= 0; the clipped surrogate (dual clip included) scales by w.
    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    adv, w = torch.randn(4, 6, generator=g), torch.rand(4, 6, generator=g) * 2
    w[0, :3] = 0.0
    weighted, _ = clipped_policy_loss(logp, old, adv * w, 0.2, 0.28, 3.0)
    plain, _ = clipped_policy_loss(logp, old, adv, 0.2, 0.28, 3.0)
    torch.testing.assert_close(weighted, plain * w)


def test_bad_knobs_name_their_key() -> None:
    with pytest.raises(ConfigError, match="algorithm.rollout_correction.cap"):
        RolloutCorrectionConfig(mode="tis", cap=1.0)
    with pytest.raises(ConfigError, match="algorithm.rollout_correction.mode"):
        RolloutCorrectionConfig(mode="ics")  # type: ignore[arg-type]
