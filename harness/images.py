"""The one way this project's images are built: ``make images``/``make up`` (through
``python -m harness images``) and the e2e suite call :func:`ensure_images`.

What to build comes from the topology's definition, ``docker-compose.yml``: every service's
``image`` and ``build`` (context ``images/``, Dockerfile, ``BASE_IMAGE`` argument), so that
``docker compose build`` builds the same images from the same context. Steps:

1. the base image: ``images/base.sh`` (docker pull, else debootstrap + import, cached; a second
   or so when it is current);
2. the wheels the Dockerfiles copy, in ``images/.cache/wheels/`` (``deps/``: ``pip download`` of
   pyproject's dependencies (``requirements.txt``) and of its ``control`` extra, which only the chaos
   image installs (``requirements-control.txt``), redone when those lists change; ``project/``: ``pip wheel --no-deps .``,
   redone when a source file changes). They are made on the host because pip inside a
   ``docker build`` cannot verify PyPI's certificate here (the host trusts a proxy's CA the images
   do not); each directory is replaced atomically;
3. one docker-py build per image, labelled with a digest of everything that goes into it (the files
   of ``images/``, the sources of the wheel's packages, ``pyproject.toml``, the base image's
   id): when every image of the tag carries the current digest, nothing is built (``mode="auto"``).

``mode``: ``auto`` (build what is stale), ``build`` (always), ``existing`` (use the tag as it is; fail
if an image is missing).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
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
WHEELS = IMAGES_DIR / ".cache" / "wheels"
PREFIX = os.environ.get("IMAGE_PREFIX", PROJECT)
BASE_IMAGE = os.environ.get("BASE_IMAGE", f"{PROJECT}/base:bookworm")
E2E_TAG = "e2e"
MODES = ("auto", "build", "existing")
PACKAGES = ("connlib", "fake_portal", "harness")
"""What the project wheel holds (pyproject's packages.find)."""
REQUIREMENTS = {"requirements.txt": None, "requirements-control.txt": "control"}
"""The requirement files of ``deps/``: pyproject's dependencies, or one of its extras."""


class ImagesUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageSpec:
    name: str  # relay, portal, peer: the last path element of the repository
    tag: str
    build: topology.Build


def image_specs(tag: str, path: Path = topology.COMPOSE_FILE) -> list[ImageSpec]:
    """The images the topology's services use, each once, with how to build it."""
    stack = topology.load({"IMAGE_PREFIX": PREFIX, "IMAGE_TAG": tag, "BASE_IMAGE": BASE_IMAGE}, path)
    specs: dict[str, ImageSpec] = {}
    for service in stack.services.values():
        if service.build is None or service.image in specs:
            continue
        name = service.image.rsplit("/", 1)[-1].split(":", 1)[0]
        specs[service.image] = ImageSpec(name, service.image, service.build)
    return list(specs.values())


def _sources() -> list[Path]:
    files = [p for p in sorted(IMAGES_DIR.iterdir()) if p.is_file() and p.suffix != ".md"]  # docs are not built
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return [*files, ROOT / "pyproject.toml"]


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
    started = time.monotonic()
    base = bootstrap_base(client)
    digest = source_digest(base.id)
    current = [_image(client, t) for t in tags.values()]
    if mode == "auto" and all(img is not None and img.labels.get(DIGEST_LABEL) == digest for img in current):
        log.info("Images current tag=%s digest=%s took_s=%.1f", tag, digest, time.monotonic() - started)
        return tags
    prepare_wheels()
    for spec in specs:
        built = time.monotonic()
        _build(client, spec, digest)
        log.info("Image built image=%s took_s=%.1f", spec.tag, time.monotonic() - built)
    _prune(client)
    log.info("Images built tag=%s digest=%s took_s=%.0f", tag, digest, time.monotonic() - started)
    return tags


def bootstrap_base(client: docker.DockerClient) -> Image:
    """``images/base.sh``: quick when the base image is current, minutes from nothing."""
    result = subprocess.run(
        ["bash", str(IMAGES_DIR / "base.sh")],
        env={**os.environ, "BASE_IMAGE": BASE_IMAGE},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise ImagesUnavailable(f"images/base.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    for line in result.stderr.splitlines():
        log.info("%s", line)
    image = _image(client, BASE_IMAGE)
    if image is None:
        raise ImagesUnavailable(f"images/base.sh succeeded but {BASE_IMAGE} does not exist")
    return image


def _requirements() -> dict[str, str]:
    """Each requirement file's text (self-references of the project's extras left out)."""
    with open(ROOT / "pyproject.toml", "rb") as project:
        meta = tomllib.load(project)["project"]
    files = {}
    for name, extra in REQUIREMENTS.items():
        listed = meta["dependencies"] if extra is None else meta["optional-dependencies"][extra]
        files[name] = "\n".join(r for r in listed if not r.startswith(meta["name"] + "[")) + "\n"
    return files


def _project_digest() -> str:
    digest = hashlib.sha256()
    for path in [ROOT / "pyproject.toml"] + [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def prepare_wheels() -> None:
    """``images/.cache/wheels/{deps,project}``, each redone only when what goes into it changed."""
    requirements = _requirements()
    deps = WHEELS / "deps"
    if any(not (deps / n).exists() or (deps / n).read_text() != text for n, text in requirements.items()):
        with _replacing(deps) as tmp:
            for name, text in requirements.items():
                (tmp / name).write_text(text)
                _pip("download", "--only-binary=:all:", "-d", str(tmp), "-r", str(tmp / name))
    project = WHEELS / "project"
    digest = _project_digest()
    stamp = project / ".digest"
    if not stamp.exists() or stamp.read_text() != digest:
        with _replacing(project) as tmp:
            _pip("wheel", "--no-deps", "-w", str(tmp), str(ROOT))
            (tmp / ".digest").write_text(digest)


class _replacing:
    """A temporary directory that replaces ``target`` when the block succeeds (and is removed otherwise)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.target.with_name(self.tmp.name + "-old")
        if self.target.exists():
            self.target.rename(old)
        self.tmp.rename(self.target)
        shutil.rmtree(old, ignore_errors=True)


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args[:1], "-q", "--disable-pip-version-check", *args[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise ImagesUnavailable(f"pip {args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")


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


def _prune(client: docker.DockerClient) -> None:
    """Earlier builds of these tags, now untagged."""
    try:
        client.images.prune(filters={"dangling": True, "label": f"{PROJECT_LABEL}={PROJECT}"})
    except docker.errors.APIError as exc:
        log.info("Image prune failed (ignored) error=%s", exc)
