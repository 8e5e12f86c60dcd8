"""The one way this project's images are built: ``make images``/``make up`` (through
``python -m harness images``) and the e2e suite call :func:`ensure_images`.

What to build comes from the topology's definition, ``docker-compose.yml``: every service's
``image`` and ``build`` (context ``images/``, Dockerfile, ``BASE_IMAGE`` argument), so that
``docker compose build`` builds the same images from the same context. Steps:

1. the base image: ``images/base.sh`` (docker pull, else debootstrap + import, cached; a second
   or so when it is current);
2. nothing on the host: ``images/Dockerfile`` builds the project and its dependencies inside the
   build (multi-stage, context the repository root), as ``docker compose build`` does;
3. one docker-py build per image (its target of ``images/Dockerfile``), labelled with a digest of everything that goes into it (the files
   of ``images/``, the sources of the wheel's packages, ``pyproject.toml``, the base image's
   id): when every image of the tag carries the current digest, nothing is built (``mode="auto"``).

``mode``: ``auto`` (build what is stale), ``build`` (always), ``existing`` (use the tag as it is; fail
if an image is missing).

Builds and the prune after them hold one host-wide lock (``BUILD_LOCK``): e2e workers side by side,
``make images`` in a test and other checkouts' runs would otherwise build the same tags at once, and
one's prune of untagged project images removes another's image between its last step and its tag
("failed to get digest"; the prune also spares untagged images younger than ``PRUNE_AGE``, for
builds outside the lock). Whoever waited finds the images current and builds nothing. A look that
finds the base and every image of the tag current (``auto``) takes no lock: it changes nothing, and
need not wait minutes for another checkout's build of other tags.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.models.images import Image

from . import topology
from .labels import DIGEST_LABEL, PROJECT, PROJECT_LABEL

log = logging.getLogger("harness.images")

ROOT = topology.ROOT
IMAGES_DIR = ROOT / "images"
PREFIX = os.environ.get("IMAGE_PREFIX", PROJECT)
BASE_IMAGE = os.environ.get("BASE_IMAGE", f"{PROJECT}/base:bookworm")
E2E_TAG = "e2e"
MODES = ("auto", "build", "existing")
PACKAGES = ("connlib", "fake_portal", "harness")
"""What the project wheel holds (pyproject's packages.find)."""
"""The requirement files of ``deps/``: pyproject's dependencies, or one of its extras."""


BUILD_LOCK = Path(tempfile.gettempdir()) / "connlib-relays-images.lock"


@contextlib.contextmanager
def build_lock(path: Path = BUILD_LOCK) -> Iterator[None]:
    """The host's one image builder at a time (an flock: released when its holder dies)."""
    with path.open("a") as handle:
        waited = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        if time.monotonic() - waited > 1:
            log.info("Image build lock taken waited_s=%.1f", time.monotonic() - waited)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ImagesUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageSpec:
    name: str  # relay, portal, peer: the last path element of the repository
    tag: str
    build: topology.Build


REPOSITORY_PATH = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
"""A repository path as Docker takes it (the distribution reference grammar, no registry host)."""


def check_prefix(prefix: str) -> str:
    """``prefix`` if Docker takes it as the front of an image repository, else a clear
    :class:`ImagesUnavailable` (the engine's own "invalid reference format" comes minutes into a
    build: after the base bootstrap, from the first tag)."""
    if not REPOSITORY_PATH.fullmatch(prefix):
        raise ImagesUnavailable(
            f"IMAGE_PREFIX {prefix!r} is not a Docker repository path: lowercase letters and digits, "
            "separated by '.', '_', '__', '-' or '/'"
        )
    return prefix


def image_specs(tag: str, path: Path = topology.COMPOSE_FILE) -> list[ImageSpec]:
    """The images the topology's services use, each once, with how to build it."""
    check_prefix(PREFIX)
    stack = topology.load({"IMAGE_PREFIX": PREFIX, "IMAGE_TAG": tag, "BASE_IMAGE": BASE_IMAGE}, path)
    specs: dict[str, ImageSpec] = {}
    for service in stack.services.values():
        if service.build is None or service.image in specs:
            continue
        name = service.image.rsplit("/", 1)[-1].split(":", 1)[0]
        specs[service.image] = ImageSpec(name, service.image, service.build)
    return list(specs.values())


def _sources() -> list[Path]:
    """Everything the build context gives the images (``.dockerignore``'s allowlist)."""
    files = [p for p in sorted(IMAGES_DIR.iterdir()) if p.is_file() and p.suffix != ".md"]  # docs are not built
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return [*files, ROOT / "pyproject.toml", ROOT / "README.md", ROOT / ".dockerignore"]


def source_digest(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in _sources():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def _image(client: docker.DockerClient, tag: str) -> Image | None:
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def ensure_images(client: docker.DockerClient, tag: str = E2E_TAG, mode: str = "auto") -> dict[str, str]:
    """Image tag per image name (``relay``, ``portal``, ``peer``), built first if ``mode`` asks."""
    if mode not in MODES:
        raise ValueError(f"image mode must be one of {MODES}")
    specs = image_specs(tag)
    tags = {spec.name: spec.tag for spec in specs}
    if mode == "existing":
        missing = [t for t in tags.values() if _image(client, t) is None]
        if missing:
            raise ImagesUnavailable(f"images missing: {missing} (run `make images`, or use the auto mode)")
        return tags
    if mode == "auto" and _current_without_lock(client, tags, tag):
        return tags
    with build_lock():
        return _ensure_built(client, specs, tags, tag, mode)


def _current_without_lock(client: docker.DockerClient, tags: dict[str, str], tag: str) -> bool:
    """Whether the base image is up to date (``images/base.sh`` with ``BASE_CHECK_ONLY=1``, which
    changes nothing) and every image of the tag carries the digest over it: then there is nothing to
    build, and no reason to wait for the host's build lock, which another checkout's or session's
    build may hold for minutes (its images are other tags). Anything else goes the locked way."""
    started = time.monotonic()
    base = _base_current(client)
    if base is None:
        return False
    digest = source_digest(base.id)
    if not _all_current(client, tags, digest):
        return False
    log.info("Images current tag=%s digest=%s took_s=%.1f (no lock)", tag, digest, time.monotonic() - started)
    return True


def ensure_base(client: docker.DockerClient) -> Image:
    """The base image, bootstrapped if missing or stale (under the build lock: after a build in
    progress); one that is up to date is returned without the lock."""
    current = _base_current(client)
    if current is not None:
        return current
    with build_lock():
        return bootstrap_base(client)


def _base_current(client: docker.DockerClient) -> Image | None:
    """The base image if ``images/base.sh`` finds it up to date (``BASE_CHECK_ONLY=1``: changes nothing)."""
    check = _base_script(timeout=120, BASE_CHECK_ONLY="1")
    return _image(client, BASE_IMAGE) if check.returncode == 0 else None


def _base_script(timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """``images/base.sh`` for ``BASE_IMAGE``, with ``env`` added to ours."""
    return subprocess.run(
        ["bash", str(IMAGES_DIR / "base.sh")],
        env={**os.environ, "BASE_IMAGE": BASE_IMAGE, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _all_current(client: docker.DockerClient, tags: dict[str, str], digest: str) -> bool:
    """Whether every image of ``tags`` exists and carries ``digest`` (built from these sources on this base)."""
    return all((img := _image(client, t)) is not None and img.labels.get(DIGEST_LABEL) == digest for t in tags.values())


def _ensure_built(
    client: docker.DockerClient, specs: list[ImageSpec], tags: dict[str, str], tag: str, mode: str
) -> dict[str, str]:
    started = time.monotonic()
    base = bootstrap_base(client)
    digest = source_digest(base.id)
    if mode == "auto" and _all_current(client, tags, digest):
        log.info("Images current tag=%s digest=%s took_s=%.1f", tag, digest, time.monotonic() - started)
        return tags
    for spec in specs:
        built = time.monotonic()
        _build(client, spec, digest)
        log.info("Image built image=%s took_s=%.1f", spec.tag, time.monotonic() - built)
    _prune(client)
    log.info("Images built tag=%s digest=%s took_s=%.0f", tag, digest, time.monotonic() - started)
    return tags


def bootstrap_base(client: docker.DockerClient) -> Image:
    """``images/base.sh``: quick when the base image is current, minutes from nothing."""
    result = _base_script(timeout=1800)
    if result.returncode != 0:
        raise ImagesUnavailable(f"images/base.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    for line in result.stderr.splitlines():
        log.info("%s", line)
    image = _image(client, BASE_IMAGE)
    if image is None:
        raise ImagesUnavailable(f"images/base.sh succeeded but {BASE_IMAGE} does not exist")
    return image


def _build(client: docker.DockerClient, spec: ImageSpec, digest: str) -> None:
    try:
        client.images.build(
            path=str(spec.build.context),
            dockerfile=spec.build.dockerfile,
            target=spec.build.target,
            tag=spec.tag,
            buildargs=spec.build.args,
            labels={DIGEST_LABEL: digest, PROJECT_LABEL: PROJECT},
            rm=True,
            forcerm=True,
            pull=False,
        )
    except docker.errors.BuildError as exc:
        tail = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in list(exc.build_log)[-30:])
        raise ImagesUnavailable(f"building {spec.tag} failed: {exc}\n{tail}") from exc


PRUNE_AGE = "10m"
"""Only untagged images older than this: a build running now (``docker compose build`` in a test,
another checkout's) has an untagged image of seconds between its last step and its tag."""


def _prune(client: docker.DockerClient) -> None:
    """Earlier builds of these tags, now untagged."""
    try:
        client.images.prune(filters={"dangling": True, "label": f"{PROJECT_LABEL}={PROJECT}", "until": PRUNE_AGE})
    except docker.errors.APIError as exc:
        log.info("Image prune failed (ignored) error=%s", exc)
