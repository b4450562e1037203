# prometheus/exporters.Dockerfile: Debian's PostgreSQL and Redis exporters in one image,
# crypto-pipeline-exporters:0.1.0 in docker-compose.yaml (services postgres-exporter and
# redis-exporter run it with different commands). The same packages, at the same versions,
# as the local stack's (scripts/stack.sh install); no image registry beyond the Debian base.
# Build from the repository root: docker build -f prometheus/exporters.Dockerfile .

FROM debian:bookworm-slim
ARG EXPORTER_PACKAGES="prometheus-postgres-exporter=0.11.1-3+b5 prometheus-redis-exporter=1.45.0-2+b4"
# policy-rc.d: the packages' maintainer scripts must not try to start services in the build
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${EXPORTER_PACKAGES} wget \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
COPY prometheus/postgres-exporter-queries.yml /etc/prometheus-exporters/postgres-exporter-queries.yml
USER 65534:65534
EXPOSE 9187 9121
CMD ["prometheus-postgres-exporter", "--extend.query-path=/etc/prometheus-exporters/postgres-exporter-queries.yml"]
