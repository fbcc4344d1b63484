"""One account per email, usernames that never look like an email, on every path that makes
or edits users (register, admin, the database itself, the migration for existing rows)."""

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def registration(settings):
    settings.ALLOW_REGISTRATION = True


def register(anon, **body):
    return anon.post("/api/auth/v1/register", {"password": PASSWORD, **body})


def test_register_refuses_an_email_another_account_has_in_any_case(anon, owner, registration):
    response = register(anon, username="copycat", email="OWNER@Example.com")
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert response.json()["details"]["fields"] == {
        "email": ["This email belongs to another account."]
    }
    assert not User.objects.filter(username="copycat").exists()


def test_register_refuses_a_username_that_looks_like_an_email(anon, owner, registration):
    response = register(anon, username="owner@example.com")
    assert response.status_code == 400
    assert list(response.json()["details"]["fields"]) == ["username"]
    assert User.objects.count() == 1


def test_login_by_email_finds_the_one_account_with_it(anon, owner):
    # An older account whose username is someone's email (made before the rule) cannot
    # capture the email login of the account that owns the email.
    squatter = User.objects.create_user(username="victim@example.com", password="squatter-pw-1")
    victim = make_user("victim")
    assert squatter.pk < victim.pk
    response = anon.post(
        "/api/auth/v1/login", {"email": "Victim@Example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.json()
    assert response.json()["user"]["id"] == victim.pk
    wrong = anon.post(
        "/api/auth/v1/login", {"email": "victim@example.com", "password": "squatter-pw-1"}
    )
    assert wrong.status_code == 401


def test_the_database_refuses_a_second_account_with_the_same_email(owner):
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user(username="other", email="Owner@EXAMPLE.com")
    # Empty emails are not unique.
    User.objects.create_user(username="a1", email="")
    User.objects.create_user(username="a2", email="")


def test_admin_add_and_change_forms_apply_the_rules(client, staff, owner, teammate):
    client.force_login(staff)
    add = client.post(
        "/admin/auth/user/add/",
        {
            "username": "x@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "usable_password": "true",
        },
    )
    assert add.status_code == 200  # the form again, with the error
    assert add.context["adminform"].form.errors["username"] == [
        'A username may not contain "@" (log in by email instead).'
    ]
    assert not User.objects.filter(username="x@example.com").exists()

    change = client.post(
        f"/admin/auth/user/{teammate.pk}/change/",
        {
            "username": "teammate",
            "email": "OWNER@example.com",
            "is_active": "on",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert change.status_code == 200
    assert change.context["adminform"].form.errors["email"] == [
        "This email belongs to another account."
    ]
    teammate.refresh_from_db()
    assert teammate.email == "teammate@example.com"


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_the_oldest_holder_of_a_duplicate_email(capsys):
    executor = MigrationExecutor(connection)
    executor.migrate([("podi", "0002_servicekey_webhook_secret")])
    try:
        first = User.objects.create_user(username="first", email="Dup@example.com")
        second = User.objects.create_user(username="second", email="DUP@example.com")
        third = User.objects.create_user(username="third", email="solo@example.com")
        blank = [User.objects.create_user(username=f"b{i}", email="") for i in range(2)]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate([("podi", "0003_unique_user_email")])
    try:
        assert dict(User.objects.values_list("username", "email")) == {
            "first": "Dup@example.com",
            "second": "",
            "third": "solo@example.com",
            "b0": "",
            "b1": "",
        }
        assert (
            f"user {second.pk} lost email 'DUP@example.com', already used by user {first.pk}"
            in capsys.readouterr().out
        )
        assert third.pk and blank
    finally:  # back at the latest migrations (later ones too), for the tests after this one
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
