"""revproxy: an HTTPS reverse proxy and load balancer."""

# Decides, before any of them is imported, whether the forwarding path loads compiled.
from revproxy import native as native  # noqa: F401
