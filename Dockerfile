# Multi-stage build of every headroom binary. Runtime: a small Debian image, non-root.
FROM rust:1.95-bookworm AS build
# Debian's package versions are not pinned (DL3008): the archive replaces them with security
# updates, and a pinned version that was replaced would break the build. The base images are
# pinned by tag.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libcurl4-openssl-dev \
      libssl-dev libsasl2-dev zlib1g-dev libzstd-dev libclang-dev python3-pip && rm -rf /var/lib/apt/lists/*
# XGBoost's own library from the PyPI wheel, kept in the wheel's layout (it finds its bundled
# OpenMP through its rpath) at the same path in the runtime image. For GPUs use the `xgboost`
# wheel (CUDA build) instead of `xgboost-cpu`.
ARG XGBOOST_WHEEL=xgboost-cpu==3.4.1
RUN pip3 download --break-system-packages --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 "$XGBOOST_WHEEL" -d /tmp/whl \
 && python3 -m zipfile -e /tmp/whl/*.whl /opt/xgboost \
 && ln -s libxgboost.so /opt/xgboost/xgboost/lib/libxgboost.so.3
ENV XGBOOST_LIB_DIR=/opt/xgboost/xgboost/lib
# The CUDA variant (GPU overlay): --build-arg XGBOOST_WHEEL=xgboost==3.4.1
#   --build-arg CARGO_FEATURES="--features headroom-neural/cuda"
#   --build-arg NVRTC_WHEEL=nvidia-cuda-nvrtc-cu12==12.6.85
# burn's CUDA backend compiles its kernels at run time with NVRTC, which the NVIDIA container
# runtime does not mount (it brings the driver's libcuda only): its library comes from the
# PyPI wheel into /opt/nvrtc, on the runtime's library path. Empty for the CPU image.
ARG NVRTC_WHEEL=""
RUN mkdir -p /opt/nvrtc && if [ -n "$NVRTC_WHEEL" ]; then \
      pip3 download --break-system-packages --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 "$NVRTC_WHEEL" -d /tmp/nvrtc \
      && python3 -m zipfile -e /tmp/nvrtc/*.whl /tmp/nvrtc/x \
      && cp -a /tmp/nvrtc/x/nvidia/cuda_nvrtc/lib/. /opt/nvrtc/ \
      && for f in /opt/nvrtc/libnvrtc.so.[0-9]*; do case "$f" in *.so.*.*) ;; *) ln -sf "${f##*/}" /opt/nvrtc/libnvrtc.so;; esac; done; fi
ARG CARGO_FEATURES=""
WORKDIR /src
COPY . .
RUN cargo build --release $CARGO_FEATURES -p headroom-featurizer -p headroom-relay -p headroom-cli -p headroom-loadgen \
      -p headroom-scorer -p headroom-trainer -p headroom-sink -p headroom-recommender \
      -p headroom-drift-monitor -p headroom-retrainer \
 && mkdir /out && cp target/release/headroom target/release/headroom-featurizer target/release/headroom-relay \
      target/release/loadgen target/release/headroom-scorer target/release/headroom-train \
      target/release/headroom-sink target/release/headroom-recommender \
      target/release/headroom-drift-monitor target/release/headroom-retrain /out/

FROM debian:bookworm-slim
# curl: the healthcheck (GET /health/ready).
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 libsasl2-2 zlib1g libzstd1 \
 && rm -rf /var/lib/apt/lists/* && useradd --uid 10001 --no-create-home headroom
COPY --from=build /out/ /usr/local/bin/
COPY --from=build /opt/xgboost/ /opt/xgboost/
COPY --from=build /opt/nvrtc/ /opt/nvrtc/
ENV LD_LIBRARY_PATH=/opt/nvrtc
USER 10001
# Every service answers /health/ready on its HTTP port; HEADROOM_HTTP_PORT names it (the
# featurizer's 9464 by default; docker-compose.yml sets it per service, Kubernetes uses probes).
ENV HEADROOM_HTTP_PORT=9464
HEALTHCHECK --interval=10s --timeout=5s --retries=6 \
  CMD ["sh", "-c", "curl -fsS -o /dev/null http://127.0.0.1:${HEADROOM_HTTP_PORT}/health/ready || exit 1"]
ENTRYPOINT ["/usr/local/bin/headroom-featurizer"]
