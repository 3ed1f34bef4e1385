"""Fixtures shared by several test modules, and the test session's environment."""

import os

import pytest

from cnnzoo.data import load_data

# No network in tests, and no copies of a test worker: OpenVINO's telemetry, on by default, sends an event from a
# background thread on `import openvino` by forking the whole process (here a pytest-xdist worker holding its
# controller's pipes) to post it. Its documented switch for automated runs is CI=true; subprocesses inherit it.
os.environ["CI"] = "true"


@pytest.fixture(scope="module")
def small():
    """The digits, 200 train (7 steps of 32 per epoch) / 200 val: the training tests' data."""
    return load_data("digits", limit=200)
