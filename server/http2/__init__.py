"""HTTP/2 for the gRPC front end, sans I/O: frames, header blocks and a server connection.

Pure: bytes in, events out; calls in, bytes out. No sockets, asyncio, clocks or threads
(tests/test_purity.py). server/grpc_server.py drives it on the event loop. Imports nothing
from the rest of the server but nothing of the harness either.
"""
