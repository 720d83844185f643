"""The worked examples in module docstrings are executed, so they cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["metrics", "prompting", "human", "judge", "report"])
def test_module_doctests(module: str) -> None:
    mod = importlib.import_module(f"nanoforge.evaluation.{module}")
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
