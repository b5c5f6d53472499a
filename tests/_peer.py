"""A stand-alone session in its own process, for tests that kill a peer.

usage: python _peer.py URL ROOM USER CONFIG_DIR
Prints "ready" once every room member is connected, then waits to be killed.
"""

import sys
import time

from ivisit_nb import Session

url, room, user, config = sys.argv[1:5]
s = Session.join(url, user, room, config_dir=config, inbox=f"{config}/inbox")
s.wait_for_peers(timeout=30).wait()
print("ready", flush=True)
while True:
    time.sleep(1)
