"""Test-only: hold a training process at a step, so a test can interrupt it at a state it cannot skip.

With ``ECH0_TEST_HOLD_AT_STEP=N`` (and this folder on ``PYTHONPATH``, see the ``hold_at_step`` fixture
in tests/conftest.py) a training process, right after step N's status.json is written, creates the
file ``ECH0_TEST_HOLD_FILE`` and sleeps: a test waits for that file and then sends its signal. On a
fast CPU the run can no longer finish before the signal arrives; on a slow one nothing races.
"""

import os

if os.environ.get("ECH0_TEST_HOLD_AT_STEP"):
    import time
    from pathlib import Path

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
