"""The order in which test files start: the longest first, so no worker is left with one at the end.
A pytest plugin (``pytest_plugins`` in tests/conftest.py), for ``make test``:

    pytest -n auto --dist loadfile --no-loadscope-reorder     # what the Makefile runs

pytest-xdist's ``--dist loadfile`` gives each worker whole files, and by default it starts the files that
hold the most tests first. The files that take longest hold few tests (test_sync: 2 tests, 84 s; one
torchrun test: 18 s), so they started last, and one worker ran them alone while the other sat idle.
Measured on the 2-core AVX512 EPYC: one run's per-test times, replayed through xdist's hand-out
(a worker takes the next file when 2 of its tests are left), end that order at 706 s (the run took
703 s), 53 s after a perfect split of the 654 s of work; this order ends 10 s after it. (Whole runs on
that shared VM drifted from 678 s to 895 s within the hour for the same code, so the gain is the
replay's, not a wall-clock difference.)

A file's expected time is its tests': ``slow`` ones (the marker means "more than ~20 s") count 20 s, the
rest 1 s. ``--no-loadscope-reorder`` makes xdist keep this order; a test file keeps its own order.
"""

from __future__ import annotations

SLOW_S, OTHER_S = 20.0, 1.0


def expected_seconds(item) -> float:
    return SLOW_S if item.get_closest_marker("slow") else OTHER_S


def pytest_collection_modifyitems(session, config, items) -> None:
    weight: dict = {}
    for item in items:
        weight[item.path] = weight.get(item.path, 0.0) + expected_seconds(item)
    rank = {path: i for i, path in enumerate(sorted(weight, key=lambda p: -weight[p]))}  # ties: collection order
    items.sort(key=lambda item: rank[item.path])  # a stable sort: each file's tests keep their order
