# Docker images and the compose stack. Included by the top-level Makefile, which defines VENV, PY and
# the $(VENV)/.installed target.
#
#   make images   base image (pull or debootstrap, cached) + the images (images/Dockerfile's targets) (python -m harness images)
#   make up       images, `compose up -d`, wait until relays are healthy and traffic flows, print the URL
#   make down     remove every container, network and volume of the stack
#   make logs     compose logs (FOLLOW=0 to print and return; SERVICE=relay-1 for one service)
#   make ps       compose ps
#
# Everything is keyed by COMPOSE_PROJECT_NAME (default connlib-relays).

COMPOSE_PROJECT_NAME ?= connlib-relays
BASE_IMAGE ?= connlib-relays/base:bookworm
IMAGE_PREFIX ?= connlib-relays
IMAGE_TAG ?= latest
UP_TIMEOUT ?= 120
FOLLOW ?= 1
SERVICE ?=
export COMPOSE_PROJECT_NAME BASE_IMAGE IMAGE_PREFIX IMAGE_TAG
# The portal's admin token for `make up`: random, made once per checkout (.admin-token, or set
# PORTAL_ADMIN_TOKEN), printed with the dashboard URL.
ADMIN_TOKEN = test -n "$$PORTAL_ADMIN_TOKEN" || { test -s .admin-token || \
  $(PY) -c 'import secrets; print(secrets.token_urlsafe(18))' > .admin-token; \
  PORTAL_ADMIN_TOKEN=$$(cat .admin-token); }; export PORTAL_ADMIN_TOKEN

ifndef COMPOSE
COMPOSE := $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
                   elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; \
                   else echo "false no-docker-compose"; fi)
endif
COMPOSE_CMD = $(COMPOSE) -p $(COMPOSE_PROJECT_NAME) -f docker-compose.yml

.PHONY: images base-image up down logs ps

base-image:
	@bash images/base.sh

# The one image build path (harness/images.py, docker-py), also what the e2e suite runs: base image,
# then the images docker-compose.yml names, each only when what goes into it changed.
images: $(VENV)/.installed
	@$(PY) -m harness images --tag $(IMAGE_TAG)

up: images $(VENV)/.installed
	@$(ADMIN_TOKEN); set -x; $(COMPOSE_CMD) up -d --no-build --remove-orphans
	@$(ADMIN_TOKEN); $(PY) -m harness wait-ready --project $(COMPOSE_PROJECT_NAME) --timeout $(UP_TIMEOUT)

down:
	$(COMPOSE_CMD) down --remove-orphans --volumes --timeout 5
	@# one-off containers (probes, `compose run`) carry the stack label too
	@ids=$$(docker ps -aq --filter label=org.connlib-relays.stack=$(COMPOSE_PROJECT_NAME)); \
	  if [ -n "$$ids" ]; then docker rm -f $$ids >/dev/null; fi

logs:
	$(COMPOSE_CMD) logs --tail=200 $(if $(filter 1,$(FOLLOW)),-f) $(SERVICE)

ps:
	$(COMPOSE_CMD) ps
