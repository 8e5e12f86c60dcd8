"""``IMAGE_PREFIX`` is checked before any build (``harness.images.check_prefix``): Docker takes only
lowercase repository paths, and says so only when the first image is tagged, minutes in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.images import ImagesUnavailable, check_prefix


@pytest.mark.parametrize("prefix", ["connlib-relays", "connlib-hb", "team/connlib", "a.b_c__d--e", "x1/y2/z3"])
def test_docker_repository_paths_are_taken(prefix):
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["connlib-HB", "Connlib", "", "-x", "x-", "a//b", "a/", "x y", "x:1", "é"])
def test_anything_else_is_refused_by_name_before_a_build(prefix):
    with pytest.raises(ImagesUnavailable, match="IMAGE_PREFIX .* lowercase"):
        check_prefix(prefix)


def test_the_images_command_says_so_and_exits_1(tmp_path):
    env = {**os.environ, "IMAGE_PREFIX": "Connlib-HB", "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    done = subprocess.run(
        [sys.executable, "-m", "harness", "images"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "images: IMAGE_PREFIX 'Connlib-HB' is not a Docker repository path: lowercase letters and digits, "
        "separated by '.', '_', '__', '-' or '/'"
    )
