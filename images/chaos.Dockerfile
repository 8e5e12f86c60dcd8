# Chaos control service: python -m harness.control (HTTP API that restarts/pauses/... this stack's relays,
# drops UDP, partitions peers). Build context: images/ (docker-compose.yml names it; harness/images.py builds it).
# It drives Docker through the engine's socket, which the compose file mounts: this container can do
# whatever Docker can, so the API refuses any container without this stack's labels.
ARG BASE_IMAGE=connlib-relays/base:bookworm
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The same first two steps as the other images (shared layers), then docker-py (the `control` extra).
COPY .cache/wheels/deps/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir --disable-pip-version-check \
      -r /tmp/wheels/requirements.txt \
 && rm -rf /tmp/wheels
COPY .cache/wheels/deps/ /tmp/wheels/
RUN /opt/venv/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir --disable-pip-version-check \
      -r /tmp/wheels/requirements-control.txt \
 && rm -rf /tmp/wheels

LABEL org.connlib-relays.project=connlib-relays org.connlib-relays.image=chaos
EXPOSE 8081/tcp
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/venv/bin/python", "-m", "harness.control"]
CMD ["--listen", "0.0.0.0:8081"]

COPY .cache/wheels/project/ /opt/connlib-relays/
RUN /opt/venv/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \
      /opt/connlib-relays/*.whl \
 && rm /opt/connlib-relays/*.whl
