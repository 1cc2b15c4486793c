# rmeeting, one instance per container. compose.yaml runs three of them behind nginx.
#
#     docker build -t rmeeting .
#     docker run -p 8080:8080 rmeeting                                  # embedded mode
#     docker run -e RMEETING_ETCD=http://etcd:2379 -e RMEETING_REDIS=redis://redis:6379/0 rmeeting
#
# Settings come from RMEETING_* variables (docs/operations.md). The --bind flag below wins over
# RMEETING_BIND: to listen elsewhere, override the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# what the package needs to build, nothing else (.dockerignore keeps the rest out anyway)
COPY pyproject.toml README.md ./
COPY rmeeting ./rmeeting
RUN pip install ".[cluster]" \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent rmeeting

USER rmeeting
WORKDIR /tmp
EXPOSE 8080

# /healthz: the process lives (readiness is /readyz). Python's urllib, so the image needs no curl;
# an HTTP error or a refused connection raises, and the exit status is then 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# SIGTERM (docker stop) drains: members get 1001 and their leaves are recorded
STOPSIGNAL SIGTERM
CMD ["rmeeting", "serve", "--bind", "0.0.0.0:8080"]
