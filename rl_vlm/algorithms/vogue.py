"""VOGUE, renamed DUPL: Dual-Uncertainty Guided Policy Learning (arXiv 2510.01444), algorithms.md §5.

Delta from GRPO: the GRPO advantage A gains two non-negative-signed, |A|-capped bonuses
(stop-gradient), from a noisy view T(image) of each prompt's image (:class:`NoisyImageTransform`:
flips, ±10° rotation, brightness/contrast jitter, Gaussian pixel noise):

- a perceptual-uncertainty term from the symmetric KL between the policy with the raw and the
  noisy image;
- an output-uncertainty (entropy) term.

Two readings, chosen by ``algorithm.vogue.mode`` (§5.1 vs §5.2, §9.12–15):

``code`` (default; what ``ruiiu/DUPL`` runs, ``compute_grpo_outcome_advantage_dupl``):
    rollouts on the raw image only; the noisy view is teacher-forced on them (no grad). One
    branch draw per step, use_aug ~ Bernoulli(p), p = max(0, 1 − step/total) (§5.2.3). If
    use_aug, per token (§5.2.4):

        u_t = ½[p_r(log p_r − log(p_a + 1e-8)) + p_a(log p_a − log(p_r + 1e-8))]·m_t
        A′_t = A_t + min(|α_p·u_t|, |A_t|/β_p)·sign(α_p·u_t)

    with p_r, p_a the probabilities of the SAMPLED token with the raw/noisy image. Then (§5.2.5)
    ψ_t = min(α_o·H_t, |A′_t|/β_o)·m_t with H_t = −p·log p of the sampled token (noisy log-probs
    if use_aug, else raw), and Â_t = A′_t + ψ_t. The update is on the raw image, as in GRPO.
    The code draws per DP rank; here one draw per step covers the whole batch (same
    expectation), seeded from (``vogue.seed``, step) so a resumed run repeats it.

``paper`` (Algorithm 1): :meth:`Vogue.rollout_views` makes the framework also sample G responses
    per prompt on the noisy image. With A the per-group GRPO advantage (raw and noisy groups
    separately):

        g_out = min(|A|/β_o, α_o·u_out),   g_per = min(|A|/β_p, α_p·u_per)
        Â_raw = A + g_out,   Â_noi = A + g_out + g_per

    u_per = ½[KL(p‖q) + KL(q‖p)] between the full next-token distributions (the framework's
    ``ctx.views["vogue_noisy"].kl`` and ``kl_rev``). u_out should be the full-vocabulary entropy,
    which the driver does not provide: the sampled-token entropy −p·log p of each sequence's own
    old log-probs stands in for it (a framework requirement to be exact: a driver-side
    ``entropy`` [N, L] field of the step context). :meth:`Vogue.select_for_update` then draws z_i ~ Bernoulli(p_noi)
    per raw sample and keeps the raw sequence i or its noisy counterpart (same prompt, same
    sample slot).

Both bonuses are ≥ 0 (for α ≥ 0) and capped by |A|: A > 0 is amplified (up to ×2.25 in code
mode), A < 0 shrinks toward 0 but keeps its sign, and A = 0 (zero-variance groups) stays 0.

Not ported: the code's ``enable_kl_transition`` (off in every script) and the
``use_forward_kl_only`` ablation (reported unstable). The tensor functions need torch only;
the transform imports PIL when called. Knobs: :class:`~rl_vlm.algorithms.vogue_config.VogueConfig`
(``algorithm.vogue.*``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from rl_vlm.algorithms.base import Algorithm, ViewSpec
from rl_vlm.algorithms.context import ViewOutputs
from rl_vlm.algorithms.core import masked_mean
from rl_vlm.algorithms.vogue_config import VogueConfig

if TYPE_CHECKING:
    from PIL.Image import Image

    from rl_vlm.algorithms.context import StepContext
    from rl_vlm.config import AlgorithmConfig

VIEW_NAME = "vogue_noisy"
"""The noisy view's name: its outputs are ``views["vogue_noisy"]``."""

# §5.2.4: the code adds 1e-8 inside both logs of the sampled-token symmetric KL.
PROB_EPS = 1e-8
# Salts that keep the per-step branch draw (code) and per-sample draws (paper) independent.
_CODE_DRAW, _PAPER_DRAW = 0, 1


# --------------------------------------------------------------------------------------------
# The noisy view (§5.1, §5.2.2)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NoisyImageTransform:
    """T(image), algorithms.md §5.2.2, with PIL/numpy and the given seeded generator.

    In order: horizontal flip (p = 0.5); vertical flip (p = 0.5); rotation by an angle uniform in
    ±``rotation_degrees`` about the centre, nearest-neighbour, without expand (black corners);
    brightness and contrast factors uniform in [max(0, 1 − 0.15·s), 1 + 0.15·s] applied in a
    random order (torchvision's ``ColorJitter``, which uses the same PIL enhancers); then
    N(0, σ·s) noise on [0, 1] pixels, clipped and re-quantised to uint8. The size is unchanged,
    so the visual-token count is too.

    The draws come from ``rng``, not torch's global generator, so a view is reproducible from
    the framework's seed. Re-quantisation rounds to the nearest level where the code truncates
    (a −½-level bias that makes even σ = 0 change the image). Images other than RGB or L are
    converted to RGB first, as the Qwen processor does.
    """

    noise_std: float = 0.2
    strength: float = 1.0
    rotation_degrees: float = 10.0

    def __call__(self, image: Image, rng: np.random.Generator) -> Image:
        from PIL import Image as PILImage
        from PIL import ImageEnhance

        img = image if image.mode in ("RGB", "L") else image.convert("RGB")
        if rng.random() < 0.5:
            img = img.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            img = img.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM)
        angle = float(rng.uniform(-self.rotation_degrees, self.rotation_degrees))
        img = img.rotate(angle, resample=PILImage.Resampling.NEAREST, expand=False)

        jitter = 0.15 * self.strength
        if jitter > 0:
            factors = rng.uniform(max(0.0, 1.0 - jitter), 1.0 + jitter, size=2)
            enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast)
            for k in rng.permutation(2):
                img = enhancers[k](img).enhance(float(factors[k]))

        sigma = self.noise_std * self.strength
        if sigma > 0:
            pixels = np.asarray(img, dtype=np.float32) / 255.0
            pixels = np.clip(pixels + rng.normal(0.0, sigma, size=pixels.shape), 0.0, 1.0)
            img = PILImage.fromarray(np.rint(pixels * 255.0).astype(np.uint8), mode=img.mode)
        return img


# --------------------------------------------------------------------------------------------
# Tensor math (torch only)
# --------------------------------------------------------------------------------------------

def branch_probability(step: int, total_steps: int, schedule: str = "adaptive", fixed_prob: float = 0.5) -> float:
    """p_noi(s), §5.1 / §5.2.3: ``adaptive`` max(0, 1 − min(step/total, 1)) (0 when total ≤ 0, as
    the code's ``final_aug_prob``); ``fixed``: ``fixed_prob``."""
    if schedule == "fixed":
        return float(fixed_prob)
    if schedule != "adaptive":
        raise ValueError(f"unknown branch schedule {schedule!r}; valid: ['adaptive', 'fixed']")
    if total_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - min(step / total_steps, 1.0))


def draw_code_branch(step: int, prob: float, seed: int = 0) -> bool:
    """use_aug ~ Bernoulli(prob) for code mode, one draw per step from a generator seeded by
    (seed, step), so a resumed run draws the same (§5.2.3)."""
    return bool(np.random.default_rng([seed, _CODE_DRAW, step]).random() < prob)


def draw_paper_branches(step: int, prob: float, num_raw: int, seed: int = 0) -> torch.Tensor:
    """z_i ~ Bernoulli(prob), ``[num_raw]`` bool, per raw sample for paper mode (Algorithm 1),
    seeded by (seed, step)."""
    draws = np.random.default_rng([seed, _PAPER_DRAW, step]).random(num_raw) < prob
    return torch.from_numpy(draws)


def sampled_token_symmetric_kl(raw_logprobs: torch.Tensor, aug_logprobs: torch.Tensor,
                               response_mask: torch.Tensor) -> torch.Tensor:
    """u_t of §5.2.4 on the sampled tokens only, ``[N, L]``, 0 off the mask:

        u_t = ½[p_r(log p_r − log(p_a + 1e-8)) + p_a(log p_a − log(p_r + 1e-8))]·m_t

    with p = exp(ℓ). ≈ ½(p_r − p_a)(ℓ_r − ℓ_a) ≥ 0; the 1e-8 makes it about −1e-8·p for identical
    views, exactly as in the code. ``p·log p`` is evaluated as ``xlogy`` (0 where p underflows).
    """
    p_r, p_a = torch.exp(raw_logprobs), torch.exp(aug_logprobs)
    forward = torch.xlogy(p_r, p_r) - p_r * torch.log(p_a + PROB_EPS)
    reverse = torch.xlogy(p_a, p_a) - p_a * torch.log(p_r + PROB_EPS)
    u = 0.5 * (forward + reverse)
    return torch.where(response_mask.bool(), u * response_mask, torch.zeros_like(u))


def sampled_token_entropy(logprobs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """H_t = −p·log p of the sampled token (p = exp ℓ), ``[N, L]``, 0 off the mask (§5.2.5)."""
    h = -torch.exp(logprobs) * logprobs
    return torch.where(response_mask.bool(), h * response_mask, torch.zeros_like(h))


def shape_advantages_code(advantages: torch.Tensor, raw_logprobs: torch.Tensor, aug_logprobs: torch.Tensor,
                          response_mask: torch.Tensor, use_aug: bool, alpha_p: float = 1.0, beta_p: float = 2.0,
                          entropy_shaping: bool = True, alpha_o: float = 0.4, beta_o: float = 2.0
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The code's DUPL shaping of GRPO advantages, §5.2.4–5 (``compute_grpo_outcome_advantage_dupl``
    after the group advantage, with the released flags: symmetric KL, no KL transition).

    Args:
        advantages: ``[N, L]`` A (0 off the response).
        raw_logprobs / aug_logprobs: ``[N, L]`` old log-probs of the sampled tokens with the raw
            and the noisy image.
        response_mask: ``[N, L]``.
        use_aug: this step's branch draw: the perceptual term is applied and the entropy taken
            from the noisy log-probs only if True.
        alpha_p, beta_p: w and the cap divisor of the perceptual term (β_p = 2 hard-coded there).
        entropy_shaping, alpha_o, beta_o: the entropy term ψ = min(α_o·H, |A′|/β_o).

    Returns:
        ``(Â, parts)``: ``[N, L]`` shaped advantages, and ``parts`` with ``uncertainty`` (u),
        ``perceptual`` and ``entropy`` (the two added terms), all ``[N, L]``.
    """
    mask = response_mask.to(advantages.dtype)
    u = sampled_token_symmetric_kl(raw_logprobs, aug_logprobs, mask).to(advantages.dtype)
    perceptual = torch.zeros_like(advantages)
    if use_aug:
        w_u = alpha_p * u
        perceptual = torch.minimum(w_u.abs(), advantages.abs() / beta_p) * torch.sign(w_u)
    shaped = advantages + perceptual
    ent_term = torch.zeros_like(advantages)
    if entropy_shaping:
        entropy = sampled_token_entropy(aug_logprobs if use_aug else raw_logprobs, mask).to(advantages.dtype)
        # Capped by the ALREADY shaped advantage A′, as the code does (§9.15).
        ent_term = torch.minimum(alpha_o * entropy, shaped.abs() / beta_o) * mask
        shaped = shaped + ent_term
    return shaped, {"uncertainty": u, "perceptual": perceptual, "entropy": ent_term}


def shape_advantages_paper(advantages: torch.Tensor, output_uncertainty: torch.Tensor,
                           perceptual_uncertainty: torch.Tensor, noisy: torch.Tensor, response_mask: torch.Tensor,
                           alpha_p: float = 1.0, beta_p: float = 2.0, alpha_o: float = 0.4, beta_o: float = 2.0,
                           entropy_shaping: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's shaped advantages, §5.1 (Algorithm 1), both caps by the BASE |A|:

        g_out = min(|A|/β_o, α_o·u_out),  g_per = min(|A|/β_p, α_p·u_per)
        Â_raw = A + g_out,  Â_noi = A + g_out + g_per

    Args:
        advantages: ``[N, L]`` per-group GRPO advantages (0 off the response).
        output_uncertainty: ``[N, L]`` u_out (token entropy).
        perceptual_uncertainty: ``[N, L]`` u_per (symmetric KL between the branches).
        noisy: ``[N]`` bool, True for noisy-branch sequences (they get g_per).
        response_mask: ``[N, L]``.

    Returns:
        ``(Â, parts)`` with ``output`` (g_out) and ``perceptual`` (g_per), ``[N, L]``.
    """
    mask = response_mask.to(advantages.dtype)
    cap = advantages.abs()
    g_out = torch.zeros_like(advantages)
    if entropy_shaping:
        g_out = torch.minimum(cap / beta_o, alpha_o * output_uncertainty.to(advantages.dtype)) * mask
    g_per = torch.minimum(cap / beta_p, alpha_p * perceptual_uncertainty.to(advantages.dtype)) * mask
    g_per = g_per * noisy.to(device=advantages.device, dtype=advantages.dtype)[:, None]
    # Masked with where: an inf/NaN uncertainty on padding must not leak into the advantage.
    shaped = torch.where(mask.bool(), advantages + g_out + g_per, torch.zeros_like(advantages))
    return shaped, {"output": g_out, "perceptual": g_per}


def noisy_counterpart_indices(use_noisy: torch.Tensor) -> torch.Tensor:
    """``[N_raw]`` long indices into a batch laid out as [raw sequences, noisy sequences] (same
    prompt and sample slot at i and N_raw + i): i where ``use_noisy[i]`` is False, else N_raw + i."""
    num_raw = use_noisy.shape[0]
    idx = torch.arange(num_raw, dtype=torch.long)
    return idx + num_raw * use_noisy.to(torch.long).cpu()


def _noisy_view(views: Mapping[str, ViewOutputs], which: str) -> torch.Tensor:
    """``views["vogue_noisy"].<which>``, or a KeyError naming the missing input."""
    view = views.get(VIEW_NAME)
    value = None if view is None else getattr(view, which)
    if value is None:
        raise KeyError(f"VOGUE needs StepContext.views[{VIEW_NAME!r}].{which} from the driver "
                       f"(see rl_vlm.algorithms.base); got views {sorted(views)}")
    return value


class Vogue(Algorithm):
    """VOGUE/DUPL (§5): GRPO whose advantages gain the perceptual- and output-uncertainty bonuses
    (see the module docstring for the two modes).

    Hooks: :meth:`views` (+ the noisy view), :meth:`rollout_views` (paper mode),
    :meth:`compute_advantages` (shapes ``super()``'s), :meth:`select_for_update` (paper mode).

    Step context read: ``old_logprobs``, ``step``, ``total_steps``; code mode
    ``views["vogue_noisy"].old_logprobs``; paper mode ``views["vogue_noisy"].kl``, ``kl_rev``
    and ``branch``.

    Metrics: :meth:`compute_advantages` returns a tensor, so its statistics go to
    :meth:`step_metrics` (overwritten every step; the framework logs them after the advantage
    and selection hooks): ``vogue/uncertainty`` (token-mean u over the step's valid tokens),
    ``vogue/branch_prob`` (p), ``vogue/used_noisy`` (code: 1.0/0.0 for the step's draw; paper:
    the share of raw samples whose noisy counterpart :meth:`select_for_update` keeps — the same
    seeded draw),
    ``vogue/perceptual_bonus`` and ``vogue/entropy_bonus`` (token-means of the added terms).
    """

    def __init__(self, cfg: AlgorithmConfig) -> None:
        super().__init__(cfg)
        v = cfg.vogue  # validated itself (VogueConfig.__post_init__)
        self._view = ViewSpec(
            name=VIEW_NAME, with_grad=False,
            transform=NoisyImageTransform(v.noise_std, v.augmentation_strength, v.rotation_degrees),
            per_response=False, full_kl=v.mode == "paper")
        self._vogue_metrics: dict[str, float] = {}

    @classmethod
    def has_rollout_views(cls, cfg: AlgorithmConfig) -> bool:
        return super().has_rollout_views(cfg) or cfg.vogue.mode == "paper"

    # ------------------------------------------------------------------ hook 1
    def views(self) -> tuple[ViewSpec, ...]:
        return (*super().views(), self._view)

    def rollout_views(self) -> tuple[ViewSpec, ...]:
        """Paper mode: the noisy view gets its own G rollouts per prompt (Algorithm 1)."""
        mine = (self._view,) if self.cfg.vogue.mode == "paper" else ()
        return (*super().rollout_views(), *mine)

    def _noisy_branch_id(self) -> int:
        return 1 + [s.name for s in self.rollout_views()].index(VIEW_NAME)

    # ------------------------------------------------------------------ hook 3
    def compute_advantages(self, rewards: torch.Tensor, group_size: int, ctx: StepContext) -> torch.Tensor:
        """``super()``'s advantages with the VOGUE bonuses (§5.2.4–5 in code mode, §5.1 in paper mode)."""
        adv = super().compute_advantages(rewards, group_size, ctx)
        v = self.cfg.vogue
        mask = ctx.response_mask.to(device=adv.device, dtype=adv.dtype)
        step, total = ctx.step, ctx.total_steps
        prob = branch_probability(step, total, v.schedule, v.fixed_prob)
        old = ctx.old_logprobs.to(device=adv.device, dtype=adv.dtype)

        if v.mode == "code":
            aug = _noisy_view(ctx.views, "old_logprobs").to(device=adv.device, dtype=adv.dtype)
            use_aug = draw_code_branch(step, prob, v.seed)
            shaped, parts = shape_advantages_code(adv, old, aug, mask, use_aug, v.alpha_p, v.beta_p,
                                                  v.entropy_shaping, v.alpha_o, v.beta_o)
            uncertainty, perceptual, ent = parts["uncertainty"], parts["perceptual"], parts["entropy"]
            used_noisy = float(use_aug)
        else:
            branch = ctx.branch.to(adv.device)
            kl = _noisy_view(ctx.views, "kl").to(device=adv.device, dtype=adv.dtype)
            kl_rev = _noisy_view(ctx.views, "kl_rev").to(device=adv.device, dtype=adv.dtype)
            uncertainty = torch.where(mask.bool(), 0.5 * (kl + kl_rev), torch.zeros_like(kl))
            # Full-vocabulary entropy is not provided driver-side: sampled-token stand-in.
            entropy = sampled_token_entropy(old, mask)
            noisy = branch == self._noisy_branch_id()
            shaped, parts = shape_advantages_paper(adv, entropy, uncertainty, noisy, mask, v.alpha_p, v.beta_p,
                                                   v.alpha_o, v.beta_o, v.entropy_shaping)
            perceptual, ent = parts["perceptual"], parts["output"]
            # The same seeded draw select_for_update makes, so the metric is known here already.
            num_raw = int((branch == 0).sum())
            used_noisy = float(draw_paper_branches(step, prob, num_raw, v.seed).double().mean()) if num_raw else 0.0

        stats = torch.stack([masked_mean(t.double(), mask.double()) for t in (uncertainty, perceptual, ent)]).tolist()
        self._vogue_metrics = {
            "vogue/uncertainty": stats[0], "vogue/perceptual_bonus": stats[1], "vogue/entropy_bonus": stats[2],
            "vogue/branch_prob": prob, "vogue/used_noisy": used_noisy,
        }
        return shaped

    def step_metrics(self) -> dict[str, float]:
        return {**super().step_metrics(), **self._vogue_metrics}

    def select_for_update(self, advantages: torch.Tensor, group_size: int, ctx: StepContext) -> torch.Tensor | None:
        """Paper mode: per raw sample i, z_i ~ Bernoulli(p_noi) keeps its noisy counterpart (same
        prompt, same sample slot) instead of i (Algorithm 1). Code mode: all sequences (None)."""
        other = super().select_for_update(advantages, group_size, ctx)
        if self.cfg.vogue.mode != "paper":
            return other
        if other is not None:
            raise ValueError("VOGUE paper mode cannot compose with another variant that selects sequences")
        v = self.cfg.vogue
        branch = ctx.branch.cpu()
        noisy_id = self._noisy_branch_id()
        num_raw = int((branch == 0).sum())
        expected = torch.cat([torch.zeros(num_raw, dtype=branch.dtype),
                              torch.full((num_raw,), noisy_id, dtype=branch.dtype)])
        if branch.shape != expected.shape or not torch.equal(branch, expected):
            raise ValueError("VOGUE paper mode expects StepContext.branch laid out as [raw sequences, noisy "
                             f"sequences] of equal counts (0s then {noisy_id}s)")
        prob = branch_probability(ctx.step, ctx.total_steps, v.schedule, v.fixed_prob)
        return noisy_counterpart_indices(draw_paper_branches(ctx.step, prob, num_raw, v.seed))


__all__ = ["VIEW_NAME", "NoisyImageTransform", "Vogue", "VogueConfig", "branch_probability", "draw_code_branch",
           "draw_paper_branches", "noisy_counterpart_indices", "sampled_token_entropy", "sampled_token_symmetric_kl",
           "shape_advantages_code", "shape_advantages_paper"]
