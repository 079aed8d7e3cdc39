ARG BASE_IMAGE=localhost/debian:bookworm
FROM ${BASE_IMAGE}
# The server's HTTP client wants the system's CA certificates (the official image has them).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# The build context holds the server binary as `qdrant`.
COPY qdrant /qdrant/qdrant
RUN mkdir -p /qdrant/storage /qdrant/snapshots && chown -R 1000:1000 /qdrant/storage /qdrant/snapshots
ENV QDRANT__STORAGE__STORAGE_PATH=/qdrant/storage \
    QDRANT__STORAGE__SNAPSHOTS_PATH=/qdrant/snapshots \
    QDRANT__SERVICE__HOST=0.0.0.0
USER 1000:1000
WORKDIR /qdrant
VOLUME ["/qdrant/storage"]
EXPOSE 6333 6334
CMD ["/qdrant/qdrant"]
