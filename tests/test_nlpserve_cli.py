"""The `nlpserve` command: dispatch, --help texts, and `serve --model DIR` with its export cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import tomllib

from tests.conftest import PROJECT_ROOT, QUIET_SERVICE_SETTINGS, ServerProcess, free_port


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from nlpserve_cli.main import main

    try:
        assert main(argv) == 0
    except SystemExit as exit_:  # argparse's --help
        assert exit_.code == 0
    return capsys.readouterr().out


def test_console_script_points_at_the_dispatcher() -> None:
    from nlpserve_cli import main as dispatcher

    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["nlpserve"].split(":")
    assert module == dispatcher.__name__ and callable(getattr(dispatcher, function))


def test_every_command_is_listed_and_unknown_ones_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from nlpserve_cli.main import main

    text = help_of([], capsys)
    for command in ("train", "pretrain", "evaluate", "export", "serve", "bench", "loadtest"):
        assert f"  {command} " in text
    assert main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err


def test_train_help_lists_its_commands_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(["train", "--help"], capsys)
    assert "train classifier" in text and "train translator" in text and "pretrain" not in text


def test_task_options_show_defaults_and_only_on_their_task(
    capsys: pytest.CaptureFixture[str],
) -> None:
    classifier = help_of(["train", "classifier", "--help"], capsys)
    nli = help_of(["train", "nli", "--help"], capsys)
    assert "--pair-column" in nli and "--pair-column" not in classifier  # pairs are NLI's
    from model_src.cli import main as model_src_main

    with pytest.raises(SystemExit) as refused:  # and refused there, not silently ignored
        model_src_main(["train", "classifier", "--train", "t", "--dev", "d", "--out", "o",
                        "--pair-column", "hypothesis"])  # fmt: skip
    assert refused.value.code == 2
    assert "passes over the train files (default: 3)" in classifier
    assert "(default: 5e-05)" in classifier
    export = help_of(["export", "classifier", "--help"], capsys)
    assert (
        "{int8}" in export
        and "(default: 2000)" in export
        and "BertForSequenceClassification" in export
    )


def test_serve_help_shows_model_options_and_the_service_env_vars(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of(["serve", "--help"], capsys)
    assert "--model DIR" in text and "{classifier,nli}" in text and "NLPSERVE_CACHE_DIR" in text
    assert "one of cpu|cuda|auto; default: auto; env NLPSERVE_PROVIDERS" in " ".join(text.split())
    assert "default: 8000; env NLPSERVE_PORT" in " ".join(text.split())
    # a setting's description may hold a "%", which argparse would take for a format
    assert "p95 10-11% and" in " ".join(text.split()) and "%%" not in text


def test_dispatcher_imports_no_torch() -> None:
    """`nlpserve serve` must start in the serving image, which has no PyTorch."""
    code = (
        "import sys, nlpserve_cli.main, nlpserve_cli.serve_model, service.__main__; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


def start_serving(model: Path, cache: Path, log: Path, *extra: str) -> ServerProcess:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        **{f"NLPSERVE_{k.upper()}": str(v).lower() for k, v in QUIET_SERVICE_SETTINGS.items()},
    }
    argv = ["serve", "--model", str(model), "--cache-dir", str(cache), "--port", str(port)]
    log_file = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "nlpserve_cli", *argv, *extra],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return ServerProcess(process, port, log, log_file)


def test_serve_model_exports_a_hf_directory_once_then_serves_the_cache(tmp_path: Path) -> None:
    from tests.test_hf_checkpoints import NLI_LABELS, save_hf_classifier

    model = save_hf_classifier(tmp_path / "hf-nli", NLI_LABELS, seed=4)
    cache = tmp_path / "cache"
    pairs = [{"premise": "A dog runs.", "hypothesis": "An animal moves."}]
    first = start_serving(model, cache, tmp_path / "first.log", "--task", "nli")
    try:
        first.wait_ready(timeout_s=120)  # the export runs first
        r = httpx.post(first.url + "/v1/nli", json={"pairs": pairs}, timeout=30)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == "nli" and set(answer["results"][0]["scores"]) == set(NLI_LABELS)
    finally:
        assert first.stop() == 0
    assert "exporting" in first.log_path.read_text()
    versions = list(cache.glob("*/repository/nli/[0-9]*"))
    assert len(versions) == 1 and (versions[0] / "manifest.json").is_file()

    second = start_serving(model, cache, tmp_path / "second.log", "--task", "nli")
    try:
        second.wait_ready()
        r = httpx.post(second.url + "/v1/nli", json={"pairs": pairs}, timeout=30)
        assert r.json()["results"] == answer["results"]
    finally:
        second.stop()
    assert "serving the cached export" in second.log_path.read_text()
    assert "exporting" not in second.log_path.read_text()
    assert list(cache.glob("*/repository/nli/[0-9]*")) == versions


def test_serve_model_refuses_a_task_the_checkpoint_does_not_hold(tmp_path: Path) -> None:
    from export.tiny import tiny_classifier_checkpoint
    from nlpserve_cli.serve_model import main

    checkpoint = tiny_classifier_checkpoint(tmp_path / "sentiment")
    assert main(["--model", str(checkpoint), "--task", "nli", "--cache-dir", str(tmp_path)]) == 2


def test_a_concurrent_export_of_the_same_files_is_served_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas on one cache: the second one's publish fails because the first published
    version 1 meanwhile; it serves that version."""
    import export.classifier
    from export.publish import PublishError
    from export.tiny import tiny_classifier_checkpoint
    from nlpserve_cli.serve_model import build_parser, ensure_exported

    checkpoint = tiny_classifier_checkpoint(tmp_path / "sentiment")

    def other_replica_won(model: Path, repository: Path, **_: object) -> Path:
        (repository / "sentiment" / "1").mkdir(parents=True)
        (repository / "sentiment" / "1" / "manifest.json").write_text("{}")
        raise PublishError(f"{repository / 'sentiment' / '1'} already exists")

    monkeypatch.setattr(export.classifier, "export_classifier", other_replica_won)
    args = build_parser().parse_args(["--model", str(checkpoint), "--cache-dir", str(tmp_path)])
    repository = ensure_exported(args)
    assert (repository / "sentiment" / "1" / "manifest.json").is_file()
