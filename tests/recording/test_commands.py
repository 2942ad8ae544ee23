"""Binary choice, command lines, progress and probe parsing, paths: no media, fast."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.recording import (
    SUPPORTED,
    InsufficientDiskSpace,
    ListenSpec,
    RecorderConfig,
    RecordingError,
    RecordingPaths,
    RecordingSession,
    RecordingSpec,
    locate_ffmpeg,
    probe,
    select_ffmpeg,
    slug,
)
from bridge.recording.ffmpeg import (
    FFmpegBinaries,
    FFmpegError,
    FFmpegVersionError,
    ProgressParser,
    build_concat_command,
    build_record_command,
    concat_list_text,
    input_options,
    parse_ffmpeg_info,
    parse_ffprobe_json,
    parse_version,
    require_supported,
)

BIN = FFmpegBinaries(ffmpeg="/opt/ff/ffmpeg", ffprobe=None, origin="config", version=(7, 1))


def _opt(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def _input_part(cmd: list[str]) -> list[str]:
    return cmd[: cmd.index("-i")]


# ------------------------------------------------------------------------------------------- binaries


def _fake(version: str, name: str = "ffmpeg", lavf: str = "60.  3.100") -> str:
    """A script that answers ``-version`` like FFmpeg ``version`` and does nothing else."""
    return (f"#!/bin/sh\necho '{name} version {version} Copyright (c) 2000-2024 the FFmpeg developers'\n"
            f"echo 'libavformat    {lavf} / {lavf}'\n")


def _make_exe(path: Path, text: str = _fake("6.1.1")) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_path_ffmpeg_wins_over_imageio_and_brings_its_ffprobe(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _make_exe(bindir / "ffmpeg")
    _make_exe(bindir / "ffprobe")
    found = locate_ffmpeg(env={"PATH": str(bindir)})
    assert (found.ffmpeg, found.ffprobe, found.origin) == (str(bindir / "ffmpeg"), str(bindir / "ffprobe"), "path")


def test_imageio_fallback_has_no_ffprobe(tmp_path: Path) -> None:
    found = locate_ffmpeg(env={"PATH": str(tmp_path)})        # an empty PATH directory
    assert found.origin == "imageio-ffmpeg" and found.ffprobe is None
    assert os.access(found.ffmpeg, os.X_OK)


def test_env_and_explicit_overrides(tmp_path: Path) -> None:
    exe = _make_exe(tmp_path / "my-ffmpeg")
    assert locate_ffmpeg(env={"BRIDGE_FFMPEG": str(exe), "PATH": ""}).origin == "env"
    assert locate_ffmpeg(str(exe), env={"PATH": ""}).origin == "config"
    with pytest.raises(FFmpegError):
        locate_ffmpeg(str(tmp_path / "missing"), env={"PATH": ""})
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _make_exe(bindir / "ffmpeg")
    _make_exe(bindir / "ffprobe")
    assert locate_ffmpeg(env={"PATH": str(bindir), "BRIDGE_FFPROBE": "none"}).ffprobe is None


async def test_probe_uses_a_sibling_ffprobe(tmp_path: Path, ffbin: FFmpegBinaries) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ffmpeg").symlink_to(ffbin.ffmpeg)
    canned = {"format": {"format_name": "mpegts", "duration": "7.5", "start_time": "1.4", "bit_rate": "1000"},
              "streams": [{"index": 0, "codec_type": "video", "codec_name": "h264", "width": 320},
                          {"index": 1, "codec_type": "audio", "codec_name": "aac"}]}
    _make_exe(bindir / "ffprobe", f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(canned)}\nEOF\n")
    found = locate_ffmpeg(str(bindir / "ffmpeg"))
    assert found.ffprobe == str(bindir / "ffprobe")
    info = await probe(tmp_path / "whatever.ts", found)
    assert (info.method, info.duration_s, info.codec("video"), info.codec("audio")) == ("ffprobe", 7.5, "h264", "aac")


@pytest.mark.parametrize(("text", "release", "lavf", "supported"), [
    ("ffmpeg version 5.1.9-0+deb12u1 Copyright\nlibavformat    59. 27.100 / 59. 27.100\n", (5, 1), (59, 27), True),
    ("ffmpeg version n9.0.2-17-g2a571b6068-20260930 Copyright\nlibavformat    63.  1.102 / 63.  1.102",
     (9, 0), (63, 1), True),
    ("ffmpeg version 4.4.2-0ubuntu0.22.04.1 Copyright\nlibavformat    58. 76.100 / 58. 76.100", (4, 4), (58, 76),
     False),
    ("ffmpeg version 5.0.1 Copyright\n", (5, 0), None, False),
    ("ffmpeg version 10.0 Copyright\n", (10, 0), None, False),          # not tested: refused
    ("ffmpeg version N-113000-gabcdef0 Copyright\nlibavformat    61.  1.100 / 61.  1.100", None, (61, 1), True),
    ("ffmpeg version N-100000-gabcdef0 Copyright\nlibavformat    58. 65.101 / 58. 65.101", None, (58, 65), False),
    ("something else entirely", None, None, False),
])
def test_versions_and_the_supported_range(text: str, release: tuple[int, int] | None,
                                          lavf: tuple[int, int] | None, supported: bool) -> None:
    version = parse_version(text)
    assert (version.release, version.libavformat, SUPPORTED.contains(version)) == (release, lavf, supported)


async def test_auto_passes_over_an_unsupported_path_ffmpeg_and_explicit_ones_are_refused(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    old = _make_exe(bindir / "ffmpeg", _fake("4.4.2-0ubuntu0.22.04.1", lavf="58. 76.100"))
    found = locate_ffmpeg(env={"PATH": str(bindir)})                  # auto: PATH's 4.4 is skipped
    assert found.origin == "imageio-ffmpeg" and require_supported(found) is found
    assert found.skipped and str(old) in found.skipped[0] and "4.4.2" in found.skipped[0]
    assert locate_ffmpeg("bundled", env={"PATH": str(bindir)}).ffmpeg == found.ffmpeg

    explicit = locate_ffmpeg(str(old), env={"PATH": ""})
    with pytest.raises(FFmpegVersionError) as err:
        require_supported(explicit)
    message = str(err.value)
    assert str(old) in message and "4.4.2-0ubuntu0.22.04.1" in message and str(SUPPORTED) in message
    with pytest.raises(RecordingError) as refused:
        select_ffmpeg(RecorderConfig(dir=tmp_path / "r", ffmpeg=str(old)))
    assert refused.value.code == "ffmpeg_version" and str(old) in str(refused.value)
    session = RecordingSession(RecordingSpec(recording_id="r", lesson_id="l", source_url="/x.ts"),
                               RecorderConfig(dir=tmp_path / "r", ffmpeg=str(old), min_free_bytes=0))
    with pytest.raises(RecordingError) as at_start:
        await session.start()
    assert at_start.value.code == "ffmpeg_version"


def test_an_unsupported_ffprobe_is_named_too(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _make_exe(bindir / "ffmpeg")
    probe_bin = _make_exe(bindir / "ffprobe", _fake("4.3.1", name="ffprobe", lavf="58. 45.100"))
    found = locate_ffmpeg(str(bindir / "ffmpeg"), env={"PATH": ""})
    assert found.ffprobe == str(probe_bin)
    with pytest.raises(FFmpegVersionError, match=r"ffprobe at .*/ffprobe is version 4\.3\.1"):
        require_supported(found)


def test_the_recorder_process_refuses_to_start_with_an_unsupported_ffmpeg(tmp_path: Path) -> None:
    old = _make_exe(tmp_path / "old-ffmpeg", _fake("4.4.2", lavf="58. 76.100"))
    config = tmp_path / "bridge.toml"
    config.write_text(f'[recording]\ndir = "{tmp_path / "rec"}"\nffmpeg = "{old}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_CONFIG=str(config), REDIS_URL="redis://127.0.0.1:9/0")   # never reached
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "recorder"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done
    assert str(old) in done.stderr and "4.4.2" in done.stderr and str(SUPPORTED) in done.stderr, done.stderr


# --------------------------------------------------------------------------------------- command lines


@pytest.mark.parametrize(("url", "expected", "absent"), [
    ("rtmp://10.0.0.5/live/key", {"-rw_timeout": "7000000"}, ["-timeout", "-listen"]),
    ("https://cdn.example/live/index.m3u8", {"-rw_timeout": "7000000"}, ["-timeout"]),
    ("srt://127.0.0.1:9000", {"-rw_timeout": "7000000", "-connect_timeout": "7000"}, ["-mode"]),
    ("rtsp://cam/stream", {"-timeout": "7000000", "-rtsp_transport": "tcp"}, ["-rw_timeout"]),
    ("tcp://127.0.0.1:9000", {"-rw_timeout": "7000000"}, []),
    ("/var/media/in.ts", {"-rw_timeout": "7000000"}, ["-re"]),
])
def test_pull_commands_always_bound_input_reads(url: str, expected: dict[str, str], absent: list[str]) -> None:
    cmd = build_record_command(BIN, url, "/rec/part-000.ts", input_timeout_s=7, max_duration_s=60)
    head = _input_part(cmd)
    for key, value in expected.items():
        assert _opt(head, key) == value, (key, cmd)
    for key in absent:
        assert key not in head, (key, cmd)
    assert cmd[0] == BIN.ffmpeg and _opt(cmd, "-i") == url
    assert _opt(cmd, "-c") == "copy" and _opt(cmd, "-f") == "mpegts" and _opt(cmd, "-t") == "60.000"
    assert _opt(cmd, "-progress") == "pipe:1" and "-n" in cmd and "-nostdin" not in cmd
    assert _opt(cmd, "-flush_packets") == "1"
    assert "-map" not in cmd          # FFmpeg's own pick: best video + best audio


@pytest.mark.parametrize(("url", "expected"), [
    ("rtmp://127.0.0.1:1935/live/k", {"-listen": "1", "-timeout": "120", "-rw_timeout": "5000000"}),
    ("http://127.0.0.1:8080/push", {"-listen": "1", "-listen_timeout": "120000", "-rw_timeout": "5000000"}),
    ("tcp://127.0.0.1:9000", {"-listen": "1", "-listen_timeout": "120000"}),
    ("srt://127.0.0.1:9000", {"-mode": "listener", "-listen_timeout": "120000000"}),
])
def test_listen_commands_bound_the_wait_for_a_publisher(url: str, expected: dict[str, str]) -> None:
    cmd = build_record_command(BIN, url, "/rec/p.ts", input_timeout_s=5, listen=True, listen_timeout_s=120)
    head = _input_part(cmd)
    for key, value in expected.items():
        assert _opt(head, key) == value, (key, cmd)


def test_listen_on_rtsp_is_refused_and_extra_options_win() -> None:
    with pytest.raises(ValueError):
        input_options("rtsp://x/y", input_timeout_s=5, listen=True)
    opts = input_options("/m.ts", input_timeout_s=5, realtime=True, extra={"stream_loop": -1, "rw_timeout": 1})
    assert opts == {"rw_timeout": 1, "re": None, "stream_loop": -1}


def test_matroska_parts_and_old_ffmpeg_without_stats_period() -> None:
    old = FFmpegBinaries(ffmpeg="ffmpeg", ffprobe=None, origin="path", version=(4, 2))
    cmd = build_record_command(old, "rtmp://h/a/b", "/r/p.mkv", input_timeout_s=5, part_format="matroska")
    assert _opt(cmd, "-f") == "matroska" and "-stats_period" not in cmd and "-t" not in cmd
    with pytest.raises(ValueError):
        build_record_command(BIN, "rtmp://h/a/b", "/r/p.mp4", input_timeout_s=5, part_format="mp4")


def test_concat_command_joins_with_stream_copy_into_faststart_mp4() -> None:
    cmd = build_concat_command(BIN, "/r/concat.txt", "/r/out.tmp.mp4", audio_codec="aac", video_codec="h264")
    assert _opt(cmd, "-f") == "concat" and _opt(cmd, "-safe") == "0"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "-map"] == ["0:v:0", "0:a:0"]
    assert _opt(cmd, "-c") == "copy" and _opt(cmd, "-bsf:a") == "aac_adtstoasc"
    assert _opt(cmd, "-movflags") == "+faststart" and cmd[cmd.index("-movflags") + 2] == "/r/out.tmp.mp4"
    opus = build_concat_command(BIN, "l", "o.mp4", audio_codec="opus", video_codec="hevc")
    assert "-bsf:a" not in opus and _opt(opus, "-tag:v") == "hvc1"
    assert concat_list_text(["part-000.ts", "it's.ts"]).splitlines()[1:] == [
        "file 'part-000.ts'", "file 'it'\\''s.ts'"]


# ------------------------------------------------------------------------------------ progress / probe


def test_progress_parser_blocks() -> None:
    parser = ProgressParser()
    lines = ["frame=50", "fps=25.0", "bitrate= 859.4kbits/s", "total_size=217140", "out_time_us=2021333",
             "out_time_ms=2021333", "out_time=00:00:02.021333", "speed=1.01x", "progress=continue",
             "frame=0", "total_size=N/A", "out_time_us=N/A", "speed=N/A", "progress=end"]
    blocks = [b for line in lines if (b := parser.feed(line))]
    assert len(blocks) == 2
    first, last = blocks
    assert (first.out_time_s, first.total_size, first.speed, first.frame, first.ended) == (
        2.021333, 217140, 1.01, 50, False)
    assert first.bitrate_kbps == pytest.approx(859.4)
    assert (last.out_time_s, last.total_size, last.speed, last.ended) == (None, None, None, True)


FFMPEG_I_OUTPUT = """\
Input #0, mpegts, from 'part-000.ts':
  Duration: 00:01:03.06, start: 1.400000, bitrate: 896 kb/s
  Program 1
  Stream #0:0[0x100]: Video: h264 (Constrained Baseline) ([27][0][0][0] / 0x001B), yuv420p, 320x240
  Stream #0:1[0x101](eng): Audio: aac (LC) ([15][0][0][0] / 0x000F), 48000 Hz, mono, fltp, 67 kb/s
  Stream #0:2[0x102]: Data: timed_id3 (ID3  / 0x33334449)
At least one output file must be specified
"""


def test_parse_ffmpeg_info_without_ffprobe() -> None:
    info = parse_ffmpeg_info("part-000.ts", FFMPEG_I_OUTPUT)
    assert (info.format_name, info.duration_s, info.start_s, info.bit_rate) == ("mpegts", 63.06, 1.4, 896000)
    assert [(s.index, s.kind, s.codec) for s in info.streams] == [
        (0, "video", "h264"), (1, "audio", "aac"), (2, "data", "timed_id3")]
    assert info.has_video and info.has_audio
    with pytest.raises(FFmpegError) as err:
        parse_ffmpeg_info("x.ts", "x.ts: Invalid data found when processing input\n")
    assert "Invalid data" in err.value.stderr_tail[-1]
    na = parse_ffmpeg_info("p.ts", "Input #0, flv, from 'p':\n  Duration: N/A, start: 0.000000, bitrate: N/A\n")
    assert na.duration_s is None and na.streams == ()


def test_parse_ffprobe_json() -> None:
    text = json.dumps({"format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "12.5"},
                       "streams": [{"index": 0, "codec_type": "audio", "codec_name": "aac"}]})
    info = parse_ffprobe_json("f.mp4", text)
    assert info.duration_s == 12.5 and info.has_audio and not info.has_video
    with pytest.raises(FFmpegError):
        parse_ffprobe_json("f.mp4", "{}")


# ---------------------------------------------------------------------------------- paths, spec, config


def test_slugs_are_safe_stable_and_distinct() -> None:
    assert slug("rec_01") == "rec_01"
    assert slug("moodle:lms.example.edu:42") == slug("moodle:lms.example.edu:42")
    assert slug("a:b") != slug("a-b") and "/" not in slug("../../etc") and not slug("..").startswith(".")
    assert len(slug("x" * 500)) <= 90


def test_parts_are_numbered_in_recording_order(tmp_path: Path) -> None:
    paths = RecordingPaths(tmp_path, "lesson 1", "rec/2")
    assert paths.dir.is_relative_to(tmp_path) and paths.next_part_index() == 0
    paths.dir.mkdir(parents=True)
    for name in ("part-000.ts", "part-002.mkv", "part-010.ts", "part-001.ts.tmp", "final.json"):
        (paths.dir / name).write_bytes(b"")
    assert [p.index for p in paths.parts()] == [0, 2, 10]
    assert paths.next_part_index() == 11 and paths.part_path(11).name == "part-011.ts"
    assert paths.final_file.name.endswith(".mp4") and paths.final_file.parent == paths.dir


def test_spec_validation_and_recording_settings(tmp_path: Path) -> None:
    with pytest.raises(RecordingError):
        RecordingSpec(recording_id="", lesson_id="l")
    with pytest.raises(RecordingError):
        RecordingSpec(recording_id="r", lesson_id="l", source_url="rtmp://a/b", listen=ListenSpec())
    with pytest.raises(RecordingError):
        RecordingSpec(recording_id="r", lesson_id="l", listen=ListenSpec(protocol="rtsp"))
    assert RecordingSpec(recording_id="r", lesson_id="l").is_listen
    config = tmp_path / "bridge.toml"
    config.write_text(f'[recording]\ndir = "{tmp_path / "r"}"\nmax_duration_s = 60\n[recording.stop_graces]\nq = 1.0\n')
    cfg = load_settings({"BRIDGE_CONFIG": str(config)}).recording
    assert cfg.dir == (tmp_path / "r").resolve() and cfg.max_duration_s == 60 and cfg.ffmpeg is None
    assert cfg.stop_graces.q == 1.0 and cfg.stop_graces.sigint == 3.0 and cfg.dir.is_absolute()


async def test_start_refuses_when_disk_is_short(tmp_path: Path) -> None:
    cfg = RecorderConfig(dir=tmp_path, min_free_bytes=2**62)
    session = RecordingSession(RecordingSpec(recording_id="r", lesson_id="l", source_url="/x.ts"), cfg)
    with pytest.raises(InsufficientDiskSpace) as err:
        await session.start()
    assert err.value.code == "disk_space" and "min_free_bytes" in str(err.value)
