"""BlendVision auth: every call carries `Authorization: Bearer <api_token>` and `x-bv-org-id: <org_id>`."""

from __future__ import annotations


def headers(api_token: str, org_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_token}", "x-bv-org-id": org_id, "Accept": "application/json"}
