"""The fleet fixture: built once for the module, torn down (processes, namespaces) whatever happens."""

from __future__ import annotations

import os

import pytest

from tests.fleet.hosts import PASSWORD, Fleet, FleetUnavailable, preflight
from tests.fleet.load import Load


def on_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def pytest_collection_modifyitems(config, items):
    """The fleet test belongs to the PostgreSQL configuration (it builds its own PostgreSQL, and
    CI's second run is the production one): on the embedded defaults it is deselected, not
    skipped. On PostgreSQL it always runs, and fails with one line where namespaces are refused."""
    if on_postgres():
        return
    fleet_items = [item for item in items if item.get_closest_marker("fleet")]
    if fleet_items:
        config.hook.pytest_deselected(items=fleet_items)
        items[:] = [item for item in items if not item.get_closest_marker("fleet")]


@pytest.fixture(scope="module")
def fleet():
    try:
        preflight()
    except FleetUnavailable as exc:
        pytest.fail(f"fleet test cannot run: {exc}", pytrace=False)
    built = Fleet()
    try:
        built.start()
        built.env["FLEET_PASSWORD"] = PASSWORD
        built.probe("seed", f"http://{built.ip('exec1')}:8188", f"http://{built.ip('exec2')}:8188")
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def load(fleet):
    from tests.fleet.probe import ACTION, USERS

    running = Load(fleet.lb_url, f"http://{fleet.ip('hook')}:9000/hook", ACTION, fleet.ca_file)
    try:
        running.login(USERS, PASSWORD)
        running.subscribe_all()
        yield running
    finally:
        running.close()
