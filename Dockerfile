# syntax=docker/dockerfile:1
#
# conda-reconcile in a container: `reconcile serve` on port 8000, for a configuration
# mounted at /data/channels.yaml (channel paths in it are relative to /data).
#
# The image installs a conda-reconcile wheel from dist/: the one a release published
# (pip download --no-deps conda-reconcile==X.Y.Z -d dist) or one built from a checkout
# (python3 -m pip wheel --no-deps -w dist .). Then:
#
#   docker build -t conda-reconcile .
#   docker run -p 8000:8000 -v "$PWD:/data" conda-reconcile
#   docker run -v "$PWD:/data" conda-reconcile apply -c /data/channels.yaml
#
# It runs as uid 10001: /data must be writable by it (or run with --user "$(id -u)").
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS install
COPY dist/ /tmp/dist/
# A virtual environment, copied whole into the final image: no pip cache, no wheel.
RUN python -m venv /opt/conda-reconcile \
 && /opt/conda-reconcile/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
        /tmp/dist/conda_reconcile-*.whl

FROM python:${PYTHON_VERSION}-slim
COPY --from=install /opt/conda-reconcile /opt/conda-reconcile
RUN groupadd --system --gid 10001 reconcile \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home reconcile \
 && mkdir /data \
 && chown 10001:10001 /data
ENV PATH=/opt/conda-reconcile/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECONCILE_HEALTHCHECK_URL=http://127.0.0.1:8000/api/status
WORKDIR /data
# Numeric, so that a runtime can check it is not root (Kubernetes' runAsNonRoot).
USER 10001:10001
EXPOSE 8000
# No curl in slim images: python's standard library asks the status API. Healthy is a
# 200; an error status, a refused connection or no answer within 5 s exits non-zero.
# Serving on another port? Set RECONCILE_HEALTHCHECK_URL to match.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(os.environ['RECONCILE_HEALTHCHECK_URL'], timeout=5).status != 200)"]
ENTRYPOINT ["reconcile"]
CMD ["serve", "-c", "/data/channels.yaml", "--host", "0.0.0.0", "--port", "8000"]
