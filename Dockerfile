# One image for every INVO process: `docker run <image> <name>`, where <name> is tenants, ledger,
# payments, transfers, payouts, webhooks, subscriptions, gateway, or migrate (every service's migrations, then exit).
# k8s/ runs it with `args: [<name>]`. Build from the repository root: `docker build -t invo:<tag> .`
#
# Three stages: `protos` generates the protobuf and gRPC code with grpcio-tools, `deps` installs the
# runtime dependencies (pyproject.toml's `dependencies`, nothing from `build` or `dev`) into a venv
# from wheels only, and `runtime` copies the two into a clean slim Python with the `services`
# package: no compiler, no pip cache, no development code (devstack/, tests/, tools/ stay out, see
# .dockerignore), no embedded PostgreSQL or NATS. tests/test_image.py holds this file to that.
# Pin the base by digest in production (`--build-arg PYTHON_IMAGE=python:3.11-slim-trixie@sha256:...`).
ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS protos
WORKDIR /src
COPY pyproject.toml ./
COPY tools/install.py tools/
RUN python -m venv /opt/protoc && /opt/protoc/bin/python tools/install.py --only build
COPY protos/ protos/
RUN mkdir gen && /opt/protoc/bin/python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
        protos/invo/v1/*.proto

FROM ${PYTHON_IMAGE} AS deps
WORKDIR /src
COPY pyproject.toml ./
COPY tools/install.py tools/
RUN python -m venv /opt/invo && /opt/invo/bin/python tools/install.py --only runtime \
    && /opt/invo/bin/python -m pip uninstall --yes --quiet pip

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/invo/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    INVO_ENVIRONMENT=production
RUN groupadd --system --gid 10001 invo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin invo
COPY --from=deps /opt/invo /opt/invo
COPY --from=protos /src/gen /app/gen
COPY services/ /app/services/
RUN python -m compileall -q /app/services /app/gen
WORKDIR /app
USER 10001:10001
EXPOSE 8080 50051
ENTRYPOINT ["python", "-m", "services"]
