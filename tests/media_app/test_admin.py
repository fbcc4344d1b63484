"""Smoke tests of the media admin pages and actions."""

import io
from pathlib import Path

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client

from media_app.models import MediaObject, MediaStatus, UploadKeyVersion
from media_app.services import media_store_output
from tests.media_app.conftest import png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(staff):
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def objects(owner, outsider):
    image = media_store_output(
        user_id=owner.pk, task_id="tsk_<b>", filename="<b>x</b>.png", stream=io.BytesIO(png_bytes())
    )
    text = media_store_output(
        user_id=outsider.pk, task_id="tsk_2", filename="o.txt", stream=io.BytesIO(b"x" * 10)
    )
    return image, text


def test_media_changelist_filters_and_search(console, objects, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):
        page = console.get("/admin/media_app/mediaobject/")
    assert page.status_code == 200
    html = page.content.decode()
    assert objects[0].object_key in html and objects[1].object_key in html
    for query, expected in [
        ("?status__exact=uploaded", 2),
        ("?purpose__exact=output", 2),
        ("?purpose__exact=input", 0),
        ("?kind=image", 1),
        ("?kind=other", 1),
        ("?size=small", 2),
        ("?size=large", 0),
        ("?q=outsider", 1),
        ("?q=tsk_2", 1),
        (f"?q={objects[0].object_key}", 1),
    ]:
        response = console.get(f"/admin/media_app/mediaobject/{query}")
        assert response.status_code == 200, query
        assert response.context["cl"].result_count == expected, query


def test_media_change_form_is_read_only_and_escaped(console, objects):
    response = console.get(f"/admin/media_app/mediaobject/{objects[0].pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "signed link (5 min)" in html
    assert "/media-download/" in html
    assert "tsk_&lt;b&gt;" in html and "tsk_<b>" not in html
    assert 'name="_save"' not in html
    assert console.get("/admin/media_app/mediaobject/add/").status_code == 403


def test_delete_action_removes_from_storage(console, objects, settings):
    image, text = objects
    response = console.post(
        "/admin/media_app/mediaobject/",
        {"action": "delete_from_storage", ACTION_CHECKBOX_NAME: [image.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Deleted 1 object(s) from storage." in response.content.decode()
    image.refresh_from_db()
    assert image.status == MediaStatus.DELETED
    assert not (Path(settings.MEDIA_ROOT) / image.object_key).exists()
    assert (Path(settings.MEDIA_ROOT) / text.object_key).exists()
    assert MediaObject.objects.get(pk=text.pk).status == MediaStatus.UPLOADED


def test_upload_key_versions_pages_and_revoke(console, owner, teammate):
    assert console.get("/admin/media_app/uploadkeyversion/").status_code == 200
    assert console.get("/admin/media_app/uploadkeyversion/add/").status_code == 200
    added = console.post("/admin/media_app/uploadkeyversion/add/", {"user": owner.pk}, follow=True)
    assert added.status_code == 200
    row = UploadKeyVersion.objects.get(user=owner)
    assert row.version == 2 and row.revoked_at is not None
    assert console.get(f"/admin/media_app/uploadkeyversion/{row.pk}/change/").status_code == 200
    response = console.post(
        "/admin/media_app/uploadkeyversion/",
        {"action": "revoke", ACTION_CHECKBOX_NAME: [row.pk]},
        follow=True,
    )
    assert "Revoked the upload keys of 1 user(s)." in response.content.decode()
    assert UploadKeyVersion.objects.get(user=owner).version == 3
    assert not UploadKeyVersion.objects.filter(user=teammate).exists()
