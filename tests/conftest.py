"""Shared pytest set-up: each plugin module owns one kind of real resource."""
pytest_plugins = [
    "tests.plugins.s3",          # a real SeaweedFS S3 server on 127.0.0.1
    "tests.plugins.litestream",  # the real Litestream binaries (0.5.17 and a frame-only release)
    "tests.plugins.server",      # a real `sqlite-rest serve` process on 127.0.0.1
]
