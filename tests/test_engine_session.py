"""The one ORT session factory: the settings it is given are the settings the session runs with."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.engine_settings import session_settings
from service.engines.session import CPU, SessionSettings, _options, create_session
from service.settings import Settings


def _entry(options: object, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)  # type: ignore[attr-defined]
    except Exception:  # ORT raises for a key never set
        return None


def test_threads_spin_only_inside_runs_by_default() -> None:
    options = _options(SessionSettings(intra_op_threads=2))
    assert options.intra_op_num_threads == 2
    assert _entry(options, "session.intra_op.allow_spinning") == "1"
    assert _entry(options, "session.force_spinning_stop") == "1"


@pytest.mark.parametrize(
    ("allow", "only_during_runs", "spinning", "stop"),
    [(True, False, "1", None), (False, True, "0", "1"), (False, False, "0", None)],
)
def test_spin_settings_reach_the_session_options(
    allow: bool, only_during_runs: bool, spinning: str, stop: str | None
) -> None:
    settings = SessionSettings(allow_spinning=allow, spin_only_during_runs=only_during_runs)
    options = _options(settings)
    assert _entry(options, "session.intra_op.allow_spinning") == spinning
    assert _entry(options, "session.force_spinning_stop") == stop


def test_service_settings_map_to_session_settings(tmp_path: Path) -> None:
    mapped = session_settings(
        Settings(
            model_repository=tmp_path,
            intra_op_threads=3,
            allow_spinning=True,
            spin_only_during_runs=False,
        )
    )
    assert (mapped.intra_op_threads, mapped.allow_spinning, mapped.spin_only_during_runs) == (
        3,
        True,
        False,
    )
    assert session_settings(Settings(model_repository=tmp_path)).spin_only_during_runs is True


def test_a_cpu_session_runs_the_model_it_was_given() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session, provider = create_session(
        model.SerializeToString(), SessionSettings(providers="cpu", intra_op_threads=2)
    )
    assert provider == CPU
    (y,) = session.run(None, {"x": np.array([1.0, 2.5], dtype=np.float32)})
    np.testing.assert_array_equal(y, [2.0, 5.0])
    onnx.checker.check_model(model)


def test_a_classifier_with_single_thread_runs_answers_the_same_on_both_sessions(
    model_repository: Path,
) -> None:
    from service.engines import ClassifierEngine
    from service.repository import read_model

    version = read_model(model_repository / "sentiment")
    settings = SessionSettings(providers="cpu", intra_op_threads=2, allow_spinning=False)
    engine = ClassifierEngine(version, settings, single_thread_runs=True)
    assert engine.single_thread_session is not None
    assert engine.single_thread_session.get_session_options().intra_op_num_threads == 1
    batch = engine.encoder.encode(["a fine film", "dull , long and loud", "ok"])
    for wide, narrow in zip(engine.run(batch), engine.run_single_thread(batch), strict=True):
        np.testing.assert_allclose(wide, narrow, atol=1e-6)
    # One thread per session already: nothing to put side by side, no second session.
    one = ClassifierEngine(version, replace(settings, intra_op_threads=1), single_thread_runs=True)
    assert one.single_thread_session is None


def test_a_translator_with_single_thread_runs_decodes_the_same_on_both_sessions(
    model_repository: Path,
) -> None:
    """Request-level batches side by side (and the step scheduler's lanes) run on one-thread
    encoder and decoder sessions: the same translations, greedy and beam, as on the wide ones."""
    from service.engines import TranslatorEngine
    from service.engines.translator import DecodingParams
    from service.repository import read_model

    version = read_model(model_repository / "translator")
    settings = SessionSettings(providers="cpu", intra_op_threads=2, allow_spinning=False)
    engine = TranslatorEngine(version, settings, single_thread_runs=True)
    narrow = engine.single_thread_generator
    assert narrow is not None
    for session in (narrow.encoder, narrow.decoder):
        assert session.get_session_options().intra_op_num_threads == 1
    batch = engine.encoder.encode(["a dog runs", "two men play football in a park", "hello"])
    for params in (DecodingParams(1, 16), DecodingParams(3, 16)):
        assert engine.run_single_thread(batch, params) == engine.run(batch, params)
    one = TranslatorEngine(version, replace(settings, intra_op_threads=1), single_thread_runs=True)
    assert one.single_thread_generator is None


def test_a_translator_batched_by_request_runs_side_by_side(app_client: Any) -> None:
    """NLPSERVE_TRANSLATION_BATCHING=request on two threads: the translator's batches may go
    side by side on one thread each, as a classifier's, and a lone request runs alone."""
    with app_client(intra_op_threads=2, translation_batching="request") as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["translator"]["batching"]["workers"] == 2
        answer = client.post("/v1/translate", json={"texts": ["a dog runs"]})
        assert answer.status_code == 200 and answer.json()["translations"][0]
        assert 'nlpserve_runs_alone_total{model="translator"} 1.0' in client.get("/metrics").text
    # Two workers: the operator's fixed runs side by side, on the two-thread sessions.
    with app_client(intra_op_threads=2, workers_per_model=2, translation_batching="request") as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["translator"]["batching"]["workers"] == 2
        answers = [c.post("/v1/translate", json={"texts": [f"a dog runs {i}"]}) for i in range(3)]
        assert [a.status_code for a in answers] == [200] * 3


def test_the_served_policy_counts_the_side_by_side_runs(app_client: Any) -> None:
    """Two threads, one worker: /v1/models reports the two one-thread runs the batcher may put
    side by side (the policy the batcher really has), and classification answers."""
    with app_client(intra_op_threads=2) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["sentiment"]["batching"]["workers"] == 2
        assert models["translator"]["batching"]["workers"] == 1  # translators: not classifiers
        answer = client.post("/v1/classify", json={"texts": ["a fine film"]})
        assert answer.status_code == 200
        # An idle server: that request's run had the engine to itself, on every thread.
        assert 'nlpserve_runs_alone_total{model="sentiment"} 1.0' in client.get("/metrics").text
    with app_client(intra_op_threads=2, side_by_side_under_load=False) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["sentiment"]["batching"]["workers"] == 1
