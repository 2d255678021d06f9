# raftlog node and CLI in a small image. Build: docker build -t raftlog .
# Data lives in the volume /var/lib/raftlog; the process runs as the unprivileged user "raftlog".

# --- build stage: RocksDB's bindings need clang/libclang; protos compile without protoc.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# scripts/dist.sh strips the debug info into raftlog-node.debug / raftlog.debug (kept in /dist of
# this stage for whoever debugs a crash; the image ships only the stripped binaries).
RUN cargo build --release -p raftlog-node -p raftlog-cli --bins \
 && CARGO_TARGET_DIR=/src/target RAFTLOG_NO_BUILD=1 scripts/dist.sh /dist

# --- runtime stage: just the binaries.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/raftlog --shell /usr/sbin/nologin raftlog \
 && mkdir -p /var/lib/raftlog && chown raftlog:raftlog /var/lib/raftlog
COPY --from=build /dist/raftlog-node /dist/raftlog /usr/local/bin/
USER raftlog
VOLUME ["/var/lib/raftlog"]
# gRPC (clients and peers) and admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 8051 9091
ENV RAFTLOG_DATA_DIR=/var/lib/raftlog \
    RAFTLOG_LISTEN_ADDR=0.0.0.0:8051 \
    RAFTLOG_ADMIN_ADDR=0.0.0.0:9091 \
    RAFTLOG_LOG_FORMAT=json
# SIGTERM drains requests and hands leadership over before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/raftlog-node"]
