"""A sending session in its own process, for the resume-after-SIGKILL test.

usage: python _sender.py URL ROOM USER CONFIG_DIR TO PATH
Prints "offered" once the offer is out, then waits to be killed.
"""

import sys
import time

from ivisit_nb import Session

url, room, user, config, to, path = sys.argv[1:7]
s = Session.join(url, user, room, config_dir=config, inbox=f"{config}/inbox")
s.wait_for_peers([to], timeout=30).wait()
t = s.send_file(path, to=to)
print("offered", flush=True)
t.wait()
print("ended", t.status, flush=True)
while True:
    time.sleep(1)
