"""Azure Storage and Event Grid: the Blob landing zone and lifecycle events out."""
