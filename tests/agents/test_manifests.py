"""Manifest validation (every bad field by its path), versions, diffs."""

from __future__ import annotations

import pytest

from integrations.agents.manifests import clean_manifest, manifest_diff
from integrations.agents.models import Manifest, ManifestVersion
from integrations.agents.services.agent_tasks import agent_task_create
from integrations.agents.services.manifests import (
    manifest_create,
    manifest_delete,
    manifest_update,
    manifest_version_create,
)
from podi.errors import AppError

from .conftest import SHA_A, SHA_B, manifest_content

pytestmark = pytest.mark.django_db


def fields_of(content) -> dict:
    with pytest.raises(AppError) as caught:
        clean_manifest(content)
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.status == 400
    return caught.value.details["fields"]


def test_a_valid_manifest_is_canonical():
    content = manifest_content()
    content["models"][0]["sha256"] = SHA_A.upper()
    content["comfyui"]["commit"] = "0123456789ABCDEF"
    cleaned = clean_manifest(content)
    assert cleaned["models"][0]["sha256"] == SHA_A
    assert cleaned["comfyui"]["commit"] == "0123456789abcdef"
    assert clean_manifest({"comfyui": content["comfyui"]}) == {
        "comfyui": {"repo": content["comfyui"]["repo"], "commit": "0123456789abcdef"},
        "plugins": [],
        "workflows": [],
        "models": [],
    }


def test_missing_sha256():
    content = manifest_content()
    del content["models"][0]["sha256"]
    content["workflows"][0]["sha256"] = ""
    assert fields_of(content) == {
        "workflows[0].sha256": ["Required: the file's SHA-256 (64 hex digits)."],
        "models[0].sha256": ["Required: the file's SHA-256 (64 hex digits)."],
    }
    content = manifest_content()
    content["models"][0]["sha256"] = "abc"
    assert fields_of(content) == {
        "models[0].sha256": ["Must be 64 hex digits (the file's SHA-256)."]
    }


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.example.com/sdxl.safetensors",
        "files.example.com/sdxl.safetensors",
        "https:///no-host",
        "https://user:secret@files.example.com/x",
        "https://files.example.com/a b",
        "http://host:99999/x",
        "",
        None,
        42,
    ],
)
def test_bad_urls(url):
    content = manifest_content()
    content["models"][0]["url"] = url
    fields = fields_of(content)
    assert list(fields) == ["models[0].url"]


def test_bad_repos_and_commits():
    content = manifest_content()
    content["comfyui"] = {"repo": "git@github.com:comfyanonymous/ComfyUI.git", "commit": "main"}
    content["plugins"][0]["commit"] = "xyz"
    assert fields_of(content) == {
        "comfyui.repo": ["Must be an http(s) URL with a host."],
        "comfyui.commit": ["A git commit hash (7 to 40 hex digits); pin commits, not branches."],
        "plugins[0].commit": ["A git commit hash (7 to 40 hex digits); pin commits, not branches."],
    }
    assert fields_of({"plugins": []}) == {"comfyui": ["Required: an object {repo, commit}."]}


def test_duplicate_dest_path():
    content = manifest_content()
    content["models"].append(
        {
            "name": "SDXL again",
            "url": "https://mirror.example.com/sdxl.safetensors",
            "sha256": SHA_B,
            "size": 10,
            "destPath": "models/checkpoints/SDXL.safetensors",
        }
    )
    content["workflows"].append(
        {
            "name": "clash",
            "url": "https://files.example.com/x.json",
            "sha256": SHA_A,
            "destPath": "models/checkpoints/sdxl.safetensors",
        }
    )
    assert fields_of(content) == {
        "models[0].destPath": ["Duplicate destPath: workflows[1] uses it."],
        "models[1].destPath": ["Duplicate destPath: workflows[1] uses it."],
    }


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("../../etc/passwd", "No '..', '.' or empty path segments (it must stay inside ComfyUI)."),
        ("models/../../x", "No '..', '.' or empty path segments (it must stay inside ComfyUI)."),
        ("models//x", "No '..', '.' or empty path segments (it must stay inside ComfyUI)."),
        ("models/./x", "No '..', '.' or empty path segments (it must stay inside ComfyUI)."),
        ("/models/x", "Must be relative (no leading '/', '~' or drive letter)."),
        ("~/models/x", "Must be relative (no leading '/', '~' or drive letter)."),
        ("C:/models/x", "Must be relative (no leading '/', '~' or drive letter)."),
        ("models\\..\\x", "No control characters or backslashes; use '/'."),
        ("models/x\x00.bin", "No control characters or backslashes; use '/'."),
        ("models/ x", "Path segments must not start or end with spaces."),
        ("", "Required: a path relative to the ComfyUI directory."),
    ],
)
def test_path_traversal_in_dest_path(dest, message):
    content = manifest_content()
    content["models"][0]["destPath"] = dest
    assert fields_of(content) == {"models[0].destPath": [message]}


def test_all_problems_at_once_with_field_paths():
    fields = fields_of(
        {
            "comfyui": {"repo": "https://github.com/c/ComfyUI", "commit": "abcdef12", "x": 1},
            "plugins": [{"name": "../evil", "repo": "https://g/x", "commit": "abcdef1"}, "str"],
            "models": [{"name": "m", "url": "https://f/m", "sha256": SHA_A, "destPath": "a/b"}],
            "extra": True,
        }
    )
    assert fields == {
        "extra": ["Unknown field."],
        "comfyui.x": ["Unknown field."],
        "plugins[0].name": [
            "The custom_nodes directory name: letters, digits, '.', '_', '-' (≤ 100)."
        ],
        "plugins[1]": ["Must be an object {name, repo, commit}."],
        "models[0].size": ["Required: the file size in bytes."],
    }


def test_versions_are_immutable_and_only_made_on_change(staff):
    manifest = manifest_create(name="stack", content=manifest_content(), created_by=staff)
    assert manifest.latest_version.version == 1
    assert manifest.latest_version.created_by == staff
    same = manifest_version_create(manifest=manifest, content=manifest_content())
    assert same.version == 1
    changed = manifest_content()
    changed["plugins"] = []
    manifest = manifest_update(manifest=manifest, content=changed, changelog="drop impact pack")
    assert manifest.latest_version.version == 2
    assert manifest.latest_version.changelog == "drop impact pack"
    with pytest.raises(Exception, match="immutable"):
        manifest.latest_version.save()
    # A refused version changes nothing.
    bad = manifest_content()
    bad["models"][0]["url"] = "nope"
    with pytest.raises(AppError):
        manifest_update(manifest=manifest, content=bad, description="x")
    manifest.refresh_from_db()
    assert manifest.description == ""
    assert ManifestVersion.objects.count() == 2


def test_delete_is_refused_while_a_task_uses_it(agent):
    manifest = manifest_create(name="stack", content=manifest_content())
    agent_task_create(agent=agent, actions=["sync_models"], manifest=manifest, push=False)
    with pytest.raises(AppError) as caught:
        manifest_delete(manifest=manifest)
    assert caught.value.code == "RESOURCE_IN_USE"
    assert Manifest.objects.count() == 1
    unused = manifest_create(name="unused", content=manifest_content())
    manifest_delete(manifest=unused)
    assert not Manifest.objects.filter(pk=unused.pk).exists()


def test_readable_diff():
    old = clean_manifest(manifest_content())
    new = manifest_content()
    new["comfyui"]["commit"] = "fedcba9876543210"
    new["plugins"] = [
        {"name": "ComfyUI-Impact-Pack", "repo": new["plugins"][0]["repo"], "commit": "1234567"},
        {
            "name": "rgthree-comfy",
            "repo": "https://github.com/rgthree/rgthree-comfy",
            "commit": "89abcde",
        },
    ]
    new["models"][0]["sha256"] = SHA_B
    new["models"].append(
        {
            "name": "VAE",
            "url": "https://files.example.com/vae.safetensors",
            "sha256": SHA_A,
            "size": 334_641_164,
            "destPath": "models/vae/sdxl_vae.safetensors",
        }
    )
    new["workflows"] = []
    assert manifest_diff(old, clean_manifest(new)) == [
        ("changed", "ComfyUI commit 0123456789ab → fedcba987654"),
        ("changed", "plugin ComfyUI-Impact-Pack: commit abcdef1 → 1234567"),
        ("added", "plugin rgthree-comfy @ 89abcde"),
        ("removed", "workflow txt2img at user/default/workflows/txt2img.json"),
        (
            "changed",
            "model models/checkpoints/sdxl.safetensors: sha256 aaaaaaaaaaaa → bbbbbbbbbbbb",
        ),
        ("added", "model VAE → models/vae/sdxl_vae.safetensors (319.1 MB)"),
    ]
    assert manifest_diff(old, old) == []
