# syntax=docker/dockerfile:1
# The Stratus worker image: `stratus worker` by default; any other `stratus` command works too
# (docker run IMAGE submit /pipelines/cloud-metrics.yaml …).
#
#   docker build -t stratus:dev .
#
# Three stages: the release binary, ONNX Runtime from the pinned PyPI wheel (the version
# scripts/requirements.txt pins, the one `ort` api-31 loads), and a slim runtime image with
# neither a compiler nor Python, run as an unprivileged user.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       cmake pkg-config zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# Compiled in (include_str!): the embedded demo's pipelines, their SQL and schemas, the catalogue.
COPY catalogue ./catalogue
COPY pipelines ./pipelines
COPY schemas ./schemas
COPY sql ./sql
RUN cargo build --release --locked --bin stratus

FROM python:3.11-slim-bookworm AS onnxruntime
# The wheel holds libonnxruntime.so; nothing else of it is kept.
RUN pip install --no-cache-dir --no-deps --target /ort onnxruntime==1.31.1

FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/stratus --create-home stratus
COPY --from=onnxruntime /ort/onnxruntime/capi/libonnxruntime.so.1.31.1 /usr/local/lib/
COPY --from=build /src/target/release/stratus /usr/local/bin/stratus
COPY schemas /opt/stratus/schemas
COPY sql /opt/stratus/sql
COPY pipelines /opt/stratus/pipelines
COPY catalogue /opt/stratus/catalogue
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so.1.31.1 \
    STRATUS_METRICS_ADDR=0.0.0.0:9464 \
    STRATUS_WORKDIR=/var/lib/stratus/pipelines
WORKDIR /var/lib/stratus
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/stratus"]
CMD ["worker"]
