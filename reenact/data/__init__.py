"""The data layer, at the bottom of the suite: Parquet schemas, shard files, the image codec, pair manifests and
torch datasets. It imports nothing else of the suite."""
