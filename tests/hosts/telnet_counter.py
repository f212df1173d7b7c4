#!/usr/bin/env python3
"""A telnet host for tests/telnet.rs: the telnetlib3 server on 127.0.0.1 (an ephemeral port,
printed as "PORT <n>" on stdout), whose shell keeps a counter per connection: "ready" and a
prompt, then "n=<count> <line>" for every line typed. A host session that survives a roam keeps
counting; a new connection would start again at 1.
"""
import asyncio
import sys

import telnetlib3


async def shell(reader, writer):
    count = 0
    writer.write(b"ready\r\n> ")
    line = b""
    while True:
        ch = await reader.read(1)
        if not ch:
            break
        if ch in (b"\r", b"\n"):
            if line:
                count += 1
                writer.write(b"\r\nn=%d %s\r\n> " % (count, line))
                line = b""
            continue
        if ch == b"\x00":
            continue
        line += ch
        writer.write(ch)  # the server echoes (it said WILL ECHO)
    writer.close()


async def main():
    server = await telnetlib3.create_server(
        host="127.0.0.1", port=0, shell=shell, encoding=False, connect_maxwait=1.0
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await server.wait_closed()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
