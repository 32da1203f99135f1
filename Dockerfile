# syntax=docker/dockerfile:1
# Frameworm inference server image.
#   CPU (default):  docker build -t frameworm:cpu .
#   CUDA:           docker build --build-arg TORCH_INDEX_URL= -t frameworm:cuda .
#     (an empty index means PyPI's torch wheels, which bundle the CUDA runtime libraries;
#      the host needs only the NVIDIA driver and the container toolkit)
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------- build: a self-contained venv
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_REQUIREMENT="torch>=2.6,<2.14"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the chosen index, so that installing the project finds it satisfied and
# never pulls the (CUDA-bundling) PyPI build into a CPU image. DL3013: the version range comes
# from TORCH_REQUIREMENT, which matches pyproject.toml's.
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$TORCH_REQUIREMENT"; \
    else \
        pip install --no-cache-dir "$TORCH_REQUIREMENT"; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
# DL3013: the project itself, whose dependencies pyproject.toml bounds.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[redis,s3,sentry]"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=10001
RUN groupadd --system --gid "$APP_UID" frameworm \
    && useradd --system --uid "$APP_UID" --gid "$APP_UID" --home-dir /home/frameworm \
        --create-home --shell /usr/sbin/nologin frameworm \
    && mkdir -p /var/lib/frameworm/registry \
    && chown -R "$APP_UID:$APP_UID" /var/lib/frameworm
COPY --from=build /opt/venv /opt/venv
# Secrets are never baked in: give FRAMEWORM_API_KEY_PEPPER(_FILE) and
# FRAMEWORM_BOOTSTRAP_API_KEY(_FILE) at run time (the chart mounts them as files).
# DL3064: FRAMEWORM_API_KEYS_FILE is a path to hashed keys, not a secret.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/frameworm \
    XDG_CACHE_HOME=/tmp/.cache \
    FRAMEWORM_ENV=production \
    FRAMEWORM_HOST=0.0.0.0 \
    FRAMEWORM_PORT=8000 \
    FRAMEWORM_REGISTRY=/var/lib/frameworm/registry \
    FRAMEWORM_API_KEYS_FILE=/var/lib/frameworm/api-keys.json \
    FRAMEWORM_SEED_DEMO=false
USER ${APP_UID}:${APP_UID}
# The demo models are registered now, at build time, so a start never writes to the image.
# Development mode only for this step: production refuses to start without a pepper.
RUN FRAMEWORM_ENV=development frameworm registry seed-demo
# Writable paths; everything else can be mounted read-only (docker run --read-only).
VOLUME ["/var/lib/frameworm", "/tmp"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FRAMEWORM_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["frameworm"]
CMD ["serve"]
