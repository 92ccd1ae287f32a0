"""Test-only: hold a training process at a step, so a test can interrupt it at a state it cannot skip.

With ``ECH0_TEST_HOLD_AT_STEP=N`` (and this folder on ``PYTHONPATH``, see the ``hold_at_step`` fixture
in tests/conftest.py) a training process, right after step N's status.json is written, creates the
file ``ECH0_TEST_HOLD_FILE`` and sleeps: a test waits for that file and then sends its signal. On a
fast CPU the run can no longer finish before the signal arrives; on a slow one nothing races.
``ECH0_TEST_HOLD_IN_CHECKPOINT=N`` holds inside step N's checkpoint write instead (below).
"""

import os
import time
from pathlib import Path

if os.environ.get("ECH0_TEST_HOLD_AT_STEP"):
    from ech0.train import recipe

    _after_step = recipe.TrainRecipe.after_step
    _hold, _flag = int(os.environ["ECH0_TEST_HOLD_AT_STEP"]), Path(os.environ["ECH0_TEST_HOLD_FILE"])

    def _after_step_then_hold(self, out, bar):
        _after_step(self, out, bar)
        if self.step == _hold and self.dist.is_main:
            self.status.update(force=True)
            _flag.write_text(f"{self.run_id}\n")
            while True:  # until the test's signal ends the process
                time.sleep(0.1)

    recipe.TrainRecipe.after_step = _after_step_then_hold

if os.environ.get("ECH0_TEST_HOLD_IN_CHECKPOINT"):  # tests/test_train_checkpoint.py
    # ``ECH0_TEST_HOLD_IN_CHECKPOINT=N``: the checkpoint write of step N holds once every file of its
    # hidden temp folder is written and fsynced (state.json with the hashes included), right before the
    # rename that publishes it; a SIGKILL then leaves the most complete-looking leftover there can be.
    from ech0.train import checkpoint

    _publish = checkpoint._publish
    _at, _ckpt_flag = int(os.environ["ECH0_TEST_HOLD_IN_CHECKPOINT"]), Path(os.environ["ECH0_TEST_HOLD_FILE"])

    def _hold_then_publish(tmp, target):
        if target.name == f"step-{_at:07d}":
            _ckpt_flag.write_text(f"{tmp}\n")
            while True:  # until the test's signal ends the process
                time.sleep(0.1)
        _publish(tmp, target)

    checkpoint._publish = _hold_then_publish
