"""Theorem 1: the ensemble NTK's drift under gradient descent and its exponents."""

import numpy as np

from ce_ray.theory import drift

TASK = drift.make_task(16, 4, 4, seed=0)
LR = drift.learning_rate(16, 3, 0.1)


def final_drift(m, n, seed, lr=LR, steps=40):
    return drift.measure_drift(m, n, 3, TASK, lr, [0, steps], seed)["drift"].iloc[-1]


def test_the_kernel_starts_still_and_training_lowers_the_loss():
    rows = drift.measure_drift(2, 16, 3, TASK, LR, [0, 10, 40], seed=1)
    assert rows["drift"].iloc[0] == 0.0 and (rows["drift"].iloc[1:] > 0).all()
    assert rows["train_loss"].is_monotonic_decreasing
    np.testing.assert_allclose(rows["time"], LR * rows["steps"])


def test_larger_ensembles_and_wider_members_drift_less():
    one = np.mean([final_drift(1, 16, s) for s in range(3)])
    sixteen = np.mean([final_drift(16, 16, s) for s in range(3)])
    wide = np.mean([final_drift(1, 256, s) for s in range(3)])
    assert sixteen < one / 4 and wide < one / 4


def test_the_step_is_small_enough_to_follow_gradient_flow():
    """Half the step, twice the steps: the same flow time, nearly the same kernel."""
    coarse = final_drift(2, 32, 5, LR, 40)
    fine = final_drift(2, 32, 5, LR / 2, 80)
    assert abs(coarse - fine) < 0.05 * fine
