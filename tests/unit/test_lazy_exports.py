"""The packages whose names are imported when first used (kpi_export/lazy.py): each name they declare comes
from the module their mapping names, and nothing else is declared."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ("kpi_export", "kpi_export.bullmq", "kpi_export.store")


@pytest.mark.parametrize("name", PACKAGES)
def test_a_package_gives_exactly_the_names_of_its_mapping(name: str) -> None:
    package = importlib.import_module(name)
    mapped = [export for exports in package._EXPORTS.values() for export in exports]
    assert sorted(package.__all__) == sorted(mapped)
    for module, exports in package._EXPORTS.items():
        for export in exports:
            assert getattr(package, export) is getattr(importlib.import_module(module), export)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_of_the_kind'"):
        package.nothing_of_the_kind  # noqa: B018
