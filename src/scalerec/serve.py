"""`scalerec serve RUN`: a run's model behind HTTP (FastAPI on uvicorn), loaded once.

    GET  /health                         {"status": "ok", "model": RUN, "epoch": E, "which": "best"}
    GET  /recommend?user=ID&k=10         {"user": ID, "items": [{"item": ID, "score": s}, ...]}, best first
    POST /recommend {"users": [...], "k": 10}   {"recommendations": [{"user": ID, "items": [...]}, ...]}
    POST /score {"user": ID, "items": [...]}    {"user": ID, "scores": [{"item": ID, "score": s}, ...]}

Recommendations leave out the user's seen items and come from Recommender.top, the scoring path of
`scalerec recommend` and full-ranking evaluation, so a served list is the one `scalerec recommend` prints. Ids
are the input file's. A request's mistake (an unknown user or item: 404; a bad k, malformed JSON or a missing
field: 400) is answered {"error": "..."}; k above the catalogue is clamped. With cold_start="popular" an unknown
user gets the most popular items instead ("cold_start": true; their score is their count of training
interactions).
"""

import functools
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalerec.errors import Terminated, UserError
from scalerec.find_batch import available_bytes
from scalerec.recommend import Recommender, load


class BadRequest(Exception):
    """A request's own mistake: answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def plain(value: Any) -> Any:
    """A numpy id or score as JSON has it."""
    return value.item() if isinstance(value, np.generic) else value


class Service:
    """What the endpoints answer, apart from HTTP: a Recommender, and the items' popularity for cold starts."""

    def __init__(self, rec: Recommender, cold_start: str | None = None) -> None:
        self.rec, self.cold_start = rec, cold_start
        ds = rec.dataset
        self.popular = np.bincount(ds.train_items, minlength=len(rec.items)) if cold_start == "popular" else None
        self.table: tuple[torch.Tensor, torch.Tensor] | None = None  # every user's top K, where precomputed
        self.by_popularity = None if self.popular is None else np.argsort(-self.popular, kind="stable")

    def precompute(self, k: int, batch: int = 256) -> None:
        """Every user's k best unseen items, computed now by the same scoring as a request's: requests for up to k
        items are then answered from this table (exact; scores up to the float rounding of a batch of users)."""
        rows = list(range(len(self.rec.users)))
        if (needed := len(rows) * k * 12) > available_bytes():  # an item (8 bytes) and a score (4) per entry
            raise UserError(
                f"--precompute {k}: every user's top {k} takes {needed / 2**30:.1f} GB, more than the "
                f"{available_bytes() / 2**30:.1f} GB available; a smaller K, or none"
            )
        parts = [self.rec.top(rows[s : s + batch], k) for s in range(0, len(rows), batch)]
        self.table = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    def _top(self, known: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rec.rows_of(known)
        if self.table is not None and k <= self.table[0].shape[1]:
            return self.table[0][rows, :k], self.table[1][rows, :k]
        return self.rec.top(rows, k)

    def health(self) -> dict[str, Any]:
        rec = self.rec
        return {"status": "ok", "model": str(rec.path), "epoch": rec.epoch, "which": rec.which}

    def recommend(self, users: list[Any], k: Any) -> list[dict[str, Any]]:
        """Each user's k best unseen items, best first (unknown users: 404, or the popular items)."""
        k = self._k(k)
        known = list(dict.fromkeys(str(u) for u in users if str(u) in self.rec._index))
        unknown = [u for u in users if str(u) not in self.rec._index]
        if unknown and self.popular is None:
            raise BadRequest(404, f"unknown user(s) {', '.join(map(str, unknown[:5]))}: not among the model's users")
        if known:
            items, scores = self._top(known, k)
        at = {u: r for r, u in enumerate(known)}
        out = []
        for user in users:
            if str(user) not in at:
                out.append(self._popular(user, k))
                continue
            r = at[str(user)]
            found = items[r] >= 0
            raw = plain(self.rec.users[self.rec._index[str(user)]])  # as the file has it: 1, not "1"
            out.append({"user": raw, "items": self._entries(items[r][found].tolist(), scores[r][found].tolist())})
        return out

    def score(self, user: Any, items: Any) -> dict[str, Any]:
        if not isinstance(items, list) or not items:
            raise BadRequest(400, "'items' must be a non-empty list of item ids")
        if str(user) not in self.rec._index:
            raise BadRequest(404, f"unknown user {user}: not among the model's users")
        if unknown := [i for i in items if str(i) not in self.rec._item_index]:
            raise BadRequest(404, f"unknown item(s) {', '.join(map(str, unknown[:5]))}: not among the model's items")
        scores = self.rec.score(str(user), [str(i) for i in items]).tolist()
        raw = [plain(self.rec.items[self.rec._item_index[str(i)]]) for i in items]
        user = plain(self.rec.users[self.rec._index[str(user)]])
        return {"user": user, "scores": [{"item": i, "score": s} for i, s in zip(raw, scores)]}

    def _k(self, k: Any) -> int:
        try:
            value = int(k) if not isinstance(k, bool | float) else None
        except (TypeError, ValueError):
            value = None
        if value is None or value < 1:
            raise BadRequest(400, f"k must be a whole number of at least 1, got {k!r}")
        return min(value, len(self.rec.items))

    def _popular(self, user: Any, k: int) -> dict[str, Any]:
        order = self.by_popularity[:k].tolist()
        return {
            "user": user,
            "items": self._entries(order, self.popular[order].astype(float).tolist()),
            "cold_start": True,
        }

    def _entries(self, indices: list[int], scores: list[float]) -> list[dict[str, Any]]:
        """Items by their indices as answers: the file's id, the score, and the title where the data has them."""
        titles = self.rec.titles
        return [
            {"item": plain(self.rec.items[i]), "score": s, **({"title": str(titles[i])} if titles is not None else {})}
            for i, s in zip(indices, scores)
        ]


def app_for(service: Service):
    """The FastAPI application of a Service: its routes, and every request's mistake answered {"error": ...}."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="scalerec", docs_url=None, redoc_url=None, openapi_url=None)

    def answer(work: Callable[[], Any]) -> JSONResponse:
        try:
            return JSONResponse(work())
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except UserError as e:  # the Recommender's own checks
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception as e:  # a request shaped as nothing above foresaw: still its own answer, never a 5xx
            return JSONResponse({"error": f"cannot answer this request ({type(e).__name__}: {e})"}, status_code=400)

    async def body(request: Request, *fields: str) -> dict[str, Any]:
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise BadRequest(400, f"the body is not JSON ({type(e).__name__}: {e})") from None
        if not isinstance(data, dict) or any(f not in data for f in fields):
            raise BadRequest(400, f"the body must be a JSON object with {', '.join(repr(f) for f in fields)}")
        return data

    @app.get("/health")
    def health() -> JSONResponse:
        return answer(service.health)

    @app.get("/recommend")
    def recommend_one(request: Request) -> JSONResponse:
        def work() -> dict[str, Any]:
            if "user" not in request.query_params:
                raise BadRequest(400, "give the user: /recommend?user=ID&k=10")
            return service.recommend([request.query_params["user"]], request.query_params.get("k", 10))[0]

        return answer(work)

    @app.post("/recommend")
    async def recommend_many(request: Request) -> JSONResponse:
        try:
            data = await body(request, "users")
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        users = data["users"]
        if not isinstance(users, list) or not users:
            return JSONResponse({"error": "'users' must be a non-empty list of user ids"}, status_code=400)
        return await _in_thread(
            lambda: answer(lambda: {"recommendations": service.recommend(users, data.get("k", 10))})
        )

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        try:
            data = await body(request, "user", "items")
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        return await _in_thread(lambda: answer(lambda: service.score(data["user"], data["items"])))

    return app


async def _in_thread(call: Callable[[], Any]) -> Any:
    """call() in the server's thread pool: scoring runs beside the event loop, as the plain routes do."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(call)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port; UserError naming them where it cannot be (in use, no such address)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait here until the server takes them
    except (OSError, OverflowError) as e:
        raise UserError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None
    return sock


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    epoch: str = "best",
    cold_start: str | None = None,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    precompute: int = 0,
    device: str = "cpu",
) -> None:
    """Load the run's model once (onto `device`) and answer requests until SIGTERM or Ctrl-C (requests in flight
    finish). `threads`: PyTorch's per request; requests run side by side in the server's thread pool."""
    _needs_server()
    import uvicorn

    log = log or functools.partial(print, flush=True)  # at once, also into a pipe: the address is in it
    rec = load(run_dir, epoch, device, stacklevel=3)
    sock = listen(host, port)
    service = Service(rec, cold_start)
    if precompute:  # before any request: on every thread the process has
        t0 = time.perf_counter()
        service.precompute(min(precompute, len(rec.items)))
        log(f"Precomputed the top {precompute} items of {len(rec.users):,} users in {time.perf_counter() - t0:.1f} s")
    torch.set_num_threads(threads)
    app = app_for(service)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    bound = sock.getsockname()
    log(
        f"Serving epoch {rec.epoch}'s model (the {rec.which}) of {run_dir} on {rec._device}: {len(rec.users):,} users, "
        f"{len(rec.items):,} items, on http://{host}:{bound[1]} (GET /health, GET /recommend?user=ID&k=10, "
        "POST /recommend, POST /score); Ctrl-C stops"
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt as e:  # re-raised by uvicorn once it has shut down: requests in flight were answered
        log(f"Stopped ({'SIGTERM' if isinstance(e, Terminated) else 'Ctrl-C'})")


def _needs_server() -> None:
    import importlib.util

    if missing := [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]:
        raise UserError(f"scalerec serve needs {', '.join(missing)}: pip install 'scalerec[serve]' (fastapi, uvicorn)")
