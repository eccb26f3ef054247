"""Variant naming and placement in a model repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kairos.optimize.errors import OptimizeError
from kairos.optimize.repository import prepare_target, resolve_source


def test_source_from_model_folder_uses_the_highest_version(repo: Path) -> None:
    shutil.copytree(repo / "mlp" / "1", repo / "mlp" / "10")
    shutil.copytree(repo / "mlp" / "1", repo / "mlp" / "2")
    source = resolve_source(repo / "mlp")
    assert source.path == repo / "mlp" / "10" / "model.onnx"
    assert (source.name, source.repository) == ("mlp", repo)


def test_source_from_a_versioned_file_knows_its_repository(repo: Path) -> None:
    source = resolve_source(repo / "mlp" / "1" / "model.onnx")
    assert (source.name, source.repository, source.model_dir) == ("mlp", repo, repo / "mlp")


def test_target_is_a_new_model_with_the_original_config(repo: Path) -> None:
    target = prepare_target(resolve_source(repo / "mlp"), None, None, "int8")
    assert target.model_path == repo / "mlp-int8" / "1" / "model.onnx"
    assert (repo / "mlp-int8" / "config.yaml").read_text() == (repo / "mlp" / "config.yaml").read_text()


def test_existing_variant_needs_overwrite(repo: Path) -> None:
    source = resolve_source(repo / "mlp")
    prepare_target(source, None, None, "int8").model_path.write_bytes(b"x")
    with pytest.raises(OptimizeError, match="already exists; pass --overwrite"):
        prepare_target(source, None, None, "int8")
    assert prepare_target(source, None, None, "int8", overwrite=True).version == 1


def test_loose_file_needs_a_repository(teacher, tmp_path: Path) -> None:
    loose = tmp_path / "net.onnx"
    shutil.copy(teacher.path, loose)
    with pytest.raises(OptimizeError, match="pass --repository"):
        prepare_target(resolve_source(loose), None, None, "int8")
    target = prepare_target(resolve_source(loose), tmp_path / "r", None, "int8")
    assert target.model_path == tmp_path / "r" / "net-int8" / "1" / "model.onnx"


def test_bad_names_and_self_overwrite_are_refused(repo: Path) -> None:
    source = resolve_source(repo / "mlp")
    with pytest.raises(OptimizeError, match="invalid model name"):
        prepare_target(source, None, "../escape", "int8")
    with pytest.raises(OptimizeError, match="original model's"):
        prepare_target(source, None, "mlp", "int8", version=2)
