"""The I/O shell: transports, the request layer, event streams, pages and files."""
