"""The derived seeds are part of every run's numbers: pin them (a change here changes every result
and breaks resuming an older run's checkpoint into the same stream)."""

from rl_vlm import seeds


def test_derived_seeds_are_pinned() -> None:
    assert seeds.stage_sampler(1, 0) == 1 and seeds.stage_sampler(1, 2) == 1 + 2 * 100_003
    assert seeds.mixture_source(200_007, 3) == 200_007 + 3 * 7919
    # Round 0 of dynamic sampling is the plain run's request seed.
    assert seeds.rollout_request(1, 5) == seeds.rollout_request(1, 5, 0) == 100_008
    assert seeds.rollout_request(3, 7, 2) == 3 * 100_003 + 7 + 2 * 1_000_003
    assert seeds.engine(1, 2) == 2001
    assert seeds.engine_share(100_008, 1) == 100_008 + 7919
    assert seeds.engine_prompt(100_008, 4) == 100_008 * 1009 + 4
    assert seeds.learner_rank(1, 1) == 2
    assert seeds.rollout_view(1, 2, 0, 3) == [1, 2, 1000, 3]
    assert seeds.prompt_view(1, 2, 0, 3) == [1, 2, 0, 3]
    assert seeds.response_view(1, 2, 1, 3) == [1, 2, 1, 1_000_003]
    assert seeds.VALIDATION == 0


def test_streams_do_not_collide_across_steps_and_rounds() -> None:
    # 1,000 steps x 8 dynamic-sampling rounds x 4 engines: all request seeds distinct.
    got = {seeds.engine_share(seeds.rollout_request(1, s, a), e)
           for s in range(1, 1001) for a in range(8) for e in range(4)}
    assert len(got) == 1000 * 8 * 4
