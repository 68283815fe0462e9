# Production image: the gateway on Python 3.13 (audioop-lts), listening on 0.0.0.0:8080.
FROM python:3.13-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir ".[postgres]" && useradd --system --uid 10001 gateway \
    && mkdir -p /app/data && chown gateway /app/data
COPY config.yaml ./
COPY bots ./bots
# The call log (SQLite) and recordings live here unless storage.url points at PostgreSQL.
VOLUME /app/data
USER gateway
EXPOSE 8080
# SIGTERM drains: live calls may go on for server.drain_seconds; give `docker stop -t` that long.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status==200 else 1)"
CMD ["python", "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
