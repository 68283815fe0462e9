# Production image: the gateway on Python 3.13 (audioop-lts), listening on 0.0.0.0:8080.
# Build: `docker build -t voicebot-gateway .` (docs/operations.md "Deployment"; scripts/build-image builds it
# without a Docker engine). BASE may name another image with Python 3.13 and `python` on PATH.
ARG BASE=python:3.13-slim
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH PYTHONPATH=/app
WORKDIR /app

# Layer 1, dependencies only: rebuilt when pyproject.toml or constraints.txt change, not the code.
# The gateway's requirements and its [postgres] (asyncpg) and [s3] (aiobotocore) extras, at the versions pinned in
# constraints.txt (the same pins the tests and CI install; scripts/lock regenerates them).
COPY pyproject.toml constraints.txt ./
RUN python -m venv /opt/venv \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres'] + p['optional-dependencies']['s3']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && useradd --system --uid 10001 --home-dir /app --no-create-home gateway \
    && mkdir -p /app/data && chown gateway /app/data

# Layer 2, the code (run from /app: PYTHONPATH), the shipped config and personas.
COPY gateway ./gateway
COPY config.yaml ./
COPY bots ./bots

# The call log (SQLite) and recordings live here unless storage.url points at PostgreSQL; with
# recording.url (s3://…) this holds only recordings waiting for their upload.
VOLUME /app/data
USER gateway
EXPOSE 8080
# SIGTERM drains: live calls may go on for server.drain_seconds; give `docker stop -t` that long.
STOPSIGNAL SIGTERM
# The slim image has no curl: Python's urllib asks /healthz; anything but a 200 exits 1 with one line.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u\ntry: u.urlopen('http://127.0.0.1:8080/healthz', timeout=2)\nexcept Exception as e: sys.exit(f'unhealthy: {e}')"]
CMD ["python", "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
