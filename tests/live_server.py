"""A live server on the tiny test weights, for the browser test and by hand:
``python tests/live_server.py [--port 0] [--host 127.0.0.1] [--token T]``. Prints ``LISTENING URL`` once it
serves. The portrait is example_inputs/portrait.png, cropped by the centre detector (no face weights)."""
import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import importlib  # noqa: E402

from live_common import tiny_parts  # noqa: E402
from run import load_pack  # noqa: E402

PACK = load_pack().__name__
server_module = importlib.import_module(f"{PACK}.live.server")
LiveServer, Portraits, serve = server_module.LiveServer, server_module.Portraits, server_module.serve


def main(args) -> None:
    parts = tiny_parts(Path(tempfile.mkdtemp(prefix="th-live-")), core=f"{PACK}.core")
    server = LiveServer(parts, Portraits([HERE.parent / "example_inputs" / "portrait.png"]), token=args.token,
                        detector="center", max_side=args.max_side)
    serve(server, args.host, args.port, lambda port: print(f"LISTENING http://{args.host}:{port}", flush=True))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--token", default=None)
    p.add_argument("--max-side", type=int, default=256)
    main(p.parse_args())
