"""Asset resolution: explicit paths, the asset folder, checksums, and errors that say where to get a file."""
from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from reenact import assets
from reenact.app.assets_table import asset_table
from tests.conftest import REPO


def test_missing_asset_error_names_file_source_and_destination(tmp_path):
    with pytest.raises(assets.MissingAssetError) as err:
        assets.asset_path("fomm", tmp_path)
    text = str(err.value)
    assert str(tmp_path / "baselines/vox-cpk.pth.tar") in text and "first-order-model" in text
    assert assets.ENV_VAR in text


def test_asset_folder_env_var_and_explicit_path(tmp_path, monkeypatch):
    target = tmp_path / "baselines" / "vox-cpk.pth.tar"
    target.parent.mkdir()
    target.write_bytes(b"weights")
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    assert assets.asset_path("fomm") == target
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(b"x")
    assert assets.asset_path("fomm", path=other) == other


def test_sha256_is_checked_when_known(tmp_path, monkeypatch):
    target = tmp_path / "baselines" / "vox-cpk.pth.tar"
    target.parent.mkdir()
    target.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert assets.sha256sum(target) == good
    monkeypatch.setitem(assets.ASSETS, "fomm", replace(assets.ASSETS["fomm"], sha256="0" * 64))
    with pytest.raises(assets.MissingAssetError, match="sha256"):
        assets.asset_path("fomm", tmp_path)
    monkeypatch.setitem(assets.ASSETS, "fomm", replace(assets.ASSETS["fomm"], sha256=good))
    assert assets.asset_path("fomm", tmp_path) == target


def test_readme_asset_table_is_generated_from_the_registry():
    readme = (REPO / "README.md").read_text()
    assert asset_table() in readme, "regenerate with: python -m reenact.app.assets_table"
