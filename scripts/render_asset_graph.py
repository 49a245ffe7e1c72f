"""Render the project's Dagster asset graph, as the Dagster UI draws it, to a PNG for the README.

Why a script: the picture in the README goes stale whenever an asset is added or rewired, so it is
regenerated from the real code location rather than drawn by hand. The script starts
`dagster-webserver` on a free local port with a throwaway DAGSTER_HOME, opens the global asset
lineage page (`/asset-groups`) in headless Chromium, expands every asset group, hides the side panels,
sizes the window so that the zoom-to-fit view stays above the zoom level where Dagster abbreviates
asset names, takes a screenshot and stops the server again (also on failure). The layout is Dagster's
vertical one by default: its horizontal layout of this graph needs a window ~3500 px wide for legible
names, too wide for a README (`--direction horizontal` draws it anyway).

Needs Playwright's Python package and a Chromium binary (no `playwright install` required):

    apt-get install -y chromium            # gives /usr/bin/chromium
    .venv/bin/pip install playwright

Usage (from anywhere; the code location is loaded from the repo's workspace.yaml):

    .venv/bin/python scripts/render_asset_graph.py [--direction vertical|horizontal] [OUTPUT.png]

OUTPUT.png defaults to docs/asset_graph.png. A run takes about 30 s, most of it loading the code location.

CRAWL2CKPT_CONFIG selects the settings file as usual (default configs/demo.yaml); assets that a
setting switches off (e.g. synthetic rewriting without `rewrite:`) are not drawn. CHROMIUM overrides
the browser binary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "asset_graph.png"
GRAPH_PATH = "/asset-groups"  # "Global asset lineage": every group of every code location
WAIT_FOR_ASSET = "checkpoint"  # the last asset of the pipeline: once drawn, the expanded graph is there
SERVER_START_TIMEOUT_S = 120.0
UI_TIMEOUT_MS = 60_000
# Below a zoom of 0.6 (MINIMAL_SCALE in Dagster's UI) nodes are drawn "minimal", with names cut to
# 18 characters; aim a bit above it so every asset name is shown whole.
MIN_SCALE = 0.6
TARGET_SCALE = 0.66
MAX_ZOOM = 1.2  # Dagster's cap for zoom to fit in the asset graph
BASE_VIEWPORT = (1280, 800)  # the smallest window used
MAX_VIEWPORT = (4200, 2600)
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# What each node shows besides its name (Dagster's "Asset node facets" menu). Materialization status,
# checks and automation state describe the throwaway instance, not the project, so they are left out.
NODE_FACETS = ["description", "kind-tag"]
DIRECTION = "vertical"
INSTALL_HINT = "install them with: apt-get install -y chromium && .venv/bin/pip install playwright"


def find_chromium() -> str:
    """Return the Chromium binary to drive, or exit with an install hint."""
    candidates = [os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else list(CHROMIUM_CANDIDATES)
    for candidate in candidates:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    sys.exit(f"error: no Chromium binary found (tried {', '.join(candidates)}); {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_webserver(dagster_home: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start dagster-webserver in its own process group (so it and its code server can be stopped together)."""
    candidates = [Path(sys.executable).parent / "dagster-webserver", REPO / ".venv" / "bin" / "dagster-webserver"]
    webserver = next((str(c) for c in candidates if c.exists()), shutil.which("dagster-webserver"))
    if webserver is None:
        sys.exit("error: dagster-webserver not found; run this with the project's virtualenv (.venv/bin/python)")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "DAGSTER_DISABLE_TELEMETRY": "1"}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [webserver, "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_serving(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(
        f"dagster-webserver not serving after {SERVER_START_TIMEOUT_S:.0f}s:\n{log_path.read_text()[-3000:]}"
    )


def stop_webserver(proc: subprocess.Popen[bytes]) -> None:
    """Stop the webserver's whole process group (it and its code server): SIGTERM, then SIGKILL after 20 s."""

    def group_alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc.poll()  # reap the webserver itself so that it does not linger as a zombie
        if not group_alive():
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)


def show_graph(page: Page, base_url: str) -> None:
    """Open the global lineage page, expand every asset group and hide the asset sidebar."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page.goto(base_url + GRAPH_PATH, wait_until="domcontentloaded")
    try:
        page.locator("[data-svg-viewport] svg").first.wait_for(state="visible")
        asset = page.get_by_text(WAIT_FOR_ASSET, exact=True)
        if not asset.first.is_visible():
            page.locator("[data-svg-viewport]").first.focus()  # the shortcut goes to the focused graph
            page.keyboard.press("Alt+e")  # "Expand all groups" (the graph settings menu has it too)
        asset.first.wait_for(state="visible")
    except PlaywrightTimeoutError as exc:
        raise RuntimeError(
            f"asset {WAIT_FOR_ASSET!r} not drawn on {GRAPH_PATH} within {UI_TIMEOUT_MS // 1000}s: does the code "
            "location load (see the webserver log below)?"
        ) from exc
    hide_sidebar = page.locator("button:has([aria-label='panel_show_right'])")
    if hide_sidebar.count():
        hide_sidebar.first.click()


def graph_geometry(page: Page) -> dict[str, float]:
    """Layout size of the graph, size of the area showing it and the current zoom."""
    return page.evaluate(
        """() => {
            const area = document.querySelector('[data-svg-viewport]');
            const svg = area.querySelector('svg');
            const matrix = new DOMMatrix(getComputedStyle(svg.parentElement).transform);
            const box = area.getBoundingClientRect();
            // The search/materialize toolbar floats over the top of the graph area: how far down does it reach?
            let overlay = 0;
            for (const fx of [0.25, 0.5, 0.75]) {
                let dy = 0;
                while (dy < 200) {
                    const hit = document.elementFromPoint(box.left + fx * box.width, box.top + dy);
                    if (!hit || area.contains(hit)) break;
                    dy += 2;
                }
                overlay = Math.max(overlay, dy + (dy ? 6 : 0));
            }
            return {graphW: svg.width.baseVal.value, graphH: svg.height.baseVal.value,
                    areaW: box.width, areaH: box.height, overlay, scale: matrix.a, x: matrix.e, y: matrix.f};
        }"""
    )


def settled_geometry(page: Page, timeout_s: float = 15.0) -> dict[str, float]:
    """Geometry once the (animated) zoom and panel transitions have stopped."""
    deadline = time.monotonic() + timeout_s
    previous = graph_geometry(page)
    stable = 0
    while time.monotonic() < deadline and stable < 4:
        page.wait_for_timeout(250)
        current = graph_geometry(page)
        stable = stable + 1 if current == previous else 0
        previous = current
    return previous


def zoom_to_fit(page: Page) -> None:
    """Double-click an empty spot of the graph area: Dagster's "zoom to fit" (capped at 1.2)."""
    spot = page.evaluate(
        """() => {
            const area = document.querySelector('[data-svg-viewport]');
            const box = area.getBoundingClientRect();
            for (let fy = 0.02; fy < 1; fy += 0.04) {
                for (let fx = 0.02; fx < 0.9; fx += 0.04) {
                    const x = box.left + fx * box.width, y = box.top + fy * box.height;
                    const hit = document.elementFromPoint(x, y);
                    if (hit === area || (hit && hit.tagName.toLowerCase() === 'svg' && area.contains(hit))) {
                        return {x, y};
                    }
                }
            }
            return null;
        }"""
    )
    if spot is None:
        raise RuntimeError("found no empty spot in the graph area to double-click (zoom to fit)")
    page.mouse.dblclick(spot["x"], spot["y"])


def render(base_url: str, output: Path, direction: str) -> None:
    """Screenshot the expanded global asset graph, in a window sized for zoom TARGET_SCALE."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=find_chromium(), headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            viewport = BASE_VIEWPORT
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=1)
            context.set_default_timeout(UI_TIMEOUT_MS)
            # UI state lives in localStorage: skip the "Join the Dagster community" dialog, collapse the main
            # navigation, pick the node facets and the layout direction.
            settings = {
                "communityNux": "true",
                "dagster-nav-collapsed": "true",
                "large-screen-nav-open": "false",
                "asset-node-facets": json.dumps(NODE_FACETS),
                "asset-graph-direction": json.dumps(direction),
            }
            context.add_init_script(
                "".join(f"window.localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in settings.items())
            )
            page = context.new_page()
            show_graph(page, base_url)
            geo = settled_geometry(page)
            # Dagster's zoom to fit is min(area width / graph width, area height / graph height) and centres the graph:
            # size the window so that it comes out at TARGET_SCALE, within [BASE_VIEWPORT, MAX_VIEWPORT], with room
            # above (and so below) the graph for the toolbar that floats over it.
            chrome_w = viewport[0] - geo["areaW"]
            chrome_h = viewport[1] - geo["areaH"] + 2 * geo["overlay"]
            viewport = (
                int(min(MAX_VIEWPORT[0], max(BASE_VIEWPORT[0], chrome_w + geo["graphW"] * TARGET_SCALE * 1.02))),
                int(min(MAX_VIEWPORT[1], max(BASE_VIEWPORT[1], chrome_h + geo["graphH"] * TARGET_SCALE * 1.02))),
            )
            page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
            show_graph(page, base_url)  # reload: lay out again in the final window (groups stay expanded)
            settled_geometry(page)
            for _ in range(3):
                zoom_to_fit(page)
                geo = settled_geometry(page)
                # Make the window tall enough for the graph at the zoom that fits its width (the vertical layout's zoom
                # to fit fits the width only; the window may be wider than TARGET_SCALE needs).
                width_scale = min(MAX_ZOOM, geo["areaW"] / geo["graphW"])
                wanted = (
                    viewport[0],
                    int(min(MAX_VIEWPORT[1], max(viewport[1], chrome_h + geo["graphH"] * width_scale + 2))),
                )
                if wanted == viewport:
                    break
                viewport = wanted
                page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
                settled_geometry(page)
            fits = (
                geo["graphW"] * geo["scale"] <= geo["areaW"] + 2
                and geo["y"] >= geo["overlay"] - 2
                and geo["y"] + geo["graphH"] * geo["scale"] <= geo["areaH"] + 2
            )
            if not fits:
                print("warning: the graph does not fit the window; part of it is cut off", file=sys.stderr)
            if geo["scale"] < MIN_SCALE:
                print(
                    f"warning: graph drawn at zoom {geo['scale']:.2f} < {MIN_SCALE}, so Dagster abbreviates long asset "
                    f"names; raise MAX_VIEWPORT or try --direction",
                    file=sys.stderr,
                )
            # Let the kind-tag icons finish loading (the UI also polls, so this may never go idle).
            with contextlib.suppress(PlaywrightTimeoutError):
                page.wait_for_load_state("networkidle", timeout=5_000)
            output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(output))
            print(
                f"wrote {output} ({viewport[0]}x{viewport[1]}, zoom {geo['scale']:.2f}, {output.stat().st_size} bytes)"
            )
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT, help="PNG to write")
    parser.add_argument(
        "--direction", choices=["horizontal", "vertical"], default=DIRECTION, help=f"graph layout (default {DIRECTION})"
    )
    args = parser.parse_args()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        sys.exit(f"error: the playwright Python package is missing; {INSTALL_HINT}")
    find_chromium()

    dagster_home = Path(tempfile.mkdtemp(prefix="render-asset-graph-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        if (REPO / "dagster.yaml").exists():
            shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
        else:
            (dagster_home / "dagster.yaml").write_text("")
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log_path = dagster_home / "webserver.log"
        proc = start_webserver(dagster_home, port, log_path)
        wait_until_serving(proc, base_url, log_path)
        try:
            render(base_url, args.output.resolve(), args.direction)
        except Exception:
            print(f"webserver log (tail):\n{log_path.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    finally:
        if proc is not None:
            stop_webserver(proc)
        shutil.rmtree(dagster_home, ignore_errors=True)


if __name__ == "__main__":
    main()
