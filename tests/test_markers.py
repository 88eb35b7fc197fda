"""The `gpu` marker of tests/conftest.py: a marked test runs where CUDA is and skips elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]

SUITE = """
import pytest

@pytest.mark.gpu
def test_on_the_gpu():
    pass

def test_anywhere():
    pass
"""


@pytest.mark.parametrize(("cuda", "skipped"), [(False, 1), (True, 0)])
def test_a_gpu_test_skips_exactly_when_there_is_no_cuda_device(pytester, monkeypatch, cuda,
                                                               skipped):
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(SUITE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the run needs no plugin
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2 - skipped, skipped=skipped)
