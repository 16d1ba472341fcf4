"""BlobLandingZone drives the real azure-storage-blob client against a local fake of the Blob REST API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from shared.adapters.azure.landing import BlobLandingZone

BLOBS = {"/devstoreaccount1/landing/iris/batch-001.csv": 2717, "/devstoreaccount1/landing/iris/empty.csv": 0}


class FakeBlobService(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # Get Blob Properties is a HEAD on the blob URL
        self.requests.append((self.command, self.path))
        path = self.path.split("?", 1)[0]
        if path not in BLOBS:
            self.send_response(404)
            self.send_header("x-ms-error-code", "BlobNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(BLOBS[path]))
        self.send_header("Content-Type", "text/csv")
        self.send_header("x-ms-blob-type", "BlockBlob")
        self.send_header("ETag", '"0x8DC0000000000"')
        self.send_header("Last-Modified", "Mon, 23 Nov 2026 10:00:00 GMT")
        self.send_header("x-ms-version", "2025-01-05")
        self.end_headers()


@pytest.fixture
def blob_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeBlobService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeBlobService.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/devstoreaccount1"
    server.shutdown()


def test_size_reads_blob_properties(blob_service):
    landing = BlobLandingZone()
    assert landing.size(f"{blob_service}/landing/iris/batch-001.csv") == 2717
    assert landing.size(f"{blob_service}/landing/iris/empty.csv") == 0
    assert FakeBlobService.requests[0] == ("HEAD", "/devstoreaccount1/landing/iris/batch-001.csv")


def test_a_missing_blob_is_an_os_error_naming_it(blob_service):
    with pytest.raises(OSError, match=r"landing/iris/nope\.csv cannot be read"):
        BlobLandingZone().size(f"{blob_service}/landing/iris/nope.csv")
