"""redis-py, with its defaults, against a tandem engine: every string and key command tandem
serves, the handshake, pipelines and MULTI/EXEC transactions.

Usage: redis_py.py PORT PROTOCOL PREFIX [PASSWORD]   (PROTOCOL: "default" or "2")
Prints one line per check group and "ok" at the end; any failure raises (exit code 1).
The keys it wrote and their final values go to stdout as "KEY key value" lines, for the
caller's lost-update check on the pair.
"""

import sys
import time

import redis

port, protocol, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
kwargs = {"host": "127.0.0.1", "port": port, "decode_responses": True}
if protocol != "default":
    kwargs["protocol"] = int(protocol)
if len(sys.argv) > 4:
    kwargs["password"] = sys.argv[4]  # RESP3: HELLO 3 AUTH default <password>
r = redis.Redis(**kwargs)
k = lambda name: f"{prefix}:{name}"
final = {}


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


# The handshake: HELLO (RESP3 by default), CLIENT SETINFO, then the commands.
expect(r.ping(), True, "PING")
hello = r.execute_command("HELLO")
proto = hello["proto"] if isinstance(hello, dict) else dict(zip(hello[::2], hello[1::2]))["proto"]
print(f"handshake: protocol {proto}")
r.client_setname("tandem-test")
expect(r.client_getname(), "tandem-test", "CLIENT GETNAME")
expect(isinstance(r.client_id(), int), True, "CLIENT ID")
expect(r.execute_command("SELECT", 0), True, "SELECT 0")
try:
    r.execute_command("SELECT", 5)
    raise AssertionError("SELECT 5 accepted")
except redis.ResponseError as e:
    expect("out of range" in str(e), True, "SELECT 5 refused")
info = r.info()
expect(info["role"], "master", "INFO role")
expect("redis_version" in info, True, "INFO redis_version")
expect(r.info("replication")["role"], "master", "INFO replication")
expect(r.command_count() > 10, True, "COMMAND COUNT")

# Strings.
expect(r.set(k("s"), "v1"), True, "SET")
expect(r.get(k("s")), "v1", "GET")
expect(r.set(k("s"), "v2", nx=True), None, "SET NX on an existing key")
expect(r.set(k("s"), "v2", xx=True), True, "SET XX")
expect(r.set(k("s"), "v3", get=True), "v2", "SET GET")
expect(r.set(k("fresh"), "x", xx=True), None, "SET XX on a missing key")
expect(r.getset(k("s"), "v4"), "v3", "GETSET")
expect(r.setnx(k("s"), "no"), False, "SETNX existing")
expect(r.setnx(k("nx"), "yes"), True, "SETNX new")
expect(r.getdel(k("nx")), "yes", "GETDEL")
expect(r.get(k("nx")), None, "GET after GETDEL")
expect(r.mset({k("m1"): "a", k("m2"): "b"}), True, "MSET")
expect(r.mget(k("m1"), k("m2"), k("missing")), ["a", "b", None], "MGET")
expect(r.msetnx({k("m1"): "z", k("m3"): "c"}), False, "MSETNX with one existing")
expect(r.get(k("m3")), None, "MSETNX set nothing")
expect(r.append(k("m1"), "bc"), 3, "APPEND")
expect(r.strlen(k("m1")), 3, "STRLEN")
expect(r.incr(k("n")), 1, "INCR")
expect(r.incrby(k("n"), 41), 42, "INCRBY")
expect(r.decr(k("n")), 41, "DECR")
expect(r.decrby(k("n"), 1), 40, "DECRBY")
expect(r.incrbyfloat(k("f"), 10.5), 10.5, "INCRBYFLOAT")
expect(r.incrbyfloat(k("f"), 0.1), 10.6, "INCRBYFLOAT again")
try:
    r.incr(k("m1"))
    raise AssertionError("INCR of a non-integer accepted")
except redis.ResponseError as e:
    expect("not an integer" in str(e), True, "INCR of a string")
print("strings: ok")

# Keys.
expect(r.type(k("s")), "string", "TYPE")
expect(r.type(k("missing")), "none", "TYPE missing")
expect(r.exists(k("s"), k("m1"), k("missing")), 2, "EXISTS")
expect(r.ttl(k("s")), -1, "TTL of a key without expiry")
expect(r.ttl(k("missing")), -2, "TTL of a missing key")
r.set(k("gone1"), "x")
r.set(k("gone2"), "x")
expect(r.delete(k("gone1")), 1, "DEL")
expect(r.unlink(k("gone2"), k("missing")), 1, "UNLINK")
print("keys: ok")

# Expiry: the active decides, and replicates the deletes.
expect(r.set(k("e1"), "x", ex=100), True, "SET EX")
expect(90 < r.ttl(k("e1")) <= 100, True, "TTL after SET EX")
expect(r.set(k("e2"), "x", px=50), True, "SET PX")
expect(r.expire(k("s"), 1000), True, "EXPIRE")
expect(r.persist(k("s")), True, "PERSIST")
expect(r.ttl(k("s")), -1, "TTL after PERSIST")
expect(r.pexpire(k("e1"), 200000, gt=True), True, "PEXPIRE GT")
expect(r.expire(k("e1"), 10, gt=True), False, "EXPIRE GT with a shorter one")
expect(r.getex(k("e1"), persist=True), "x", "GETEX PERSIST")
expect(r.ttl(k("e1")), -1, "TTL after GETEX PERSIST")
expect(r.expireat(k("gone3"), 1), False, "EXPIREAT of a missing key")
deadline = time.monotonic() + 10
while r.exists(k("e2")) and time.monotonic() < deadline:
    time.sleep(0.01)  # polls for the event, with a deadline
expect(r.exists(k("e2")), 0, "a key with PX 50 expired")
print("expiry: ok")

# Pipelines: a transaction by default (MULTI/EXEC), and without one.
p = r.pipeline()
p.set(k("t1"), "1").incr(k("t1")).get(k("t1")).mset({k("t2"): "x", k("t3"): "y"})
expect(p.execute(), [True, 2, "2", True], "MULTI/EXEC pipeline")
p = r.pipeline(transaction=False)
for i in range(100):
    p.set(k(f"p{i}"), str(i))
expect(all(p.execute()), True, "pipeline without a transaction")
# A transaction with a command refused while queued is discarded whole.
p = r.pipeline()
p.set(k("t4"), "1").execute_command("NOSUCHCOMMAND")
try:
    p.execute()
    raise AssertionError("EXEC after a refused command ran")
except redis.ResponseError:
    pass
expect(r.get(k("t4")), None, "nothing of a discarded transaction")
# WATCH: redis-py's transaction helper (WATCH, read, MULTI, write, EXEC), and a conflict.
def bump(pipe):
    n = int(pipe.get(k("w")) or 0)
    pipe.multi()
    pipe.set(k("w"), n + 1)


expect(r.transaction(bump, k("w")), [True], "WATCH transaction")
expect(r.get(k("w")), "1", "after the WATCH transaction")
with r.pipeline() as pipe:
    pipe.watch(k("w"))
    r.set(k("w"), "100")  # another connection writes the watched key
    pipe.multi()
    pipe.set(k("w"), "lost")
    try:
        pipe.execute()
        raise AssertionError("EXEC ran although a watched key changed")
    except redis.WatchError:
        pass
expect(r.get(k("w")), "100", "the conflicting transaction did not run")
print("transactions: ok")

# SCAN with a cursor and a pattern, as scan_iter drives it.
expect(set(r.scan_iter(match=k("p*"), count=20)), {k(f"p{i}") for i in range(100)}, "SCAN MATCH")
expect(r.dbsize() >= 100, True, "DBSIZE")
print("scan: ok")

for name in ["s", "m1", "m2", "n", "f", "t1", "t2", "t3", "w", "e1"] + [f"p{i}" for i in range(100)]:
    final[k(name)] = r.get(k(name))
for key, value in final.items():
    print(f"KEY {key} {value}")
print("ok")
