"""A stand-in worker process that says ready and then answers with garbage.

Used by test_pool to check that the pool survives a worker sending malformed frames.
"""

import json
import os
import struct
import sys

ready = json.dumps({"op": "ready", "pid": os.getpid()}).encode()
sys.stdout.buffer.write(struct.pack(">I", len(ready)) + ready)
sys.stdout.buffer.flush()
sys.stdin.buffer.read(4)
sys.stdout.buffer.write(struct.pack(">I", 12) + b"not json!!!!")
sys.stdout.buffer.flush()
sys.stdin.buffer.read()
