"""Our own Litestream 0.5 core: LTX codec, WAL reader, replica clients, restore, replication.

Usable as a library without Flask.
"""
