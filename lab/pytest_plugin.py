"""pytest fixtures for the lab, and the servers' log tails in the report of a failed test.

Enable with ``pytest_plugins = ["lab.pytest_plugin"]`` in tests/conftest.py.

- ``lab``: Prosody and Kamailio with the demo users, one per test session.
- ``xmpp_lab`` / ``sip_lab``: one server only, one per test session.
- ``lab_factory``: ``lab_factory(users=..., xmpp=..., sip=..., domain=...)`` starts a fresh lab
  in the test's tmp_path and stops it after the test (for tests that change server state or
  stop servers themselves).
- ``swtpm_factory``: ``swtpm_factory()`` starts a fresh software TPM 2.0 in a new subdirectory of
  the test's tmp_path (``swtpm_factory(state_dir)``: over an existing TPM state, the same TPM);
  all are stopped after the test.
- ``swtpm``: one fresh software TPM for the test.

The session labs are shared: a test that adds or changes accounts should use ``lab_factory``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import Lab
from lab.swtpm import Swtpm

REPORT_SECTION = "lab server logs"
SWTPM_REPORT_SECTION = "swtpm logs"


class LabFactory:
    """Starts labs in subdirectories of ``base_directory`` and stops them all in ``stop_all()``."""

    def __init__(self, base_directory):
        self.base_directory = base_directory
        self.labs: list[Lab] = []

    def __call__(self, **lab_options) -> Lab:
        """A started ``Lab(**lab_options)`` (its directory is chosen here)."""
        lab = Lab(directory=self.base_directory / f"lab{len(self.labs)}", **lab_options)
        self.labs.append(lab)
        return lab.start()

    def stop_all(self) -> None:
        for lab in self.labs:
            lab.stop()


class SwtpmFactory:
    """Starts software TPMs under ``base_directory`` and stops them all in ``stop_all()``."""

    def __init__(self, base_directory):
        self.base_directory = base_directory
        self.swtpms: list[Swtpm] = []

    def __call__(self, state_dir=None) -> Swtpm:
        """A started ``Swtpm``: a new TPM, or with ``state_dir`` the TPM whose state is there."""
        if state_dir is None:
            state_dir = self.base_directory / f"swtpm{len(self.swtpms)}"
        swtpm = Swtpm(state_dir, log_path=self.base_directory / f"swtpm{len(self.swtpms)}.log")
        self.swtpms.append(swtpm)
        return swtpm.start()

    def stop_all(self) -> None:
        for swtpm in self.swtpms:
            swtpm.stop()


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """Prosody and Kamailio with the demo users (alice, bob, echo), shared by the session."""
    with Lab(directory=tmp_path_factory.mktemp("lab")) as started:
        yield started


@pytest.fixture(scope="session")
def xmpp_lab(tmp_path_factory) -> Iterator[Lab]:
    """Prosody alone with the demo users, shared by the session."""
    with Lab(sip=False, directory=tmp_path_factory.mktemp("xmpp-lab")) as started:
        yield started


@pytest.fixture(scope="session")
def sip_lab(tmp_path_factory) -> Iterator[Lab]:
    """Kamailio alone with the demo users, shared by the session."""
    with Lab(xmpp=False, echo=False, directory=tmp_path_factory.mktemp("sip-lab")) as started:
        yield started


@pytest.fixture
def lab_factory(tmp_path) -> Iterator[LabFactory]:
    """Fresh labs for one test, stopped after it."""
    factory = LabFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def swtpm_factory(tmp_path) -> Iterator[SwtpmFactory]:
    """Fresh software TPMs for one test, stopped after it."""
    factory = SwtpmFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def swtpm(swtpm_factory) -> Swtpm:
    """One fresh software TPM 2.0 for the test (``swtpm.tcti`` reaches it), stopped after it."""
    return swtpm_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    tails = [lab.log_tails() for lab in _labs_used_by(item)]
    if any(tails):
        report.sections.append((REPORT_SECTION, "\n".join(tail for tail in tails if tail)))
    swtpm_tails = [swtpm.log_tail() for swtpm in _swtpms_used_by(item)]
    if any(swtpm_tails):
        report.sections.append((SWTPM_REPORT_SECTION, "\n".join(tail for tail in swtpm_tails if tail)))


def _labs_used_by(item) -> list[Lab]:
    labs: list[Lab] = []
    for value in (getattr(item, "funcargs", None) or {}).values():
        if isinstance(value, Lab):
            labs.append(value)
        elif isinstance(value, LabFactory):
            labs.extend(value.labs)
    unique = {id(lab): lab for lab in labs}
    return list(unique.values())


def _swtpms_used_by(item) -> list[Swtpm]:
    swtpms: list[Swtpm] = []
    for value in (getattr(item, "funcargs", None) or {}).values():
        if isinstance(value, Swtpm):
            swtpms.append(value)
        elif isinstance(value, SwtpmFactory):
            swtpms.extend(value.swtpms)
    unique = {id(swtpm): swtpm for swtpm in swtpms}
    return list(unique.values())
