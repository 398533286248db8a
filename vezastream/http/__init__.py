"""The HTTP room: the app factory, middleware, and the protocol doors (native, tus).

The only server-side modules that import aiohttp. Doors parse and answer HTTP
and call the engine; they hold no upload logic of their own.
"""
