"""The platform's own admin pages (podi/admin.py): service keys through their services."""

from __future__ import annotations

import re

import pytest
from django.test import Client as DjangoClient

from podi.crypto import decrypt_secret
from podi.models import ServiceKey, hash_service_key

pytestmark = pytest.mark.django_db

KEYS = "/admin/podi/servicekey/"


@pytest.fixture
def console(staff):
    client = DjangoClient()
    client.force_login(staff)
    return client


def test_add_a_service_key_shows_it_once_and_stores_only_its_hash(console, owner, staff):
    response = console.post(
        f"{KEYS}add/",
        {"name": "render-farm", "scopes": ["tasks:write"], "user": owner.pk, "expires_at": ""},
        follow=True,
    )
    assert response.status_code == 200
    [raw] = re.findall(r"<code>(psk_[^<…]+)</code>", response.text)
    key = ServiceKey.objects.get()
    assert (key.name, key.scopes, key.user, key.created_by) == (
        "render-farm",
        ["tasks:write"],
        owner,
        staff,
    )
    assert key.key_hash == hash_service_key(raw)
    assert raw not in console.get(f"{KEYS}{key.pk}/change/").text


def test_change_a_service_key_goes_through_the_service(console, service_key, owner):
    key, _ = service_key(scopes=["tasks:write"])
    response = console.post(
        f"{KEYS}{key.pk}/change/",
        {"name": "renamed", "scopes": ["tasks:read"], "user": key.user_id, "expires_at": ""},
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.scopes) == ("renamed", ["tasks:read"])


def test_delete_a_service_key(console, service_key):
    key, _ = service_key(scopes=["tasks:write"])
    response = console.post(f"{KEYS}{key.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not ServiceKey.objects.filter(pk=key.pk).exists()


def test_service_key_rotate_webhook_secret_action_shows_the_secret_once(console, service_key):
    key, _ = service_key(scopes=["tasks:write"])
    response = console.post(
        "/admin/podi/servicekey/",
        {"action": "rotate_webhook_secret", "_selected_action": [key.pk]},
        follow=True,
    )
    assert response.status_code == 200
    [shown] = re.findall(r"<code>(whsec_[A-Za-z0-9+/=]+)</code>", response.text)
    key.refresh_from_db()
    assert decrypt_secret(key.webhook_secret_encrypted) == shown
    page = console.get(f"/admin/podi/servicekey/{key.pk}/change/")
    assert shown not in page.text
