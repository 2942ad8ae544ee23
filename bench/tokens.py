"""Join-token minting speed, against a baseline measured in the same run.

    python bench/tokens.py [seconds]      # default 3

Measures JaaS RS256 participant tokens/s through `JaasProvider.join` (one process, no network: JaaS
join tokens are minted locally with the private key parsed once) and `openssl speed -seconds N
rsa2048` RSA-2048 signs/s, then prints both and their ratio (target >= 0.9: the adapter should cost
little beyond the RSA signature itself).

`openssl speed` divides by CPU *user* time, so the ratio uses the CPU time of this process too (the
wall-clock rate is shown alongside; on a busy machine it is the lower of the two).

Every loop is bounded by a deadline and a maximum count.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):                       # `python bench/tokens.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.providers import build_provider
from bridge.providers.base import Lesson, Room, User

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
MAX_SECONDS = 60.0
MAX_TOKENS = 2_000_000
TARGET_RATIO = 0.9


@dataclass
class Measurement:
    name: str
    per_second: float            # the rate used for ratios (CPU time, like `openssl speed`)
    note: str = ""


# ---------------------------------------------------------------------------- JaaS RS256


async def _jaas_join_rate(seconds: float) -> tuple[float, float]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    async with httpx.AsyncClient() as http:
        provider = build_provider("bench", "jaas", {"app_id": "vpaas-magic-cookie-bench", "key_id": "bench",
                                          "private_key": pem, "api_base": "http://127.0.0.1:9"}, http)
        lesson = Lesson(id="bench:lesson:1", title="Bench")
        room = Room(id=lesson.room_name, name=lesson.room_name)
        users = [User(id=str(n), name=f"User {n}", email=f"u{n}@example.edu",
                      role="teacher" if n % 10 == 0 else "student") for n in range(100)]
        for user in users[:10]:                                   # warm-up
            await provider.join(lesson, room, user)
        count = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        deadline = wall0 + seconds
        while count < MAX_TOKENS:
            for user in users:                                    # look at the clock every 100 tokens
                await provider.join(lesson, room, user)
            count += len(users)
            if time.perf_counter() >= deadline:
                break
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return count / max(cpu, 1e-9), count / wall


def jaas_rs256_join(seconds: float) -> Measurement:
    cpu_rate, wall_rate = asyncio.run(_jaas_join_rate(seconds))
    return Measurement("JaaS RS256 join (JaasProvider.join)", cpu_rate, f"wall clock {wall_rate:,.0f}/s")


# ---------------------------------------------------------------------------- openssl baseline


def parse_openssl_rsa(output: str, bits: int = 2048) -> float:
    """sign/s from `openssl speed rsaN` text (OpenSSL 1.1 / 3.x column layouts)."""
    header: list[str] | None = None
    for line in output.splitlines():
        if "sign/s" in line:
            header = line.split()
        match = re.match(rf"^\s*rsa\s+{bits}\s+bits\s+(.*)$", line)
        if match and header:
            values = dict(zip(header, match.group(1).split(), strict=False))
            if "sign/s" in values:
                return float(values["sign/s"])
    raise ValueError("no 'rsa 2048 bits' line with a sign/s column in openssl speed output")


def openssl_rsa2048_sign(seconds: float) -> Measurement:
    whole = max(1, round(seconds))
    result = subprocess.run([OPENSSL, "speed", "-seconds", str(whole), "rsa2048"], capture_output=True,
                            text=True, timeout=whole * 10 + 30, check=True)
    return Measurement(f"openssl speed -seconds {whole} rsa2048 (sign)", parse_openssl_rsa(result.stdout))


# ---------------------------------------------------------------------------- the table

# ---------------------------------------------------------------------------- 100ms HS256

HMS_MAX_TOKENS = 5_000_000
HMS_SETTINGS = {"access_key": "bench-access-key", "app_secret": "bench-app-secret-0123456789abcdef0123456789",
             "api_base": "http://127.0.0.1:9", "policy_base": "http://127.0.0.1:9"}


async def _hms_run(seconds: float) -> float:
    async with httpx.AsyncClient() as http:
        provider = build_provider("bench", "100ms", HMS_SETTINGS, http)
        lesson = Lesson(id="bench:lesson:1", title="Bench")
        room = Room(id="6571b1f1e3b6c2a5b1f0c0de", name=lesson.room_name)
        users = [User(id=str(n), name=f"User {n}", role="teacher" if n % 10 == 0 else "student")
                 for n in range(100)]
        await provider.join(lesson, room, users[0])              # warm-up
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while count < HMS_MAX_TOKENS:
            for user in users:                                     # check the clock every 100 tokens
                await provider.join(lesson, room, user)
            count += len(users)
            if time.perf_counter() >= deadline:
                break
        return count / (time.perf_counter() - start)


def hms_hs256_join(seconds: float) -> Measurement:
    """100ms app tokens minted per second through HmsProvider.join (HS256, no network)."""
    started = time.process_time()
    wall_rate = asyncio.run(_hms_run(seconds))
    return Measurement("100ms HS256 join (HmsProvider.join)", wall_rate,
                       f"wall clock; {time.process_time() - started:.1f} s CPU")


EXTRA_MEASUREMENTS: list[Callable[[float], Measurement]] = [hms_hs256_join]


def main(argv: list[str]) -> int:
    seconds = min(max(float(argv[1]) if len(argv) > 1 else 3.0, 0.5), MAX_SECONDS)
    jaas = jaas_rs256_join(seconds)
    baseline = openssl_rsa2048_sign(seconds)
    rows = [jaas, baseline] + [measure(seconds) for measure in EXTRA_MEASUREMENTS]
    ratio = jaas.per_second / baseline.per_second
    width = max(len(row.name) for row in rows) + 2
    print(f"{'measurement':<{width}}{'per second':>12}  note")
    for row in rows:
        print(f"{row.name:<{width}}{row.per_second:>12,.0f}  {row.note}")
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"{'ratio JaaS join / openssl sign':<{width}}{ratio:>12.2f}  target >= {TARGET_RATIO} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
