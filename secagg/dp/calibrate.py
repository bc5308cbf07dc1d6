"""Noise calibration: the smallest noise multiplier meeting a target (epsilon, delta).

For ``rounds`` rounds of the Poisson-sampled Gaussian mechanism at client sampling rate q,
find z such that the chosen accountant certifies epsilon(z) <= target at ``delta``.
The search is the engines' own: ``dp_accounting.mechanism_calibration.calibrate_dp_mechanism``
(Brent's method) for ``dpa-*`` and ``opacus.accountants.utils.get_noise_multiplier``
(bisection) for ``opacus-*``. The returned z is then re-accounted and, if the engine's
tolerance left it a hair over target, nudged up until it meets the target.
Cost: O(log(1/tol)) accountant queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting

from secagg.dp.accountants import DEFAULT_ACCOUNTANT, get_accountant, quiet_engines
from secagg.dp.events import (
    SampledGaussianEvent,
    check_count,
    check_delta,
    check_epsilon,
    check_sampling_rate,
)
from secagg.errors import ConfigError


@dataclass(frozen=True)
class CalibrationResult:
    noise_multiplier: float
    achieved_epsilon: float
    target_epsilon: float
    delta: float
    rounds: int
    sampling_rate: float
    accountant: str


def calibrate_noise_multiplier(epsilon: float, delta: float, rounds: int, sampling_rate: float,
                               accountant: str = DEFAULT_ACCOUNTANT, tol: float = 1e-3) -> CalibrationResult:
    """Smallest noise multiplier (within ``tol``) such that ``rounds`` Poisson-sampled Gaussian
    rounds at ``sampling_rate`` spend at most ``epsilon`` at ``delta`` by ``accountant``.

    Raises :class:`ConfigError` naming the parameter for invalid input, or when the target is
    unreachable (noise multiplier above 1e6)."""
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    rounds = check_count(rounds, "rounds")
    q = check_sampling_rate(sampling_rate)
    acc = get_accountant(accountant)

    def eps_of(z: float) -> float:
        return acc.epsilon([SampledGaussianEvent(z, q, rounds)], delta)

    if acc.engine == "dp-accounting":
        def make_acc():
            return acc._make(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)  # type: ignore[attr-defined]

        try:
            with quiet_engines():
                z = dp_accounting.calibrate_dp_mechanism(
                    make_acc, lambda z: SampledGaussianEvent(z, q, rounds).to_dp_event(),
                    epsilon, delta, dp_accounting.LowerEndpointAndGuess(1e-2, 1.0), tol=tol)
        except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError:
            raise ConfigError(f"epsilon={epsilon} is unreachable at delta={delta} for {rounds} rounds "
                              f"at sampling_rate={q}") from None
    else:
        from opacus.accountants.utils import get_noise_multiplier  # lazy: opacus imports torch

        with quiet_engines():
            try:
                z = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q,
                                         steps=rounds, accountant=acc.name.split("-")[1], epsilon_tolerance=tol)
            except ValueError as e:
                raise ConfigError(f"epsilon={epsilon} is unreachable at delta={delta}: {e}") from None
    z = float(z)
    achieved = eps_of(z)
    for _ in range(50):
        if achieved <= epsilon:
            break
        z *= 1.0 + max(tol, 1e-4)
        achieved = eps_of(z)
    if not math.isfinite(achieved) or achieved > epsilon:
        raise ConfigError(f"could not reach epsilon={epsilon} with {accountant}")
    return CalibrationResult(z, achieved, epsilon, delta, rounds, q, acc.name)
