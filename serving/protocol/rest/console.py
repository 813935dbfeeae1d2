"""The web console on the REST port: `GET /` serves a small page that lists the served models and
lets a person try each one (draw or upload a digit, upload a photo, type a sentence; probabilities as
bars, the Grad-CAM overlay, token importance).

Static files only (`console/`: HTML, CSS, plain JavaScript, no build step, nothing from a CDN); the
page calls the same TF Serving REST API any client uses. The one endpoint added here,
`GET /console/api/models`, lists the served model names, which TF Serving's REST API cannot (it has
no "list models" call); it is guarded like model status. `--rest_console=false` leaves all of it out.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from serving.repository import Repository

CONSOLE_DIR = Path(__file__).with_name("console")
# name -> content type: everything the page needs, and nothing else is served from the folder.
FILES = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css"}
PREFIX = "/console/"
API_MODELS = "/console/api/models"


def is_static(path: str) -> bool:
    """The page's own files, which hold no data: served without a bearer token (the page sends the
    token a person types with its API calls)."""
    return path == "/" or (path.startswith(PREFIX) and path[len(PREFIX) :] in FILES)


def add_routes(app: web.Application, repository: Repository) -> None:
    """Mount the console: `/`, its static files and the model list."""
    contents = {name: (CONSOLE_DIR / name).read_bytes() for name in FILES}  # read once, at start

    def file_response(name: str) -> web.Response:
        return web.Response(
            body=contents[name],
            content_type=FILES[name],
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                # Only this server's own script, styles and API; images from uploads and canvases.
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'",
            },
        )

    async def index(request: web.Request) -> web.Response:
        return file_response("index.html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FILES:
            raise web.HTTPNotFound(text=f"no such console file: {name}")
        return file_response(name)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"models": sorted(repository.models)})

    app.router.add_get("/", index)
    app.router.add_get(API_MODELS, models)
    app.router.add_get(PREFIX + "{name}", static)
