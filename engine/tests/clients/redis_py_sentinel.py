"""redis-py's Sentinel support, with its defaults, against tandem's discovery port: a writer
that follows switchovers and failovers with no tandem-specific code, retrying a write until
it is acknowledged as any application must across a failover.

Usage: redis_py_sentinel.py SENTINEL_PORT NAME PREFIX STOP_FILE
Prints "ACKED n" as writes are acknowledged; once STOP_FILE exists, prints every
acknowledged write as "KEY key value", then "ok".
"""

import os
import sys
import time

import redis
from redis.sentinel import Sentinel

port, name, prefix, stop_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sentinel = Sentinel([("127.0.0.1", port)], socket_timeout=2)
master = sentinel.master_for(name, socket_timeout=2)
acked, retries, i = {}, 0, 0
deadline = time.monotonic() + 120
while not os.path.exists(stop_file):
    if time.monotonic() > deadline:
        raise SystemExit("no stop file within 120 s")
    key, value = f"{prefix}:{i}", f"v{i}"
    try:
        if master.set(key, value):
            acked[key] = value
            i += 1
            if i % 50 == 0:
                print(f"ACKED {i}", flush=True)
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as e:
        retries += 1  # the same write again: across a failover its outcome is unknown
        time.sleep(0.01)
print(f"retries {retries}", flush=True)
for key, value in acked.items():
    print(f"KEY {key} {value}")
print("ok", flush=True)
