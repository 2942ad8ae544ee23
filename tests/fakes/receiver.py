"""An LMS webhook endpoint: verifies every delivery with the `standardwebhooks` library."""

from __future__ import annotations

import json
import threading
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class Receiver:
    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.lock = threading.Lock()
        self.delivered: list[dict[str, Any]] = []      # verified payloads, with their webhook-id
        self.attempts: list[tuple[str, int]] = []      # (webhook-id, status answered)
        self.rejected = 0
        self.script: list[int] = []                    # statuses to answer next, then 200
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    def answer_next(self, *statuses: int) -> None:
        with self.lock:
            self.script.extend(statuses)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        try:
            self.verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            with self.lock:
                self.rejected += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        msg_id = request.headers["webhook-id"]
        with self.lock:
            status = self.script.pop(0) if self.script else 200
            self.attempts.append((msg_id, status))
            if status < 300:
                self.delivered.append({"webhook_id": msg_id, **json.loads(body)})
        return Response(status_code=status)

    def of_type(self, webhook_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [d for d in self.delivered if d["type"] == webhook_type]
