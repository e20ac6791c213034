"""The Redis backend of executus (``executus.redis.RedisLane``).

Layers: ``keys`` names every key of a lane (one hash tag per lane); ``scripts`` loads the
Lua scripts (one per state change) shipped as ``.lua`` files; ``lane`` is ``RedisLane``.
"""
