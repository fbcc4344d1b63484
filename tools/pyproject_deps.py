"""Print the dependencies declared in pyproject.toml, one per line (used by the Makefile)."""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads(
    Path(__file__).resolve().parent.parent.joinpath("pyproject.toml").read_text()
)["project"]
extras = sys.argv[1:]
lines = list(project["dependencies"])
for extra in extras:
    lines += project.get("optional-dependencies", {}).get(extra, [])
print("\n".join(lines))
