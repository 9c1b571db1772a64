"""redis-py, unchanged, against ringfan's Redis-protocol listener.

Usage: redis_py.py HOST PORT. Exits 0 when every check passed; prints what failed otherwise.
Run by server/tests/redis_clients.rs.
"""
import sys
import time

import redis

HOST, PORT = sys.argv[1], int(sys.argv[2])
DEADLINE = 5.0


def client():
    return redis.Redis(host=HOST, port=PORT, socket_timeout=DEADLINE)


def next_message(pubsub):
    """The next pushed message (not a subscribe confirmation), waiting up to DEADLINE."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        m = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if m is not None:
            return m
    raise AssertionError("no message within %.1f s" % DEADLINE)


def confirmations(pubsub, n):
    end = time.monotonic() + DEADLINE
    got = []
    while len(got) < n and time.monotonic() < end:
        m = pubsub.get_message(timeout=0.1)
        if m is not None:
            got.append(m)
    assert len(got) == n, "confirmations: %r" % got
    return got


def check_connection_setup():
    r = client()
    assert r.ping() is True
    assert r.echo(b"hi") == b"hi"
    r.client_setname("ringfan-test")
    assert r.client_getname() == "ringfan-test"
    assert isinstance(r.client_id(), int)


def check_subscribe_publish():
    r = client()
    p = r.pubsub()
    p.subscribe("news", "sport")
    got = confirmations(p, 2)
    assert [m["type"] for m in got] == ["subscribe", "subscribe"], got
    assert [m["data"] for m in got] == [1, 2], got
    assert r.publish("news", b"hello") == 1
    m = next_message(p)
    assert m["type"] == "message" and m["channel"] == b"news" and m["data"] == b"hello", m
    binary = b"\x00\r\n\xff end"
    assert r.publish("sport", binary) == 1
    assert next_message(p)["data"] == binary
    assert r.pubsub_numsub("news", "none") == [(b"news", 1), (b"none", 0)]
    assert sorted(r.pubsub_channels()) == [b"news", b"sport"], r.pubsub_channels()
    p.unsubscribe("news")
    confirmations(p, 1)
    assert r.publish("news", b"gone") == 0
    p.close()


def check_patterns():
    r = client()
    p = r.pubsub()
    p.psubscribe("prices.*")
    confirmations(p, 1)
    assert r.pubsub_numpat() == 1
    assert r.publish("prices.eur", b"1.08") == 1
    m = next_message(p)
    assert (m["type"], m["pattern"], m["channel"], m["data"]) == (
        "pmessage", b"prices.*", b"prices.eur", b"1.08"), m
    assert r.publish("other", b"x") == 0
    p.close()


def check_sharded():
    r = client()
    p = r.pubsub()
    p.ssubscribe("shard")
    confirmations(p, 1)
    assert r.spublish("shard", b"s1") == 1
    assert r.publish("shard", b"not for shard subscribers") == 0
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("smessage", b"shard", b"s1"), m
    p.close()


def check_pipeline():
    r = client()
    p = r.pubsub()
    p.subscribe("pipe")
    confirmations(p, 1)
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.publish("pipe", b"m%d" % i)
    assert pipe.execute() == [1] * 500
    for i in range(500):
        assert next_message(p)["data"] == b"m%d" % i
    p.close()


def check_reconnect():
    """A subscriber whose connection is cut re-subscribes on a new one (redis-py does it on
    the next get_message) and receives what is published after."""
    r = client()
    p = r.pubsub()
    p.subscribe("again")
    confirmations(p, 1)
    p.connection.disconnect()
    # The next read reconnects and re-subscribes; wait until the server sees it.
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        p.get_message(timeout=0.05)
        if r.pubsub_numsub("again") == [(b"again", 1)]:
            break
    assert r.pubsub_numsub("again") == [(b"again", 1)]
    assert r.publish("again", b"back") == 1
    assert next_message(p)["data"] == b"back"
    p.close()


def check_errors():
    r = client()
    try:
        r.get("key")
    except redis.ResponseError as e:
        assert "unknown command 'GET'" in str(e), str(e)
    else:
        raise AssertionError("GET did not fail")


def main():
    checks = [check_connection_setup, check_subscribe_publish, check_patterns, check_sharded,
              check_pipeline, check_reconnect, check_errors]
    failed = 0
    for check in checks:
        try:
            check()
            print("ok", check.__name__)
        except Exception as e:  # report every failing check, not only the first
            failed += 1
            print("FAILED", check.__name__, repr(e))
    sys.exit(1 if failed else 0)


main()
