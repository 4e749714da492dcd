"""The event stream as the API sees it: the store's event buffer (`yurt.state.events`), read
through `Server.reads.events`; the routes import its types from here, never from the store."""

from yurt.state.events import TOPICS, Batch, Event, EventBuffer, Since

__all__ = ["TOPICS", "Batch", "Event", "EventBuffer", "Since"]
