"""A real RTSP server for the tests: GStreamer's gst-rtsp-server serving an H.264 MP4 in real time.

Run with Debian's ``/usr/bin/python3`` (it has ``gi``; the project's venv does not)::

    /usr/bin/python3 tests/rtsp_server.py CLIP.mp4 PORT

serves ``rtsp://127.0.0.1:PORT/cam`` over TCP and UDP, paced at the clip's frame rate, and
prints ``ready`` once it listens. Every client session plays the clip from its start. Instead of
a clip, ``pattern:WIDTHxHEIGHT@FPS`` serves an endless live test pattern (soak runs).
Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,ugly}
gstreamer1.0-libav (``.ci/run`` installs them).
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    path, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    if path.startswith("pattern:"):
        size, fps = path[len("pattern:"):].split("@")
        width, height = size.split("x")
        factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
                           f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! "
                           "rtph264pay name=pay0 pt=96 config-interval=1 )")
    else:
        factory.set_launch(f'( filesrc location="{path}" ! qtdemux ! h264parse ! '
                           'rtph264pay name=pay0 pt=96 config-interval=1 )')
    factory.set_shared(False)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
