# syntax=docker/dockerfile:1
# pushsvc image: a builder stage makes wheels of pushsvc and its runtime dependencies and installs them
# into a virtualenv; the final stage holds only that venv on python:3.11-slim (no pip cache, no dev
# dependencies, no compilers). Pin the base by digest as well in your registry mirror if you can.

FROM python:3.11.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first for layer caching: they change less often than the code.
COPY pyproject.toml README.md constraints.txt ./
COPY pushsvc ./pushsvc

# Runtime dependencies only (no [dev] extra), at the versions the suite ran against (constraints.txt,
# `make lock`). All of them ship manylinux wheels for CPython 3.11.
RUN pip wheel --constraint constraints.txt --wheel-dir /wheels . \
    && pip install --no-index --find-links /wheels /wheels/*.whl \
    && pip uninstall --yes pip setuptools wheel \
    && find /opt/venv -type d -name __pycache__ -prune -exec rm -rf {} +


FROM python:3.11.11-slim-bookworm

LABEL org.opencontainers.image.title="pushsvc" \
      org.opencontainers.image.description="Push-notification delivery service: Kafka in, MongoDB targeting, APNs/FCM out"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 pushsvc \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pushsvc

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (k8s/deployment.yaml).
ENTRYPOINT ["pushsvc"]
CMD ["serve", "--config", "/etc/pushsvc/config.yaml"]
