"""A TCP forwarder of the offline rehearsal: the AWS emulator listens on loopback only, and the
namespace hosts (the monitoring host's tracking server writing its artifacts to the emulated
S3) reach it through this process, which listens on the test bridge's address only.

    python -m mlops_assets.rehearsal.forwarder LISTEN_ADDRESS:PORT TARGET_ADDRESS:PORT

`Ec2Emulator.expose(address)` starts one and records its pid beside the emulator's; stopping
the emulator stops it. Bytes are copied both ways until either side closes.
"""

from __future__ import annotations

import asyncio
import sys

CHUNK = 64 * 1024


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_copy(client_reader, upstream_writer), _copy(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"expected ADDRESS:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve(_address(args[0]), _address(args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
