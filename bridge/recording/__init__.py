"""FFmpeg recording engine: pull or listen, supervise, stop, and join parts into one MP4.

Public API (everything a job needs)::

    from bridge.recording import RecorderConfig, RecordingSpec, ListenSpec, RecordingSession
    from bridge.recording import finalize, finalize_all, stop_all, active_sessions, get_session
    from bridge.recording import check_ffmpeg      # start-up: binaries exist and are in SUPPORTED

See session.py for the life cycle, parts.py for the on-disk layout, process.py for how FFmpeg is kept
from outliving its supervisor, ffmpeg.py for binaries, command lines and probing.
"""

from bridge.recording.config import (
    EndReason,
    FinalizeResult,
    InsufficientDiskSpace,
    ListenSpec,
    RecordingBusy,
    RecordingError,
    RecordingSpec,
    RunResult,
    check_ffmpeg,
    select_ffmpeg,
)
from bridge.recording.ffmpeg import (
    SUPPORTED,
    FFmpegBinaries,
    FFmpegError,
    FFmpegVersionError,
    ProbeResult,
    Progress,
    StreamInfo,
    locate_ffmpeg,
    probe,
)
from bridge.recording.parts import RecordingPaths, finalize, slug
from bridge.recording.process import PDEATHSIG_AVAILABLE
from bridge.recording.session import (
    RecordingSession,
    SessionState,
    active_sessions,
    finalize_all,
    get_session,
    stop_all,
)
from bridge.schema.config import RecorderConfig, StopGraces

__all__ = [
    "PDEATHSIG_AVAILABLE",
    "SUPPORTED",
    "EndReason",
    "FFmpegBinaries",
    "FFmpegError",
    "FFmpegVersionError",
    "FinalizeResult",
    "InsufficientDiskSpace",
    "ListenSpec",
    "ProbeResult",
    "Progress",
    "RecorderConfig",
    "RecordingBusy",
    "RecordingError",
    "RecordingPaths",
    "RecordingSession",
    "RecordingSpec",
    "RunResult",
    "SessionState",
    "StopGraces",
    "StreamInfo",
    "active_sessions",
    "check_ffmpeg",
    "finalize",
    "finalize_all",
    "get_session",
    "locate_ffmpeg",
    "probe",
    "select_ffmpeg",
    "slug",
    "stop_all",
]
