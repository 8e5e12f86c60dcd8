"""Docker images, compose stack helpers and the relay presence agent (not part of the wheel)."""
