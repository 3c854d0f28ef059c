"""The learning rate of each iteration: the 2017 exponential decay, or steps, after a warmup;
and train.py's flags for it."""
import argparse
import itertools

import common

SCHEDULES = ('exponential', 'step')
WARMUP_START = 0.1  # the warmup's first factor, as Luo et al. (3.5e-5 up to 3.5e-4)


def add_flags(group) -> None:
    """Adds train.py's flags of Adam's learning rate, its schedule and the iterations to an
    argparse group."""
    group.add_argument('--learning_rate', default=3e-4, type=common.positive_float,
                       help="Adam's initial learning rate.")
    group.add_argument('--train_iterations', default=25000, type=common.positive_int,
                       help='Number of training iterations (batches).')
    group.add_argument('--decay_start_iteration', default=15000, type=int,
                       help='Iteration from which the learning rate decays exponentially, reaching '
                            '0.001 x --learning_rate at --train_iterations; -1 (or a value >= '
                            '--train_iterations): no decay.')
    group.add_argument('--beta1_after_decay', default=None, type=common.positive_float,
                       help="Adam's beta1 from --decay_start_iteration on (the paper used 0.5); "
                            'default: keep 0.9 throughout, as the 2017 code did.')
    group.add_argument('--lr_schedule', default='exponential', choices=SCHEDULES,
                       help='exponential: the 2017 decay from --decay_start_iteration to 0.001x '
                            'at the end; step: x --lr_gamma at each of --lr_steps.')
    group.add_argument('--lr_steps', default=None, type=steps_flag, metavar='A,B',
                       help='With --lr_schedule step: the iterations at which the rate is '
                            'multiplied by --lr_gamma, e.g. 7440,13020.')
    group.add_argument('--lr_gamma', default=0.1, type=common.positive_float,
                       help='With --lr_schedule step: the factor of each step.')
    group.add_argument('--warmup_iterations', default=0, type=common.nonnegative_int,
                       help='Raise the rate linearly from 0.1x to 1x over this many first '
                            'iterations (the strong baseline: 10 epochs); 0: no warmup.')


def check_args(args: argparse.Namespace) -> None:
    """Raises common.InputError for a decay start before -1, a beta1 of 1 or more, a step
    schedule without steps, or steps without one. (Steps at or after --train_iterations are
    allowed: they never come, as a decay start there never does, so a shortened run of a
    script's settings works.)"""
    start = args.decay_start_iteration
    if start < -1:
        raise common.InputError(f'--decay_start_iteration {start} must be -1 (no decay) or >= 0')
    if args.beta1_after_decay is not None and not args.beta1_after_decay < 1:
        raise common.InputError(f'--beta1_after_decay {args.beta1_after_decay} must be below 1')
    if args.lr_schedule == 'step' and not args.lr_steps:
        raise common.InputError('--lr_schedule step needs --lr_steps, e.g. --lr_steps 7440,13020')
    if args.lr_schedule != 'step' and args.lr_steps:
        raise common.InputError(f'--lr_steps {args.lr_steps} needs --lr_schedule step')


def rate_of(args: argparse.Namespace, iteration: int) -> float:
    """The learning rate of 0-based `iteration` under train.py's flags `args`."""
    return learning_rate(iteration, args.learning_rate, args.decay_start_iteration,
                         args.train_iterations, getattr(args, 'lr_schedule', 'exponential'),
                         parse_steps(getattr(args, 'lr_steps', None)),
                         getattr(args, 'lr_gamma', 0.1), getattr(args, 'warmup_iterations', 0))


def learning_rate(iteration: int, base: float, decay_start: int, train_iterations: int,
                  schedule: str = 'exponential', steps: tuple[int, ...] = (),
                  gamma: float = 0.1, warmup: int = 0) -> float:
    """The learning rate of 0-based `iteration`.

    Args:
        iteration: 0-based.
        base: --learning_rate.
        decay_start: `exponential`: `base` until this iteration (-1: forever), then
            base * 0.001 ** ((iteration - decay_start) / (train_iterations - decay_start)),
            which would reach 0.001 x base at `train_iterations` (the 2017 schedule).
        train_iterations: --train_iterations.
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
    try:
        steps = parse_steps(text)
    except ValueError:
        steps = ()
    if not steps or any(b <= a for a, b in itertools.pairwise(steps)) or steps[0] <= 0:
        raise argparse.ArgumentTypeError(f'{text!r} is not a comma-separated list of increasing '
                                         'positive iterations, e.g. 7440,13020')
    return ','.join(map(str, steps))


def parse_steps(text: str | None) -> tuple[int, ...]:
    """The iterations of --lr_steps text `a,b,...` (None or empty: none)."""
    return tuple(int(part) for part in text.split(',')) if text else ()
