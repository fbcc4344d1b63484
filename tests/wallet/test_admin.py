"""Smoke tests of every wallet admin page and action."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.utils import timezone

from tests.conftest import make_user
from tests.wallet.conftest import wallet_snapshot
from tests.wallet.invariants import assert_wallet_invariants
from wallet.models import Account, Hold, LedgerEntry
from wallet.services import hold_confirm, hold_freeze, wallet_grant

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(staff):
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def funded(owner):
    wallet_grant(user=owner, points=500, reason="<b>welcome</b>")
    hold, _ = hold_freeze(user=owner, task_id="tsk_<1>", points=120, action="txt2img")
    overdue, _ = hold_freeze(user=owner, task_id="tsk_2", points=30)
    Hold.objects.filter(pk=overdue.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    done, _ = hold_freeze(user=owner, task_id="tsk_3", points=10)
    hold_confirm(hold=done)
    return Account.objects.get(user=owner)


def test_account_pages(console, funded, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        page = console.get("/admin/wallet/account/")
    assert page.status_code == 200
    assert b"owner" in page.content
    detail = console.get(f"/admin/wallet/account/{funded.pk}/change/")
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "Ledger (latest 50" in html
    assert "&lt;b&gt;welcome&lt;/b&gt;" in html and "<b>welcome</b>" not in html
    assert f"?account__id__exact={funded.pk}" in html
    assert 'name="_save"' not in html  # read-only: balances change only through the actions
    assert console.get("/admin/wallet/account/add/").status_code == 200
    assert console.get("/admin/wallet/account/?q=owner").status_code == 200


def test_account_ledger_inline_is_limited(console, owner):
    for index in range(60):
        wallet_grant(user=owner, points=1, reference=f"r{index}")
    account = Account.objects.get(user=owner)
    html = console.get(f"/admin/wallet/account/{account.pk}/change/").content.decode()
    assert html.count('<tr class="form-row') == 50
    assert "all 60 entries" in html


def test_add_an_empty_account(console, outsider):
    response = console.post("/admin/wallet/account/add/", {"user": outsider.pk})
    assert response.status_code == 302
    account = Account.objects.get(user=outsider)
    assert (account.balance, account.frozen) == (0, 0)


def test_grant_action_asks_then_calls_the_service(console, funded, teammate, staff):
    other = Account.objects.create(user=teammate)
    selected = {"action": "grant_points", ACTION_CHECKBOX_NAME: [funded.pk, other.pk]}
    form = console.post("/admin/wallet/account/", selected)
    assert form.status_code == 200
    assert b"Grant points" in form.content and b'name="points"' in form.content
    before = wallet_snapshot()
    invalid = console.post("/admin/wallet/account/", {**selected, "apply": "1", "points": "0"})
    assert invalid.status_code == 200 and wallet_snapshot() == before

    done = console.post(
        "/admin/wallet/account/", {**selected, "apply": "1", "points": "25", "reason": "promo"}
    )
    assert done.status_code == 302
    assert Account.objects.get(pk=funded.pk).balance == 500 - 120 - 30 - 10 + 25
    assert Account.objects.get(pk=other.pk).balance == 25
    entry = LedgerEntry.objects.filter(account=other).get()
    assert (entry.type, entry.points, entry.reason, entry.created_by) == (
        "grant",
        25,
        "promo",
        staff,
    )
    assert_wallet_invariants(funded)


def test_adjust_action_needs_a_reason_and_refuses_below_zero(console, funded, teammate):
    poor = Account.objects.create(user=teammate)
    selected = {"action": "adjust_points", ACTION_CHECKBOX_NAME: [funded.pk, poor.pk]}
    assert b"Adjust points" in console.post("/admin/wallet/account/", selected).content
    before = wallet_snapshot()
    no_reason = console.post("/admin/wallet/account/", {**selected, "apply": "1", "points": "-5"})
    assert no_reason.status_code == 200 and wallet_snapshot() == before

    done = console.post(
        "/admin/wallet/account/",
        {**selected, "apply": "1", "points": "-5", "reason": "duplicate grant"},
        follow=True,
    )
    assert done.status_code == 200
    messages = [str(m) for m in done.context["messages"]]
    assert any("Adjusted -5 points on 1 account" in m for m in messages)
    assert any(m.startswith("Refused — teammate") for m in messages)
    assert Account.objects.get(pk=funded.pk).balance == 340 - 5
    assert Account.objects.get(pk=poor.pk).balance == 0
    assert not LedgerEntry.objects.filter(account=poor).exists()
    entry = LedgerEntry.objects.filter(account=funded, type="adjust").get()
    assert (entry.points, entry.reason) == (-5, "duplicate grant")


def test_hold_pages_and_filters(console, funded, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        page = console.get("/admin/wallet/hold/")
    assert page.status_code == 200
    assert b"held \xe2\x80\x94 overdue" in page.content
    assert b"tsk_&lt;1&gt;" in page.content
    overdue = console.get("/admin/wallet/hold/?attention=overdue")
    assert overdue.context["cl"].result_count == 1
    assert console.get("/admin/wallet/hold/?attention=open").context["cl"].result_count == 1
    assert (
        console.get("/admin/wallet/hold/?status__exact=confirmed").context["cl"].result_count == 1
    )
    hold = Hold.objects.get(task_id="tsk_2")
    detail = console.get(f"/admin/wallet/hold/{hold.pk}/change/")
    assert detail.status_code == 200 and hold.public_id.encode() in detail.content
    assert console.get("/admin/wallet/hold/add/").status_code == 403


def test_hold_actions_release_and_expire(console, funded):
    held = Hold.objects.get(task_id="tsk_<1>")
    confirmed = Hold.objects.get(task_id="tsk_3")
    response = console.post(
        "/admin/wallet/hold/",
        {"action": "release_holds", ACTION_CHECKBOX_NAME: [held.pk, confirmed.pk]},
    )
    assert response.status_code == 302
    held.refresh_from_db()
    confirmed.refresh_from_db()
    assert (held.status, confirmed.status) == ("released", "confirmed")

    response = console.post(
        "/admin/wallet/hold/", {"action": "expire_overdue", ACTION_CHECKBOX_NAME: [held.pk]}
    )
    assert response.status_code == 302
    assert Hold.objects.get(task_id="tsk_2").status == "expired"
    account = assert_wallet_invariants(funded)
    assert (account.balance, account.frozen) == (490, 0)


def test_ledger_pages(console, funded, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        page = console.get("/admin/wallet/ledgerentry/")
    assert page.status_code == 200
    for query in ("type__exact=confirm", "has_hold=yes", "has_hold=no", "q=tsk_2"):
        assert console.get(f"/admin/wallet/ledgerentry/?{query}").status_code == 200
    assert (
        console.get("/admin/wallet/ledgerentry/?type__exact=grant").context["cl"].result_count == 1
    )
    entry = LedgerEntry.objects.filter(type="confirm").get()
    detail = console.get(f"/admin/wallet/ledgerentry/{entry.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert console.get("/admin/wallet/ledgerentry/add/").status_code == 403
    assert console.post(f"/admin/wallet/ledgerentry/{entry.pk}/delete/").status_code == 403


def test_plain_staff_without_permissions_cannot_move_points(funded):
    clerk = make_user("clerk", is_staff=True)
    client = Client()
    client.force_login(clerk)
    assert client.get("/admin/wallet/account/").status_code == 403
    before = wallet_snapshot()
    client.post(
        "/admin/wallet/account/",
        {
            "action": "grant_points",
            ACTION_CHECKBOX_NAME: [funded.pk],
            "apply": "1",
            "points": "1000",
        },
    )
    assert wallet_snapshot() == before
