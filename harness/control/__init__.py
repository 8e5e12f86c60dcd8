"""The chaos control service: a small HTTP API, in the spirit of Toxiproxy's, that injects faults into
one running stack (``docker-compose.yml``'s ``chaos`` service; ``python -m harness.control``).

- :mod:`.targets`: which containers it may touch (only this stack's, by label) and how a request names them;
- :mod:`.journal`: the bounded history of every action and its outcome;
- :mod:`.actions`: the actions (relay restart/stop/start/kill/pause/unpause, UDP loss, a peer cut off
  from the portal or from a relay), each with an optional duration after which it is undone;
- :mod:`.api` and :mod:`.openapi`: the HTTP routes behind :class:`fake_portal.gate.Gate` (the admin
  API's token, Host and Origin checks) and their OpenAPI document.
"""
