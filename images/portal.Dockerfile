# Portal: fake_portal (websocket control plane + admin API/dashboard). Build context: images/ (docker-compose.yml names it; harness/images.py builds it).
ARG BASE_IMAGE=connlib-relays/base:bookworm
FROM ${BASE_IMAGE}
# Layer order matters on this storage driver (every step costs seconds): the shared, rarely changing
# steps first (identical in relay/portal/peer, so the three images share them), then this image's
# metadata (cached until the dependencies change), and last one COPY + one RUN for what changes with
# the code. Python packages come in as wheels fetched on the host (make images): no network here.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY .cache/wheels/deps/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir --disable-pip-version-check \
      -r /tmp/wheels/requirements.txt \
 && rm -rf /tmp/wheels

LABEL org.connlib-relays.project=connlib-relays org.connlib-relays.image=portal
EXPOSE 4000/tcp 8080/tcp
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/venv/bin/python", "-m", "fake_portal"]
CMD ["--listen", "0.0.0.0:4000", "--admin", "0.0.0.0:8080", "--token", "connlib-relays-dev"]

COPY .cache/wheels/project/ turn_probe.py /opt/connlib-relays/
RUN /opt/venv/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \
      /opt/connlib-relays/*.whl \
 && rm /opt/connlib-relays/*.whl
