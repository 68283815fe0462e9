"""What the web application keeps for its handlers: typed keys of `aiohttp.web.Application`.

Kept apart from app.py so the handlers in other modules (operator API) reach the app's state
without importing the module that assembles the app.
"""

from __future__ import annotations

import collections

import aiohttp
from aiohttp import web

from .calllog import CallStore
from .capacity import Capacity
from .config import Config
from .telephony.twilio.rest import TwilioRest

CONFIG = web.AppKey("config", Config)
CALLS = web.AppKey("calls", dict)  # live calls (call.Call) by call id
RECENT = web.AppKey("recent", collections.deque)  # summaries of the last finished calls
STORE = web.AppKey("store", CallStore)  # the call log
INSTANCE = web.AppKey("instance", str)  # this gateway's name in call records
REST = web.AppKey("rest", TwilioRest)  # Twilio's REST API (hang up, transfer, outbound)
HTTP = web.AppKey("http", aiohttp.ClientSession)  # one client session (connection pool) for the app
CAPACITY = web.AppKey("capacity", Capacity)  # model session slots per provider key (shared via the call log)
DRAINING = web.AppKey("draining", dict)  # {"since": monotonic} once a drain has started
