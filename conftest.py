"""Root pytest configuration: a run that collects no test is a failure, never a silent pass."""

import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.config.get_terminal_writer().line(
            "dlbench: pytest collected no tests; that is an error here (check testpaths / -k).", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
