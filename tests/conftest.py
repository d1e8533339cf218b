"""Shared test set-up: the hardware-in-the-loop switch and the lab fixtures."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HANDSET_CONFIG = ROOT / "hw" / "handset.toml"


def pytest_addoption(parser):
    parser.addoption("--hil", action="store_true",
                     help="run the hil tests against the real handset described by hw/handset.toml")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--hil"):
        return
    reason = "needs a real handset: run ./byline test --hil on one (hw/handset.toml)"
    for item in items:
        if "hil" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def pinmap():
    """The handset's pin map (hw/pinmap.toml)."""
    from drivers.pinmap import load_pinmap

    return load_pinmap()


@pytest.fixture
def factory():
    """A fresh gpiozero MockFactory: pins of its own, nothing shared between tests."""
    from gpiozero.pins.mock import MockFactory

    return MockFactory()


@pytest.fixture
def handset_config():
    """The real handset's configuration (only for tests marked hil)."""
    from firmware.config import load_config

    config = load_config(HANDSET_CONFIG)
    assert not config.problems, config.problems
    return config


pytest_plugins = ["lab.pytest_plugin"]
