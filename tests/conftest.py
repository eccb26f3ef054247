"""Shared test set-up: makes `kairos_testing` (helpers for tests) importable."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

# tritonclient and Kairos's generated stubs define the same protobuf symbols and
# cannot be imported into one process (DESIGN.md). The third-party client tests
# therefore run in a pytest session of their own: `pytest --thirdparty-clients`.
THIRDPARTY = "thirdparty_clients"


def pytest_addoption(parser):
    parser.addoption(
        "--thirdparty-clients",
        action="store_true",
        help="run only tests/thirdparty_clients (unmodified tritonclient), in their own process",
    )


def pytest_ignore_collect(collection_path, config):
    try:
        relative = collection_path.relative_to(TESTS)
    except ValueError:
        return None
    if not relative.parts:
        return None
    inside = relative.parts[0] == THIRDPARTY
    # Ignore whole top-level folders, so their conftest files are never imported either.
    return inside != config.getoption("--thirdparty-clients")
