"""The iris classifier: bundled data batches, a training job and a batch scoring job."""
