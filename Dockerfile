# syntax=docker/dockerfile:1
# Build: docker build -t mail-continuity-exporter .
# Run:   docker run -p 10587:10587 -v $PWD/config.yml:/etc/mail-continuity-exporter/config.yml:ro \
#          mail-continuity-exporter --config.file=/etc/mail-continuity-exporter/config.yml
#
# Read-only root filesystem (recommended): the exporter writes only under
# /var/lib/mail-continuity-exporter (its --storage.path and working directory: the SQLite
# incident store, its -wal and -shm files, and any temporary files SQLite or Python need
# when /tmp is not writable).  tests/test_readonly_root.py runs it that way.
#   docker run --read-only --tmpfs /tmp:size=1m -v mce-data:/var/lib/mail-continuity-exporter ...
# The tmpfs is optional; with it, the 0700 temporary directory an inline TLS key in
# --web.config.file passes through never reaches the data volume.
#
# Dependencies come from requirements.lock (pinned and hashed; scripts/lock.sh writes it,
# scripts/audit.sh audits it), then the project itself without dependency resolution.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
# Bytecode is compiled here, at build time: a read-only root cannot cache it at run time.
RUN /opt/venv/bin/pip install --no-deps .

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
# Liveness: /-/healthy over HTTP, else HTTPS (when --web.config.file makes the port TLS-only;
# the certificate is not verified: this is the container talking to itself on loopback).
# 401 means basic auth is on and the server answered; pass --web.healthy-without-auth for a
# strict 200.  With another --web.listen-address port, override this HEALTHCHECK.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import ssl, sys, urllib.error, urllib.request\nctx = ssl._create_unverified_context()\nfor scheme in ('http', 'https'):\n    try:\n        with urllib.request.urlopen(scheme + '://127.0.0.1:10587/-/healthy', timeout=2, context=ctx) as r:\n            sys.exit(r.status != 200)\n    except urllib.error.HTTPError as err:\n        sys.exit(err.code != 401)\n    except Exception:\n        pass\nsys.exit(1)"]
ENTRYPOINT ["mail-continuity-exporter"]
CMD ["--storage.path=/var/lib/mail-continuity-exporter"]
