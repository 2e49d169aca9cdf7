# syntax=docker/dockerfile:1
# nlpserve serving images. Only the `serve` extras of pyproject.toml go in: ONNX Runtime,
# tokenizers, FastAPI; never PyTorch.
#
#   docker build --target cpu  -t nlpserve:0.1.0-cpu  .
#   docker build --target cuda -t nlpserve:0.1.0-cuda .
#   docker run -p 127.0.0.1:8000:8000 -v "$PWD/model_repository:/models:ro" nlpserve:0.1.0-cpu
#
# The model repository is a volume at /models by default. To bake it into the image instead:
#   docker build --target cpu --build-arg MODELS=baked -t nlpserve:0.1.0-cpu-models .
# which copies ./model_repository (what `make demo` writes; MODEL_REPOSITORY=<dir> picks
# another folder, which .dockerignore must then let into the context).

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
# Only what the serving package needs: pyproject's package discovery finds `service` alone.
COPY pyproject.toml README.md ./
COPY service/ service/
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
# onnxruntime and onnxruntime-gpu install the same `onnxruntime` module: swap the CPU build
# the `serve` extra brings for the GPU build of the `gpu` extra.
RUN /opt/venv/bin/pip install --no-cache-dir ".[serve]" \
    && /opt/venv/bin/pip uninstall --yes onnxruntime \
    && /opt/venv/bin/pip install --no-cache-dir ".[gpu]" \
    && /opt/venv/bin/python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()"

# ---------------------------------------------------------------- CUDA runtime
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
    NLPSERVE_LOG_FORMAT=json
WORKDIR /home/nlpserve
USER 10001:10001
VOLUME ["/models"]
# 8000: HTTP (task API, Open Inference Protocol, metrics); 8001: the protocol over gRPC.
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service", "--model-repository", "/models", "--host", "0.0.0.0", "--port", "8000"]

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
    NLPSERVE_LOG_FORMAT=json
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
CMD ["python", "-m", "service", "--model-repository", "/models", "--host", "0.0.0.0", "--port", "8000"]
