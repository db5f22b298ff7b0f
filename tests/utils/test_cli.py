import argparse

import pytest

from tpsnet_plugin.utils.cli import positive_int


def test_positive_int():
    assert positive_int("7") == 7
    for bad, message in (("0", "got 0"), ("-2", "got -2"), ("ten", "got 'ten'"), ("1.5", "got '1.5'")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive_int(bad)
