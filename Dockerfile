# syntax=docker/dockerfile:1
# Build: docker build -t mail-continuity-exporter .
# Run:   docker run -p 10587:10587 -v $PWD/config.yml:/etc/mail-continuity-exporter/config.yml:ro \
#          mail-continuity-exporter --config.file=/etc/mail-continuity-exporter/config.yml

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN /opt/venv/bin/pip install --no-compile .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="mail-continuity-exporter" \
      org.opencontainers.image.description="Prometheus exporter for mail availability and continuity" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10587 exporter \
 && useradd --system --uid 10587 --gid exporter --home-dir /var/lib/mail-continuity-exporter \
      --shell /usr/sbin/nologin exporter \
 && mkdir -p /var/lib/mail-continuity-exporter \
 && chown exporter:exporter /var/lib/mail-continuity-exporter
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10587:10587
WORKDIR /var/lib/mail-continuity-exporter
VOLUME ["/var/lib/mail-continuity-exporter"]
EXPOSE 10587
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:10587/-/healthy', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["mail-continuity-exporter"]
CMD ["--storage.path=/var/lib/mail-continuity-exporter"]
