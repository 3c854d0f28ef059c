"""The learning rate of each iteration: the 2017 exponential decay, or steps, after a warmup."""

SCHEDULES = ('exponential', 'step')
WARMUP_START = 0.1  # the warmup's first factor, as Luo et al. (3.5e-5 up to 3.5e-4)


def learning_rate(iteration: int, base: float, train_iterations: int, decay_start: int = -1,
                  schedule: str = 'exponential', steps: tuple[int, ...] = (),
                  gamma: float = 0.1, warmup: int = 0) -> float:
    """The learning rate of 0-based `iteration`.

    Args:
        iteration: 0-based.
        base: --learning_rate.
        train_iterations: --train_iterations.
        decay_start: `exponential`: `base` until this iteration (-1: forever), then
            base * 0.001 ** ((iteration - decay_start) / (train_iterations - decay_start)),
            which would reach 0.001 x base at `train_iterations` (the 2017 schedule).
        schedule: `exponential` or `step`.
        steps: `step`: iterations at which the rate is multiplied by `gamma` (Luo et al.: x0.1
            at epochs 40 and 70): base * gamma ** (number of steps <= iteration).
        gamma: the factor of each step.
        warmup: iterations over which the factor rises linearly from 0.1 to 1
            (0.1 + 0.9 * iteration / warmup), multiplying the schedule's rate; 0: none.

    Returns:
        The learning rate, a float.
    """
    if schedule == 'step':
        rate = base * gamma ** sum(iteration >= step for step in steps)
    elif schedule == 'exponential':
        rate = base
        if 0 <= decay_start <= iteration:
            rate = base * 0.001 ** ((iteration - decay_start) / (train_iterations - decay_start))
    else:
        raise ValueError(f'unknown schedule {schedule!r}; choose from {", ".join(SCHEDULES)}')
    if iteration < warmup:
        rate *= WARMUP_START + (1 - WARMUP_START) * iteration / warmup
    return rate


def steps_flag(text: str) -> str:
    """The argparse type of --lr_steps: `a,b,...` increasing positive iterations, kept as text
    (args.json stores it as given, and --resume checks it with this same function).

    Raises:
        argparse.ArgumentTypeError: not a comma-separated increasing list of positive integers.
    """
    import argparse
    try:
        steps = parse_steps(text)
    except ValueError:
        steps = ()
    if not steps or any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] <= 0:
        raise argparse.ArgumentTypeError(f'{text!r} is not a comma-separated list of increasing '
                                         'positive iterations, e.g. 7440,13020')
    return ','.join(map(str, steps))


def parse_steps(text: str | None) -> tuple[int, ...]:
    """The iterations of --lr_steps text `a,b,...` (None or empty: none)."""
    return tuple(int(part) for part in text.split(',')) if text else ()
