#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for herald-providers' SMTP adapter tests.

Usage: python3 smtp_peer.py --dir DIR [--port N]

Listens on 127.0.0.1 (port 0 = OS-assigned) and prints `PORT <n>` on stdout once it accepts
connections. Every accepted message is written to DIR as one `.eml` file (written to a temp
name, then renamed, so a reader never sees half a file), preceded by `X-Envelope-To:` lines
with the envelope recipients. DIR/sessions holds the number of SMTP sessions (TCP
connections) seen so far.

Recipient behaviour, by local part:
  unknown@...  RCPT -> 550 5.1.1 User unknown
  busy@...     RCPT -> 451 4.3.0 Try again later
  spam@...     end of DATA -> 554 5.7.1 Message rejected as spam
  hang@...     end of DATA -> no reply for 10 s (the client times out after DATA)
  drop@...     end of DATA -> the connection is closed without a reply
"""

import argparse
import asyncio
import os
import sys
import uuid

try:
    from aiosmtpd.smtp import SMTP
except ImportError:
    print("smtp_peer: the aiosmtpd module is missing; run: pip install aiosmtpd", file=sys.stderr)
    sys.exit(3)


class Handler:
    def __init__(self, directory):
        self.directory = directory

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local == "unknown":
            return "550 5.1.1 User unknown"
        if local == "busy":
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        locals_ = {r.split("@", 1)[0].lower() for r in envelope.rcpt_tos}
        if "spam" in locals_:
            return "554 5.7.1 Message rejected as spam"
        if "hang" in locals_:
            await asyncio.sleep(10)
            return "451 4.3.0 Too late"
        if "drop" in locals_:
            server.transport.close()
            return "421 4.3.0 closing"
        name = uuid.uuid4().hex
        tmp = os.path.join(self.directory, name + ".tmp")
        with open(tmp, "wb") as f:
            for r in envelope.rcpt_tos:
                f.write(b"X-Envelope-To: " + r.encode() + b"\r\n")
            content = envelope.original_content or envelope.content
            if isinstance(content, str):
                content = content.encode()
            f.write(content)
        os.rename(tmp, os.path.join(self.directory, name + ".eml"))
        return "250 2.0.0 OK queued"


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    handler = Handler(args.dir)
    sessions = 0
    sessions_path = os.path.join(args.dir, "sessions")

    def factory():
        nonlocal sessions
        sessions += 1
        with open(sessions_path + ".tmp", "w") as f:
            f.write(str(sessions))
        os.replace(sessions_path + ".tmp", sessions_path)
        return SMTP(handler, hostname="peer.test", enable_SMTPUTF8=True)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host="127.0.0.1", port=args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
