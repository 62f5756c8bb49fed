"""The sans-I/O core: wire models, SSE decoding, the stream machine, turn routing, errors.

Nothing here opens a socket, sleeps or reads a clock it was not handed; every
rule is a pure function or a state machine the tests drive exhaustively.
"""
