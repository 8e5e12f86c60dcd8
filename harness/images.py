"""The e2e suite's images, built with docker-py from ``relay_images/`` (no registry needed).

The suite must test the code in this tree, so it does not trust whatever ``connlib-relays/*:latest``
happens to be: it builds ``connlib-relays/{relay,portal,peer}:e2e`` with ``relay_images``' own
Dockerfiles, labelled with a digest of everything that goes into them (the Dockerfiles and files of
``relay_images/``, the ``connlib`` and ``fake_portal`` sources, ``pyproject.toml``, the base image).
When the labels match the tree, nothing is built (a second); otherwise one build takes about a
minute on this machine.

- The base image comes from ``relay_images/base.sh`` (docker pull, else debootstrap + import, cached),
  run only when the base tag is missing: the bootstrap is relay_images', not re-implemented here.
- The wheels the Dockerfiles copy (``.cache/wheels/{deps,project}``) are made with pip into a private
  build context, so that ``make images`` and a test run never write into each other's files.
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
from pathlib import Path

import docker
import docker.errors

log = logging.getLogger("harness.images")

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = ROOT / "relay_images"
CACHE = ROOT / "build" / "e2e-images"
NAMES = ("relay", "portal", "peer")
PREFIX = "connlib-relays"
BASE_IMAGE = os.environ.get("BASE_IMAGE", f"{PREFIX}/base:bookworm")
E2E_TAG = "e2e"
DIGEST_LABEL = "org.connlib-relays.source-digest"
PROJECT_LABEL = "org.connlib-relays.project"
MODES = ("auto", "build", "existing")


class ImagesUnavailable(RuntimeError):
    pass


def _files() -> list[Path]:
    files = [p for p in sorted(IMAGES_DIR.iterdir()) if p.is_file() and p.suffix != ".pyc"]
    for package in ("connlib", "fake_portal"):
        files += sorted((ROOT / package).rglob("*.py"))
    return [*files, ROOT / "pyproject.toml"]


def source_digest(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in _files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def _image(client: docker.DockerClient, tag: str):
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def ensure_images(client: docker.DockerClient, mode: str = "auto") -> dict[str, str]:
    """Image tags for the stack's roles, built first if needed (``mode``: auto | build | existing)."""
    if mode not in MODES:
        raise ValueError(f"image mode must be one of {MODES}")
    if mode == "existing":
        tags = {name: f"{PREFIX}/{name}:latest" for name in NAMES}
        missing = [tag for tag in tags.values() if _image(client, tag) is None]
        if missing:
            raise ImagesUnavailable(f"images missing: {missing} (run `make images`, or use --e2e-images=auto)")
        return tags
    tags = {name: f"{PREFIX}/{name}:{E2E_TAG}" for name in NAMES}
    base = _image(client, BASE_IMAGE) or _bootstrap_base(client)
    digest = source_digest(base.id)
    current = [(_image(client, tag) or None) for tag in tags.values()]
    if mode == "auto" and all(img is not None and img.labels.get(DIGEST_LABEL) == digest for img in current):
        log.info("e2e images are current (%s)", digest)
        return tags
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="e2e-images-") as context:
        _prepare_context(Path(context))
        for name, tag in tags.items():
            _build(client, Path(context), name, tag, digest)
    _prune(client)
    log.info("e2e images built in %.0fs (%s)", time.monotonic() - started, digest)
    return tags


def _bootstrap_base(client: docker.DockerClient):
    log.info("base image %s missing: running relay_images/base.sh (minutes on a cold machine)", BASE_IMAGE)
    result = subprocess.run(
        ["bash", str(IMAGES_DIR / "base.sh")],
        env={**os.environ, "BASE_IMAGE": BASE_IMAGE},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise ImagesUnavailable(f"relay_images/base.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    image = _image(client, BASE_IMAGE)
    if image is None:
        raise ImagesUnavailable(f"relay_images/base.sh succeeded but {BASE_IMAGE} does not exist")
    return image


def _requirements() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as project:
        return list(tomllib.load(project)["project"]["dependencies"])


def _dependency_wheels() -> Path:
    """Wheels of the project's dependencies, downloaded once per dependency list."""
    requirements = "\n".join(_requirements()) + "\n"
    target = CACHE / ("deps-" + hashlib.sha256(requirements.encode()).hexdigest()[:12])
    if (target / "requirements.txt").exists():
        return target
    shared = IMAGES_DIR / ".cache" / "wheels" / "deps"  # make images' copy, if it is for the same list
    tmp = Path(tempfile.mkdtemp(prefix="deps-", dir=_mkdir(CACHE)))
    if (shared / "requirements.txt").exists() and (shared / "requirements.txt").read_text() == requirements:
        shutil.copytree(shared, tmp, dirs_exist_ok=True)
    else:
        (tmp / "requirements.txt").write_text(requirements)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "-d",
                str(tmp),
                "-r",
                str(tmp / "requirements.txt"),
            ]
        )
    tmp.rename(target)
    return target


def _prepare_context(context: Path) -> None:
    for path in IMAGES_DIR.iterdir():
        if path.is_file():
            shutil.copy2(path, context / path.name)
    wheels = context / ".cache" / "wheels"
    shutil.copytree(_dependency_wheels(), wheels / "deps")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "-w",
            str(_mkdir(wheels / "project")),
            str(ROOT),
        ]
    )


def _build(client: docker.DockerClient, context: Path, name: str, tag: str, digest: str) -> None:
    try:
        client.images.build(
            path=str(context),
            dockerfile=f"{name}.Dockerfile",
            tag=tag,
            buildargs={"BASE_IMAGE": BASE_IMAGE},
            labels={DIGEST_LABEL: digest, PROJECT_LABEL: PREFIX},
            rm=True,
            forcerm=True,
            pull=False,
        )
    except docker.errors.BuildError as exc:
        tail = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in list(exc.build_log)[-30:])
        raise ImagesUnavailable(f"building {tag} failed: {exc}\n{tail}") from exc


def _prune(client: docker.DockerClient) -> None:
    """Earlier e2e builds, now untagged."""
    try:
        client.images.prune(filters={"dangling": True, "label": f"{DIGEST_LABEL}"})
    except docker.errors.APIError as exc:
        log.debug("prune failed: %s", exc)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise ImagesUnavailable(f"{' '.join(command[:4])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
