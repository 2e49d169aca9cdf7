"""The servers the serving benchmark compares: which versions, and each one's command line.

(a) nlpserve with the model's batching, per version (and per --variant); (b) nlpserve with
max_batch_size=1; (c) loadtests/baselines/app.py, FastAPI + PyTorch per request; (d), (e) the
serving frameworks in their own venvs (loadtests/peers.py). Each serves only the benchmarked model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from loadtests.bench_config import BenchConfig, BenchError
from loadtests.peers import PEERS, peer_command, peer_env
from loadtests.servers import nlpserve_command
from service.repository import ModelVersion, RepositoryError, list_versions, read_model


@dataclass(frozen=True)
class ServerSpec:
    key: str  # directory name under work_dir
    label: str  # in tables and the plot
    kind: str  # "batching" | "unbatched" | "baseline" | "peer"
    command: list[str]
    env: dict[str, str]
    version: int | None = None  # nlpserve's pinned version (and the peers' version)
    precision: str = "fp32"
    variant: str = ""  # name of the --variant this server runs ('' = the model's own config)
    ready_path: str = "/v2/health/ready"

    @property
    def nlpserve(self) -> bool:
        return self.kind in ("batching", "unbatched")


def choose_versions(model_dir: Path, requested: tuple[int, ...]) -> list[ModelVersion]:
    """The versions for (a): as requested, else the served one plus the newest fp32 one."""
    try:
        if requested:
            return [read_model(model_dir, v) for v in requested]
        served = read_model(model_dir)
        chosen = [served]
        if served.manifest.precision != "fp32":
            every = [read_model(model_dir, n) for n in list_versions(model_dir)]
            chosen += [v for v in every if v.manifest.precision == "fp32"][-1:]
        return chosen
    except RepositoryError as e:
        raise BenchError(str(e)) from None


def baseline_checkpoint(config: BenchConfig, served: ModelVersion) -> Path:
    checkpoint = config.checkpoint
    if checkpoint is None and served.manifest.source_checkpoint:
        checkpoint = Path(served.manifest.source_checkpoint)
    if checkpoint is None or not (checkpoint / "config.json").is_file():
        raise BenchError(
            f"no PyTorch checkpoint for the baseline at {checkpoint} (manifest of "
            f"{served.path} names {served.manifest.source_checkpoint!r}); pass --checkpoint DIR"
        )
    return checkpoint


def single_model_repository(config: BenchConfig) -> Path:
    """work_dir/repository holding only the benchmarked model (a symlink), so nlpserve loads
    and warms up nothing else."""
    repo = config.work_dir / "repository"
    repo.mkdir(parents=True, exist_ok=True)
    link = repo / config.model
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to((config.repository / config.model).resolve(), target_is_directory=True)
    return repo


def server_specs(
    config: BenchConfig, versions: list[ModelVersion], checkpoint: Path
) -> list[ServerSpec]:
    repo = single_model_repository(config)
    served = versions[0]

    def nlpserve(key: str, kind: str, label: str, v: ModelVersion, **extra: str) -> ServerSpec:
        """nlpserve pinned to version `v`, with NLPSERVE_* `extra` on top of the shared ones."""
        env = {
            "NLPSERVE_PROVIDERS": config.providers,
            "NLPSERVE_INTRA_OP_THREADS": str(config.threads),
            "NLPSERVE_LOG_LEVEL": "warning",  # no per-request access log line (the baseline too)
            "NLPSERVE_LOG_FORMAT": "text",
            "NLPSERVE_PINNED_VERSIONS": f"{config.model}={v.version}",
            **extra,
        }
        label = f"{label} {v.manifest.precision}"
        return ServerSpec(
            key, label, kind, nlpserve_command(repo), env, v.version, v.manifest.precision
        )

    batching = "(a) nlpserve batching"
    specs = []
    if "batching" in config.servers:
        specs += [nlpserve(f"a-batching-v{v.version}", "batching", batching, v) for v in versions]
    for name, settings in config.variants:
        spec = nlpserve(
            f"a-{name}-v{served.version}", "batching", batching, served, **dict(settings)
        )
        shown = ", ".join(f"{k.removeprefix('NLPSERVE_').lower()}={v}" for k, v in settings)
        specs.append(replace(spec, label=f"{spec.label} [{name}: {shown}]", variant=name))
    if "unbatched" in config.servers:
        key, label = f"b-unbatched-v{served.version}", "(b) nlpserve max_batch_size=1"
        specs.append(nlpserve(key, "unbatched", label, served, NLPSERVE_MAX_BATCH_SIZE="1"))
    if "baseline" in config.servers:
        device = "cuda" if config.providers == "cuda" else "cpu"
        command = [
            sys.executable, "-m", "loadtests.baselines.app", "--checkpoint", str(checkpoint),
            "--model-name", config.model, "--device", device, "--log-level", "warning",
        ]  # fmt: skip
        specs.append(
            ServerSpec("c-baseline", "(c) FastAPI + PyTorch per request", "baseline", command, {})
        )
    return specs + peer_specs(config, repo, served)


def peer_specs(config: BenchConfig, repo: Path, served: ModelVersion) -> list[ServerSpec]:
    """(d), (e): the serving frameworks, on the served version with nlpserve's ORT threads and
    max batch size."""
    if config.peer_venvs is None:
        return []
    specs = []
    for name, peer in PEERS.items():
        if name not in config.servers:
            continue
        try:
            command = peer_command(
                name,
                config.peer_venvs,
                repo,
                config.model,
                served.version,
                config.threads,
                served.config.batching.max_batch_size,
            )
        except FileNotFoundError as e:
            raise BenchError(str(e)) from None
        specs.append(
            ServerSpec(
                f"peer-{name}",
                peer.label,
                "peer",
                command,
                peer_env(),
                served.version,
                served.manifest.precision,
                ready_path=peer.ready_path,
            )
        )
    return specs
