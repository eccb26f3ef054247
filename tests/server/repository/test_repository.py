"""The repository with real onnxruntime sessions: versions, failures, reload, paths."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from kairos.server.errors import InvalidInput, ModelNotFound, ModelUnavailable
from kairos.server.repository import ModelRepository
from kairos_testing.models import add_sub, identity, write_model
from onnx import TensorProto


def run(coroutine):
    return asyncio.run(coroutine)


def infer(repository: ModelRepository, name: str, version: str = "") -> str:
    return repository.resolve(name, version).version


def test_latest_version_by_default_and_all_versions_on_request(tmp_path):
    write_model(tmp_path, "m", identity(), version=1)
    write_model(tmp_path, "m", identity(), version=2)
    write_model(tmp_path, "both", identity(), version=1, config="version_policy: all\n")
    write_model(tmp_path, "both", identity(), version=3)

    async def scenario():
        repository = ModelRepository(tmp_path)
        await repository.load_all()
        assert infer(repository, "m") == "2"
        with pytest.raises(ModelNotFound):
            repository.resolve("m", "1")  # only the latest is served
        assert repository.versions("both") == ["1", "3"]
        assert infer(repository, "both", "1") == "1"
        await repository.close()

    run(scenario())


def test_a_failing_model_is_unavailable_with_reason_and_others_serve(tmp_path):
    write_model(tmp_path, "good", identity())
    write_model(tmp_path, "corrupt", b"\x08\x01garbage")
    write_model(tmp_path, "badconfig", identity(), config="max_batch_size: lots\n")
    (tmp_path / "noversions").mkdir()

    async def scenario():
        repository = ModelRepository(tmp_path)
        await repository.load_all()
        entries = {e.name: e for e in repository.index()}
        assert entries["good"].state == "READY"
        for name, reason in [
            ("corrupt", "onnxruntime cannot load"),
            ("badconfig", "max_batch_size"),
            ("noversions", "no version folder"),
        ]:
            assert entries[name].state == "UNAVAILABLE"
            assert reason in entries[name].reason
            with pytest.raises(ModelUnavailable):
                repository.resolve(name)
        rows = np.arange(8, dtype=np.float32).reshape(2, 4)
        served = repository.resolve("good")
        assert served.model == "good" and served.signature.inputs[0].name == "input"
        outputs = served.backend.run({"input": rows})
        assert list(outputs) == ["output"]
        np.testing.assert_array_equal(outputs["output"], rows)  # identity: exactly its input
        await repository.close()

    run(scenario())


def test_a_bug_building_a_version_is_logged_with_its_traceback_and_the_model_unavailable(
    tmp_path, caplog
):
    write_model(tmp_path, "m", identity())

    def broken_factory(**_):
        raise RuntimeError("planted factory bug")

    async def scenario():
        repository = ModelRepository(tmp_path, dispatcher_factory=broken_factory)
        with pytest.raises(ModelUnavailable, match="unexpected error: RuntimeError"):
            await repository.load("m")
        entry = repository.index()[0]
        assert (entry.name, entry.state) == ("m", "UNAVAILABLE")
        assert "planted factory bug" in entry.reason
        await repository.close()

    run(scenario())
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert logged and isinstance(logged[0].exc_info[1], RuntimeError)


def test_the_default_dispatcher_is_the_scheduler(tmp_path):
    from kairos.server.scheduler.dispatcher import AsyncDispatcher

    write_model(tmp_path, "m", identity())

    async def scenario():
        repository = ModelRepository(tmp_path)
        await repository.load("m")
        assert isinstance(repository.resolve("m").dispatcher, AsyncDispatcher)
        await repository.close()

    run(scenario())


def test_reload_swaps_in_the_new_model_and_failed_reload_keeps_the_old(tmp_path):
    write_model(tmp_path, "m", identity())

    async def scenario():
        repository = ModelRepository(tmp_path)
        await repository.load("m")
        old = repository.resolve("m")
        write_model(tmp_path, "m", add_sub())
        await repository.load("m")
        assert [s.name for s in repository.resolve("m").signature.inputs] == ["a", "b"]
        assert repository.resolve("m") is not old
        write_model(tmp_path, "m", b"broken now")
        with pytest.raises(ModelUnavailable):
            await repository.load("m")
        # The version that served before the failed reload keeps serving.
        assert [s.name for s in repository.resolve("m").signature.inputs] == ["a", "b"]
        await repository.unload("m")
        with pytest.raises(ModelUnavailable):
            repository.resolve("m")
        await repository.close()

    run(scenario())


def test_names_and_versions_cannot_leave_the_repository(tmp_path):
    outside = tmp_path / "outside"
    repo = tmp_path / "repo"
    write_model(outside, "secret", identity())
    repo.mkdir()
    os.symlink(outside / "secret", repo / "linked")
    write_model(repo, "ok", identity())
    os.symlink(outside / "secret" / "1", repo / "ok" / "2")

    async def scenario():
        repository = ModelRepository(repo)
        for name in ("../outside/secret", "/etc", "a/b", "..", ""):
            with pytest.raises((InvalidInput, ModelNotFound)):
                await repository.load(name)
        with pytest.raises(InvalidInput, match="outside the model repository"):
            await repository.load("linked")
        await repository.load("ok")
        assert repository.versions("ok") == ["1"]  # the symlinked version 2 is ignored
        with pytest.raises(InvalidInput):
            repository.resolve("ok", "../1")
        await repository.close()

    run(scenario())


def test_config_max_batch_size_overrides_the_default(tmp_path):
    write_model(tmp_path, "fixed", identity(TensorProto.FLOAT), config="max_batch_size: 8\n")

    async def scenario():
        repository = ModelRepository(tmp_path)
        await repository.load("fixed")
        assert repository.resolve("fixed").signature.max_batch_size == 8
        await repository.close()

    run(scenario())


def test_a_model_group_whose_members_do_not_fit_is_unavailable_with_reason(tmp_path):
    def group(name: str, member: str, accuracy: str = ", accuracy: 0.9") -> None:
        config = f"variants:\n  members:\n    fast: {{model: {member}{accuracy}}}\n"
        write_model(tmp_path, name, identity(), config=config)

    write_model(tmp_path, "other-shape", identity(width=8))
    write_model(tmp_path, "same", identity())
    group("missing", "nowhere")
    group("itself", "itself")
    group("mismatch", "other-shape")
    group("no-accuracy", "same", accuracy="")
    group("good", "same")

    async def scenario():
        repository = ModelRepository(tmp_path)
        await repository.load_all()
        entries = {e.name: e for e in repository.index()}
        for name, reason in [
            ("missing", "no other model 'nowhere'"),
            ("itself", "no other model 'itself'"),
            ("mismatch", "other inputs or outputs"),
            ("no-accuracy", "no top1_agreement in same/report.json"),
        ]:
            assert entries[name].state == "UNAVAILABLE", name
            assert reason in entries[name].reason, entries[name].reason
        served = repository.resolve("good")
        names = [v["name"] for v in served.dispatcher.describe()["variants"]["variants"]]
        assert names == ["reference", "fast"]
        await repository.close()

    run(scenario())
