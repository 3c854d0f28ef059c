"""schedule.py: the learning rate of each iteration, against values written out by hand."""
import pytest

from schedule import learning_rate


def test_exponential_is_the_2017_schedule():
    def old(i, base, start, total):  # the 2017 definition, as train.py had it
        if start < 0 or i < start:
            return base
        return base * 0.001 ** ((i - start) / (total - start))
    for i in (0, 14999, 15000, 20000, 24999, 25000):
        assert learning_rate(i, 3e-4, 15000, 25000) == old(i, 3e-4, 15000, 25000)  # bit for bit
        assert learning_rate(i, 3e-4, -1, 25000) == 3e-4
    assert learning_rate(25000, 3e-4, 15000, 25000) == pytest.approx(3e-7)


def test_warmup_and_steps_as_the_strong_baseline():
    # Luo et al. in iterations of 10 per epoch: warmup 10 epochs, x0.1 at 40 and 70.
    def rate(i):
        return learning_rate(i, 3.5e-4, -1, 1200, schedule='step', steps=(400, 700), gamma=0.1,
                             warmup=100)
    assert rate(0) == pytest.approx(3.5e-5)  # 0.1x
    assert rate(50) == pytest.approx(3.5e-4 * (0.1 + 0.9 * 0.5))
    assert rate(99) == pytest.approx(3.5e-4 * (0.1 + 0.9 * 0.99))
    assert rate(100) == rate(399) == 3.5e-4
    assert rate(400) == rate(699) == pytest.approx(3.5e-5)
    assert rate(700) == rate(1199) == pytest.approx(3.5e-6)
    # Warmup multiplies the exponential schedule too.
    assert learning_rate(5, 1.0, 0, 100, warmup=10) == pytest.approx(0.55 * 0.001 ** 0.05)
    with pytest.raises(ValueError, match='unknown schedule'):
        learning_rate(0, 1.0, -1, 10, schedule='cosine')


def test_steps_flag():
    import argparse
    from schedule import parse_steps, steps_flag
    assert steps_flag('7440,13020') == '7440,13020' and steps_flag(' 5') == '5'
    assert parse_steps('7440,13020') == (7440, 13020) and parse_steps(None) == ()
    for bad in ('', '5,5', '9,3', '0,4', 'a,b', '1.5'):
        with pytest.raises(argparse.ArgumentTypeError, match='increasing'):
            steps_flag(bad)
