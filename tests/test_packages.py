"""Every vstor package says what it is and declares its public names (issue 26).

A package's ``__all__`` names exactly its public modules (private ones start with ``_``) and its
subpackages: a module added, renamed or removed without saying so in the package's ``__init__``
fails here, so the public surface changes only on purpose. A package holds at most a dozen
modules besides its ``__init__``: a domain that grows past that gets subpackages, so each
directory still reads in one sitting. Importing a package imports none of its modules
(``__init__`` files are declarations, so a CLI command pays only for what it uses).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

import vstor

ROOT = os.path.dirname(vstor.__file__)
PACKAGES = sorted(
    "vstor" + dp[len(ROOT):].replace(os.sep, ".")
    for dp, dn, fn in os.walk(ROOT)
    if "__pycache__" not in dp and "__init__.py" in fn
)


def _members(pkg: str) -> set[str]:
    d = os.path.join(ROOT, *pkg.split(".")[1:])
    out = {f[:-3] for f in os.listdir(d) if f.endswith(".py") and not f.startswith("_")}
    return out | {x for x in os.listdir(d) if os.path.isfile(os.path.join(d, x, "__init__.py"))}


def test_every_directory_of_modules_is_a_package():
    loose = [dp for dp, dn, fn in os.walk(ROOT) if "__pycache__" not in dp
             and any(f.endswith(".py") for f in fn) and "__init__.py" not in fn]
    assert not loose, f"directories of modules without an __init__.py: {loose}"


MAX_MODULES = 12


@pytest.mark.parametrize("pkg", PACKAGES)
def test_package_holds_at_most_a_dozen_modules(pkg):
    d = os.path.join(ROOT, *pkg.split(".")[1:])
    modules = sorted(f for f in os.listdir(d) if f.endswith(".py") and f != "__init__.py")
    assert len(modules) <= MAX_MODULES, f"{pkg} holds {len(modules)} modules: group some into a subpackage"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_package_has_a_paragraph_and_names_its_members(pkg):
    mod = importlib.import_module(pkg)
    doc = (mod.__doc__ or "").strip()
    assert len(doc) >= 120 and "\n\n" in doc, f"{pkg}: its docstring should say in a paragraph what it holds"
    declared = set(getattr(mod, "__all__", ()))
    assert declared, f"{pkg} has no __all__"
    missing, extra = _members(pkg) - declared, declared - _members(pkg) - {"__version__"}
    assert not missing and not extra, f"{pkg}.__all__: add {sorted(missing)}, remove {sorted(extra)}"


def test_importing_a_package_imports_none_of_its_modules():
    code = ("import sys, importlib\n"
            f"for p in {PACKAGES!r}: importlib.import_module(p)\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('vstor.') and m not in "
            f"{PACKAGES!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [], f"importing the packages imported modules: {out}"
