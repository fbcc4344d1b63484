import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIRequestFactory
from rest_framework_simplejwt.tokens import AccessToken

from podi.auth import BearerAuthentication, access_token_revoked, access_tokens_revoke, acting_user
from podi.errors import AppError
from podi.models import ServiceKey, hash_service_key
from podi.services import service_key_revoke
from tests.conftest import PASSWORD, access_token

pytestmark = pytest.mark.django_db


def test_login_refresh_me(anon, owner, client_for):
    response = anon.post("/api/auth/v1/login", {"username": "owner", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"accessToken", "refreshToken", "expiresIn", "user"}
    assert body["expiresIn"] == 900
    assert body["user"] == {
        "id": owner.pk,
        "username": "owner",
        "email": "owner@example.com",
        "isStaff": False,
    }

    me = client_for(body["accessToken"]).get("/api/auth/v1/me")
    assert me.status_code == 200
    assert me.json()["username"] == "owner"

    refreshed = anon.post("/api/auth/v1/refresh", {"refreshToken": body["refreshToken"]})
    assert refreshed.status_code == 200
    assert refreshed.json()["refreshToken"] != body["refreshToken"]
    # The old refresh token was rotated out and cannot be used twice.
    again = anon.post("/api/auth/v1/refresh", {"refreshToken": body["refreshToken"]})
    assert again.status_code == 401
    assert again.json()["code"] == "AUTH_INVALID"


def test_login_by_email(anon, owner):
    response = anon.post("/api/auth/v1/login", {"email": "OWNER@example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["user"]["id"] == owner.pk


@pytest.mark.parametrize(
    "body", [{"username": "owner", "password": "wrong"}, {"username": "nobody", "password": "x"}]
)
def test_wrong_credentials(anon, owner, body):
    response = anon.post("/api/auth/v1/login", body)
    assert response.status_code == 401
    assert response.json()["code"] == "INVALID_CREDENTIALS"
    assert "accessToken" not in response.json()


def test_inactive_user_cannot_log_in_nor_use_old_tokens(anon, owner, client_for):
    token = access_token(owner)
    owner.is_active = False
    owner.save()
    response = anon.post("/api/auth/v1/login", {"username": "owner", "password": PASSWORD})
    assert response.status_code == 403
    assert response.json()["code"] == "USER_INACTIVE"
    me = client_for(token).get("/api/auth/v1/me")
    assert me.status_code == 401
    assert me.json()["code"] == "AUTH_INVALID"


def test_expired_and_tampered_tokens(owner, client_for):
    expired = AccessToken.for_user(owner)
    expired.set_exp(lifetime=-timedelta(seconds=1))
    response = client_for(str(expired)).get("/api/auth/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "AUTH_INVALID"

    good = access_token(owner)
    header, payload, signature = good.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    response = client_for(tampered).get("/api/auth/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "AUTH_INVALID"


def test_no_token_and_wrong_scheme(anon, owner):
    response = anon.get("/api/auth/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "AUTH_REQUIRED"
    assert response["WWW-Authenticate"].startswith("Bearer")
    anon.credentials(HTTP_AUTHORIZATION="Basic b3duZXI6eA==")
    assert anon.get("/api/auth/v1/me").json()["code"] == "AUTH_INVALID"


def test_refresh_with_garbage(anon):
    response = anon.post("/api/auth/v1/refresh", {"refreshToken": "nope"})
    assert response.status_code == 401
    assert response.json()["code"] == "AUTH_INVALID"


def test_logout_revokes_refresh_token(anon, owner):
    tokens = anon.post("/api/auth/v1/login", {"username": "owner", "password": PASSWORD}).json()
    assert (
        anon.post("/api/auth/v1/logout", {"refreshToken": tokens["refreshToken"]}).status_code
        == 204
    )
    again = anon.post("/api/auth/v1/refresh", {"refreshToken": tokens["refreshToken"]})
    assert again.status_code == 401


def test_register_is_closed_by_default(anon, settings):
    response = anon.post(
        "/api/auth/v1/register", {"username": "newbie", "password": "a long enough pass 123"}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "REGISTRATION_CLOSED"
    assert not get_user_model().objects.filter(username="newbie").exists()


def test_register_when_allowed(anon, settings, owner):
    settings.ALLOW_REGISTRATION = True
    weak = anon.post("/api/auth/v1/register", {"username": "newbie", "password": "123"})
    assert weak.status_code == 400
    assert weak.json()["code"] == "VALIDATION_ERROR"
    assert "password" in weak.json()["details"]["fields"]
    taken = anon.post(
        "/api/auth/v1/register", {"username": "OWNER", "password": "a long enough pass 123"}
    )
    assert taken.status_code == 400
    assert taken.json()["details"]["fields"] == {"username": ["This username is taken."]}
    created = anon.post(
        "/api/auth/v1/register",
        {"username": "newbie", "email": "n@example.com", "password": "a long enough pass 123"},
    )
    assert created.status_code == 201
    assert created.json()["user"]["username"] == "newbie"
    assert get_user_model().objects.get(username="newbie").check_password("a long enough pass 123")


# --- Service keys ----------------------------------------------------------------------------


def test_service_key_is_stored_hashed_and_authenticates(service_key, client_for):
    key, raw = service_key(scopes=["tasks:write"])
    assert raw.startswith("psk_")
    assert raw not in key.key_hash
    key.refresh_from_db()
    assert key.last_used_at is None
    me = client_for(raw).get("/api/auth/v1/me")
    assert me.status_code == 200
    assert me.json()["serviceKey"] == {"id": key.pk, "name": "partner", "scopes": ["tasks:write"]}
    assert me.json()["username"] == "svc-partner"
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_revoked_and_unknown_service_keys_are_refused(service_key, client_for):
    key, raw = service_key(scopes=["admin"])
    service_key_revoke(key=key)
    assert client_for(raw).get("/api/auth/v1/me").json()["code"] == "AUTH_INVALID"
    assert client_for("psk_unknown").get("/api/auth/v1/me").status_code == 401


def test_unknown_scope_is_refused(service_key):
    with pytest.raises(AppError) as caught:
        service_key(scopes=["tasks:everything"])
    assert caught.value.code == "VALIDATION_ERROR"


def test_scope_implications(service_key):
    key, _ = service_key(scopes=["wallet:write"])
    assert key.has_scope("wallet:write")
    assert key.has_scope("wallet:read")
    assert not key.has_scope("tasks:read")
    admin_key, _ = service_key(scopes=["admin"], name="ops")
    assert admin_key.has_scope("tasks:write")


def _request_as(raw_token):
    request = APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Bearer {raw_token}")
    user, auth = BearerAuthentication().authenticate(request)
    request.user, request.auth = user, auth
    return request


def test_a_user_can_never_act_for_another_user(owner, outsider):
    request = _request_as(access_token(owner))
    assert acting_user(request, None) == owner
    assert acting_user(request, owner.pk) == owner
    assert acting_user(request, str(owner.pk)) == owner
    with pytest.raises(AppError) as caught:
        acting_user(request, outsider.pk)
    assert caught.value.code == "FORBIDDEN"
    with pytest.raises(AppError) as caught:
        acting_user(request, "abc")
    assert caught.value.code == "VALIDATION_ERROR"


def test_staff_and_service_keys_act_on_behalf(staff, owner, service_key):
    assert acting_user(_request_as(access_token(staff)), owner.pk) == owner
    _, raw = service_key(scopes=["wallet:write"])
    request = _request_as(raw)
    assert acting_user(request, owner.pk, area="wallet") == owner
    assert acting_user(request, None).username == "svc-partner"
    with pytest.raises(AppError) as caught:
        acting_user(request, owner.pk, area="tasks")
    assert caught.value.code == "FORBIDDEN"
    with pytest.raises(AppError) as caught:
        acting_user(request, 999999, area="wallet")
    assert caught.value.code == "USER_NOT_FOUND"


def test_create_service_key_command(db, capsys):
    call_command("create_service_key", "--name", "crm", "--scopes", "tasks:write,wallet:read")
    raw = capsys.readouterr().out.strip()
    key = ServiceKey.objects.get(name="crm")
    assert key.key_hash == hash_service_key(raw)
    assert key.scopes == ["tasks:write", "wallet:read"]


@pytest.fixture
def fast_hashing(settings):
    """Many refused logins: hash with a cheap hasher (the limits, not the hashing, are tested)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _login(anon, name, password="wrong", **extra):
    return anon.post("/api/auth/v1/login", {"username": name, "password": password}, **extra)


def test_login_is_limited_per_address_and_forwarded_for_is_not_believed(
    anon, settings, fast_hashing
):
    """RATE_LIMIT_LOGIN (20/min) per address; a rotating X-Forwarded-For changes nothing."""
    assert settings.REST_FRAMEWORK["NUM_PROXIES"] == 0
    for index in range(20):
        response = _login(anon, f"nobody-{index}", HTTP_X_FORWARDED_FOR=f"203.0.113.{index}")
        assert response.status_code == 401, (index, response.json())
    refused = _login(anon, "nobody-x", HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert refused.status_code == 429
    assert refused.json()["code"] == "RATE_LIMITED"
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Registering counts against the same address.
    settings.ALLOW_REGISTRATION = True
    register = anon.post("/api/auth/v1/register", {"username": "late", "password": PASSWORD})
    assert register.status_code == 429
    assert not get_user_model().objects.filter(username="late").exists()
    # Another address is not affected.
    assert _login(anon, "nobody-y", REMOTE_ADDR="192.0.2.9").status_code == 401


def test_login_is_limited_per_name_from_any_address(anon, owner, fast_hashing):
    """RATE_LIMIT_LOGIN_NAME (10/min): a guesser spreading over addresses still stops, even
    when it finally has the right password."""
    for index in range(10):
        response = _login(anon, "owner", REMOTE_ADDR=f"192.0.2.{index + 1}")
        assert response.status_code == 401
    refused = _login(anon, "OWNER", PASSWORD, REMOTE_ADDR="192.0.2.200")
    assert refused.status_code == 429
    assert "accessToken" not in refused.json()
    assert int(refused["Retry-After"]) >= 1
    by_email = anon.post(
        "/api/auth/v1/login",
        {"email": "someone-else@example.com", "password": "x"},
        REMOTE_ADDR="192.0.2.201",
    )
    assert by_email.status_code == 401  # another name is not affected


def test_trusted_proxies_take_the_address_the_proxy_saw(anon, settings, fast_hashing):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    # One proxy appends the peer it saw: rotating that last entry means distinct clients...
    for index in range(25):
        forwarded = f"203.0.113.1, 198.51.100.{index}"
        assert _login(anon, f"n-{index}", HTTP_X_FORWARDED_FOR=forwarded).status_code == 401
    # ...while rotating the client-written entries in front of it does not help.
    for index in range(20):
        forwarded = f"203.0.113.{index}, 198.51.100.250"
        assert _login(anon, f"m-{index}", HTTP_X_FORWARDED_FOR=forwarded).status_code == 401
    refused = _login(anon, "m-x", HTTP_X_FORWARDED_FOR="203.0.113.99, 198.51.100.250")
    assert refused.status_code == 429


def test_logout_revokes_the_access_token_at_once(anon, owner, client_for):
    tokens = anon.post("/api/auth/v1/login", {"username": "owner", "password": PASSWORD}).json()
    older = access_token(owner)  # another device, logged in earlier
    assert client_for(older).get("/api/auth/v1/me").status_code == 200
    me = client_for(tokens["accessToken"])
    assert me.get("/api/auth/v1/me").status_code == 200
    time.sleep(1.05)  # the per-user cutoff has second resolution
    logout = me.post("/api/auth/v1/logout", {"refreshToken": tokens["refreshToken"]})
    assert logout.status_code == 204
    for token in (tokens["accessToken"], older):
        refused = client_for(token).get("/api/auth/v1/me")
        assert refused.status_code == 401
        assert refused.json()["code"] == "AUTH_INVALID"
    # Logging in again right away works.
    again = anon.post("/api/auth/v1/login", {"username": "owner", "password": PASSWORD}).json()
    assert client_for(again["accessToken"]).get("/api/auth/v1/me").status_code == 200


def test_logout_without_waiting_still_revokes_the_presented_token(anon, owner, client_for):
    tokens = anon.post("/api/auth/v1/login", {"username": "owner", "password": PASSWORD}).json()
    me = client_for(tokens["accessToken"])
    assert (
        me.post("/api/auth/v1/logout", {"refreshToken": tokens["refreshToken"]}).status_code == 204
    )
    assert me.get("/api/auth/v1/me").status_code == 401


def test_access_token_revoked_is_what_long_lived_connections_check(anon, owner):

    payload = AccessToken(access_token(owner)).payload
    assert access_token_revoked(payload) is False
    access_tokens_revoke(user_id=owner.pk, jti=payload["jti"])
    assert access_token_revoked(payload) is True
    other = dict(payload, jti="another", iat=payload["iat"] - 1)
    assert access_token_revoked(other) is True  # issued in an earlier second
    later = dict(payload, jti="later", iat=payload["iat"] + 1)
    assert access_token_revoked(later) is False
    assert access_token_revoked(dict(later, user_id=owner.pk + 1)) is False
