"""server/kserve.py: KServe's /mnt/models layouts and flag spellings become a repository."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
from kairos.server.app import add_arguments
from kairos.server.kserve import (
    LayoutError,
    build_repository,
    kserve_repository,
    model_layout,
)
from kairos.server.repository import ModelRepository
from kairos_testing.models import identity, write_model

CONFIG = "max_batch_size: 8\n"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def versions_folder(path: Path) -> Path:
    """<path>/1/model.onnx, <path>/2/model.onnx and <path>/config.yaml."""
    write_model(path.parent, path.name, identity(), version=1, config=CONFIG)
    write_model(path.parent, path.name, identity(), version=2)
    return path


def file_folder(path: Path, file_name: str = "model.onnx") -> Path:
    path.mkdir(parents=True)
    (path / file_name).write_bytes(identity().SerializeToString())
    (path / "config.yaml").write_text(CONFIG)
    (path / "notes.txt").write_text("kept beside the model")
    return path


def test_layouts(tmp_path: Path) -> None:
    assert model_layout(file_folder(tmp_path / "a")) == "file"
    assert model_layout(file_folder(tmp_path / "b", "mlp.onnx")) == "file"
    assert model_layout(versions_folder(tmp_path / "c")) == "model"
    repo = tmp_path / "repo"
    write_model(repo, "m", identity())
    assert model_layout(repo) == "repository"
    (tmp_path / "empty").mkdir()
    assert model_layout(tmp_path / "empty") == "repository"


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not a folder"):
        model_layout(tmp_path / "missing")
    folder = file_folder(tmp_path / "two", "a.onnx")
    (folder / "b.onnx").write_bytes(b"x")
    with pytest.raises(LayoutError, match="several ONNX files"):
        model_layout(folder)


def test_a_repository_is_served_as_it_is(tmp_path: Path) -> None:
    write_model(tmp_path, "m", identity())
    assert build_repository(tmp_path, "other") == tmp_path
    assert build_repository(tmp_path, None) == tmp_path


def test_a_single_file_becomes_version_1(tmp_path: Path) -> None:
    source = file_folder(tmp_path / "mnt", "mlp.onnx")
    root = build_repository(source, "my-model", tmp_path / "built")
    assert (root / "my-model" / "1" / "model.onnx").read_bytes() == (source / "mlp.onnx").read_bytes()
    assert (root / "my-model" / "config.yaml").read_text() == CONFIG
    assert (root / "my-model" / "1" / "notes.txt").is_file()
    # Same filesystem here: hard links, no copies.
    assert (root / "my-model" / "1" / "model.onnx").stat().st_ino == (source / "mlp.onnx").stat().st_ino


def test_version_folders_keep_their_versions(tmp_path: Path) -> None:
    source = versions_folder(tmp_path / "mnt")
    root = build_repository(source, "my-model", tmp_path / "built")
    assert sorted(p.name for p in (root / "my-model").iterdir()) == ["1", "2", "config.yaml"]
    assert not any(p.is_symlink() for p in root.rglob("*"))


def test_a_single_model_needs_a_valid_name(tmp_path: Path) -> None:
    source = file_folder(tmp_path / "mnt")
    with pytest.raises(LayoutError, match="--model-name"):
        build_repository(source, None, tmp_path / "a")
    with pytest.raises(LayoutError, match="--model-name: invalid model name"):
        build_repository(source, "../escape", tmp_path / "b")


def test_the_built_repository_loads(tmp_path: Path) -> None:
    """The repository's own guards (nothing resolving outside it) accept what was built."""
    root = build_repository(versions_folder(tmp_path / "mnt"), "served", tmp_path / "built")

    async def load() -> list[tuple[str, str, str]]:
        repository = ModelRepository(root)
        try:
            await repository.load_all()
            assert repository.resolve("served").settings.max_batch_size == 8
            return [(e.name, e.version, e.state) for e in repository.index()]
        finally:
            await repository.close()

    assert asyncio.run(load()) == [("served", "2", "READY")]


def test_flags_in_both_spellings(tmp_path: Path) -> None:
    args = parse("--model_dir", str(tmp_path), "--model_name", "m", "--grpc_port", "9000",
                 "--http_port", "8080")
    assert (args.model_dir, args.model_name, args.grpc_port, args.http_port) == (
        tmp_path, "m", 9000, 8080)
    args = parse("--model-dir", str(tmp_path), "--model-name", "m", "--grpc-port", "9001")
    assert (args.model_dir, args.model_name, args.grpc_port) == (tmp_path, "m", 9001)
    assert parse().grpc_port == 8001  # the alias does not hide the default


def test_kserve_repository_from_flags(tmp_path: Path, caplog) -> None:
    assert kserve_repository(parse()) is None
    assert kserve_repository(parse("--model-repository", str(tmp_path))) is None
    source = file_folder(tmp_path / "mnt")
    root = kserve_repository(parse("--model-dir", str(source), "--model-name", "m",
                                   "--http-port", "8080"))
    assert (root / "m" / "1" / "model.onnx").is_file()
    assert "--http-port 8080 ignored" in caplog.text
    # --model-name beside --model-repository reads that folder the KServe way too.
    root = kserve_repository(parse("--model-repository", str(source), "--model-name", "n"))
    assert (root / "n" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize("argv, message", [
    (("--model-name", "m"), "--model-name needs --model-dir"),
    (("--model-dir", "/x", "--model-repository", "/y"), "not both"),
    (("--model-dir", "/nonexistent/kairos"), "is not a folder"),
])
def test_kserve_repository_errors(argv, message) -> None:
    with pytest.raises(SystemExit, match=message):
        kserve_repository(parse(*argv))
