"""The phone client (SPEC §12) in a real headless Chromium against a real `stepbatch serve`.

The browser's geolocation is set by Playwright, which drives Debian's /usr/bin/chromium (both put
in place by scripts/setup-browser; nothing is downloaded). The screens it passes through are saved
in docs/screenshots/ for the README.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.server
import json
import os
import re
import socket
import struct
import threading
import uuid
import zlib

import httpx
import pymongo
import pytest
import uvicorn
from starlette.applications import Starlette

from stepbatch import crypto, mesh
from stepbatch.crypto import signing
from stepbatch.mesh.regions import LevelRegion
from stepbatch.service import web
from stepbatch.store.mongo import MongoStore
from tests.processes import ROOT, server_process, wait_until
from tests.strategies import WORLD_CENTRE, point_in

pytestmark = [pytest.mark.mongo, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# As root, in a closed network: no sandbox, no GPU, and none of Chromium's own connections out.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = ROOT / "docs" / "screenshots"
LEVEL = 14
REGION = LevelRegion(LEVEL, LEVEL, (19.0, 47.45, 19.1, 47.55))
HOME = mesh.triangle_at(*WORLD_CENTRE, LEVEL)
# Inside HOME and, once it subdivides, well inside its first child.
PHONE = point_in(HOME, (0.6, 0.25, 0.15))
REWARD_MICRO = {14: 122, 15: 61}


@pytest.fixture(scope="module")
def served(mongo_uri):
    """`stepbatch serve` on a free port over a database of this module's, with the level-14 region
    declared; the tests of this module share it (each starts its own wallet)."""
    name = f"stepbatch_test_web_{uuid.uuid4().hex[:12]}"
    with MongoStore(mongo_uri, name) as store:
        store.declare(REGION)
    try:
        args = ["--mongodb-uri", mongo_uri, "serve", "--port", "0", "--db", name]
        with server_process(args) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            wait_until(lambda: client.get("/ready").status_code == 200, what="/ready")
            yield server.url, client
    finally:
        with pymongo.MongoClient(mongo_uri) as admin:
            admin.drop_database(name)


@contextlib.contextmanager
def serving(site: web.Site):
    """The page's routes alone on uvicorn over loopback, in this process: for what does not need the API."""
    app = Starlette(routes=web.routes(site))
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=30) as client:
            wait_until(lambda: server.started, what="uvicorn to start")
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()


@pytest.fixture
def browser(tmp_path):
    """A phone-sized Chromium with a fresh profile, standing at PHONE with an 8 m fix."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="scripts/setup-browser installs playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("scripts/setup-browser installs Debian's chromium")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 390, "height": 844}, device_scale_factor=1, has_touch=True, locale="en-GB",
            timezone_id="UTC", permissions=["geolocation"],
            geolocation={"latitude": PHONE[0], "longitude": PHONE[1], "accuracy": 8})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            problems: list[str] = []
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on("console", lambda message: problems.append(message.text)
                    if "Content Security Policy" in message.text else None)
            yield context, page, problems
        finally:
            # What the page showed last, for a failure's post-mortem (pytest keeps tmp_path).
            for page in context.pages:
                page.screenshot(path=tmp_path / "last-screen.png", full_page=True)
            context.close()


def _now_iso() -> str:
    moment = dt.datetime.now(dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _walker_proofs(triangle_id: str, count: int) -> list[dict]:
    """One proof from each of `count` other phones, standing inside `triangle_id` now."""
    proofs = []
    for k in range(count):
        key = hashlib.sha256(b"phone-client-walker-%d" % k).digest()
        lat, lon = point_in(triangle_id, (1.0 + k % 3, 1.0, 1.0 + k % 2))
        payload = {"version": "STEP-PROOF-v1", "account": signing.address_of(key), "triangleId": triangle_id,
                   "lat": lat, "lon": lon, "accuracy": 6, "timestamp": _now_iso(), "nonce": f"walker-{k}"}
        proofs.append({"payload": payload, "signature": crypto.sign_proof(key, payload)})
    return proofs


def _answer(page, code: str) -> str:
    page.wait_for_selector(f"#answer[data-code='{code}']")
    return page.inner_text("#answer")


def _screenshot(page, name: str, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("header").scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOTS / name, full_page=full_page)


def test_a_phone_proves_where_it_is_and_sees_its_triangle_subdivide(served, browser):
    url, client = served
    context, page, problems = browser
    page.goto(url)

    # The first visit: the mesh around the phone, and no wallet yet.
    page.wait_for_selector(f"path.tri-current[data-triangle-id='{HOME}']")
    page.wait_for_selector("#create-wallet:visible")
    _screenshot(page, "phone-first-visit.png", full_page=True)

    # A new wallet, kept in the page, and its key exported.
    page.click("#create-wallet")
    address = page.inner_text("#address")
    assert re.fullmatch(r"0x[0-9a-f]{40}", address)
    page.click("#export-key")
    assert signing.address_of(bytes.fromhex(page.input_value("#exported-key")[2:])) == address
    page.click("#export-key")

    # The map draws the declared level-14 triangles around the position; the phone's is mineable.
    page.wait_for_selector(f"#triangle-id[data-triangle-id='{HOME}']")
    page.wait_for_selector(f"path.tri-current.tri-mineable[data-triangle-id='{HOME}']")
    assert page.locator("path.tri[data-state='active']").count() >= 10
    assert page.inner_text("#triangle-level") == str(LEVEL)
    assert "Mineable now" in page.inner_text("#mineable")

    # A proof is accepted and the balance shows its reward.
    page.click("#submit")
    assert "Accepted: +0.000122 STEP" in _answer(page, "ACCEPTED")
    page.wait_for_function("() => document.getElementById('balance').textContent === '0.000122'")
    _screenshot(page, "phone-accepted.png")

    # The page signed exactly the canonical message the validator checks.
    message = page.text_content("#signed-message")
    signed = json.loads(page.text_content("#signed-proof"))
    assert signed["payload"]["account"] == address and signed["payload"]["triangleId"] == HOME
    assert (signed["payload"]["lat"], signed["payload"]["lon"]) == PHONE
    assert crypto.canonical_message(signed["payload"]) == message
    assert crypto.recover_address(message, signed["signature"]) == address

    # A second proof within 10 s: the moratorium, in words.
    page.click("#submit")
    assert "Too soon: wait 10 seconds between proofs" in _answer(page, "MORATORIUM")
    _screenshot(page, "phone-moratorium.png")

    # A 120 m fix: the warning, then the refusal.
    context.set_geolocation({"latitude": PHONE[0], "longitude": PHONE[1], "accuracy": 120})
    page.wait_for_selector("#accuracy-warning:visible")
    assert "GPS accuracy is 120 m" in page.inner_text("#accuracy-warning")
    page.click("#submit")
    assert "not precise enough" in _answer(page, "LOW_GPS_ACCURACY")
    _screenshot(page, "phone-low-accuracy.png")

    # The history lists them all, newest first, with their codes and reasons.
    page.wait_for_function("() => document.querySelectorAll('#history li').length === 3")
    codes = page.eval_on_selector_all("#history li", "items => items.map(item => item.dataset.code)")
    assert codes == ["LOW_GPS_ACCURACY", "MORATORIUM", "ACCEPTED"]
    history = page.inner_text("#history")
    assert "since the last accepted proof" in history and "+0.000122 STEP · click 1" in history
    page.locator("#history").scroll_into_view_if_needed()
    _screenshot(page, "phone-history.png", full_page=True)

    # Ten other phones click HOME (sent over HTTP: the page's own account would wait out ten
    # moratoriums); the eleventh click subdivides it.
    context.set_geolocation({"latitude": PHONE[0], "longitude": PHONE[1], "accuracy": 8})
    verdicts = [json.loads(line) for line in client.post("/proofs", json=_walker_proofs(HOME, 10)).text.splitlines()]
    assert [v["code"] for v in verdicts] == ["ACCEPTED"] * 10 and verdicts[-1]["click_number"] == 11

    page.click("#refresh")
    child = mesh.triangle_at(*PHONE, LEVEL + 1)
    assert child in mesh.children(HOME)
    page.wait_for_selector(f"#triangle-id[data-triangle-id='{child}']")
    page.wait_for_selector(f"path.tri-subdivided[data-triangle-id='{HOME}']")
    assert page.locator("path.tri-active").count() >= 4  # HOME's children, at least
    assert page.inner_text("#triangle-level") == str(LEVEL + 1)

    # Once the moratorium has passed the page says so, and the next proof lands in the child.
    page.wait_for_selector("#mineable[data-mineable='true']")
    _screenshot(page, "phone-subdivided.png")
    # An accuracy of 1e-7 m is written in exponent form by JavaScript and by the validator alike
    # (SPEC §2's N(x)): the proof is accepted only if both wrote the same message.
    context.set_geolocation({"latitude": PHONE[0], "longitude": PHONE[1], "accuracy": 1e-7})
    page.wait_for_selector("#position:has-text('accuracy 0 m')")
    page.click("#submit")
    assert "Accepted: +0.000061 STEP" in _answer(page, "ACCEPTED")
    signed = json.loads(page.text_content("#signed-proof"))
    assert signed["payload"]["triangleId"] == child
    assert "|acc:1e-7|" in page.text_content("#signed-message") == crypto.canonical_message(signed["payload"])
    account = client.get(f"/account/{address}").json()["result"]
    assert (account["balanceMicro"], account["proofCount"]) == (REWARD_MICRO[14] + REWARD_MICRO[15], 2)
    page.wait_for_function("() => document.getElementById('balance').textContent === '0.000183'")

    # Offline, the page says so and refuses to send; back online, it goes on.
    context.set_offline(True)
    page.wait_for_selector("#offline:visible")
    assert page.is_disabled("#submit")
    _screenshot(page, "phone-offline.png")
    context.set_offline(False)
    page.wait_for_selector("#offline", state="hidden")

    assert problems == []


def test_the_page_sends_the_headers_of_a_page_that_holds_a_key(served):
    _url, client = served
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["img-src"] == "'self' data:"  # no basemap configured: no other origin
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["permissions-policy"].startswith("geolocation=(self)")
    assert client.get("/app/app.js").headers["content-security-policy"] == page.headers["content-security-policy"]
    assert client.get("/app/settings.json").json() == {"tileUrl": None, "tileAttribution": None, "built": True}


def test_the_page_says_when_it_was_not_built_and_admits_its_tile_server(tmp_path):
    tiles = "https://{s}.tile.example.org/{z}/{x}/{y}.png"
    with serving(web.Site(tmp_path / "not-built", tiles, "© the tile makers")) as client:
        page = client.get("/")
        assert page.status_code == 503
        assert "was not built" in page.text and "scripts/build-web" in page.text
        assert "img-src 'self' data: https://*.tile.example.org;" in page.headers["content-security-policy"]
        assert client.get("/app/settings.json").json() == {"tileUrl": tiles, "tileAttribution": "© the tile makers",
                                                           "built": False}
        assert client.get("/app/app.js").status_code == 404


@pytest.fixture
def tile_server():
    """A raster tile server on loopback: every tile is the same pale 256×256 PNG; the paths asked are kept."""
    asked: list[str] = []

    class Tiles(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(TILE_PNG)))
            self.end_headers()
            self.wfile.write(TILE_PNG)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _png(rgb: tuple[int, int, int], side: int = 256) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(rgb) * side for _ in range(side))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


TILE_PNG = _png((226, 236, 214))


def test_a_tile_url_draws_a_raster_basemap_under_the_triangles(mongo_uri, mongo_db_name, browser, tile_server):
    tiles, asked = tile_server
    env = {"STEPBATCH_TILE_URL": f"{tiles}/{{z}}/{{x}}/{{y}}.png", "STEPBATCH_TILE_ATTRIBUTION": "test tiles"}
    args = ["--mongodb-uri", mongo_uri, "serve", "--port", "0", "--db", mongo_db_name]
    _context, page, problems = browser
    with server_process(args, env=env) as server:
        page.goto(server.url)
        page.wait_for_selector("img.leaflet-tile-loaded")
        assert "test tiles" in page.inner_text(".leaflet-control-attribution")
    assert asked and all(re.fullmatch(r"/[0-9]+/[0-9]+/[0-9]+\.png", path) for path in asked)
    assert problems == []


def test_a_tile_template_must_name_an_origin_a_policy_can_admit():
    assert web.tile_origin("http://127.0.0.1:8080/{z}/{x}/{y}.png") == "http://127.0.0.1:8080"
    assert web.tile_origin("https://{s}.tile.example.org/{z}/{x}/{y}.png") == "https://*.tile.example.org"
    for template in ["javascript:alert(1)//{z}", "https://tiles-{s}.example.org/{z}.png", "//example.org/{z}.png",
                     "https://example.org; script-src *"]:
        with pytest.raises(ValueError, match="STEPBATCH_TILE_URL"):
            web.tile_origin(template)
