"""The verdict pairs each trial with the baseline prompt by prompt and calls a trial better only when the
whole interval of the difference is on the better side of zero."""

import math

import pytest

from eval.verdict import decide, paired_delta


def test_paired_delta_on_known_differences():
    delta = paired_delta([0.3, 0.5, 0.4, None], [0.1, 0.2, 0.3, 0.9])  # the last prompt has no trial score
    assert delta.n == 3 and delta.mean == pytest.approx((0.2 + 0.3 + 0.1) / 3)
    assert 0.1 - 1e-12 <= delta.low <= delta.mean <= delta.high <= 0.3 + 1e-12  # within the differences' range
    assert delta.stderr == pytest.approx(0.1 / math.sqrt(3))  # sd of (0.2, 0.3, 0.1) is 0.1
    assert delta.beats("max") and not delta.beats("min")
    assert paired_delta([0.3, 0.5, 0.4], [0.1, 0.2, 0.3]) == paired_delta([0.3, 0.5, 0.4], [0.1, 0.2, 0.3])


def test_an_identical_trial_and_a_noisy_one_do_not_beat_the_baseline():
    assert not paired_delta([0.2, 0.3], [0.2, 0.3]).beats("max")  # zero difference
    noisy = paired_delta([0.5, 0.0, 0.45, 0.05], [0.2, 0.2, 0.2, 0.2])  # +0.3, -0.2, +0.25, -0.15
    assert noisy.mean > 0 and noisy.low < 0 < noisy.high and not noisy.beats("max")
    single = paired_delta([0.9], [0.1])
    assert single.n == 1 and math.isnan(single.low) and not single.beats("max")


def _trial(name, value, items):
    return {"name": name, "run_id": name, "value": value, "items": items}


def test_verdict_says_plainly_when_no_trial_beats_the_baseline():
    baseline = _trial("baseline", 0.1015, [0.10, 0.11, 0.09, 0.116])
    trials = [_trial("rank=8", 0.1010, [0.10, 0.109, 0.091, 0.114]), _trial("rank=1", 0.1008, [0.1, 0.1, 0.1, 0.1032])]
    verdict = decide("eval/glyph_iou", "max", baseline, trials, "Numbers from preset tiny.")
    assert verdict.winner == "rank=8" and verdict.beaten_by == ()
    assert verdict.lines[0].startswith("Best trial by glyph_iou (higher is better): rank=8, 0.1010 vs baseline")
    assert "difference -0.0005 (95% CI" in verdict.lines[0]
    assert verdict.lines[1] == (
        "No trial beats the baseline beyond the spread of its per-prompt differences; every trial scores worse "
        "than the baseline."
    )
    assert verdict.lines[-1] == "Numbers from preset tiny."


def test_lower_is_better_and_a_winner_inside_the_spread():
    baseline = _trial("baseline", 1.0, [1.0, 1.0, 1.0])
    steady = _trial("steady", 0.95, [0.94, 0.95, 0.96])  # every prompt lower: beats
    lucky = _trial("lucky", 0.90, [0.5, 1.1, 1.1])  # lower on average, not on every prompt
    verdict = decide("train/loss", "min", baseline, [steady, lucky])
    assert verdict.winner == "lucky" and verdict.beaten_by == ("steady",)
    assert "these trials beat the baseline beyond the spread: steady" in verdict.lines[1]


def test_no_finished_trial():
    verdict = decide("eval/clip_t", "max", _trial("baseline", 0.2, None), [_trial("t", float("nan"), None)])
    assert verdict.winner is None and "No trial finished" in verdict.lines[0]


def test_a_tiny_difference_is_not_printed_as_zero():
    from eval.verdict import signed

    assert signed(-0.00001) == "-1.0e-05" and signed(0.0) == "+0.0000" and signed(0.01234) == "+0.0123"
