"""Lync Server 2013 / Skype for Business external web traffic through the proxy.

    locust -f loadtest/scenarios/lync.py --host https://demo.test:8443 ...
    (or: revproxy loadtest --scenario lync)

The paths are the published ones (PRODUCT.md, Microsoft's reverse-proxy documentation):
lyncdiscover.<domain> for discovery, /meet and dialin.<domain> for meetings, /ucwa for
the web client API and its event channel, /abs for address-book files, /WebTicket for
tickets, NTLM on the ticket service.

Where the numbers come from: nowhere measured. The user mix (class weights), task
weights and think times are ASSUMED, chosen to give a plausible shape (many idle
event channels, a trickle of sign-ins, meetings joined in bursts) and written down so
that an operator with real logs replaces them. The only sourced figure is the event
channel's hold: UCWA holds an events GET open until something happens or its timeout
passes (the proxy must allow up to 1800 s), so the channel is re-issued at once.
"""

from __future__ import annotations

import random
import time
import uuid

from locust import constant, task

from loadtest.scenarios.common import (
    LONG_POLL,
    ServiceUser,
    ntlm_authenticate,
    ntlm_negotiate,
    think,
)

DISCOVER = "/Autodiscover/AutodiscoverService.svc/root"
TICKET_AUTH = "/WebTicket/WebTicketService.svc/Auth"


def _user_name() -> str:
    return f"user{random.randint(1, 10_000)}"


class LyncWebClient(ServiceUser):
    """A signed-in desktop or mobile client: discovery, tickets, address book, NTLM."""

    weight = 3  # assumed: most users are signed-in clients
    wait_time = think(10, 30)  # assumed: a web request every 10-30 s besides the event channel

    def on_start(self) -> None:
        super().on_start()
        self.sip = f"{_user_name()}@{self.domain}"
        self.discover()
        self.ntlm_sign_in()
        self.oauth_token()

    @task(1)
    def discover(self) -> None:
        self.client.get(
            self.url("discover", f"{DISCOVER}?originalDomain={self.domain}"),
            name="GET lyncdiscover root",
        )

    @task(1)
    def ntlm_sign_in(self) -> None:
        """The NTLM handshake: anonymous, negotiate, authenticate, on one new connection."""
        self.client.close()  # a sign-in starts on a fresh connection
        url = self.url("web", TICKET_AUTH)
        with self.client.get(url, name="NTLM 1 anonymous", catch_response=True) as r:
            if r.status_code == 401 and "NTLM" in r.headers.get("WWW-Authenticate", ""):
                r.success()
            else:
                r.failure(f"expected 401 offering NTLM, got {r.status_code}")
                return
        headers = {"Authorization": ntlm_negotiate()}
        with self.client.get(
            url, headers=headers, name="NTLM 2 negotiate", catch_response=True
        ) as r:
            challenge = r.headers.get("WWW-Authenticate", "")
            if r.status_code == 401 and challenge.startswith("NTLM "):
                r.success()
            else:
                r.failure(f"expected 401 with an NTLM challenge, got {r.status_code}")
                return
        headers = {"Authorization": ntlm_authenticate(challenge, self.sip)}
        with self.client.get(
            url, headers=headers, name="NTLM 3 authenticate", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"authenticate answered {r.status_code}: the connection changed?")

    @task(2)
    def oauth_token(self) -> None:
        form = {"grant_type": "password", "username": self.sip, "password": "demo"}
        self.client.post(
            self.url("web", "/WebTicket/oauthtoken"), data=form, name="POST oauthtoken"
        )

    @task(2)
    def web_ticket(self) -> None:
        envelope = (
            '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
            f"<IssueToken><Subject>{self.sip}</Subject></IssueToken></s:Body></s:Envelope>"
        )
        self.client.post(
            self.url("web", "/WebTicket/WebTicketService.svc"),
            data=envelope,
            headers={"Content-Type": "application/soap+xml; charset=utf-8"},
            name="POST WebTicketService",
        )

    @task(3)
    def address_book_delta(self) -> None:
        day = random.randint(0x1000, 0x1FFF)
        self.client.get(
            self.url("web", f"/abs/handler/D-{day:04x}-{day + 1:04x}.lsabs"),
            name="GET abs delta",
        )

    @task(1)
    def address_book_full(self) -> None:
        self.client.get(
            self.url("web", f"/abs/handler/F-{random.randint(0x1000, 0x1FFF):04x}.lsabs"),
            name="GET abs full",
        )


class MeetingAttendee(ServiceUser):
    """Someone joining a meeting from a link, or looking up dial-in numbers."""

    weight = 2  # assumed
    wait_time = think(20, 60)  # assumed: joins are minutes apart per person

    @task(3)
    def join_meeting(self) -> None:
        organizer = _user_name()
        conference = uuid.uuid4().hex[:8].upper()
        self.client.get(self.url("meet", f"/meet/{organizer}/{conference}"), name="GET meet page")
        self.client.get(
            self.url("discover", f"{DISCOVER}?originalDomain={self.domain}"),
            name="GET lyncdiscover root",
        )
        form = {"grant_type": "urn:microsoft.rtc:anonmeeting", "ms_rtc_conferenceuri": conference}
        self.client.post(
            self.url("web", "/WebTicket/oauthtoken"), data=form, name="POST oauthtoken"
        )

    @task(1)
    def dial_in_page(self) -> None:
        self.client.get(self.url("dialin", "/"), name="GET dialin page")


class UcwaEventChannel(ServiceUser):
    """A UCWA client's event channel: one long-poll GET after another."""

    weight = 3  # assumed: every web/mobile client keeps one channel open
    wait_time = constant(0)  # the next events GET goes out as soon as one is answered

    def on_start(self) -> None:
        super().on_start()
        self.ack = 1
        self.events = ""
        response = self.client.post(
            self.url("web", "/ucwa/oauth/v1/applications"),
            json={"UserAgent": "loadtest", "EndpointId": str(uuid.uuid4()), "Culture": "en-US"},
            name="POST ucwa application",
        )
        if response.status_code == 201:
            self.events = response.json()["_links"]["events"]["href"].split("?")[0]

    @task
    def events_long_poll(self) -> None:
        if not self.events:
            time.sleep(1)  # the application could not be created: try again, unhurried
            self.on_start()
            return
        response = self.client.get(
            self.url("web", f"{self.events}?ack={self.ack}&timeout={self.long_poll_timeout}"),
            name=f"{LONG_POLL}GET ucwa events",
        )
        if response.status_code == 200:
            self.ack += 1
