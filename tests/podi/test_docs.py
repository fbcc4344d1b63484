"""Every variable the settings read is documented in .env.example and in the README."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def settings_variables() -> set[str]:
    text = (ROOT / "podi" / "settings.py").read_text()
    return set(re.findall(r'env\.\w+\(\s*"([A-Z0-9_]+)"', text))


def test_env_example_lists_every_variable():
    listed = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    missing = settings_variables() - listed
    assert not missing, f".env.example misses {sorted(missing)}"


def test_readme_documents_every_variable():
    readme = (ROOT / "README.md").read_text()
    missing = {name for name in settings_variables() if f"`{name}`" not in readme}
    assert not missing, f"README misses {sorted(missing)}"
