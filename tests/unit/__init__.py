"""Pure units, no runtime running: the codec, the lifecycle table, WAL parsing, replica
formats, the import graph, the public exports, typing."""
