"""kmdagster inside a ``dg`` project: where its component's settings are, and the code
location ``dg dev`` serves them as.

A ``dg`` project keeps its settings in ``pyproject.toml`` (``[tool.dg]``) and each
component's in a ``defs.yaml`` under its defs folder. The CLI reads a ``KmImports``
component's attributes as it reads ``kmdagster.yaml``, and ``kmdagster confirm`` starts the
sensor and schedule of the code location ``dg dev`` loads: the same location name, module
and working directory as dg's own workspace entry for the project, so the daemon that
``dg dev`` runs sees them switched on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli
import yaml

COMPONENT_TYPE = "kmdagster.component.KmImports"
_DEFAULT_TARGET_MODULE = "definitions"  # dg's default code location target module
_DEFAULT_DEFS_MODULE = "defs"
_SKIPPED = {".venv", "venv", "node_modules", ".git", "__pycache__", ".tox"}


@dataclass(frozen=True)
class DgProject:
    """A ``dg`` project: its root and the code location ``dg dev`` makes of it."""

    root: Path
    location_name: str
    module: str  # the code location's target module
    working_directory: Path
    defs_folder: Path

    def workspace(self) -> dict[str, Any]:
        """A workspace.yaml document that loads the project as ``dg dev`` does."""
        entry = {
            "module_name": self.module,
            "working_directory": str(self.working_directory),
            "location_name": self.location_name,
        }
        return {"load_from": [{"python_module": entry}]}

    def component_files(self) -> list[Path]:
        """The ``defs.yaml`` files that declare a kmdagster component, by path."""
        found = []
        for path in sorted(self.defs_folder.rglob("defs.yaml")):
            if _SKIPPED.intersection(path.relative_to(self.defs_folder).parts):
                continue
            if declared_component(path) is not None:
                found.append(path)
        return found


def find_dg_project(start: Path) -> DgProject | None:
    """The ``dg`` project holding ``start`` (its directory or a parent), if any."""
    for folder in (start.resolve(), *start.resolve().parents):
        pyproject = folder / "pyproject.toml"
        if not pyproject.is_file():
            continue
        settings = tomli.loads(pyproject.read_text(encoding="utf-8"))
        dg = settings.get("tool", {}).get("dg", {})
        if dg.get("directory_type") != "project":
            continue
        project = dg.get("project", {})
        root_module = project["root_module"]
        package_root = folder / "src" if (folder / "src" / root_module).is_dir() else folder
        defs_module = project.get("defs_module") or f"{root_module}.{_DEFAULT_DEFS_MODULE}"
        return DgProject(
            root=folder,
            location_name=project.get("code_location_name")
            or settings.get("project", {}).get("name", root_module),
            module=project.get("code_location_target_module")
            or f"{root_module}.{_DEFAULT_TARGET_MODULE}",
            working_directory=package_root,
            defs_folder=package_root.joinpath(*defs_module.split(".")),
        )
    return None


def declared_component(path: Path) -> dict[str, Any] | None:
    """The attributes of the kmdagster component ``path`` declares, or None when it
    declares another type (or is no component file)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(document, dict) or document.get("type") != COMPONENT_TYPE:
        return None
    return document.get("attributes") or {}
