"""Console fixtures: a superuser and a plain operator (staff with view permissions only)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from tests.conftest import make_user


@pytest.fixture
def console(staff):
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def operator(db):
    user = make_user("operator", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client = Client()
    client.force_login(user)
    return client


# The task rig (a real worker, the ComfyUI test server, a funded owner, an HTTP client).
from tests.tasks.conftest import api, comfy, funded, worker  # noqa: E402, F401


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (the browser fixture screenshots failures)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
