"""Exchange through the proxy: Outlook on the web, Outlook's EWS, ActiveSync phones.

    locust -f loadtest/scenarios/exchange.py --host https://demo.test:8443 ...
    (or: revproxy loadtest --scenario exchange)

Paths are Exchange's published ones on mail.<domain> and autodiscover.<domain>: /owa
(forms logon, static bundles, service.svc calls), /EWS/Exchange.asmx (SOAP),
/Microsoft-Server-ActiveSync and /autodiscover/autodiscover.xml.

Where the numbers come from: the ActiveSync Ping is held like Direct Push, for the
device's heartbeat (Microsoft's KB 905013 asks proxies for at least 15 minutes; the
server allows up to 59); here the demo server holds it for its --hold time. The user
mix, task weights and think times are ASSUMED (phones outnumber browser sessions;
Outlook polls EWS every few tens of seconds), to be replaced from real logs.
"""

from __future__ import annotations

import random
import uuid

from locust import constant, task

from loadtest.scenarios.common import LONG_POLL, ServiceUser, think

OWA_VERSION = "15.1.2507"
OWA_RESOURCES = (
    f"/owa/prem/{OWA_VERSION}/scripts/boot.worldwide.0.mouse.js",
    f"/owa/prem/{OWA_VERSION}/resources/styles/0/boot.worldwide.mouse.css",
    f"/owa/prem/{OWA_VERSION}/resources/images/0/sprite1.mouse.png",
)
EWS_ACTIONS = ("FindItem", "GetItem", "SyncFolderItems", "GetFolder")


class OwaUser(ServiceUser):
    """A browser on Outlook on the web: logon, page load with its bundles, mail reading."""

    weight = 3  # assumed
    wait_time = think(5, 30)  # assumed: a click every 5-30 s

    def on_start(self) -> None:
        super().on_start()
        self.etags: dict[str, str] = {}
        self.client.post(
            self.url("mail", "/owa/auth.owa"),
            data={"destination": "/owa/", "username": f"user{random.randint(1, 10_000)}"},
            allow_redirects=False,
            name="POST owa logon",
        )
        self.page_load()

    @task(1)
    def page_load(self) -> None:
        """The mailbox page and its bundles; the browser revalidates what it has cached."""
        self.client.get(self.url("mail", "/owa/"), name="GET owa page")
        for path in OWA_RESOURCES:
            cached = self.etags.get(path)
            headers = {"If-None-Match": cached} if cached else {}
            with self.client.get(
                self.url("mail", path),
                headers=headers,
                name="GET owa resource",
                catch_response=True,
            ) as r:
                if r.status_code in (200, 304):
                    r.success()
                    self.etags[path] = r.headers.get("ETag", cached or "")

    @task(6)
    def find_items(self) -> None:
        self.client.post(
            self.url("mail", "/owa/service.svc?action=FindItem"),
            json={"Body": {"Traversal": "Shallow", "Paging": {"MaxEntriesReturned": 40}}},
            name="POST owa service.svc",
        )

    @task(3)
    def get_item(self) -> None:
        self.client.post(
            self.url("mail", "/owa/service.svc?action=GetItem"),
            json={"Body": {"ItemIds": [uuid.uuid4().hex]}},
            name="POST owa service.svc",
        )


class OutlookEwsClient(ServiceUser):
    """Outlook (or a Mac mail client) on EWS, after Autodiscover."""

    weight = 2  # assumed
    wait_time = think(15, 45)  # assumed: Outlook's EWS polling is tens of seconds apart

    def on_start(self) -> None:
        super().on_start()
        self.client.post(
            self.url("autodiscover", "/autodiscover/autodiscover.xml"),
            data="<Autodiscover><Request><EMailAddress>user@demo.test</EMailAddress>"
            "</Request></Autodiscover>",
            headers={"Content-Type": "text/xml"},
            name="POST autodiscover.xml",
        )

    @task
    def ews_call(self) -> None:
        action = random.choice(EWS_ACTIONS)
        envelope = (
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
            f"<m:{action}/></s:Body></s:Envelope>"
        )
        self.client.post(
            self.url("mail", "/EWS/Exchange.asmx"),
            data=envelope,
            headers={
                "Content-Type": "text/xml; charset=utf-8",
                "SOAPAction": f'"http://schemas.microsoft.com/exchange/services/2006/messages/{action}"',
            },
            name="POST EWS",
        )


class ActiveSyncDevice(ServiceUser):
    """A phone on Direct Push: Ping held for the heartbeat, Sync when something changed."""

    weight = 4  # assumed: phones outnumber desktops
    wait_time = constant(0)  # the next Ping goes out as soon as one is answered

    def on_start(self) -> None:
        super().on_start()
        self.device = uuid.uuid4().hex[:16].upper()
        self.headers = {"MS-ASProtocolVersion": "14.1", "User-Agent": "loadtest-eas/1.0"}
        self.client.options(
            self.url("mail", "/Microsoft-Server-ActiveSync"),
            headers=self.headers,
            name="OPTIONS ActiveSync",
        )
        self.command("FolderSync")

    def command(self, name: str, timeout: int | None = None) -> str:
        query = f"Cmd={name}&User=user&DeviceId={self.device}&DeviceType=SmartPhone"
        if timeout is not None:
            query += f"&timeout={timeout}"  # demo server's knob; real devices put it in WBXML
        label = f"{LONG_POLL}POST ActiveSync Ping" if name == "Ping" else f"POST ActiveSync {name}"
        response = self.client.post(
            self.url("mail", f"/Microsoft-Server-ActiveSync?{query}"),
            data=b"\x03\x01\x6a\x00",  # a WBXML header; the demo server does not parse it
            headers={**self.headers, "Content-Type": "application/vnd.ms-sync.wbxml"},
            name=label,
        )
        return response.text if response.status_code == 200 else ""

    @task
    def direct_push(self) -> None:
        answer = self.command("Ping", timeout=self.long_poll_timeout)
        if "<Status>2</Status>" in answer:
            self.command("Sync")
