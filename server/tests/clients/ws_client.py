"""The Python `websockets` library, an independent WebSocket client, against ringfan.

Usage: ws_client.py WS_ADDR RESP_ADDR LINES_ADDR PUBLISH(0|1). Prints `ok <check>` per check
passed, exits 1 on the first failure. Run by server/tests/websocket.rs.
"""
import asyncio
import socket
import sys

import websockets

WS, RESP, LINES, PUBLISH = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
T = 5


def tcp(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=T)
    return s


def resp_call(s, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
    return s.recv(65536)


async def until_subscribers(r, topic, n):
    for _ in range(200):
        got = resp_call(r, "PUBSUB", "NUMSUB", topic)
        if got.endswith(b":%d\r\n" % n):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("%s never had %d subscribers: %r" % (topic, n, got))


async def main():
    r = tcp(RESP)
    async with websockets.connect("ws://%s/news" % WS, max_size=None) as ws:
        await until_subscribers(r, "news", 1)
        assert resp_call(r, "PUBLISH", "news", "hello") == b":1\r\n"
        assert await asyncio.wait_for(ws.recv(), T) == "hello"
        assert resp_call(r, "PUBLISH", "news", b"\xff\x00bin") == b":1\r\n"
        assert await asyncio.wait_for(ws.recv(), T) == b"\xff\x00bin"
        big = "x" * 200000
        assert resp_call(r, "PUBLISH", "news", big) == b":1\r\n"
        assert await asyncio.wait_for(ws.recv(), T) == big
        print("ok receives text, binary and large messages published over RESP")
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, T)
        print("ok answers pings")
        if PUBLISH:
            sub = tcp(RESP)
            assert resp_call(sub, "SUBSCRIBE", "news").endswith(b":1\r\n")
            await ws.send("from the browser side")
            got = b""
            while b"from the browser side" not in got:
                got += sub.recv(65536)
            assert got.startswith(b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n"), got
            # Its own message comes back to it too (it subscribes to what it publishes to).
            assert await asyncio.wait_for(ws.recv(), T) == "from the browser side"
            await ws.send(b"\x01\x02")
            assert await asyncio.wait_for(ws.recv(), T) == b"\x01\x02"
            print("ok publishes text and binary to its topic")
            sub.close()
        else:
            await ws.send("not allowed")
            try:
                await asyncio.wait_for(ws.recv(), T)
                raise AssertionError("a publish was not refused")
            except websockets.ConnectionClosed as e:
                assert e.rcvd.code == 1008, e
            print("ok a publish is refused with 1008 when publishing is off")
    # `/` is the lines topic; paths are percent-decoded.
    async with websockets.connect("ws://%s/" % WS) as lines_ws, \
            websockets.connect("ws://%s/a%%20b" % WS) as spaced:
        await until_subscribers(r, "a b", 1)
        line = tcp(LINES)
        await until_subscribers(r, "lines", 2)
        line.sendall(b"a line\r\n")
        assert await asyncio.wait_for(lines_ws.recv(), T) == "a line\r"
        assert resp_call(r, "PUBLISH", "a b", "spaced") == b":1\r\n"
        assert await asyncio.wait_for(spaced.recv(), T) == "spaced"
        line.close()
        print("ok / is the lines topic and paths are percent-decoded")
    async with websockets.connect("ws://%s/bye" % WS) as ws:
        await ws.close(code=1000, reason="done")
        assert ws.close_code == 1000, ws.close_code
        print("ok the close handshake completes")
    print("all ok")


asyncio.run(main())
