"""What the app shares with its middleware and routes: the service's typed state, and the scope
key under which each request's RequestInfo travels. Both sides import it from here, so neither
imports the other."""

from __future__ import annotations

from dataclasses import dataclass

from service.inference import InferenceService
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.model_control import ModelControl
from service.registry import ModelRegistry
from service.settings import Settings

INFO_KEY = "nlpserve.request"  # scope[INFO_KEY]: the request's RequestInfo


@dataclass(frozen=True)
class ServiceState:
    """Everything the routes use, built once per app by `create_app`."""

    settings: Settings
    registry: ModelRegistry
    lifecycle: Lifecycle
    inference: InferenceService
    metrics: ServiceMetrics
    control: ModelControl
