"""Model control (Triton's `--model-control-mode`): when the served models change.

- `none`: the repository is read once at start;
- `poll`: it is read again every `repository_poll_secs`; new and changed versions are loaded,
  versions no longer selected (or whose model left the repository) are retired;
- `explicit`: every model is loaded at start (Triton's `--load-model=*`), then models change only
  through the repository API (`load`, `unload`).

The mechanics (load beside, warm up, swap, drain the old one) are the registry's; this module
decides when they run and answers the API's refusals.
"""

from __future__ import annotations

import asyncio
import logging
import re

from service.errors import ErrorKind, ServiceError, shorten
from service.registry import ModelRegistry
from service.repository import MODEL_NAME_PATTERN
from service.settings import Settings

logger = logging.getLogger(__name__)


class ModelControl:
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings

    @property
    def mode(self) -> str:
        return self._settings.model_control_mode

    async def run(self) -> None:
        """Load the repository, then (poll mode) keep following it until cancelled."""
        await self._registry.load_all()
        if self.mode != "poll":
            return
        interval = self._settings.repository_poll_secs
        logger.info("polling %s every %g s", self._settings.model_repository, interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._registry.sync(prune=True)
            except Exception:  # a bug in one scan must not end polling for good
                logger.exception("polling the model repository failed; retrying next interval")

    def _check_api(self, name: str) -> None:
        if self.mode != "explicit":
            raise ServiceError(
                ErrorKind.BAD_REQUEST,
                f"explicit model load / unload is not allowed: model_control_mode is {self.mode}"
                " (start with --model-control-mode explicit)",
            )
        if not re.match(MODEL_NAME_PATTERN, name):
            raise ServiceError(ErrorKind.NOT_FOUND, f"unknown model {shorten(name)}")

    async def load(self, name: str) -> None:
        """Load (or reload) every selected version of `name`; error if none serves after."""
        self._check_api(name)
        if not (self._settings.model_repository / name).is_dir():
            raise ServiceError(
                ErrorKind.NOT_FOUND, f"model {shorten(name)} is not in the model repository"
            )
        await self._registry.sync(only=name)
        versions = self._registry.versions(name)
        if not any(m.ready for m in versions):
            raise ServiceError(
                ErrorKind.BAD_REQUEST,
                f"failed to load model {name!r} (the repository index and the server log say why)",
            )

    async def unload(self, name: str) -> None:
        self._check_api(name)
        served = self._registry.versions(name)
        if not served and not (self._settings.model_repository / name).is_dir():
            raise ServiceError(ErrorKind.NOT_FOUND, f"unknown model {shorten(name)}")
        await self._registry.unload(name)
