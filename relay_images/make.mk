# Docker images and the compose stack. Included by the top-level Makefile, which defines VENV, PY and
# the $(VENV)/.installed target.
#
#   make images   base image (pull or debootstrap, cached) + wheels + relay/portal/peer images
#   make up       images, `compose up -d`, wait until relays are healthy and traffic flows, print the URL
#   make down     remove every container, network and volume of the stack
#   make logs     compose logs (FOLLOW=0 to print and return; SERVICE=relay-1 for one service)
#   make ps       compose ps
#
# Everything is keyed by COMPOSE_PROJECT_NAME (default connlib-relays).

RELAY_IMAGES_DIR := relay_images
RELAY_CACHE := $(RELAY_IMAGES_DIR)/.cache
WHEELS := $(RELAY_CACHE)/wheels

COMPOSE_PROJECT_NAME ?= connlib-relays
BASE_IMAGE ?= connlib-relays/base:bookworm
IMAGE_PREFIX ?= connlib-relays
IMAGE_TAG ?= latest
UP_TIMEOUT ?= 120
FOLLOW ?= 1
SERVICE ?=
export COMPOSE_PROJECT_NAME BASE_IMAGE IMAGE_PREFIX IMAGE_TAG

# `docker compose` (v2) where it exists, else Debian's docker-compose 1.29.
ifndef COMPOSE
COMPOSE := $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
                   elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; \
                   else echo "false no-docker-compose"; fi)
endif
COMPOSE_CMD = $(COMPOSE) -p $(COMPOSE_PROJECT_NAME) -f docker-compose.yml

# The project wheel is rebuilt when a source file changes; the dependency wheels when pyproject.toml does.
PROJECT_SOURCES := pyproject.toml $(shell find connlib fake_portal harness -name '*.py' 2>/dev/null)
RELAY_IMAGE_FILES := $(wildcard $(RELAY_IMAGES_DIR)/*.Dockerfile $(RELAY_IMAGES_DIR)/*.py \
                                $(RELAY_IMAGES_DIR)/*.sh $(RELAY_IMAGES_DIR)/*.tmpl)

.PHONY: images base-image wheels up down logs ps

base-image:
	@bash $(RELAY_IMAGES_DIR)/base.sh

$(WHEELS)/.deps: pyproject.toml | $(VENV)/.installed
	@rm -rf $(WHEELS)/deps && mkdir -p $(WHEELS)/deps
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
	  > $(WHEELS)/deps/requirements.txt
	$(PY) -m pip download -q --disable-pip-version-check --only-binary=:all: -d $(WHEELS)/deps \
	  -r $(WHEELS)/deps/requirements.txt
	@touch $@

$(WHEELS)/.project: $(PROJECT_SOURCES) $(WHEELS)/.deps
	@rm -rf $(WHEELS)/project && mkdir -p $(WHEELS)/project
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps -w $(WHEELS)/project .
	@touch $@

wheels: $(WHEELS)/.project

# docker build with a warm cache takes about a second per image: no stamp files that could lie.
images: base-image wheels
	@for image in relay portal peer; do \
	  echo "building $(IMAGE_PREFIX)/$$image:$(IMAGE_TAG)"; \
	  out=$$(docker build -q --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE_PREFIX)/$$image:$(IMAGE_TAG) \
	    -f $(RELAY_IMAGES_DIR)/$$image.Dockerfile $(RELAY_IMAGES_DIR) 2>&1) || { echo "$$out"; exit 1; }; \
	done
	@# the previous builds of these tags, now untagged
	@docker image prune -f --filter label=org.connlib-relays.project=connlib-relays >/dev/null 2>&1 || true
	@docker image ls --filter label=org.connlib-relays.project=connlib-relays \
	  --format '  {{.Repository}}:{{.Tag}}  {{.Size}}'

up: images $(VENV)/.installed
	$(COMPOSE_CMD) up -d --no-build --remove-orphans
	$(PY) $(RELAY_IMAGES_DIR)/wait_ready.py --project $(COMPOSE_PROJECT_NAME) --timeout $(UP_TIMEOUT)

down:
	$(COMPOSE_CMD) down --remove-orphans --volumes --timeout 5
	@# one-off containers (probes, `compose run`) carry the stack label too
	@ids=$$(docker ps -aq --filter label=org.connlib-relays.stack=$(COMPOSE_PROJECT_NAME)); \
	  if [ -n "$$ids" ]; then docker rm -f $$ids >/dev/null; fi

logs:
	$(COMPOSE_CMD) logs --tail=200 $(if $(filter 1,$(FOLLOW)),-f) $(SERVICE)

ps:
	$(COMPOSE_CMD) ps
