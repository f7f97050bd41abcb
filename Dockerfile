# Multi-stage build of every headroom binary. Runtime: a small Debian image, non-root.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libcurl4-openssl-dev \
      libssl-dev libsasl2-dev zlib1g-dev libzstd-dev libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p headroom-featurizer -p headroom-relay -p headroom-cli -p headroom-loadgen \
 && mkdir /out && cp target/release/headroom target/release/headroom-featurizer target/release/headroom-relay target/release/loadgen /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 zlib1g libzstd1 \
 && rm -rf /var/lib/apt/lists/* && useradd --uid 10001 --no-create-home headroom
COPY --from=build /out/ /usr/local/bin/
USER 10001
ENTRYPOINT ["/usr/local/bin/headroom-featurizer"]
