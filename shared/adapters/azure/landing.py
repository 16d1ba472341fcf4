"""The landing zone in Azure: blobs in the landing storage account, read with the managed identity."""

from __future__ import annotations

from typing import Any


class BlobLandingZone:
    """Reads a landed blob's size (and proves it is readable) from its URL."""

    def __init__(self, credential: Any = None) -> None:
        self._credential = credential

    def _credential_for(self, uri: str) -> Any:
        if self._credential is None and uri.startswith("https://"):
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def size(self, uri: str) -> int:
        """Bytes in the blob; ``OSError`` when it is missing or cannot be read."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import BlobClient

        try:
            client = BlobClient.from_blob_url(uri, credential=self._credential_for(uri))
            return int(client.get_blob_properties().size)
        except AzureError as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise OSError(f"blob {uri.split('?', 1)[0]} cannot be read: {reason}") from None
