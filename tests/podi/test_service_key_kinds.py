"""Service keys come in two kinds (docs/adr/0013-access-rule.md): user-bound and service-account."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from podi.errors import AppError
from podi.models import ServiceKey
from podi.services import service_key_create
from tests.conftest import Client, make_user

classify = importlib.import_module("podi.migrations.0004_servicekey_user_bound").classify


def test_a_key_for_a_user_is_user_bound_and_one_without_is_not(owner):
    bound, _ = service_key_create(name="app", scopes=["tasks:read"], user=owner)
    account, _ = service_key_create(name="crm", scopes=["tasks:read"])
    assert (bound.user_bound, bound.acts_for_anyone) == (True, False)
    assert (account.user_bound, account.acts_for_anyone) == (False, True)
    assert account.user.username == "svc-crm"
    # A key made for an existing service account is a service-account key too.
    again, _ = service_key_create(name="crm2", scopes=[], user=account.user)
    assert again.user_bound is False


def test_a_persons_svc_name_is_never_taken_over(db):
    person = make_user("svc-crm")
    with pytest.raises(AppError) as caught:
        service_key_create(name="crm", scopes=["wallet:write"])
    assert caught.value.code == "VALIDATION_ERROR"
    assert not ServiceKey.objects.filter(user=person).exists()


def test_the_migration_classifies_existing_keys(owner):
    bound, _ = service_key_create(name="app", scopes=[], user=owner)
    account, _ = service_key_create(name="crm", scopes=[])
    ServiceKey.objects.update(user_bound=False)  # as before the flag existed
    classify(apps, None)
    assert ServiceKey.objects.get(pk=bound.pk).user_bound is True
    assert ServiceKey.objects.get(pk=account.pk).user_bound is False


def test_the_admin_api_takes_admin_only_from_service_account_keys(staff):
    bound = service_key_create(name="ops-staff", scopes=["admin"], user=staff)[1]
    account = service_key_create(name="ops", scopes=["admin"])[1]
    assert Client(account).get("/api/admin/executors").status_code == 200
    response = Client(bound).get("/api/admin/executors")
    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"
