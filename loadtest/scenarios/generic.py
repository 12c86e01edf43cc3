"""A generic web mix: pages, static files of several sizes, form posts, slow pages.

    locust -f loadtest/scenarios/generic.py --host https://demo.test:8443 ...
    (or: revproxy loadtest --scenario generic)

It runs against one name below the target's domain (--generic-name, default mail) and
uses the demo servers' general paths: / (a small page), /big?bytes=N (static files),
/echo (a form post answered with itself), /slow?ms=N (a page the server takes time
to build). The size mix and think times are ASSUMED (a typical page: one HTML
document, a few scripts and images, now and then a form); no source.
"""

from __future__ import annotations

import random

from locust import task

from loadtest.scenarios.common import ServiceUser, think

STATIC_SIZES = (2 * 1024, 16 * 1024, 64 * 1024, 256 * 1024)  # bytes, assumed


class WebVisitor(ServiceUser):
    """A visitor browsing: a page with its static files, sometimes a form."""

    wait_time = think(1, 5)  # assumed: reading time between clicks

    def on_start(self) -> None:
        super().on_start()
        self.site = getattr(self.environment.parsed_options, "generic_name", "mail") or "mail"

    @task(5)
    def page(self) -> None:
        self.client.get(self.url(self.site, "/"), name="GET page")
        for size in random.sample(STATIC_SIZES, 2):
            self.client.get(self.url(self.site, f"/big?bytes={size}&cl=1"), name="GET static")

    @task(2)
    def dynamic_page(self) -> None:
        ms = random.randint(20, 200)
        self.client.get(self.url(self.site, f"/slow?ms={ms}"), name="GET dynamic page")

    @task(1)
    def form_post(self) -> None:
        body = random.randbytes(2048)
        self.client.post(
            self.url(self.site, "/echo"),
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            name="POST form",
        )
