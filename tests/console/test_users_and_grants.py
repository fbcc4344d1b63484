"""Users and money in the console: a new user (console or API) has an account at once, the user
list shows balances, and "Grant points" on the user and account pages goes through
``wallet_grant`` (opening the account when missing), only for operators who may change
accounts."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from podi.services import user_create
from tests.conftest import PASSWORD, make_user
from wallet.models import Account, LedgerEntry

pytestmark = pytest.mark.django_db


def html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def test_a_user_created_in_the_console_has_an_account_at_once(console):
    response = console.post(
        "/admin/auth/user/add/",
        {
            "username": "newbie",
            "usable_password": "true",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    user = get_user_model().objects.get(username="newbie")
    account = Account.objects.get(user=user)
    assert (account.balance, account.frozen) == (0, 0)
    assert LedgerEntry.objects.count() == 0


def test_a_registered_user_has_an_account_at_once(anon, settings):
    settings.ALLOW_REGISTRATION = True
    response = anon.post(
        "/api/auth/v1/register",
        {"username": "joiner", "email": "j@example.com", "password": PASSWORD},
    )
    assert response.status_code == 201, response.content
    account = Account.objects.get(user__username="joiner")
    assert (account.balance, account.frozen) == (0, 0)


def test_user_create_opens_the_account_in_the_same_transaction(db):
    user = user_create(username="svc-made", email="", password=None)
    assert Account.objects.filter(user=user).count() == 1
    user_create(username="second", email="s@example.com", password=PASSWORD)
    assert Account.objects.count() == 2


def test_user_list_shows_balances_and_the_user_page_links_everything(console, owner):
    owner_account = Account.objects.create(user=owner, balance=42, frozen=8)
    make_user("no-account")
    listing = html(console.get("/admin/auth/user/"))
    account_url = reverse("admin:wallet_account_change", args=[owner_account.pk])
    assert f'<a href="{account_url}">42</a> (+8 frozen)' in listing
    page = html(console.get(reverse("admin:auth_user_change", args=[owner.pk])))
    assert "balance 42, frozen 8" in page
    for url in (
        reverse("admin:tasks_task_changelist") + f"?user__id__exact={owner.pk}",
        reverse("admin:wallet_hold_changelist") + f"?account__id__exact={owner_account.pk}",
        reverse("admin:wallet_ledgerentry_changelist") + f"?account__id__exact={owner_account.pk}",
        reverse("admin:media_app_mediaobject_changelist") + f"?owner__id__exact={owner.pk}",
        reverse("admin:auth_user_grant", args=[owner.pk]),
    ):
        assert url in page
    account_page = html(console.get(account_url))
    assert reverse("admin:auth_user_change", args=[owner.pk]) in account_page
    assert reverse("admin:wallet_account_grant", args=[owner_account.pk]) in account_page


def test_grant_points_from_the_user_page_opens_the_account(console, owner):
    assert not Account.objects.filter(user=owner).exists()
    url = reverse("admin:auth_user_grant", args=[owner.pk])
    assert "has no account yet: the grant opens one." in html(console.get(url))
    assert not Account.objects.filter(user=owner).exists()  # a GET changes nothing

    # Invalid points: the error at its field, nothing written.
    page = html(console.post(url, {"points": "0", "reason": "x"}))
    assert page.count("Must not be 0.") == 1
    assert LedgerEntry.objects.count() == 0

    response = console.post(url, {"points": "25", "reason": "welcome"})
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:auth_user_change", args=[owner.pk])
    account = Account.objects.get(user=owner)
    assert account.balance == 25
    entry = LedgerEntry.objects.get()
    assert (entry.type, entry.points, entry.reason, entry.created_by.username) == (
        "grant",
        25,
        "welcome",
        "staff",
    )
    assert "Granted +25 points to owner; balance 25." in html(console.get(response["Location"]))


def test_grant_points_from_the_account_page(console, owner):
    account = Account.objects.create(user=owner, balance=5)
    url = reverse("admin:wallet_account_grant", args=[account.pk])
    response = console.post(url, {"points": "10", "reason": ""})
    assert response["Location"] == reverse("admin:wallet_account_change", args=[account.pk])
    account.refresh_from_db()
    assert account.balance == 15
    assert LedgerEntry.objects.get().balance_after == 15


def test_grant_action_on_the_user_list(console, owner, teammate):
    Account.objects.create(user=teammate, balance=1)
    selected = {"action": "grant_points", "_selected_action": [owner.pk, teammate.pk]}
    page = html(console.post("/admin/auth/user/", selected))
    assert "no account yet (opened by the grant)" in page
    assert "balance 1, frozen 0" in page
    response = console.post(
        "/admin/auth/user/", {**selected, "apply": "1", "points": "7", "reason": "promo"}
    )
    assert response.status_code == 302
    assert dict(Account.objects.values_list("user__username", "balance")) == {
        "owner": 7,
        "teammate": 8,
    }


def test_grant_needs_the_account_change_permission(operator, owner):
    for url in (
        reverse("admin:auth_user_grant", args=[owner.pk]),
        reverse("admin:wallet_account_grant", args=[Account.objects.create(user=owner).pk]),
    ):
        assert operator.get(url).status_code == 403
        assert operator.post(url, {"points": "10", "reason": ""}).status_code == 403
    assert LedgerEntry.objects.count() == 0
    assert Account.objects.get(user=owner).balance == 0
    page = html(operator.get(reverse("admin:auth_user_change", args=[owner.pk])))
    assert 'id="grant-points"' not in page


def test_user_list_query_count_does_not_grow(console, owner):
    Account.objects.create(user=owner, balance=3)
    with CaptureQueriesContext(connection) as few:
        html(console.get("/admin/auth/user/"))
    for index in range(5):
        user_create(username=f"more{index}")
    with CaptureQueriesContext(connection) as more:
        html(console.get("/admin/auth/user/"))
    assert len(more) == len(few)
