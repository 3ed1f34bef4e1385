"""Fixtures shared by several test modules."""

import pytest

from cnnzoo.data import load_data


@pytest.fixture(scope="module")
def small():
    """The digits, 200 train (7 steps of 32 per epoch) / 200 val: the training tests' data."""
    return load_data("digits", limit=200)
