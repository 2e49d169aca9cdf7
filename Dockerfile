# syntax=docker/dockerfile:1
# nlpserve serving images. Only the `serve` (CPU) or `gpu` (CUDA) extras of pyproject.toml go
# in: ONNX Runtime, tokenizers, FastAPI and the `nlpserve` command; never PyTorch.
#
#   docker build --target cpu  -t nlpserve:0.1.0-cpu  .
#   docker build --target cuda -t nlpserve:0.1.0-cuda .
#   make demo   # writes runs/demo/model_repository (`make models`: ./model_repository)
#   docker run -p 127.0.0.1:8000:8000 -v "$PWD/runs/demo/model_repository:/models:ro" nlpserve:0.1.0-cpu
#
# The ENTRYPOINT is `nlpserve serve` and the repository, host and port come from NLPSERVE_*
# variables, so options pass straight through: `docker run ... nlpserve:0.1.0-cpu
# --max-batch-size 16 --log-level debug` (`--help` lists them all).
#
# The model repository is a volume at /models by default. To bake it into the image instead:
#   docker build --target cpu --build-arg MODELS=baked -t nlpserve:0.1.0-cpu-models .
# which copies ./model_repository (what `make models` writes);
# --build-arg MODEL_REPOSITORY=runs/demo/model_repository bakes the demo's models instead
# (.dockerignore lets exactly these two folders into the context).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# volume: /models stays empty for a mount; baked: MODEL_REPOSITORY is copied to /models.
ARG MODELS=volume

# ---------------------------------------------------------------- CPU: build the virtualenv
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what serving needs: pyproject's package discovery finds `service` and `nlpserve_cli`.
COPY pyproject.toml README.md ./
COPY service/ service/
COPY nlpserve_cli/ nlpserve_cli/
RUN /opt/venv/bin/pip install --no-cache-dir ".[serve]" \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---------------------------------------------------------------- model repository, two ways
FROM ${PYTHON_IMAGE} AS models-volume
RUN mkdir -p /models

FROM ${PYTHON_IMAGE} AS models-baked
ARG MODEL_REPOSITORY=model_repository
COPY ${MODEL_REPOSITORY}/ /models/

# models-${MODELS} names one of the two stages above, not an image, so there is no tag to pin.
# hadolint ignore=DL3006
FROM models-${MODELS} AS models

# ---------------------------------------------------------------- CUDA: build the virtualenv
FROM ${CUDA_IMAGE} AS cuda-base
# Version pins on apt packages break as soon as Ubuntu publishes a security fix; the base image
# tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM cuda-base AS cuda-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY nlpserve_cli/ nlpserve_cli/
# onnxruntime and onnxruntime-gpu install the same `onnxruntime` module, so the `gpu` extra is
# `serve-core` (everything but ONNX Runtime) plus onnxruntime-gpu, never both builds.
RUN /opt/venv/bin/pip install --no-cache-dir ".[gpu]" \
    && /opt/venv/bin/python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()"

# ---------------------------------------------------------------- CUDA runtime
# The CUDA and CPU runtime stages repeat their configuration lines: Docker shares instructions
# only through a common parent stage, and these two have different base images (choosing the
# base with a build argument instead would make `--target cuda` alone build a CPU image).
# tests/test_deploy_manifests.py checks that the two stay alike.
FROM cuda-base AS cuda
LABEL org.opencontainers.image.title="nlpserve" \
      org.opencontainers.image.description="BERT classifiers and a Transformer translator on ONNX Runtime with dynamic batching (CUDA)" \
      org.opencontainers.image.source="https://github.com/example/nlpserve"
RUN groupadd --system --gid 10001 nlpserve \
    && useradd --system --uid 10001 --gid nlpserve --no-create-home --shell /usr/sbin/nologin nlpserve
COPY --from=cuda-build /opt/venv /opt/venv
COPY --from=models --chown=10001:10001 /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NLPSERVE_PROVIDERS=cuda \
    NLPSERVE_LOG_FORMAT=json \
    NLPSERVE_MODEL_REPOSITORY=/models \
    NLPSERVE_HOST=0.0.0.0 \
    NLPSERVE_PORT=8000
WORKDIR /home/nlpserve
USER 10001:10001
VOLUME ["/models"]
# 8000: HTTP (task API, Open Inference Protocol, metrics); 8001: the protocol over gRPC.
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
# ENTRYPOINT, not CMD: `docker run IMAGE --flag` appends options instead of replacing the command.
ENTRYPOINT ["nlpserve", "serve"]

# ---------------------------------------------------------------- CPU runtime (the default target: last)
FROM ${PYTHON_IMAGE} AS cpu
LABEL org.opencontainers.image.title="nlpserve" \
      org.opencontainers.image.description="BERT classifiers and a Transformer translator on ONNX Runtime with dynamic batching (CPU)" \
      org.opencontainers.image.source="https://github.com/example/nlpserve"
RUN groupadd --system --gid 10001 nlpserve \
    && useradd --system --uid 10001 --gid nlpserve --no-create-home --shell /usr/sbin/nologin nlpserve
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=models --chown=10001:10001 /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NLPSERVE_PROVIDERS=cpu \
    NLPSERVE_LOG_FORMAT=json \
    NLPSERVE_MODEL_REPOSITORY=/models \
    NLPSERVE_HOST=0.0.0.0 \
    NLPSERVE_PORT=8000
WORKDIR /home/nlpserve
USER 10001:10001
VOLUME ["/models"]
# 8000: HTTP (task API, Open Inference Protocol, metrics); 8001: the protocol over gRPC.
EXPOSE 8000 8001
# Ready = every model loaded and warmed up. The slim image has no curl; Python's urllib does.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
# SIGTERM (docker stop, Kubernetes) turns readiness false and drains the queue before exiting.
STOPSIGNAL SIGTERM
# ENTRYPOINT, not CMD: `docker run IMAGE --flag` appends options instead of replacing the command.
ENTRYPOINT ["nlpserve", "serve"]
