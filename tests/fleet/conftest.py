"""The fleet fixture: built once for the module, torn down (processes, namespaces) whatever happens."""

from __future__ import annotations

import os

import pytest

from tests.fleet.hosts import PASSWORD, Fleet, FleetUnavailable, preflight
from tests.fleet.load import Load


def on_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


@pytest.fixture(scope="module")
def fleet():
    if not on_postgres():
        pytest.skip(
            "the fleet test runs on the PostgreSQL configuration (DATABASE_URL=postgres://…)"
        )
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
